"""Shared printing for commands: rich on a terminal, plain lines otherwise, nothing with --quiet."""

from __future__ import annotations

import json
import sys
from contextlib import ExitStack, contextmanager

import click
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


def quiet(ctx: click.Context | None = None) -> bool:
    ctx = ctx or click.get_current_context(silent=True)
    return bool(ctx and ctx.find_root().obj and ctx.find_root().obj.get("quiet"))


def speak_only_if(speaks: bool) -> None:
    """Go quiet unless this process ``speaks`` for the run: under torchrun rank 0 reports for every rank
    (warnings still show)."""
    if not speaks:
        click.get_current_context().find_root().obj["quiet"] = True


def console() -> Console:
    """stderr console for progress and messages, so stdout stays clean for --json."""
    return Console(stderr=True, quiet=quiet(), soft_wrap=True)


def say(message: str, markup: bool = False, style: str | None = None) -> None:
    """A progress/info line on stderr. Plain text by default: names, paths and prompts are the user's, and
    rich would swallow ``[embedding]`` or crash on ``[/]`` in them; ``style`` (e.g. "dim") styles the whole
    line without reading markup in it."""
    if not quiet():
        console().print(message, highlight=False, markup=markup, style=style)


def _cell(value: object) -> str:
    return " ".join(str(value).split("\t")).replace("\n", " ")


def print_table(title: str, columns: list[str], rows: list[list[object]], err: bool = False,
                caption: str | None = None) -> None:
    """A listing: a rich table on a terminal, else plain tab-separated lines (header first) that no
    width limit wraps or cuts, so identifiers survive ``| grep`` and ``| cut``. Cells are never markup.
    Listings go to stdout; ``err=True`` for result tables printed beside progress on stderr."""
    from rich.markup import escape
    from rich.table import Table

    if err and quiet():
        return
    stream = sys.stderr if err else sys.stdout
    if not stream.isatty():
        click.echo("\t".join(columns), err=err)
        for row in rows:
            click.echo("\t".join(_cell(c) for c in row), err=err)
        return
    table = Table(title=escape(title), caption=escape(caption) if caption else None)
    for col in columns:
        table.add_column(escape(col), overflow="fold")
    for row in rows:
        table.add_row(*[escape(str(c)) for c in row])
    Console(stderr=err, soft_wrap=True).print(table)


def print_rich_table(table, out: Console | None = None) -> None:
    """A rich table built for the terminal; on a pipe or file, plain tab-separated lines (header first,
    cells as plain text) like every other listing, so no name is wrapped or cut; the title goes to stderr."""
    from rich.text import Text

    if quiet():
        return
    if sys.stdout.isatty():
        (out or Console()).print(table)
        return

    def plain(cell: object) -> str:
        if isinstance(cell, Text):
            return cell.plain
        return Text.from_markup(cell).plain if isinstance(cell, str) else str(cell)
    if table.title:  # the title is a message (stderr), so stdout holds only the table's lines
        click.echo(plain(table.title), err=True)
    columns = table.columns
    click.echo("\t".join(_cell(plain(c.header)) for c in columns))
    for i in range(table.row_count):
        click.echo("\t".join(_cell(plain(c._cells[i])) if i < len(c._cells) else "" for c in columns))


def warn(message: str) -> None:
    """A warning line (bad file etc.) — shown even with --quiet, on stderr."""
    click.echo(f"warning: {message}", err=True)


def emit_json(obj: object) -> None:
    click.echo(json.dumps(obj, indent=2, default=str))


class PlainProgress:
    """Progress for non-terminals: a line every ~10% so logs stay short."""

    def __init__(self, label: str, total: int, unit: str):
        self.label, self.total, self.unit, self._next = label, max(total, 1), unit, 0.0

    def update(self, done: int, extra: str = "", total: int | None = None) -> None:
        if total:
            self.total = total
        if quiet():
            return
        if done / self.total >= self._next or done >= self.total:
            click.echo(f"{self.label}: {done}/{self.total} {self.unit} {extra}".rstrip(), err=True)
            self._next = done / self.total + 0.1


@contextmanager
def progress(label: str, total: int, unit: str = "images"):
    """Yields ``update(done, extra="", total=None)``: a rich bar with rate and ETA on a TTY, plain lines elsewhere."""
    if quiet() or not sys.stderr.isatty():
        yield PlainProgress(label, total, unit).update
        return
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[extra]}"), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn())
    with Progress(*columns, console=console(), transient=False) as bar:
        task = bar.add_task(label, total=total, extra="")

        def update(done: int, extra: str = "", total: int | None = None) -> None:
            bar.update(task, completed=done, extra=extra, **({"total": total} if total else {}))
        yield update


class LateProgress:
    """A progress bar opened when a workflow's start callback tells the total; closed on exit."""

    def __init__(self, label: str, unit: str = "images"):
        self.label, self.unit = label, unit
        self._stack = ExitStack()
        self._update = None

    def __enter__(self) -> LateProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def start(self, total: int) -> None:
        self._update = self._stack.enter_context(progress(self.label, total, self.unit))

    def update(self, done: int, extra: str = "") -> None:
        if self._update is not None:
            self._update(done, extra)
