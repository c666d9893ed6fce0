"""Weights are identified by their file's sha256, not by the path string of the checkpoint."""

from __future__ import annotations

import shutil

import pytest

from probe.store import FeatureStore, weights_mismatch

GROUP = "timm_test_resnet/embedding"


def _extract(run_cli, images, store, weights, *extra):
    return run_cli("extract", *images, "-o", store, "-m", "timm:test_resnet", "--weights", weights,
                   "--device", "cpu", "--workers", "0", *extra)


def test_replaced_weights_at_same_path_refused_moved_weights_accepted(run_cli, tmp_path, tiny_ckpt, small_images):
    import timm
    import torch

    ckpt = tmp_path / "w.pth"
    shutil.copy(tiny_ckpt, ckpt)
    store = tmp_path / "f.h5"
    assert _extract(run_cli, small_images[:2], store, ckpt).exit_code == 0
    with FeatureStore(store) as st:
        sha = st.group(GROUP).attrs["weights_sha256"]
    assert len(sha) == 64

    # the same file under another name is the same network: appended
    moved = tmp_path / "moved.pth"
    shutil.copy(ckpt, moved)
    r = _extract(run_cli, small_images[2:3], store, moved)
    assert r.exit_code == 0, r.output

    # another network written over the original path is refused, although the path string is equal
    torch.manual_seed(1)
    torch.save(timm.create_model("test_resnet", pretrained=False).state_dict(), ckpt)
    r = _extract(run_cli, small_images[3:4], store, ckpt)
    assert r.exit_code == 2
    assert f"group {GROUP} was made with weights=" in r.stderr and f"sha256 {sha[:12]}" in r.stderr
    with FeatureStore(store) as st:
        assert len(st.group(GROUP)) == 3


@pytest.mark.parametrize("stored,record,ok", [
    ({"weights": "a.pth", "weights_sha256": "1" * 64}, {"weights": "b.pth", "weights_sha256": "1" * 64}, True),
    ({"weights": "a.pth", "weights_sha256": "1" * 64}, {"weights": "a.pth", "weights_sha256": "2" * 64}, False),
    ({"weights": "a.pth"}, {"weights": "a.pth", "weights_sha256": "2" * 64}, True),  # store older than hashes
    ({"weights": "a.pth"}, {"weights": "b.pth", "weights_sha256": "2" * 64}, False),
    ({"weights": ""}, {"weights": "random", "weights_sha256": ""}, False),
])
def test_weights_mismatch_rule(stored, record, ok):
    assert (weights_mismatch(stored, record) is None) == ok
