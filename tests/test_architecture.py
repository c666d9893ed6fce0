"""The layers hold (pyproject's [tool.importlinter] contracts: cli -> workflows -> method/models/store -> basics,
the workflow packages apart, no import cycles in probe/), and the benchmark scripts import no circle either."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_import_contracts_hold(monkeypatch):
    from importlinter.application.use_cases import lint_imports
    from importlinter.configuration import configure

    configure()  # what the lint-imports command sets up: the readers of pyproject.toml
    monkeypatch.chdir(ROOT)
    assert lint_imports(config_filename=str(ROOT / "pyproject.toml"), no_logo=True), \
        "an import contract is broken: run lint-imports"


def test_benchmarks_import_no_cycles():
    """The scripts import each other by name (``from preset_score import …``): that graph has no circle."""
    scripts = {p.stem: p for p in (ROOT / "benchmarks").glob("*.py")}
    edges: dict[str, set[str]] = {}
    for name, path in scripts.items():
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.add(node.module.split(".")[0])
            elif isinstance(node, ast.Import):
                found |= {a.name.split(".")[0] for a in node.names}
        edges[name] = found & scripts.keys() - {name}

    state: dict[str, int] = {}

    def visit(n: str, trail: list[str]) -> None:
        state[n] = 1
        for m in sorted(edges[n]):
            assert state.get(m) != 1, f"benchmarks import in a circle: {' -> '.join([*trail, n, m])}"
            if m not in state:
                visit(m, [*trail, n])
        state[n] = 2

    for n in sorted(edges):
        if n not in state:
            visit(n, [])
