"""probe's on-disk cache: arrays computed once per key (what they were computed from) and kept.

The prior's reference features (``probe.reference``) and the realism reference errors
(``probe.naturalness``) cost seconds to minutes and depend only on the prior, the encoder and a few
settings, so every run after the first reads them back. Each entry is one ``.npz`` named by a hash of its
key under ``CACHE_DIR/<kind>/``; it is written to a temporary file and renamed into place, so a killed run
or two runs at once never leave half an entry. ``PROBE_CACHE`` moves the whole cache (default
``~/.cache/probe``; the registry data sets are unpacked there too).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

CACHE_DIR = Path(os.environ.get("PROBE_CACHE", Path.home() / ".cache" / "probe"))


def keyed_path(kind: str, key: dict) -> Path:
    """The entry of ``key`` (any JSON-able dict; other values by their ``str``) among the ``kind`` entries."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:20]
    return CACHE_DIR / kind / f"{digest}.npz"


def load_arrays(path: Path) -> dict[str, np.ndarray] | None:
    """The arrays of a cache entry, or None when there is none (no pickles are ever read)."""
    if not path.is_file():
        return None
    with np.load(path, allow_pickle=False) as z:
        return {name: z[name] for name in z.files}


def save_arrays(path: Path, **arrays: np.ndarray) -> None:
    """Write a cache entry atomically (temporary file in the same folder, then renamed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.npz")
    np.savez(tmp, **arrays)
    tmp.replace(path)
