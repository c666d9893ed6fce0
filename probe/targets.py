"""Decode targets: where a feature vector f* comes from, resolved and validated before any sampling.

A target is a plain float32 vector in the encoder's feature space (the requested layers concatenated,
in ``encoder.layers`` order) plus where it came from, so every decoded image can be traced back:

  * ``hdf5``   a row of a feature store group (``--from F.h5 [--group G] --index 3|0:16|3,5,7`` or
               ``--path P``); the group must have been made by the same encoder and layer;
  * ``image``  an image file, encoded now with the encoder;
  * ``text``   a CLIP text prompt (``encoder.encode_text``);
  * ``vector`` a raw vector file (.npy [D] or [N, D]; .txt/.csv with one vector per line).

Every check fails before the (slow) decode starts, with one line naming the file and what is wrong.
:class:`Targets` holds these options as one value (``probe decode`` builds it from its flags, a notebook
passes it to ``probe.decode``), so both resolve them through :func:`resolve_targets`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from probe.errors import InputError, UsageError
from probe.models.encoder import Encoder

# medoid: the store row with the least summed distance to the others (perturb)
KINDS = ("hdf5", "image", "text", "vector", "medoid")


#: target kinds whose vector is read from a file as numbers, so its hash is exact across runs and devices
HASHED_KINDS = ("hdf5", "vector")


def vector_sha256(vector: np.ndarray) -> str:
    import hashlib

    return hashlib.sha256(np.ascontiguousarray(vector, dtype="<f4").tobytes()).hexdigest()


@dataclass
class Target:
    """One feature vector to decode and its provenance (written into every manifest record)."""

    id: str
    vector: np.ndarray
    kind: str
    source: str
    index: int | None = None
    label: str | int | None = None
    image_path: str | None = None
    extra: dict = field(default_factory=dict)
    image_sha256: str | None = None  # an image target's file content (set by from_image)

    def record(self) -> dict:
        """The manifest's ``target`` dict. Targets read as numbers (a store row, a vector file) carry the
        sha256 of their float32 vector, image targets the sha256 of their file (they are encoded again on
        each run, and the last bits may differ by device), so a resume refuses a target whose content
        changed under the same name. A text target's prompt is its content (``source`` is ``text:PROMPT``)."""
        out = {"kind": self.kind, "source": self.source, "index": self.index, "label": self.label,
               "image_path": self.image_path}
        if self.kind in HASHED_KINDS and np.size(self.vector):
            out["vector_sha256"] = vector_sha256(self.vector)
        if self.image_sha256:
            out["image_sha256"] = self.image_sha256
        return out


#: content hashes a target record may carry; a record written before one existed resumes without it
CONTENT_HASH_KEYS = ("vector_sha256", "image_sha256")


# -- helpers ----------------------------------------------------------------------------------------------
def feature_dim(encoder: Encoder) -> int:
    """Length of a target vector for ``encoder`` (:attr:`Encoder.feature_dim`, found once per encoder)."""
    return encoder.feature_dim


