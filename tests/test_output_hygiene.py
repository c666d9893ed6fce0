"""Output hygiene: CSV cells cannot run as formulas, user text is never rich markup, piped listings are
tab-separated with whole identifiers, hub weights that cannot be fetched end in one line (exit 3)."""

from __future__ import annotations

import csv
import io

import pytest

from probe.persistence.scoring import csv_safe


def test_csv_safe_neutralises_formulas_keeps_numbers():
    assert csv_safe("=HYPERLINK(\"http://x\")") == "'=HYPERLINK(\"http://x\")"
    assert [csv_safe(c) for c in ("+1+2", "-cmd|' /C calc'!A0", "@SUM(A1)", "\tx")] == \
        ["'+1+2", "'-cmd|' /C calc'!A0", "'@SUM(A1)", "'\tx"]
    assert csv_safe("-0.25") == "-0.25" and csv_safe("+3") == "+3" and csv_safe(3) == 3
    assert csv_safe("brightness") == "brightness"


def test_compare_targets_csv_has_no_live_formula(tmp_path, small_images, run_cli):
    import json

    from PIL import Image

    run = tmp_path / "run"
    (run / "images").mkdir(parents=True)
    (run / "baseline").mkdir()
    recs = []
    for s in range(2):
        Image.open(small_images[s]).save(run / "images" / f"t_s{s:02d}.png")
        Image.open(small_images[s + 2]).save(run / "baseline" / f"s{s:02d}.png")
        recs.append({"target_id": "=cmd|' /C calc'!A0", "sample": s, "image": f"images/t_s{s:02d}.png",
                     "target": {"label": "@SUM(1)"}})
    (run / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    out = tmp_path / "t.csv"
    r = run_cli("-q", "compare", run, "-a", "brightness", "--classifier", "none", "--targets-csv", out,
                "--bootstrap", "10")
    assert r.exit_code == 0, r.output
    rows = list(csv.reader(io.StringIO(out.read_text())))
    cells = [c for row in rows[1:] for c in row]
    assert cells and not any(c.startswith(("=", "+", "@")) for c in cells)
    assert not any(c.startswith("-") and not c.lstrip("-").replace(".", "").replace("e", "").isdigit()
                   for c in cells)
    assert "'=cmd|' /C calc'!A0" in cells


def test_say_prints_user_text_verbatim(capsys):
    from click.testing import CliRunner

    from probe.cli.console import say

    @__import__("click").command()
    def cmd():
        say("timm:x [embedding] -> runs/[/]weird[bold]")
    r = CliRunner().invoke(cmd, [])
    assert r.exit_code == 0 and "timm:x [embedding] -> runs/[/]weird[bold]" in r.stderr


def test_piped_info_is_tab_separated_with_whole_names(run_cli, tmp_path, small_images, tiny_encoder_args):
    store = tmp_path / "a-rather-long-store-name-[with]-brackets.h5"
    r = run_cli("-q", "extract", *small_images[:2], "-o", store, *tiny_encoder_args, "--workers", "0")
    assert r.exit_code == 0, r.output
    r = run_cli("info", store)
    assert r.exit_code == 0
    lines = r.stdout.splitlines()
    assert lines[0].split("\t") == ["group", "rows", "dim", "dtype", "labels", "model", "layer", "created"]
    assert lines[1].split("\t")[:3] == ["timm_test_resnet/embedding", "2", "96"]
    r = run_cli("models", "list")
    assert r.exit_code == 0 and "bundled:fashion-cnn\t" in r.stdout and "…" not in r.stdout


def test_offline_hub_weights_exit3_one_line(run_cli, monkeypatch, small_images, tmp_path):
    import timm
    from huggingface_hub.errors import LocalEntryNotFoundError

    def offline(*a, **k):
        raise LocalEntryNotFoundError("Cannot find the requested files in the local cache (offline)")
    monkeypatch.setattr(timm, "create_model", offline)
    r = run_cli("extract", small_images[0], "-o", tmp_path / "x.h5", "-m", "timm:resnet18", "--device", "cpu")
    assert r.exit_code == 3
    assert r.stderr.count("error:") == 1 and "timm:resnet18" in r.stderr
    assert "--weights PATH" in r.stderr and "Traceback" not in r.output


@pytest.mark.parametrize("device", ["bogus", "cuda:9", "tpu"])
def test_bad_device_refused_before_loading(device):
    from probe.errors import UsageError
    from probe.models.registry import resolve_device

    with pytest.raises(UsageError, match="--device"):
        resolve_device(device)
