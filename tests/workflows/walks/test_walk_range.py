"""perturb's default range follows the data (probe.geometry.walk_range): synthetic projections with known percentiles,
and a perturb run with the default --scales data."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from probe.geometry.directions import Directions, perturbation_targets
from probe.geometry.walk_range import column_labels, data_scales, is_data, scale_at

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tests.workflows.walks.test_walks_cli import FAST, enc_spec, prior_dir, records, store  # noqa: E402, F401, F811 - fixtures


def test_data_scales_put_the_base_at_the_datas_percentiles():
    rng = np.random.default_rng(0)
    # along e0 the data is skewed: 0..99 uniformly; along e1 all points lie at 5
    x = np.zeros((100, 3))
    x[:, 0] = np.arange(100)
    x[:, 1] = 5
    x[:, 2] = rng.normal(size=100)
    v = np.eye(3)[:2]
    base = np.array([10.0, 5.0, 0.0])
    std = np.array([2.0, 1.0])
    s = data_scales(x, base, v, std, percentiles=(0, 50, 100))
    assert s.shape == (2, 3)
    assert s[0] == pytest.approx([(0 - 10) / 2, (49.5 - 10) / 2, (99 - 10) / 2])
    assert s[1] == pytest.approx([0, 0, 0])  # no spread: the walk stays at the base
    dirs = Directions(vectors=v.astype(np.float32), names=["a", "b"], std=std.astype(np.float32))
    t = perturbation_targets(base, dirs, s)
    assert t.shape == (2, 3, 3) and t[0, :, 0] == pytest.approx([0, 49.5, 99]) and t[1, :, 1] == pytest.approx(5)
    assert scale_at(s, 0, 2) == pytest.approx(44.5) and scale_at([1.0, 2.0], 1, 1) == 2.0
    assert column_labels(s, (0, 50, 100)) == ["P0", "P50", "P100"] and column_labels([-1, 0], None) == ["-1σ", "+0σ"]
    assert is_data("data") and is_data(" DATA ") and not is_data([1.0])


def test_perturb_default_range_is_the_datas(run_cli, prior_dir, store, enc_spec, tmp_path):  # noqa: F811
    import shutil

    src, feats, _ = store
    path = tmp_path / "copy.h5"
    shutil.copy(src, path)
    out = tmp_path / "pca"
    res = run_cli("-q", "perturb", f"{path}:2", "--from", path, "--components", "1-2", "--prior", prior_dir,
                  "-m", enc_spec, *FAST, "--no-baseline", "--out", out, "--json")
    assert res.exit_code == 0, res.stderr
    summary = json.loads(res.stdout)
    assert summary["percentiles"] == [1.0, 10.0, 50.0, 90.0, 99.0] and len(summary["cells"]) == 10
    recs = records(out)
    # the targets' projections on each direction sit at the stored features' percentiles
    scales = np.array(summary["scales"])
    assert scales.shape == (2, 5) and (np.diff(scales, axis=1) >= 0).all()
    assert [r["scale"] for r in recs[:5]] == pytest.approx(scales[0].tolist())


def test_data_scales_follow_the_bases_neighbours():
    # two clusters along e0: 60 rows near 0 (spread ±1) and 60 near 100; the base sits in the first
    rng = np.random.default_rng(1)
    x = np.zeros((120, 2))
    x[:60, 0] = rng.uniform(-1, 1, 60)
    x[60:, 0] = 100 + rng.uniform(-1, 1, 60)
    x[:, 1] = rng.normal(size=120)
    base = np.array([0.0, 0.0])
    v, std = np.eye(2)[:1], np.array([1.0])
    local = data_scales(x, base, v, std, percentiles=(0, 100), neighbours=50)
    every = data_scales(x, base, v, std, percentiles=(0, 100))
    assert every[0, 1] > 99  # the whole set's range reaches the other cluster ...
    assert -1 <= local[0, 0] < 0 < local[0, 1] <= 1  # ... the neighbours' stays in the base's own
    from probe.geometry.walk_range import local_neighbours

    assert local_neighbours(30) == 30 and local_neighbours(200) == 50 and local_neighbours(10_000) == 1000


def test_medoid_is_the_row_nearest_all_others_not_the_mean():
    from probe.workflows.walks.perturb import medoid_index

    # 70 rows in a tight cluster, 30 far away, and one row between them nearest the mean
    rng = np.random.default_rng(2)
    x = np.concatenate([rng.normal(0, 0.1, (70, 4)), rng.normal(0, 0.1, (30, 4)) + 10, np.full((1, 4), 3.0)])
    mean_row = int(np.argmin(((x - x.mean(0)) ** 2).sum(1)))
    assert mean_row == 100  # the in-between row: what the old rule picked
    i = medoid_index(x)
    assert i < 70
    sums = np.sqrt(((x[:, None] - x[None]) ** 2).sum(-1)).sum(1)
    assert i == int(np.argmin(sums))
    assert medoid_index(x, max_rows=50) < 70  # a seeded subset of a larger set lands in the big cluster too
