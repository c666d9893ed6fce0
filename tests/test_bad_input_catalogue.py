"""The bad-input catalogue: every command against broken, hostile or misused inputs.

Each case is (command line, expected exit code, fragment of the one error line). The README's table is
the contract: 2 = misuse (options, specs, layers, groups, targets that do not fit), 3 = bad input data
(unreadable, corrupt, hostile or unwritable files). Every case must end with exactly one ``error:`` line
on stderr and no traceback. Fixtures are tiny (timm's test_resnet, a 16-px random DDPM) and every case
fails before any slow work, so the whole catalogue runs in seconds per case.
"""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

from tests.run_folders import write_run_folder
from tests.tiny_diffusion import save_pixel_prior

GROUP = "timm_test_resnet/embedding"


def _png_claiming(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


@pytest.fixture(scope="module")
def cat(tmp_path_factory, small_images, tiny_ckpt) -> dict[str, Path]:
    """Every fixture file of the catalogue, made once."""
    from click.testing import CliRunner

    from probe.cli.main import cli

    root = tmp_path_factory.mktemp("catalogue")
    f: dict[str, Path] = {"root": root, "ckpt": tiny_ckpt, "img": small_images[0], "img_new": small_images[5]}
    f["store"] = root / "store.h5"
    r = CliRunner().invoke(cli, ["-q", "extract", *map(str, small_images[:3]), "-o", str(f["store"]), "-m",
                                 "timm:test_resnet", "--weights", str(tiny_ckpt), "--device", "cpu",
                                 "--workers", "0"])
    assert r.exit_code == 0, r.output
    f["prior"] = save_pixel_prior(root / "prior")
    f["junk_h5"] = root / "junk.h5"
    f["junk_h5"].write_bytes(b"not hdf5 at all " * 64)
    f["a_dir"] = root / "a_dir"
    f["a_dir"].mkdir()
    f["no_paths"] = root / "no_paths.h5"
    with h5py.File(f["no_paths"], "w") as h:
        h.create_dataset("m/emb/features", data=np.ones((3, 96), np.float32))
    f["bad_imgs"] = root / "bad_imgs"
    f["bad_imgs"].mkdir()
    f["truncated"] = f["bad_imgs"] / "truncated.png"
    f["truncated"].write_bytes(small_images[4].read_bytes()[:300])
    f["fake"] = f["bad_imgs"] / "fake.png"
    f["fake"].write_text("not an image\n")
    f["bomb"] = root / "bomb.png"
    f["bomb"].write_bytes(_png_claiming(100_000, 100_000))
    f["binary_list"] = small_images[2]
    f["list_missing"] = root / "list_missing.txt"
    f["list_missing"].write_text(str(root / "nope.png") + "\n")
    f["latin1"] = root / "prompts.txt"
    f["latin1"].write_bytes("caf\xe9 au lait\n".encode("latin-1"))
    f["text_weights"] = root / "weights.pth"
    f["text_weights"].write_text("these are not weights")
    f["nan_vec"] = root / "nan.npy"
    np.save(f["nan_vec"], np.full(96, np.nan, np.float32))
    f["obj_vec"] = root / "obj.npy"
    np.save(f["obj_vec"], np.array([{"x": 1}], dtype=object), allow_pickle=True)
    f["short_vec"] = root / "short.npy"
    np.save(f["short_vec"], np.ones(5, np.float32))
    f["a_file"] = root / "a_file.txt"
    f["a_file"].write_text("x")
    # decode-like run folders for compare
    for name, image in (("outside", "../../../../etc/hostname"), ("absolute", "/etc/hostname")):
        d = root / name
        (d / "images").mkdir(parents=True)
        (d / "baseline").mkdir()
        Image.open(small_images[0]).save(d / "baseline" / "s00.png")
        (d / "manifest.jsonl").write_text(json.dumps({"target_id": "t", "sample": 0, "image": image}) + "\n")
        f[name] = d
    good = write_run_folder(root / "good_run", small_images)
    f["good_run"] = good
    bad = root / "badjson"
    bad.mkdir()
    (bad / "manifest.jsonl").write_text("{not json\n")
    f["badjson"] = bad
    # issue 22: zero-byte vector, stores naming code, a brace pattern of 10^9 names
    f["empty_npy"] = root / "empty.npy"
    f["empty_npy"].write_bytes(b"")
    for name, spec, weights in (("ts_store", "torchscript:" + str(root / "evil.pt"), None),
                                ("hf_store", "timm:hf-hub:evil/net", None),
                                ("pickle_store", "timm:test_resnet", str(tiny_ckpt))):
        f[name] = root / f"{name}.h5"
        with h5py.File(f[name], "w") as h:
            g = h.create_group("m/embedding")
            g.create_dataset("features", data=np.ones((2, 96), np.float32))
            g.create_dataset("paths", data=["a.png", "b.png"], dtype=h5py.string_dtype())
            g.create_dataset("sha256", data=[b"0" * 64] * 2, dtype="S64")
            g.attrs.update({"model_spec": spec, "layer": "embedding", **({"weights": weights} if weights else {})})
    return f


ENC = ["-m", "timm:test_resnet", "--weights", "{ckpt}", "--device", "cpu"]
DEC = ["--prior", "{prior}", *ENC, "--steps", "2", "-n", "1", "--no-baseline"]

# (id, argv with {fixture} placeholders, exit code, fragment of the error line)
CASES = [
    # ---- extract
    ("extract-nothing", ["extract", "-o", "{root}/x.h5"], 2, "give images"),
    ("extract-batch-0", ["extract", "{img}", "-o", "{root}/x.h5", "--batch-size", "0"], 2, "--batch-size"),
    ("extract-workers-neg", ["extract", "{img}", "-o", "{root}/x.h5", "--workers", "-1"], 2, "--workers"),
    ("extract-max-pixels-neg", ["extract", "{img}", "-o", "{root}/x.h5", "--max-pixels", "-1"], 2, "--max-pixels"),
    ("extract-device-bogus", ["extract", "{img}", "-o", "{root}/x.h5", "--device", "bogus"], 2, "not a device"),
    ("extract-device-no-cuda", ["extract", "{img}", "-o", "{root}/x.h5", "--device", "cuda:7"], 2,
     "no such CUDA device"),
    ("extract-spec-unknown", ["extract", "{img}", "-o", "{root}/x.h5", "-m", "nope:x"], 2, "unknown model spec"),
    ("extract-timm-unknown", ["extract", "{img}", "-o", "{root}/x.h5", "-m", "timm:no_such_net", "--weights",
                              "random"], 2, "timm has no model"),
    ("extract-layer-unknown", ["extract", "{img}", "-o", "{root}/x.h5", *ENC, "--layer", "no.such.layer"], 2,
     "no.such.layer"),
    ("extract-missing-input", ["extract", "{root}/nope.png", "-o", "{root}/x.h5", *ENC], 3, "no such file"),
    ("extract-binary-list", ["extract", "--list", "{binary_list}", "-o", "{root}/x.h5", *ENC], 3,
     "not a text list of paths"),
    ("extract-list-dir", ["extract", "--list", "{a_dir}", "-o", "{root}/x.h5", *ENC], 3, "is a directory"),
    ("extract-list-entry-missing", ["extract", "--list", "{list_missing}", "-o", "{root}/x.h5", *ENC], 3,
     "no such file"),
    ("extract-all-bad", ["extract", "{bad_imgs}", "-o", "{root}/x.h5", *ENC, "--workers", "0"], 3,
     "nothing extracted"),
    ("extract-only-bomb", ["extract", "{bomb}", "-o", "{root}/x.h5", *ENC, "--workers", "0"], 3,
     "nothing extracted"),
    ("extract-out-dir", ["extract", "{img}", "-o", "{a_dir}", *ENC], 2, "is a directory"),
    ("extract-out-junk", ["extract", "{img}", "-o", "{junk_h5}", *ENC, "--workers", "0"], 3,
     "not a readable HDF5 feature store"),
    ("extract-weights-missing", ["extract", "{img}", "-o", "{root}/x.h5", "-m", "timm:test_resnet", "--weights",
                                 "{root}/nope.pth", "--device", "cpu"], 3, "weights file not found"),
    ("extract-weights-text", ["extract", "{img}", "-o", "{root}/x.h5", "-m", "timm:test_resnet", "--weights",
                              "{text_weights}", "--device", "cpu"], 3, "cannot read weights"),
    ("extract-weights-bundled", ["extract", "{img}", "-o", "{root}/x.h5", "--weights", "{ckpt}"], 2,
     "--weights applies to"),
    ("extract-text-file-latin1", ["extract", "--text-file", "{latin1}", "-o", "{root}/x.h5", *ENC], 3,
     "not a UTF-8 text file"),
    ("extract-text-not-clip", ["extract", "--text", "a cat", "-o", "{root}/x.h5", *ENC], 2, "not a CLIP model"),
    ("extract-other-weights", ["extract", "{img_new}", "-o", "{store}", "-m", "timm:test_resnet", "--weights",
                               "random", "--device", "cpu", "--workers", "0"], 2, "was made with weights="),
    # ---- info / export
    ("info-missing", ["info", "{root}/nope.h5"], 3, "feature store not found"),
    ("info-junk", ["info", "{junk_h5}"], 3, "not a readable HDF5 feature store"),
    ("info-dir", ["info", "{a_dir}"], 3, "it is a directory"),
    ("info-group-without-paths", ["info", "{no_paths}"], 3, "not a probe feature group (no paths dataset)"),
    ("export-group-unknown", ["export", "{store}", "--group", "nope", "-o", "{root}/x.npy"], 2, "no group"),
    ("export-out-dir", ["export", "{store}", "-o", "{a_dir}"], 2, "is a directory"),
    ("export-group-without-paths", ["export", "{no_paths}", "-o", "{root}/y.npy"], 3, "no paths dataset"),
    # ---- models
    ("models-layers-unknown-spec", ["models", "layers", "nope:x"], 2, "unknown model spec"),
    ("models-layers-weights-missing", ["models", "layers", "timm:test_resnet", "--weights", "{root}/nope.pth"],
     3, "weights file not found"),
    # ---- decode
    ("decode-no-target", ["decode", *DEC, "-o", "{root}/d1"], 2, ""),
    ("decode-index-out-of-range", ["decode", *DEC, "--from", "{store}", "--index", "99", "-o", "{root}/d2"], 2,
     "out of range"),
    ("decode-index-garbage", ["decode", *DEC, "--from", "{store}", "--index", "x:y", "-o", "{root}/d3"], 2,
     "cannot read index"),
    ("decode-store-junk", ["decode", *DEC, "--from", "{junk_h5}", "--index", "0", "-o", "{root}/d4"], 3,
     "not a readable HDF5"),
    ("decode-store-without-paths", ["decode", *DEC, "--from", "{no_paths}", "--index", "0", "-o", "{root}/d5"],
     3, "no paths dataset"),
    ("decode-vector-nan", ["decode", *DEC, "--vector", "{nan_vec}", "-o", "{root}/d6"], 3, "NaN"),
    ("decode-vector-pickle", ["decode", *DEC, "--vector", "{obj_vec}", "-o", "{root}/d7"], 3, "obj.npy"),
    ("decode-vector-dims", ["decode", *DEC, "--vector", "{short_vec}", "-o", "{root}/d8"], 2, "dimensions"),
    ("decode-image-truncated", ["decode", *DEC, "--image", "{truncated}", "-o", "{root}/d9"], 3,
     "truncated.png: unreadable image"),
    ("decode-image-bomb", ["decode", *DEC, "--image", "{bomb}", "-o", "{root}/d10"], 3, "image too large"),
    ("decode-image-fake", ["decode", *DEC, "--image", "{fake}", "-o", "{root}/d11"], 3, "not an image file"),
    ("decode-out-is-file", ["decode", *DEC, "--image", "{img}", "-o", "{a_file}"], 2, ""),
    ("decode-out-unwritable", ["decode", *DEC, "--image", "{img}", "-o", "/proc/probe-cannot-write"], 3,
     "/proc/probe-cannot-write"),
    ("decode-batch-0", ["decode", *DEC, "--image", "{img}", "--batch-size", "0", "-o", "{root}/d12"], 2,
     "--batch-size"),
    ("decode-samples-0", ["decode", "--prior", "{prior}", *ENC, "-n", "0", "--image", "{img}", "-o", "{root}/d13"],
     2, "--samples"),
    ("decode-device-bogus", ["decode", "--prior", "{prior}", "-m", "timm:test_resnet", "--weights", "{ckpt}",
                             "--device", "bogus", "--image", "{img}", "-o", "{root}/d14"], 2, "not a device"),
    ("decode-prior-missing", ["decode", "--prior", "{root}/no_prior", *ENC, "--image", "{img}", "-o",
                              "{root}/d15"], 3, "prior directory does not exist"),
    # ---- walks
    ("interpolate-bad-endpoint", ["interpolate", "{root}/nope.h5:0", "{store}:1", *DEC, "-o", "{root}/w1"], 3,
     "feature store not found"),
    ("interpolate-row-out-of-range", ["interpolate", "{store}:0", "{store}:99", *DEC, "-o", "{root}/w2"], 2,
     "out of range"),
    ("perturb-components-0", ["perturb", "{store}:0", "--from", "{store}", "--components", "0", *DEC, "-o",
                              "{root}/w3"], 2, ""),
    ("map-too-few-rows", ["map", "{store}", "--method", "umap", "-o", "{root}/w4"], 2, "needs at least"),
    ("map-grid-garbage", ["map", "{store}", "--method", "pca", "--grid", "axb", "-o", "{root}/w5"], 2, "--grid"),
    ("map-store-without-paths", ["map", "{no_paths}", "--method", "pca", "-o", "{root}/w6"], 3, "no paths dataset"),
    # ---- merge
    ("merge-no-shards", ["merge", "{root}/nothing.h5"], 2, "no shards to merge"),
    ("merge-junk-dir", ["merge", "{a_file}"], 2, ""),
    # ---- compare
    ("compare-missing", ["compare", "{root}/nope"], 3, "does not exist"),
    ("compare-file", ["compare", "{a_file}"], 3, "not a folder"),
    ("compare-manifest-escape", ["compare", "{outside}", "-a", "brightness", "--classifier", "none"], 3,
     "lies outside the run folder"),
    ("compare-manifest-absolute", ["compare", "{absolute}", "-a", "brightness", "--classifier", "none"], 3,
     "lies outside the run folder"),
    ("compare-manifest-json", ["compare", "{badjson}", "-a", "brightness", "--classifier", "none"], 3,
     "manifest.jsonl"),
    ("compare-chart-dir", ["compare", "{outside}", "--chart", "{a_dir}"], 2, "--chart names a directory"),
    ("compare-csv-dir", ["compare", "{outside}", "--csv", "{a_dir}"], 2, "--csv names a directory"),
    # ---- issue 22: numbers that mean nothing, sizes no machine has, empty names (exit 2, one line)
    *[(f"decode-{opt[2:]}-{val}", ["decode", *DEC, "--image", "{img}", opt, val, "-o", "{root}/n1"], 2, opt)
      for opt in ("--tau", "--x0-cap", "--max-distance", "--weight", "--weight-end", "--rescale", "--grad-blur")
      for val in ("nan", "inf")],
    ("decode-seed-2**64", ["decode", *DEC, "--image", "{img}", "--seed", str(2**64), "-o", "{root}/n2"], 2,
     "--seed"),
    ("decode-seed-negative", ["decode", *DEC, "--image", "{img}", "--seed", "-1", "-o", "{root}/n3"], 2, "--seed"),
    ("decode-candidates-1e6", ["decode", *DEC, "--image", "{img}", "--candidates", "1000000", "-o", "{root}/n4"],
     2, "--candidates"),
    ("decode-steps-1e9", ["decode", *DEC, "--image", "{img}", "--steps", "1000000000", "-o", "{root}/n5"], 2,
     "--steps"),
    ("compare-seed-2**64", ["compare", "{good_run}", "--seed", str(2**64)], 2, "--seed"),
    ("extract-layer-empty", ["extract", "{img}", "-o", "{root}/x.h5", *ENC, "--layer", ""], 2, "--layer"),
    ("decode-layer-empty", ["decode", *DEC, "--image", "{img}", "--layer", "", "-o", "{root}/n6"], 2, "--layer"),
    ("decode-vector-zero-bytes", ["decode", *DEC, "--vector", "{empty_npy}", "-o", "{root}/n7"], 3, "empty.npy"),
    ("extract-brace-1e9", ["extract", "{root}/{{0..999}}{{0..999}}{{0..999}}.png", "-o", "{root}/x.h5", *ENC], 2,
     "brace pattern"),
    # ---- issue 22: data never names code (a store's model_spec loads without -m only for weight-only families)
    ("decode-from-torchscript-store", ["decode", "--prior", "{prior}", "--device", "cpu", "--from", "{ts_store}",
                                       "--index", "0", "-o", "{root}/c1"], 2, "pass -m torchscript:"),
    ("decode-from-hf-hub-store", ["decode", "--prior", "{prior}", "--device", "cpu", "--from", "{hf_store}",
                                  "--index", "0", "-o", "{root}/c2"], 2, "pass -m timm:hf-hub:"),
    ("decode-from-pickle-weights-store", ["decode", "--prior", "{prior}", "--device", "cpu", "--from",
                                          "{pickle_store}", "--index", "0", "-o", "{root}/c3"], 2,
     "pickle checkpoint"),
    ("compare-attribute-unknown", ["compare", "{good_run}", "-a", "no_such_attribute"], 2, "no_such_attribute"),
]


@pytest.mark.parametrize("argv,code,fragment", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_catalogue(cat, run_cli, argv, code, fragment):
    args = [a.format(**{k: str(v) for k, v in cat.items()}) for a in argv]
    r = run_cli(*args)
    assert r.exit_code == code, f"exit {r.exit_code}, expected {code}\n{r.output}"
    assert "Traceback" not in r.output
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith(("error:", "Error:"))]
    assert len(errors) == 1, r.stderr
    assert fragment in r.stderr, r.stderr


def test_catalogue_covers_every_command():
    from probe.cli.main import COMMANDS

    used = {c[1][0] for c in CASES}
    assert set(COMMANDS) <= used, set(COMMANDS) - used
