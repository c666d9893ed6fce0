"""Errors that the CLI turns into one clear line and a documented exit status.

Exit codes (README documents them):
    0  success (warnings about skipped inputs may have been printed)
    1  unexpected internal error (a bug: please report it with the traceback from --debug)
    2  misuse: unknown option, model spec, layer, group, or a target that does not fit the encoder
    3  bad input data: unreadable/corrupt file, NaN in a target, nothing could be processed
    130 interrupted (Ctrl-C); everything finished before the interruption is kept
"""

from __future__ import annotations


class ProbeError(Exception):
    """Base class: ``str(err)`` is the one line shown to the user."""

    exit_code = 1


class UsageError(ProbeError):
    """The command was misused: a spec, layer, group, index or option that cannot work."""

    exit_code = 2


class InputError(ProbeError):
    """The data given is unusable: unreadable file, corrupt store, NaN target, nothing processed."""

    exit_code = 3


class ProbeWarning(UserWarning):
    """Something the user should know about a result that is still written (float16 overflow ...): the
    CLI prints it as one ``warning:`` line; API callers get a Python warning."""
