"""Downloading weights from a hub, failing in one line when that cannot work.

Offline, ``huggingface_hub`` retries every file five times with back-off (about a minute of "Retrying
in 8s" warnings per model) and then raises an exception the CLI would report as an internal error.
:func:`hub_access` wraps a loader call instead: when ``HF_HUB_OFFLINE`` is not set and the hub's host
cannot be reached, it switches the hub library to offline mode for that call (so weights already in the
local cache still load, with no retries), silences the retry warnings, and turns every download failure
(Hugging Face hub, torch.hub/urllib, HTTP clients) into one :class:`~probe.errors.InputError` line —
exit status 3 — naming the spec and the ways to run without the hub.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlparse

from probe.errors import InputError, ProbeError

OFFLINE_HINT = "offline? use a bundled model, --weights PATH (a local checkpoint) or --weights random"
_NETWORK_MODULES = ("huggingface_hub", "httpx", "httpcore", "requests", "urllib3", "urllib")


def hub_endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co")


def reachable(url: str, timeout: float = 3.0) -> bool:
    """Whether a TCP connection to the URL's host can be opened (DNS failure answers at once offline)."""
    parsed = urlparse(url)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((parsed.hostname or "", port), timeout=timeout):
            return True
    except OSError:
        return False


def _is_download_error(exc: BaseException) -> bool:
    if isinstance(exc, (OSError, ConnectionError, TimeoutError)):
        return True
    return any(type(c).__module__.split(".")[0] in _NETWORK_MODULES for c in _chain(exc))


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0][:160] if text else type(exc).__name__)


@contextmanager
def hub_access(spec: str, host: str | None = None) -> Iterator[None]:
    """Run a loader that may download weights for ``spec``; download failures become one InputError line.

    ``host`` is the URL the loader downloads from (default: the Hugging Face hub endpoint); only the
    Hugging Face hub is switched to offline mode when unreachable (torch.hub fails at once by itself).
    """
    # the hub's retry warnings, and loaders that log their failure on the root logger before raising
    # (open_clip: "ERROR:root:Failed to download weights ..."): the InputError line says it once
    root = logging.getLogger()
    quiet = [logging.getLogger(name) for name in ("huggingface_hub", "huggingface_hub.utils._http")] + [root]
    levels = [log.level for log in quiet]
    root_handlers = list(root.handlers)
    constants = None
    offline_before = None
    url = host or hub_endpoint()
    try:
        from huggingface_hub import constants as hf_constants

        constants = hf_constants
        offline_before = constants.HF_HUB_OFFLINE
        if host is None and not offline_before and not reachable(url):
            constants.HF_HUB_OFFLINE = True  # use the local cache only: no retries
    except ImportError:
        pass
    for log in quiet:
        log.setLevel(logging.CRITICAL if log is root else logging.ERROR)
    try:
        yield
    except ProbeError:
        raise
    except Exception as exc:  # noqa: BLE001 - filtered: only download failures are turned into InputError
        if not _is_download_error(exc):
            raise
        offline = constants is not None and constants.HF_HUB_OFFLINE and host is None
        where = "the local cache (the hub is unreachable or HF_HUB_OFFLINE is set)" if offline else urlparse(url).netloc
        raise InputError(f"{spec}: weights could not be loaded from {where}: {_first_line(exc)}; "
                         f"{OFFLINE_HINT}") from exc
    finally:
        for log, level in zip(quiet, levels):
            log.setLevel(level)
        for handler in root.handlers[:]:  # logging.error() on an unconfigured root adds a stderr handler
            if handler not in root_handlers:
                root.removeHandler(handler)
        if constants is not None and offline_before is not None:
            constants.HF_HUB_OFFLINE = offline_before
