"""The API's inputs are validated like the CLI's (issue 22): a dtype the store cannot hold, NaN or 0-255
image tensors, a CUDA device that is not there, NaN sampler settings -- each a UsageError before any work,
never zeros stored or NaN encoded. float16 overflow is written but warned about."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from probe.errors import ProbeWarning, UsageError

X = torch.rand(1, 3, 32, 32)

CASES = [
    ("dtype-int8", dict(inputs=X, dtype="int8"), "dtype must be one of"),
    ("dtype-float64", dict(inputs=X, dtype="float64"), "dtype must be one of"),
    ("tensor-nan", dict(inputs=torch.full((1, 3, 32, 32), float("nan"))), "NaN"),
    ("tensor-0-255", dict(inputs=X * 255), "0-255"),
    ("tensor-uint8", dict(inputs=(X * 255).to(torch.uint8)), "must be float"),
    ("tensor-2d", dict(inputs=torch.rand(32, 32)), "expected images"),
    ("batch-0", dict(inputs=X, batch_size=0), "batch_size"),
    ("labels-bogus", dict(inputs=X, labels="folder"), "labels must be"),
    ("device-no-cuda", dict(inputs=X, device="cuda:7"), "no such CUDA device"),
]


@pytest.mark.parametrize("kwargs,fragment", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_api_extract_refuses_like_cli(kwargs, fragment):
    import probe

    with pytest.raises(UsageError, match=fragment):
        probe.extract("timm:test_resnet", **kwargs)


@pytest.mark.parametrize("bad", [torch.full((3, 8, 8), float("nan")), torch.rand(3, 8, 8) * 255])
def test_decode_targets_refuse_bad_image_tensors(bad):
    from probe.images import check_image_tensor

    with pytest.raises(UsageError):
        check_image_tensor(bad, "target")


def test_float16_overflow_warns(tmp_path):
    from probe.store import FeatureStore

    with FeatureStore(tmp_path / "s.h5", "a") as st:
        g = st.create_group("m/emb", dim=2, record={"model_spec": "m"}, layer="emb", dtype="float16")
        with pytest.warns(ProbeWarning, match="exceed float16's range"):
            g.append(np.array([[1e6, 1.0], [1.0, 2.0]], np.float32), ["a", "b"], ["0" * 64, "1" * 64])
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            g.append(np.array([[3.0, 1.0]], np.float32), ["c"], ["2" * 64])


def test_probe_warnings_print_as_one_line(capsys):
    from probe.cli.main import _probe_warnings_as_lines

    old = warnings.showwarning
    try:
        _probe_warnings_as_lines()
        warnings.showwarning("overflow in x", ProbeWarning, "f.py", 1)
    finally:
        warnings.showwarning = old
    assert capsys.readouterr().err == "warning: overflow in x\n"
