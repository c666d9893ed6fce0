"""The decode pipeline shared by ``probe decode``, ``interpolate``, ``perturb`` and ``map --grid``.

Targets × samples are decoded in batches by the guided sampler; everything is written into one output
directory (docs/contracts.md, "Decode output directory")::

    OUT/manifest.jsonl                         one JSON record per decoded sample (probe.manifest), per batch
    OUT/images/metadata.jsonl                  the same records for Hugging Face datasets' imagefolder
    OUT/images/{target_id}_s{sample:02d}.png   best image (smallest distance) — the result
    OUT/final/{target_id}_s{sample:02d}.png    final sample of the chain
    OUT/baseline/s{sample:02d}.png             unguided sample of the same prior and seed
    OUT/features.h5                            the best images' features (FeatureStore, kind=decoded)
    OUT/contact_sheet.png                      targets × samples with distances, plus the baseline row
    OUT/targets/{target_id}.png                the target's own picture, when it has one (≤ 256 px side)
    OUT/trajectory/{target_id}_s{sample:02d}.png   x̂0 every N steps (--save-trajectory N)

The manifest and the feature store are flushed after every batch, so if a later target fails (or the
run is interrupted) every earlier record stays valid and ``probe compare`` can read it. Sample ``s`` of
every target uses seed ``seed + s``: the same initial noise for all targets, which is what makes
interpolation strips and the unguided baseline comparable.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from probe.diffusion.priors import PRECISIONS, Prior
from probe.diffusion.sampler import SampleResult, sample, sample_stream
from probe.diffusion.schedules import AutoSchedule
from probe.distributed import Shard
from probe.errors import UsageError
from probe.hardware import native_bf16
from probe.images import save_png, sha256_file, to_uint8
from probe.locking import ProbeLock
from probe.manifest import Manifest, SampleRecord, write_metadata
from probe.models.encoder import Encoder
from probe.naturalness import denoising_error, off_manifold, realism_scores, reference_errors
from probe.reference import TargetChecks, target_checks
from probe.rundir import RunDir
from probe.seed_pool import check_pool_size
from probe.starts import chain_starts, start_at_hand
from probe.targets import CONTENT_HASH_KEYS, Target, encode_images01
from probe.workflows.decode.merge import (
    canonical,
    decode_shard_dir,
    decode_shard_root,
    decode_sources,
    merge_decodes,
    read_records,
    write_decode_dir,
)
from probe.workflows.decode.sheet import write_contact_sheet
from probe.workflows.options import DecodeSettings

#: Longest side of the target picture copied into OUT/targets/ (a copy to look at, not the data).
TARGET_IMAGE_SIDE = 256


@dataclass
class DecodeEvent:
    """Progress report: ``phase`` is 'start' (once, before any sampling: the run's plan), 'baseline', 'pool'
    (the seed pool's unguided samples drawn: ``step`` of ``n_steps``, once per prior and network) or
    'decode'; steps count within the current batch."""

    phase: str
    batch: int
    n_batches: int
    step: int
    n_steps: int
    samples_done: int
    samples_total: int
    best: list[float]
    plan: dict | None = None  # 'start' only: who decodes what, and the guided rounds at each step
    fraction: float | None = None  # 'decode': share of the run's guided evaluations done (the queue's progress)


@dataclass
class DecodeSummary:
    out: Path
    records: list[SampleRecord]
    seconds: float
    n_targets: int
    samples: int
    baseline_seconds: float = 0.0
    resumed: int = 0  # records kept from an earlier (interrupted) run into the same folder

    def to_dict(self) -> dict:
        """What ``--json`` prints: aggregate numbers plus every manifest record."""
        best = [r.best_distance for r in self.records]
        rel = [r.relative_distance for r in self.records if r.relative_distance is not None]
        return {"out": str(self.out), "manifest": str(RunDir(self.out).manifest), "targets": self.n_targets,
                "samples": self.samples, "decoded": len(self.records), "resumed": self.resumed,
                "seconds": round(self.seconds, 3),
                "baseline_seconds": round(self.baseline_seconds, 3),
                "mean_best_distance": float(np.mean(best)) if best else None,
                "mean_relative_distance": float(np.mean(rel)) if rel else None,
                "evaluations": int(sum(r.evaluations or 0 for r in self.records)),
                "records": [r.to_dict() for r in self.records]}


# -- output directory ----------------------------------------------------------------------------------
def prepare_out_dir(out: Path, overwrite: bool) -> None:
    """Check ``out`` can hold a decode; with ``overwrite`` clear what a previous run wrote. (A folder that
    holds a decode is resumed by ``decode_targets``, which refuses one made with other settings.)"""
    if out.exists() and not out.is_dir():
        raise UsageError(f"{out}: exists and is not a folder")
    if overwrite:
        for name in RunDir.DIRS:
            if (out / name).is_dir():
                shutil.rmtree(out / name)
        for name in RunDir.FILES:
            (out / name).unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)


def sample_name(target_id: str, s: int) -> str:
    return f"{target_id}_s{s:02d}.png"


class _FeatureWriter:
    """Appends decoded images' features to OUT/features.h5, one group per layer, flushed per batch."""

    def __init__(self, path: Path, encoder: Encoder):
        from probe.store import FeatureStore, group_key

        self.store = FeatureStore(path, "a")
        self.dims = [encoder.feature_dims[layer] for layer in encoder.layers]
        self.groups = [self.store.create_group(group_key(encoder.spec, layer), dim, encoder.record(), layer,
                                               kind="decoded")
                       for layer, dim in zip(encoder.layers, self.dims)]

    def append(self, feats: np.ndarray, paths: Sequence[str], hashes: Sequence[str],
               labels: Sequence[int]) -> None:
        start = 0
        for g, d in zip(self.groups, self.dims):
            g.append(feats[:, start:start + d], paths, hashes, labels)
            start += d
        self.store.flush()

    def close(self) -> None:
        self.store.close()


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    return float(np.dot(a, b) / (na * nb)) if na > 0 and nb > 0 else 0.0


# -- the pipeline --------------------------------------------------------------------------------------
def run_baseline(prior: Prior, encoder: Encoder, out: Path, settings: DecodeSettings,
                 on_event: Callable[[DecodeEvent], None] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Unguided samples for seeds seed..seed+S−1 (same timesteps and update rule as the guided run),
    saved as OUT/baseline/sNN.png; returns their features [S, D] (the reference for relative distance)
    and the images [S, C, H, W] (the reference for the realism score)."""
    cfg = settings.config.baseline()
    seeds = [settings.seed_of(s) for s in range(settings.samples)]
    per = settings.chains_per_call(prior, encoder)
    chunks = [seeds[i:i + per] for i in range(0, len(seeds), per)]
    feats, images = [], []
    done = 0
    for bi, chunk in enumerate(chunks):
        def cb(step: int, total: int, best: torch.Tensor, bi: int = bi, done: int = done) -> None:
            if on_event is not None:
                on_event(DecodeEvent("baseline", bi + 1, len(chunks), step, total, done, len(seeds), []))
        res = sample(prior, None, None, chunk, cfg, callback=cb)
        for j, img in enumerate(res.final_images):
            save_png(img, RunDir(out).baseline_image(done + j))
        feats.append(encode_images01(encoder, res.final_images))
        images.append(res.final_images)
        done += len(chunk)
    return torch.cat(feats), torch.cat(images)


def _save_trajectory(res: SampleResult, j: int, path: Path) -> None:
    from probe.render.sheets import image_grid
    from probe.render.sheets import save_png as save_sheet

    frames = [to_uint8(frames[j]) for _, frames in res.trajectory]
    captions = [[f"step {i}" for i, _ in res.trajectory]]
    save_sheet(image_grid([frames], captions=captions), path)


def save_target_images(out: Path, targets: Sequence[Target]) -> list[Target]:
    """Copy each target's picture (when it is a readable file) into ``OUT/targets/{id}.png`` and return the
    targets with ``target_image`` (relative to OUT) in their manifest extras.

    Reports built from the run folder alone (``probe compare --html``) show the target from this copy and
    never follow a path out of the folder. Pictures larger than :data:`TARGET_IMAGE_SIDE` are shrunk.
    """
    import os

    from PIL import Image

    from probe.errors import InputError
    from probe.images import fs_path, read_image01

    result = []
    for t in targets:
        src = fs_path(t.image_path) if t.image_path else None
        if src is None or not src.is_file():
            result.append(t)
            continue
        try:
            img = read_image01(src)
        except InputError:
            result.append(t)
            continue
        rel = f"targets/{t.id}.png"
        RunDir(out).targets.mkdir(parents=True, exist_ok=True)
        pic = Image.fromarray(to_uint8(img))
        pic.thumbnail((TARGET_IMAGE_SIDE, TARGET_IMAGE_SIDE), Image.Resampling.LANCZOS)
        tmp = RunDir(out).targets / f".{t.id}.{os.getpid()}.png"  # shards write the same picture: atomic replace
        pic.save(tmp)
        os.replace(tmp, out / rel)
        result.append(dataclasses.replace(t, extra={**t.extra, "target_image": rel}))
    return result


def _compatible(records: Sequence[SampleRecord], common: dict, targets: Sequence[Target], where: Path) -> None:
    """Refuse to resume a folder whose records were made by another command (one line, exit 2)."""
    now = json.loads(json.dumps(common))
    now["settings"] = {k: v for k, v in now.get("settings", {}).items() if k != "batch_size"}  # chains per call
    for rec in records:
        for key, value in now.items():
            old = getattr(rec, key)
            if key == "settings" and isinstance(old, dict):
                old = {k: v for k, v in old.items() if k != "batch_size"}
            if old != value:
                if isinstance(value, dict) and isinstance(old, dict):
                    diff = sorted(k for k in set(value) | set(old) if value.get(k) != old.get(k))
                    key, old, value = f"{key}.{diff[0]}", old.get(diff[0]), value.get(diff[0])
                raise UsageError(f"{where}: holds a decode made with {key}={old!r}, not {value!r}; rerun with "
                                 "the same settings to resume, or use --overwrite or another --out")
        ti = rec.target_index
        t = targets[ti] if ti is not None and 0 <= ti < len(targets) else None
        now_t = json.loads(json.dumps(t.record())) if t is not None else None
        for key in CONTENT_HASH_KEYS:  # a record made before targets were hashed resumes without the hash
            if now_t is not None and key not in rec.target:
                now_t.pop(key, None)
        if t is not None and t.id == rec.target_id and now_t != rec.target and \
                {k: v for k, v in now_t.items() if k not in CONTENT_HASH_KEYS} == \
                {k: v for k, v in rec.target.items() if k not in CONTENT_HASH_KEYS}:
            raise UsageError(f"{where}: holds a decode of other targets (target {ti} {rec.target_id!r}, "
                             f"{t.source}: its content changed since); rerun with the same targets to resume, "
                             "or use --overwrite or another --out")
        if t is None or t.id != rec.target_id or now_t != rec.target:
            raise UsageError(f"{where}: holds a decode of other targets (target {ti} was {rec.target_id!r}); "
                             "rerun with the same targets to resume, or use --overwrite or another --out")


def _drop_unrecorded_rows(path: Path, keep: set[str]) -> None:
    """features.h5 rows whose image has no manifest record (a kill between the two writes) are removed."""
    from probe.store import FeatureStore

    if not path.is_file():
        return
    with FeatureStore(path, "a") as st:
        for name in st.group_names():
            g = st.group(name)
            paths = g.paths
            mask = np.array([p in keep for p in paths], dtype=bool)
            if mask.all():
                continue
            g.keep_rows(np.flatnonzero(mask))
        st.flush()


def _clear_for_overwrite(out: Path, work: Path, shard: Shard) -> None:
    """--overwrite: remove OUT's merged outputs, shard folders of other splits, and this shard's folder."""
    for name in RunDir.DIRS:
        shutil.rmtree(out / name, ignore_errors=True)
    for name in RunDir.FILES:
        (out / name).unlink(missing_ok=True)
    root = decode_shard_root(out)
    if root.is_dir():
        for d in root.iterdir():
            if d == work:  # this shard's folder: everything but the lock this process holds
                for f in d.iterdir():
                    if f.is_dir():
                        shutil.rmtree(f, ignore_errors=True)
                    elif f != RunDir(d).lock:
                        f.unlink(missing_ok=True)
            elif shard.single or not d.name.endswith(f"-of-{shard.count:05d}"):  # other splits' leftovers
                shutil.rmtree(d, ignore_errors=True)


def resolve_schedule(settings: DecodeSettings, prior: Prior, out: Path) -> DecodeSettings:
    """``settings`` with a rule schedule (``auto``, ``fast``) replaced by the preset it picks for ``prior``
    (:class:`~probe.diffusion.schedules.AutoSchedule`): the one a folder being resumed was decoded with,
    else the first whose start is at hand (``probe.starts.start_at_hand``), else the last."""
    auto = settings.config
    if not isinstance(auto, AutoSchedule):
        return settings
    earlier = [] if settings.overwrite or not out.is_dir() else \
        [r.settings.get("name") for src in decode_sources(out) for r in read_records(src)[:1]]
    config = (auto.named(earlier[0]) if earlier else None) or auto.pick(lambda c: start_at_hand(prior, c))
    return dataclasses.replace(settings, config=config)


def decode_targets(prior: Prior, encoder: Encoder, targets: Sequence[Target], out: str | Path,
                   settings: DecodeSettings | None = None,
                   on_event: Callable[[DecodeEvent], None] | None = None,
                   extra_record: dict | None = None, shard: Shard | None = None,
                   on_warning: Callable[[str], None] | None = None) -> DecodeSummary:
    """Decode every target ``settings.samples`` times into ``out`` (see the module docstring).

    A folder that already holds records of the same command is resumed: finished (target, sample) pairs
    are kept and the batches holding the rest are decoded again as they were formed in the first run
    (so every image is the one an uninterrupted run gives); other settings or targets are refused.
    With ``shard`` (i/N, N > 1) only batches b with b mod N = i are decoded, into OUT/shards/i-of-N/;
    ``probe.workflows.decode.merge.merge_decodes`` joins the shards. OUT is locked against a second writer.
    """
    settings = settings or DecodeSettings()
    if on_event is None and (settings.progress or (settings.progress is None and _interactive())):
        with _ApiProgress() as bar:  # the Python API's bar (the CLI passes its own on_event)
            return decode_targets(prior, encoder, targets, out, dataclasses.replace(settings, progress=False),
                                  bar, extra_record, shard, on_warning)
    shard = shard or Shard()
    out = Path(out)
    rule = settings.config.name if isinstance(settings.config, AutoSchedule) else None
    settings = resolve_schedule(settings, prior, out)
    targets = list(targets)
    if not targets:
        raise UsageError("nothing to decode: no targets")
    if len({t.id for t in targets}) != len(targets):
        raise UsageError("target ids must be unique (they name the output files)")
    if prior.device != encoder.device:
        raise UsageError(f"the prior is on {prior.device} but the encoder on {encoder.device}; use one --device")
    dim = encoder.feature_dim
    for t in targets:
        if t.vector.shape != (dim,):
            raise UsageError(f"{t.source}: target has {t.vector.size} dimensions but {encoder.spec} gives {dim}")
    if settings.config.pool:  # refused now, not after the baseline
        check_pool_size(settings.config.pool, settings.samples, settings.config.chains_at(0))
    if out.exists() and not out.is_dir():
        raise UsageError(f"{out}: exists and is not a folder")
    if prior.precision == "bf16" and not native_bf16(prior.device) and on_warning is not None:
        on_warning(f"--precision bf16 on {prior.device}: it has no bf16 instructions and emulates them, about 10x "
                   "slower than fp32 (leave --precision out)")
    work = out if shard.single else decode_shard_dir(out, shard)
    work.mkdir(parents=True, exist_ok=True)
    from probe.outputs import check_writable_dir

    check_writable_dir(work)  # a read-only --out fails now, not after the first (slow) batch
    locks = [ProbeLock(out, lock_file=RunDir(out).lock, shared=not shard.single).acquire()]
    t0 = time.perf_counter()
    layer = "+".join(encoder.layers)
    run_settings = settings.to_dict()
    if prior.precision != PRECISIONS[0]:  # bf16 changes the numbers; fp32 unrecorded, so older folders resume
        run_settings["precision"] = prior.precision
    common = {"prior": prior.spec, "encoder": encoder.spec, "layer": layer, "settings": run_settings}
    # which weights the encoder ran with, for compare's circularity check; kept out of ``common`` so folders
    # decoded before these keys existed still resume
    identity = {"encoder_weights": encoder.weights or "", "encoder_weights_sha256": encoder.weights_sha256}
    schedule_name = f"{rule}: {settings.config.name}" if rule and rule != settings.config.name \
        else settings.config.name
    title = f"{encoder.spec} [{layer}] <- {prior.spec} ({schedule_name})"
    try:
        if not shard.single:
            locks.append(ProbeLock(work, lock_file=RunDir(work).lock).acquire())
        if settings.overwrite:
            _clear_for_overwrite(out, work, shard)
            work.mkdir(parents=True, exist_ok=True)
        own = read_records(work, repair=True)
        old = list(own)
        for src in decode_sources(out):
            if src != work:
                old += read_records(src)
        _compatible(old, common, targets, out)
        done = {r.cell for r in old}
        _drop_unrecorded_rows(RunDir(work).features, {r.image for r in own})
        targets = save_target_images(out, targets)

        jobs = [(ti, s) for ti in range(len(targets)) for s in range(settings.samples)]
        per = settings.samples_per_batch
        grid = [jobs[i:i + per] for i in range(0, len(jobs), per)]
        batches = [b for i, b in enumerate(grid) if shard.owns(i)
                   and any((targets[ti].id, s) not in done for ti, s in b)]
        if on_event is not None:
            n_steps = len(settings.config.timesteps(prior.num_train_timesteps))
            plan = {"encoder": encoder.spec, "layers": list(encoder.layers), "device": str(encoder.device),
                    "prior": prior.spec, "targets": len(targets), "samples": settings.samples,
                    "schedule": schedule_name,
                    "evaluations": settings.config.evaluations(prior.num_train_timesteps),
                    "step_evaluations": [settings.config.rounds_at(i, n_steps) * settings.config.chains_at(i)
                                         for i in range(n_steps)], "out": str(out),
                    "baseline_batches": -(-settings.samples // settings.chains_per_call(prior, encoder))
                    if settings.baseline and batches else 0}
            on_event(DecodeEvent("start", 0, len(batches), 0, n_steps, 0, sum(map(len, batches)), [], plan))
        base_feats = None
        base_seconds = 0.0
        reference_error = np.zeros(0)
        if settings.baseline and batches:
            base_feats, base_images = run_baseline(prior, encoder, work, settings, on_event)
            base_feats = base_feats.numpy()
            if settings.realism:
                reference_error = denoising_error(prior, base_images)
            base_seconds = time.perf_counter() - t0
        if settings.realism and batches:  # the run's own unguided samples and 32 fixed ones (cached)
            reference_error = np.concatenate([reference_error, reference_errors(
                prior, settings.config.baseline(), batch=settings.chains_per_call(prior, encoder))])
        checks = target_checks(prior.spec, encoder, targets, on_warning) if settings.realism and batches else None
        manifest = Manifest(RunDir(work).manifest)
        writer = _FeatureWriter(RunDir(work).features, encoder) if batches else None
        try:
            # one queue over every sample still to decode: chains of the next samples enter as others finish
            # their layout stage or stop, so each network call holds up to chains_per_call chains; a sample
            # is written (image, features, manifest record) as soon as it is finished
            pending = [(ti, s) for batch in batches for ti, s in batch if (targets[ti].id, s) not in done]
            if pending:
                vectors = torch.from_numpy(np.stack([targets[ti].vector for ti, _ in pending]))
                seeds = [settings.seed_of(s) for _, s in pending]
                n_written = [0]

                def pool_cb(done: int, total: int) -> None:
                    if on_event is not None:
                        on_event(DecodeEvent("pool", 1, 1, done, total, 0, len(pending), []))
                # with a seed pool the candidates start from the prior's samples closest to each target, with a
                # data start from its training images
                starts = chain_starts(prior, encoder, settings.config, vectors.numpy(), [s for _, s in pending],
                                      settings.samples, settings.chains_per_call(prior, encoder), pool_cb)

                cfg = settings.config  # progress: the share of a sample's evaluations done after each step
                n_steps = len(cfg.timesteps(prior.num_train_timesteps))
                cum = list(itertools.accumulate(cfg.rounds_at(i, n_steps) * cfg.chains_at(i) for i in range(n_steps)))

                def cb(step: int, total: int, best: torch.Tensor) -> None:
                    if on_event is not None:
                        on_event(DecodeEvent("decode", 1, 1, step, total, n_written[0], len(pending), best.tolist(),
                                             fraction=cum[step - 1] / cum[-1] if step else 0.0))
                for j, res in sample_stream(prior, encoder, vectors, seeds, settings.config,
                                            trajectory_every=settings.trajectory_every, callback=cb,
                                            max_chains=settings.chains_per_call(prior, encoder),
                                            **starts.sampler_kwargs()):
                    realism = realism_scores(denoising_error(prior, res.best_images), reference_error) \
                        if settings.realism else np.full(1, np.nan)
                    manifest.append(_write_batch(work, res, [pending[j]], targets, encoder, base_feats, settings,
                                                 common, {**identity, **(extra_record or {}), **starts.record(j)},
                                                 writer,
                                                 float(res.seconds), realism, checks=checks))
                    n_written[0] += 1
        finally:
            if writer is not None:
                writer.close()
            records = manifest.records
            if shard.single:
                everything = canonical(old + records)
                if len(decode_sources(out)) > 1:  # shards left by an earlier split run: join them now
                    everything = merge_decodes(out, sheet=False, locked=True, on_warning=on_warning)
                elif [r.cell for r in own + records] != [r.cell for r in everything]:
                    write_decode_dir(out, everything, [out])
                if settings.sheet and everything and (records or not RunDir(out).sheet.exists()):
                    write_contact_sheet(out, everything, targets, settings.samples, settings.seed, title)
                if everything:
                    write_metadata(out, everything)
            else:
                everything = canonical(own + records)
    finally:
        for lk in reversed(locks):
            lk.release()
    return DecodeSummary(out=out, records=everything,
                         seconds=time.perf_counter() - t0, n_targets=len(targets),
                         samples=settings.samples, baseline_seconds=base_seconds,
                         resumed=len(everything) - len(records))


def _interactive() -> bool:
    """A terminal on stderr or a notebook kernel: where a progress bar is shown by default."""
    import sys

    return "ipykernel" in sys.modules or bool(getattr(sys.stderr, "isatty", lambda: False)())


class _ApiProgress:
    """A rich progress bar fed by :class:`DecodeEvent`s: guided evaluations done, best distance so far."""

    def __enter__(self) -> _ApiProgress:
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        self._bar = Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
                             TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[extra]}"))
        self._bar.start()
        self._task = None
        self._best = None
        return self

    def __exit__(self, *exc: object) -> None:
        self._bar.stop()

    def __call__(self, ev: DecodeEvent) -> None:
        if ev.phase == "start":
            p = ev.plan or {}
            self._work = list(itertools.accumulate(p["step_evaluations"]))
            self._base, self._n_steps, self._n_batches = p["baseline_batches"], ev.n_steps, ev.n_batches
            total = self._base * ev.n_steps + ev.n_batches * self._work[-1]
            self._task = self._bar.add_task("decode", total=max(total, 1), extra="")
            return
        if self._task is None:
            return
        if ev.phase == "baseline":
            self._bar.update(self._task, completed=(ev.batch - 1) * self._n_steps + ev.step,
                             description="unguided baseline")
            return
        if ev.phase == "pool":
            self._bar.update(self._task, description=f"seed pool {ev.step}/{ev.n_steps}")
            return
        finite = [d for d in ev.best if d == d and d != float("inf")]
        if finite:
            self._best = min(finite + ([self._best] if self._best is not None else []))
        frac = ev.fraction if ev.fraction is not None else ev.step / max(ev.n_steps, 1)
        self._bar.update(self._task, completed=self._base * self._n_steps + frac * self._n_batches * self._work[-1],
                         description="decode", extra=f"{ev.samples_done}/{ev.samples_total} samples"
                         + (f", best d {self._best:.4g}" if self._best is not None else ""))


def _select(res: SampleResult, idx: Sequence[int]) -> SampleResult:
    """The chains ``idx`` of a batch's result (all of them: the result itself)."""
    if list(idx) == list(range(len(res.seeds))):
        return res
    pick = torch.as_tensor(list(idx), dtype=torch.long)
    tensors = {f.name: getattr(res, f.name)[pick] for f in dataclasses.fields(res)
               if isinstance(getattr(res, f.name), torch.Tensor)}
    return dataclasses.replace(res, **tensors, seeds=[res.seeds[j] for j in idx],
                               trajectory=[(step, frames[pick]) for step, frames in res.trajectory])


def _write_batch(out: Path, res: SampleResult, batch: list[tuple[int, int]], targets: Sequence[Target],
                 encoder: Encoder, base_feats: np.ndarray | None, settings: DecodeSettings, common: dict,
                 extra: dict, writer: _FeatureWriter, seconds: float, realism: np.ndarray,
                 todo: Sequence[int] | None = None, checks: TargetChecks | None = None) -> list[SampleRecord]:
    """Save one batch's images, then its features, then return its manifest records — in that order,
    so a record only ever points at files that exist. ``realism`` is each best image's realism score
    (probe.naturalness; NaN when there is no unguided reference). Only members ``todo`` (default all)
    are written: a resumed batch is decoded whole, as it was formed, but its finished pairs are kept."""
    todo = list(range(len(batch))) if todo is None else list(todo)
    res = _select(res, todo)
    batch = [batch[j] for j in todo]
    realism = np.asarray(realism)[todo]
    flagged = off_manifold(realism, settings.off_manifold_threshold)
    rel_paths = []
    for j, (ti, s) in enumerate(batch):
        name = sample_name(targets[ti].id, s)
        save_png(res.best_images[j], RunDir(out).images / name)
        save_png(res.final_images[j], RunDir(out).final / name)
        if settings.trajectory_every and res.trajectory:
            _save_trajectory(res, j, RunDir(out).trajectory / name)
        rel_paths.append(name)
    feats = encode_images01(encoder, res.best_images).numpy()
    labels = [targets[ti].label if isinstance(targets[ti].label, int) else -1 for ti, _ in batch]
    writer.append(feats, [f"images/{n}" for n in rel_paths],
                  [sha256_file(RunDir(out).images / n) for n in rel_paths], labels)
    records = []
    for j, (ti, s) in enumerate(batch):
        t = targets[ti]
        best, final = float(res.best_distance[j]), float(res.final_distance[j])
        base = float(((base_feats[s] - t.vector) ** 2).sum()) if base_feats is not None else None
        records.append(SampleRecord(
            target_id=t.id, target_index=ti, sample=s, seed=settings.seed_of(s),
            image=f"images/{rel_paths[j]}", final_image=f"final/{rel_paths[j]}",
            baseline_image=f"baseline/s{s:02d}.png" if base is not None else None,
            best_distance=best, final_distance=final, baseline_distance=base,
            relative_distance=best / base if base else None,
            cosine=_cosine(feats[j], t.vector),
            naturalness=float(realism[j]) if np.isfinite(realism[j]) else None,
            off_manifold=bool(flagged[j]) if np.isfinite(realism[j]) else None,
            **(checks.fields(ti, best) if checks is not None else {}),
            best_step=int(res.best_step[j]), best_timestep=int(res.best_timestep[j]),
            stopped_step=int(res.stopped_step[j]), steps=len(res.timesteps),
            candidate=int(res.candidate[j]) if settings.config.chains_at(0) > 1 else None,
            noise_seed=int(res.noise_seed[j]) if settings.config.pool and res.noise_seed is not None else None,
            evaluations=int(res.evaluations[j]), skipped_steps=int(res.skipped[j]),
            seconds=seconds / len(batch), batch_seconds=seconds,
            trajectory_image=f"trajectory/{rel_paths[j]}" if settings.trajectory_every else None,
            target=t.record(),
        ).with_keys({**common, **extra, **t.extra}))
    return records
