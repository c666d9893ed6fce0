"""``probe``: the command group. Subcommands load lazily so ``probe --help`` stays instant.

Errors from the core (probe.errors) become one line on stderr and the documented exit code.
"""

from __future__ import annotations

import importlib
import sys

import click

from probe import __version__
from probe.errors import ProbeError

COMMANDS = {
    "extract": ("probe.cli.extract", "extract", "Images -> features of a model/layer, cached in HDF5 (resumable)."),
    "info": ("probe.cli.info", "info", "List the groups, counts, dims and attributes of a feature store."),
    "export": ("probe.cli.info", "export", "Write one group of a feature store to .npy for other tools."),
    "models": ("probe.cli.models", "models", "List bundled models and spec forms; list a model's layers."),
    "decode": ("probe.cli.decode", "decode", "Generate images whose features match a target."),
    "interpolate": ("probe.cli.directions", "interpolate", "Decode along the path between two features."),
    "perturb": ("probe.cli.directions", "perturb", "Decode a feature moved along PCA/class/random directions."),
    "map": ("probe.cli.directions", "map_", "2-D map (UMAP/PCA) of a feature set, optionally decoded on a grid."),
    "compare": ("probe.cli.compare", "compare", "Which attributes persist across decoded samples."),
    "merge": ("probe.cli.merge", "merge", "Join the shards of a split extract or decode (--shard i/N, torchrun)."),
}


def one_line(err: object) -> str:
    """An error as the one line the README promises: later lines (a library's long explanation) dropped."""
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    return lines[0] + (" …" if len(lines) > 1 else "") if lines else type(err).__name__


def _quiet_broken_pipe() -> None:
    """Exit 141 (128 + SIGPIPE, what a shell tool killed by a closed pipe reports) with no message; stdout
    is pointed at /dev/null so the interpreter's own final flush does not complain either."""
    import os

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # not a real file descriptor (a test runner's stream)
        pass
    sys.exit(141)


def _set_quiet(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value:
        root = ctx.find_root()
        root.ensure_object(dict)
        root.obj["quiet"] = True


def _add_quiet_option(command: click.Command) -> None:
    """``-q`` works after the subcommand too (``probe extract … -q``), the same as before it."""
    commands = [command, *getattr(command, "commands", {}).values()]
    for cmd in commands:
        if not any(p.name == "quiet" for p in cmd.params):
            cmd.params.append(click.Option(["-q", "--quiet"], is_flag=True, expose_value=False, is_eager=True,
                                           callback=_set_quiet, help="Print nothing but errors and --json output."))


class LazyGroup(click.Group):
    """Click's documented lazy-loading group: import a subcommand's module only when it runs."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        module, attr, _ = COMMANDS[name]
        command = getattr(importlib.import_module(module), attr)
        _add_quiet_option(command)
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        with formatter.section("Commands"):
            formatter.write_dl([(name, help_) for name, (_, _, help_) in COMMANDS.items()])

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except ProbeError as err:
            if ctx.obj and ctx.obj.get("debug"):
                raise
            click.echo(f"error: {one_line(err)}", err=True)
            sys.exit(err.exit_code)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)
        except (click.exceptions.Exit, click.ClickException, SystemExit):
            raise
        except BrokenPipeError:  # the reader went away (``| head -1``): stop quietly, as head expects
            _quiet_broken_pipe()
        except OSError as exc:  # the file system said no (permissions, full disk, a folder for a file)
            if ctx.obj and ctx.obj.get("debug"):
                raise
            where = f"{exc.filename}: " if getattr(exc, "filename", None) else ""
            click.echo(f"error: {where}{one_line(exc.strerror or exc)}", err=True)
            sys.exit(3)
        except Exception as exc:  # noqa: BLE001 - a bug: one line here, the traceback with --debug
            if ctx.obj and ctx.obj.get("debug"):
                raise
            click.echo(f"error: internal error ({type(exc).__name__}: {one_line(exc)}); rerun with --debug "
                       "for the traceback", err=True)
            sys.exit(1)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="probe")
@click.option("-q", "--quiet", is_flag=True, help="Print nothing but errors and requested --json output.")
@click.option("--debug", is_flag=True, help="Show full tracebacks instead of one-line errors.")
@click.pass_context
def cli(ctx: click.Context, quiet: bool, debug: bool) -> None:
    """probe: what does a feature of a vision network encode? Decode it back into images and see.

    Exit codes: 0 ok, 1 internal error, 2 misuse (bad option/spec/layer/target), 3 bad input data
    (unreadable file, corrupt store, nothing processed), 130 interrupted.
    """
    ctx.ensure_object(dict)
    ctx.obj.update(quiet=quiet, debug=debug)
    _probe_warnings_as_lines()


def _probe_warnings_as_lines() -> None:
    """probe's own warnings (ProbeWarning) print as one ``warning:`` line like every other warning."""
    import warnings

    from probe.errors import ProbeWarning

    shown = warnings.showwarning
    if getattr(shown, "_probe", False):
        return

    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, ProbeWarning):
            click.echo(f"warning: {message}", err=True)
        else:
            shown(message, category, filename, lineno, file, line)
    show._probe = True  # type: ignore[attr-defined]
    warnings.showwarning = show