@torch.no_grad()
def encode_images01(encoder: Encoder, images: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W] in [0, 1] -> concatenated features [B, D] float32 on the CPU."""
    feats = encoder.features(images.to(encoder.device))
    return torch.cat([feats[n].float().flatten(1) for n in encoder.layers], 1).cpu()


def _slug(text: str, limit: int = 40) -> str:
    s = re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.")
    return (s[:limit].rstrip("-.") or "x")


def _check_vector(vec: np.ndarray, dim: int, where: str) -> np.ndarray:
    vec = np.asarray(vec, dtype=np.float32).reshape(-1)
    if vec.shape[0] != dim:
        raise UsageError(f"{where}: target has {vec.shape[0]} dimensions but the encoder gives {dim}")
    if not np.isfinite(vec).all():
        raise InputError(f"{where}: target contains NaN or infinite values")
    return vec


def parse_indices(text: str, n: int, where: str = "group") -> list[int]:
    """``3``, ``-1``, ``0:16``, ``::4``, ``3,5,7`` or mixtures (``0:4,9``) -> row indices in [0, n)."""
    out: list[int] = []
    for part in (p.strip() for p in str(text).split(",")):
        if not part:
            continue
        try:
            if ":" in part:
                bits = [int(b) if b.strip() else None for b in part.split(":")]
                if len(bits) > 3:
                    raise ValueError
                sl = slice(*bits)
                if sl.stop is not None and not -n <= sl.stop <= n:
                    raise UsageError(f"{where}: index range {part} is out of range (the group has {n} rows)")
                rows = list(range(n))[sl]
                if not rows:
                    raise UsageError(f"{where}: index range {part} selects no rows (the group has {n} rows)")
                out.extend(rows)
            else:
                i = int(part)
                if not -n <= i < n:
                    raise UsageError(f"{where}: index {i} is out of range (the group has {n} rows)")
                out.append(i % n)
        except ValueError:
            raise UsageError(f"{where}: cannot read index {part!r}; use 3, 0:16 or 3,5,7") from None
    if not out:
        raise UsageError(f"{where}: no index given")
    return out


def unique_ids(targets: list[Target]) -> list[Target]:
    """Make target ids unique (they name output files) by suffixing repeats with -2, -3, ..."""
    seen: dict[str, int] = {}
    for t in targets:
        base = t.id
        if base in seen:
            seen[base] += 1
            t.id = f"{base}-{seen[base]}"
        else:
            seen[base] = 1
    return targets


# -- resolvers --------------------------------------------------------------------------------------------
def check_group_matches(group, store_path: Path, encoder: Encoder) -> None:
    attrs = group.attrs
    if len(encoder.layers) != 1:
        raise UsageError(f"{store_path}: a store group holds one layer; decode its rows with a single --layer")
    spec, layer = attrs.get("model_spec"), attrs.get("layer")
    if spec != encoder.spec:
        raise UsageError(f"{store_path}: group {group.name} holds features of {spec}, but the decoder's encoder "
                         f"is {encoder.spec}; pass --encoder {spec}")
    if layer != encoder.layers[0]:
        raise UsageError(f"{store_path}: group {group.name} holds layer {layer!r}, but the encoder reads "
                         f"{encoder.layers[0]!r}; pass --layer {layer}")
    from probe.store import weights_mismatch

    if attrs.get("weights") is not None or attrs.get("weights_sha256"):
        problem = weights_mismatch(attrs, encoder.record())
        if problem:
            raise UsageError(f"{store_path}: group {group.name} was made with {problem} (the encoder's)")
    for key, mine in (("keep_spatial", encoder.keep_spatial), ("token_pool", encoder.token_pool)):
        theirs = attrs.get(key)
        if theirs is not None and theirs != mine:
            raise UsageError(f"{store_path}: group {group.name} was made with {key}={theirs!r}, "
                             f"the encoder has {key}={mine!r}")


def _pick_group(store, encoder: Encoder, group: str | None):
    if group is not None:
        return store.group(group)
    from probe.store import group_key

    names = store.group_names()
    mine = group_key(encoder.spec, encoder.layers[0])
    if mine in names:
        return store.group(mine)
    return store.group(None)  # the only group, or a UsageError listing them


def from_store(path: str | Path, encoder: Encoder, group: str | None = None, index: str | None = None,
               paths: Sequence[str] = ()) -> list[Target]:
    """Rows of a feature store group, chosen by index expression and/or stored path."""
    from probe.store import FeatureStore

    path = Path(path)
    dim = feature_dim(encoder)
    with FeatureStore(path, "r") as st:
        g = _pick_group(st, encoder, group)
        check_group_matches(g, path, encoder)
        if g.dim != dim:
            raise UsageError(f"{path}: group {g.name} has {g.dim}-d features but the encoder gives {dim}")
        n = len(g)
        if n == 0:
            raise InputError(f"{path}: group {g.name} is empty")
        rows: list[int] = []
        if index is not None:
            rows += parse_indices(index, n, f"{path}:{g.name}")
        rows += [g.index_of_path(p) for p in paths]
        if not rows:
            raise UsageError(f"{path}: choose rows with --index (3, 0:16, 3,5,7) or --path")
        vectors = g.rows(rows)
        stored_paths = g.paths
        labels = g.labels
        names = g.attrs.get("label_names")
        out = []
        for i, vec in zip(rows, vectors):
            where = f"{path}:{g.name}[{i}]"
            out.append(Target(id=f"r{i:05d}", vector=_check_vector(vec, dim, where), kind="hdf5",
                              source=f"{path}:{g.name}", index=i,
                              label=row_label(None if labels is None else labels[i], names),
                              image_path=row_image_path(stored_paths[i])))
    return out


def row_label(value: int | np.integer | None, names: object) -> str | int | None:
    """A stored row's label for the manifest: its class name when the group names them, else the number;
    None for unlabelled rows (negative labels)."""
    if value is None or value < 0:
        return None
    return names[int(value)] if isinstance(names, list) and value < len(names) else int(value)


def row_image_path(stored: str) -> str | None:
    """The image a stored row came from (None for rows of text prompts or without a path)."""
    return stored if stored and not stored.startswith("text:") else None


def from_image(path: str | Path, encoder: Encoder) -> Target:
    """An image file encoded now, exactly as ``probe extract`` would."""
    from probe.images import path_text, read_image01, sha256_file

    img = read_image01(path)
    vec = encode_images01(encoder, img.unsqueeze(0))[0].numpy()
    name = path_text(path)
    try:
        digest = sha256_file(path)
    except OSError as exc:
        raise InputError(f"{name}: cannot read file ({exc.strerror or exc})") from None
    return Target(id=f"img-{_slug(Path(name).stem)}", vector=_check_vector(vec, vec.shape[0], name),
                  kind="image", source=name, image_path=name, image_sha256=digest)


def from_text(prompt: str, encoder: Encoder) -> Target:
    if not encoder.has_text:
        raise UsageError(f"{encoder.spec} is not a CLIP model, so a text prompt cannot be a target")
    if encoder.layers != ["embedding"]:
        raise UsageError("text targets live in the final embedding; drop --layer")
    with torch.no_grad():
        vec = encoder.encode_text([prompt])[0].float().cpu().numpy()
    return Target(id=f"text-{_slug(prompt)}", vector=_check_vector(vec, vec.shape[0], f"text {prompt!r}"),
                  kind="text", source=f"text:{prompt}", label=prompt)


def read_vectors(path: str | Path) -> np.ndarray:
    """A .npy ([D] or [N, D]) or text file (one vector per line, spaces or commas) -> [N, D] float32."""
    path = Path(path)
    try:
        if path.suffix == ".npy":
            from probe.bounds import load_npy

            arr = load_npy(path)  # header checked against the file's bytes first
        else:
            text = path.read_text()
            arr = np.array([[float(v) for v in re.split(r"[,\s]+", ln.strip()) if v]
                            for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")],
                           dtype=np.float64)
    except FileNotFoundError as exc:
        raise InputError(f"{path}: file not found") from exc
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: not a readable vector file (.npy, or text with one vector per line)") from exc
    if arr.ndim == 1:
        arr = arr[None]
    if arr.ndim != 2 or arr.shape[0] == 0 or not np.issubdtype(arr.dtype, np.number):
        raise InputError(f"{path}: expected a vector [D] or a matrix [N, D] of numbers, got shape {arr.shape}")
    return arr.astype(np.float32)


def from_vectors(path: str | Path, encoder: Encoder, dim: int | None = None) -> list[Target]:
    dim = feature_dim(encoder) if dim is None else dim
    arr = read_vectors(path)
    stem = _slug(Path(path).stem)
    many = arr.shape[0] > 1
    return [Target(id=f"vec-{stem}-{i}" if many else f"vec-{stem}", vector=_check_vector(v, dim, str(path)),
                   kind="vector", source=str(path), index=i if many else None) for i, v in enumerate(arr)]


def vector_target(vector: np.ndarray, target_id: str, source: str, dim: int, **extra: object) -> Target:
    """A computed target (interpolation point, perturbation) with its extra manifest keys."""
    return Target(id=_slug(target_id, 80), vector=_check_vector(vector, dim, source), kind="vector",
                  source=source, extra=dict(extra))


@dataclass(frozen=True)
class Targets:
    """``probe decode``'s target options as one value: rows of the feature store ``store`` (``group``,
    ``index`` as ``3``/``0:16``/``3,5,7`` or ints, stored image ``paths``), image files, CLIP prompts and
    raw vector files. Resolved with an encoder by :meth:`resolve`; with an encoder of None the store's own
    encoder decodes (the rule of :meth:`probe.workflows.options.EncoderOptions.resolved`)."""

    store: str | Path | None = None
    group: str | None = None
    index: str | int | Sequence[int] | None = None
    paths: Sequence[str] = ()
    images: Sequence[str | Path] = ()
    texts: Sequence[str] = ()
    vectors: Sequence[str | Path] = ()

    def __post_init__(self) -> None:
        # one value where a list is expected is a list of one (not a string's characters)
        for name in ("paths", "images", "texts", "vectors"):
            value = getattr(self, name)
            object.__setattr__(self, name, (value,) if isinstance(value, (str, Path)) else tuple(value))
        if self.index is not None and not isinstance(self.index, str):
            rows = [self.index] if isinstance(self.index, int) else list(self.index)
            object.__setattr__(self, "index", ",".join(str(int(i)) for i in rows))

    def resolve(self, encoder: Encoder) -> list[Target]:
        """Every target named, in order: store rows, images, prompts, vector files (ids made unique)."""
        return resolve_targets(encoder, store=self.store, group=self.group, index=self.index, paths=self.paths,
                               images=self.images, texts=self.texts, vectors=self.vectors)


def resolve_targets(encoder: Encoder, *, store: str | Path | None = None, group: str | None = None,
                    index: str | None = None, paths: Sequence[str] = (), images: Sequence[str | Path] = (),
                    texts: Sequence[str] = (), vectors: Sequence[str | Path] = ()) -> list[Target]:
    """Every target the options name, in order: store rows, images, prompts, vector files."""
    if (index is not None or paths or group is not None) and store is None:
        raise UsageError("--index, --path and --group select rows of a store: give it with --from FILE")
    targets: list[Target] = []
    if store is not None:
        targets += from_store(store, encoder, group, index, paths)
    targets += [from_image(p, encoder) for p in images]
    targets += [from_text(t, encoder) for t in texts]
    dim = feature_dim(encoder) if vectors else None
    for v in vectors:
        targets += from_vectors(v, encoder, dim)
    if not targets:
        raise UsageError("nothing to decode: give --from FILE --index I, --image FILE, --text PROMPT "
                         "or --vector FILE")
    return unique_ids(targets)


# -- endpoints: one decode target written as one string (probe interpolate's A and B, the API) ---------------
STORE_SUFFIXES = (".h5", ".hdf5", ".hdf")
VECTOR_SUFFIXES = (".npy", ".txt", ".csv")

ENDPOINT_HELP = ("STORE.h5:ROW (a row of a feature store, by index or stored path; --group picks the group), "
                 "image:PATH or a plain image path, text:PROMPT (CLIP encoders), vector:PATH (.npy/.txt "
                 "holding one vector, or vector:PATH:ROW)")


# -- endpoints -------------------------------------------------------------------------------------------
def split_store_ref(text: str) -> tuple[Path, str] | None:
    """``F.h5:3`` / ``store:F.h5:3`` / ``F.h5:/data/x.png`` -> (F.h5, '3'); None for other forms."""
    body = text[len("store:"):] if text.startswith("store:") else text
    low = body.lower()
    for suffix in STORE_SUFFIXES:
        pos = low.find(suffix + ":")
        if pos > 0:
            return Path(body[:pos + len(suffix)]), body[pos + len(suffix) + 1:]
    if text.startswith("store:") or low.endswith(STORE_SUFFIXES):
        raise UsageError(f"{text!r}: name the row of the store, e.g. {body.split(':')[0]}:0 (index) or "
                         f"{body.split(':')[0]}:/path/of/image.png")
    return None


def _vector_endpoint(ref: str, encoder, name: str) -> Target:
    path, row = Path(ref), None
    if not path.is_file() and ":" in ref:
        head, tail = ref.rsplit(":", 1)
        if tail.lstrip("-").isdigit():
            path, row = Path(head), int(tail)
    arr = read_vectors(path)
    if row is None:
        if arr.shape[0] != 1:
            raise UsageError(f"{name}: {path} holds {arr.shape[0]} vectors; pick one with vector:{path}:ROW")
        row = 0
    if not -arr.shape[0] <= row < arr.shape[0]:
        raise UsageError(f"{name}: {path} has {arr.shape[0]} vectors, no row {row}")
    row %= arr.shape[0]
    t = vector_target(arr[row], f"vec-{path.stem}", str(path), feature_dim(encoder))
    t.index = row if arr.shape[0] > 1 else None
    return t


def parse_endpoint(text: str, encoder, group: str | None = None, name: str = "A") -> Target:
    """One decode target from one string (see ``ENDPOINT_HELP``); ``name`` prefixes error messages."""
    text = str(text).strip()
    if not text:
        raise UsageError(f"{name}: empty target")
    ref = split_store_ref(text)
    if ref is not None:
        path, row = ref
        if not path.is_file():
            raise InputError(f"{name}: {path}: feature store not found")
        if row.lstrip("-").isdigit():
            found = from_store(path, encoder, group, index=row)
        elif ":" in row or "," in row:
            raise UsageError(f"{name}: {text!r} names several rows; an endpoint is one row")
        else:
            found = from_store(path, encoder, group, paths=[row])
        return found[0]
    kind, sep, rest = text.partition(":")
    if sep and kind == "text":
        return from_text(rest, encoder)
    if sep and kind == "image":
        return from_image(rest, encoder)
    if sep and kind == "vector":
        return _vector_endpoint(rest, encoder, name)
    path = Path(text)
    if path.suffix.lower() in VECTOR_SUFFIXES:
        return _vector_endpoint(text, encoder, name)
    if path.is_file():
        return from_image(path, encoder)
    raise UsageError(f"{name}: cannot read target {text!r}: no such file; use {ENDPOINT_HELP}")
