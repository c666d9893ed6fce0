"""Labels that tar shards and parquet files carry are stored by ``probe extract`` (issue 22).

A webdataset ``key.cls`` (integer text) or ``key.json`` with a ``label``/``cls`` field labels its sample;
a parquet ``label`` column (or ``--label-column NAME``) labels its rows. A bad or out-of-range label is a
warning and label -1, never a failed run.
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import h5py
import numpy as np
import pytest

from probe.sources import MAX_LABEL, collect_sources, parse_label

GROUP = "timm_test_resnet/embedding"


@pytest.mark.parametrize("value,label,problem", [
    (3, 3, ""), ("7\n", 7, ""), (b"12", 12, ""), (4.0, 4, ""), (0, 0, ""), (MAX_LABEL, MAX_LABEL, ""),
    (-1, -1, "outside"), (MAX_LABEL + 1, -1, "outside"), (2**64, -1, "outside"), ("9" * 30, -1, "not an integer"),
    ("cat", -1, "not an integer"), ("", -1, "not an integer"), (True, -1, "not an integer"),
    (2.5, -1, "not an integer"), ([1], -1, "not an integer"), ({"a": 1}, -1, "not an integer"),
    (float("nan"), -1, "not an integer"),
])
def test_parse_label(value, label, problem):
    got, why = parse_label(value)
    assert got == label and (problem in why if problem else why == "")


def _tar(path: Path, samples: list[tuple[str, Path, dict[str, bytes]]]) -> None:
    with tarfile.open(path, "w") as tar:
        for key, image, extra in samples:
            for name, data in ((f"{key}.png", image.read_bytes()), *((f"{key}.{s}", d) for s, d in extra.items())):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


# (sidecar members, label expected, warning expected)
TAR_CASES = [
    ({"cls": b"5"}, 5, None),
    ({"json": b'{"label": 3, "caption": "x"}'}, 3, None),
    ({"json": b'{"cls": "8"}'}, 8, None),
    ({"cls": b"2", "json": b'{"label": 9}'}, 2, None),          # .cls wins
    ({"json": b'{"caption": "no label"}'}, -1, None),            # img2dataset's usual json: no label, no warning
    ({"txt": b"a caption"}, -1, None),
    ({"cls": b"dog"}, -1, "not an integer"),
    ({"cls": b"-4"}, -1, "outside"),
    ({"cls": str(2**40).encode()}, -1, "outside"),
    ({"json": b"{not json"}, -1, "not JSON"),
    ({"json": b"[" * 100000 + b"]" * 100000}, -1, "bytes"),     # over the label member bound: not parsed
    ({"json": b"[" * 5000 + b"]" * 5000}, -1, ""),                # deep but small: parsed or refused, no crash
]


def test_tar_labels_from_cls_and_json_members(run_cli, tmp_path, small_images, tiny_encoder_args):
    assert len(TAR_CASES) <= len(small_images)  # distinct images: no row skipped as a copy
    images = small_images[:len(TAR_CASES)]
    _tar(tmp_path / "s.tar", [(f"{i:04d}", img, extra) for i, (img, (extra, _, _)) in
                              enumerate(zip(images, TAR_CASES))])
    items = collect_sources([str(tmp_path / "s.tar")])
    assert [i.label for i in items] == [c[1] for c in TAR_CASES]
    r = run_cli("extract", tmp_path / "s.tar", *tiny_encoder_args, "--workers", "0", "-o", tmp_path / "s.h5",
                "--json")
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["stored"] == len(TAR_CASES)
    with h5py.File(tmp_path / "s.h5", "r") as f:
        assert list(f[GROUP]["labels"][:]) == [c[1] for c in TAR_CASES]
    for i, (_, _, warning) in enumerate(TAR_CASES):
        lines = [ln for ln in r.stderr.splitlines() if f"s.tar::{i:04d}.png" in ln]
        if warning:
            assert len(lines) == 1 and warning in lines[0] and "label stored as -1" in lines[0], r.stderr
        elif warning is None:
            assert not lines, r.stderr
    assert "Traceback" not in r.stderr


def _parquet(path: Path, images: list[Path], **columns) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"key": [f"k{i}" for i in range(len(images))], "jpg": [p.read_bytes() for p in images],
                             **columns}), path, row_group_size=2)


def test_parquet_label_column(run_cli, tmp_path, small_images, tiny_encoder_args):
    pytest.importorskip("pyarrow")
    images = small_images[:5]
    _parquet(tmp_path / "a.parquet", images, label=[1, 0, 2**40, -3, None])
    _parquet(tmp_path / "b.parquet", images, y=["4", "x", "6", "7", "8"])
    args = [*tiny_encoder_args, "--workers", "0"]
    r = run_cli("extract", tmp_path / "a.parquet", *args, "-o", tmp_path / "a.h5")
    assert r.exit_code == 0, r.stderr
    assert r.stderr.count("label stored as -1") == 2 and "Traceback" not in r.stderr
    r = run_cli("extract", tmp_path / "b.parquet", *args, "--label-column", "y", "-o", tmp_path / "b.h5")
    assert r.exit_code == 0 and r.stderr.count("label stored as -1") == 1, r.stderr
    r = run_cli("extract", tmp_path / "b.parquet", *args, "-o", tmp_path / "c.h5")  # no 'label' column: none
    assert r.exit_code == 0 and "label stored" not in r.stderr, r.stderr
    with h5py.File(tmp_path / "a.h5", "r") as fa, h5py.File(tmp_path / "b.h5", "r") as fb, \
            h5py.File(tmp_path / "c.h5", "r") as fc:
        assert list(fa[GROUP]["labels"][:]) == [1, 0, -1, -1, -1]
        assert list(fb[GROUP]["labels"][:]) == [4, -1, 6, 7, 8]
        assert (fc[GROUP]["labels"][:] == -1).all()
    r = run_cli("extract", tmp_path / "b.parquet", *args, "--label-column", "nope", "-o", tmp_path / "d.h5")
    assert r.exit_code == 2 and r.stderr.count("error:") == 1 and "no label column 'nope'" in r.stderr


def test_api_extract_returns_container_labels(tmp_path, small_images, tiny_ckpt):
    pytest.importorskip("pyarrow")
    import probe
    from probe.store import FeatureStore

    _parquet(tmp_path / "a.parquet", small_images[:3], cls=[3, 1, 4])
    enc = probe.EncoderOptions(spec="timm:test_resnet", weights=str(tiny_ckpt), device="cpu")
    probe.extract(enc, [tmp_path / "a.parquet"], out=tmp_path / "a.h5", label_column="cls", workers=0)
    with FeatureStore(tmp_path / "a.h5", "r") as st:
        np.testing.assert_array_equal(st.group(GROUP).labels, [3, 1, 4])
