"""Feature-space geometry: interpolation paths, direction sources, perturbation targets, 2-D maps.

Values are checked against their definitions (slerp norms, class means, std units), caching is
checked against the real HDF5 FeatureStore by counting fits, and error messages are checked for
the facts the user needs (file/group, rows needed, dims).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sklearn.decomposition import PCA

from probe.errors import InputError, UsageError
from probe.geometry import directions as D
from probe.geometry import maps as M
from probe.geometry import paths as P
from probe.store import FeatureStore

# ---------------------------------------------------------------------------------- fixtures


def _blobs(n_per: int = 40, dim: int = 8, k: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """k well-separated Gaussian classes, so class means and maps have known structure."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=6.0, size=(k, dim))
    x = np.concatenate([c + rng.normal(size=(n_per, dim)) for c in centres]).astype(np.float32)
    y = np.repeat(np.arange(k), n_per)
    return x, y


@pytest.fixture()
def store_with(tmp_path: Path):
    """Open a real FeatureStore holding the given rows; returns (store, group name)."""
    opened: list[FeatureStore] = []

    def make(x: np.ndarray, labels: np.ndarray | None = None) -> tuple[FeatureStore, str]:
        st = FeatureStore(tmp_path / "feats.h5", mode="a")
        opened.append(st)
        g = st.create_group("test/emb", dim=x.shape[1], record={"model_spec": "test"}, layer="emb")
        n = x.shape[0]
        g.append(x, [f"img{i}.png" for i in range(n)], [f"{i:064x}" for i in range(n)], labels)
        return st, g.name

    yield make
    for st in opened:
        st.close()


class _CountingPCA(PCA):
    fits = 0

    def fit(self, X, y=None):  # noqa: N803 - sklearn's signature
        type(self).fits += 1
        return super().fit(X, y)


# ---------------------------------------------------------------------------------- paths


def test_linear_path_endpoints_and_midpoint() -> None:
    a, b = np.array([0.0, 2.0, 4.0]), np.array([2.0, 2.0, 0.0])
    p = P.interpolation_path(a, b, 5, "linear")
    assert p.shape == (5, 3) and p.dtype == np.float32
    np.testing.assert_allclose(p[0], a)
    np.testing.assert_allclose(p[-1], b)
    np.testing.assert_allclose(p[2], (a + b) / 2)
    np.testing.assert_allclose(P.path_positions(5), [0, 0.25, 0.5, 0.75, 1])


def test_slerp_endpoints_norms_and_arc() -> None:
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=16) * 3.0, rng.normal(size=16) * 0.5
    steps = 7
    p = P.interpolation_path(a, b, steps, "slerp")
    np.testing.assert_allclose(p[0], a, rtol=1e-6)
    np.testing.assert_allclose(p[-1], b, rtol=1e-6)
    t = P.path_positions(steps)
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    np.testing.assert_allclose(np.linalg.norm(p, axis=1), (1 - t) * na + t * nb, rtol=1e-5)
    # directions stay in span(a, b) and the angle to a grows uniformly
    ua, ub = a / na, b / nb
    units = p / np.linalg.norm(p, axis=1, keepdims=True)
    omega = np.arccos(ua @ ub)
    np.testing.assert_allclose(np.arccos(np.clip(units @ ua, -1, 1)), t * omega, atol=1e-5)
    basis = np.linalg.qr(np.stack([ua, ub], axis=1))[0]
    np.testing.assert_allclose(basis @ (basis.T @ units.T), units.T, atol=1e-5)


def test_slerp_parallel_vectors_scales_norm_only() -> None:
    a = np.array([1.0, 2.0, 2.0])
    p = P.interpolation_path(a, 4 * a, 4, "slerp")
    units = p / np.linalg.norm(p, axis=1, keepdims=True)
    np.testing.assert_allclose(units, np.tile(a / 3.0, (4, 1)), atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(p, axis=1), [3, 6, 9, 12], rtol=1e-6)


def test_slerp_antiparallel_turns_through_a_perpendicular() -> None:
    a = np.array([2.0, 0.0, 0.0])
    p = P.interpolation_path(a, -a, 3, "slerp")
    np.testing.assert_allclose(p[0], a)
    np.testing.assert_allclose(p[-1], -a)
    assert abs(p[1] @ a) < 1e-6 and np.linalg.norm(p[1]) == pytest.approx(2.0)
    np.testing.assert_array_equal(p, P.interpolation_path(a, -a, 3, "slerp"))  # deterministic


def test_slerp_with_zero_endpoint_is_linear() -> None:
    b = np.array([3.0, 4.0])
    p = P.interpolation_path(np.zeros(2), b, 3, "slerp")
    np.testing.assert_allclose(p, [[0, 0], [1.5, 2.0], [3, 4]])
    assert np.all(P.interpolation_path(np.zeros(2), np.zeros(2), 3, "slerp") == 0)


def test_path_errors() -> None:
    with pytest.raises(UsageError, match="different feature dimensions .3 vs 4."):
        P.interpolation_path(np.ones(3), np.ones(4), 5)
    with pytest.raises(UsageError, match="at least 2"):
        P.interpolation_path(np.ones(3), np.ones(3), 1)
    with pytest.raises(UsageError, match="unknown path kind"):
        P.interpolation_path(np.ones(3), np.ones(3), 3, "cubic")  # type: ignore[arg-type]
    with pytest.raises(InputError, match="NaN"):
        P.interpolation_path(np.array([np.nan, 1.0]), np.ones(2), 3)


# ---------------------------------------------------------------------------------- PCA


def test_pca_directions_orthonormal_with_std_from_variance() -> None:
    x, _ = _blobs()
    d = D.pca_directions(x, [1, 2, 3])
    assert d.names == ["PC1", "PC2", "PC3"] and d.vectors.shape == (3, 8)
    np.testing.assert_allclose(d.vectors @ d.vectors.T, np.eye(3), atol=1e-5)
    # std = the set's sample std along each direction
    proj = (x - x.mean(0)) @ d.vectors.T
    np.testing.assert_allclose(d.std, proj.std(axis=0, ddof=1), rtol=1e-4)
    assert np.all(np.diff(d.std) <= 0)
    ratio = d.metadata["explained_variance_ratio"]
    assert ratio.shape == (3,) and 0 < ratio.sum() <= 1
    np.testing.assert_allclose(d.center, x.mean(0), atol=1e-5)


def test_pca_cached_in_store_is_not_refitted(store_with, monkeypatch: pytest.MonkeyPatch) -> None:
    import sklearn.decomposition

    x, _ = _blobs()
    st, group = store_with(x)
    monkeypatch.setattr(sklearn.decomposition, "PCA", _CountingPCA)
    _CountingPCA.fits = 0
    first = D.pca_directions(x, [1, 2], cache=(st, group), source="feats.h5:test/emb")
    second = D.pca_directions(x, [2, 3], cache=(st, group), source="feats.h5:test/emb")
    assert _CountingPCA.fits == 1
    assert first.metadata["cached"] is False and second.metadata["cached"] is True
    np.testing.assert_allclose(first.vectors[1], second.vectors[0])
    arrays, attrs = st.load_artifact(group, D.PCA_ARTIFACT_KEY)
    assert set(arrays) >= {"mean", "components", "explained_variance", "explained_variance_ratio"}
    # other rows -> the hash differs -> refit (and the artifact is replaced)
    D.pca_directions(x[:-5], [1], cache=(st, group))
    assert _CountingPCA.fits == 2


def test_pca_too_few_rows_names_source_and_need() -> None:
    x = np.random.default_rng(0).normal(size=(3, 10))
    with pytest.raises(UsageError, match=r"feats.h5:g has 3 row\(s\).*component 5 needs at least 6 rows"):
        D.pca_directions(x, [1, 5], source="feats.h5:g")
    with pytest.raises(UsageError, match="numbered from 1"):
        D.pca_directions(x, [0])


# ---------------------------------------------------------------------------------- class means


def test_class_mean_pair_points_from_i_to_j() -> None:
    x, y = _blobs()
    d = D.class_mean_directions(x, y, pairs=[(0, 2)], class_names=["shirt", "bag", "boot"])
    expected = x[y == 2].mean(0) - x[y == 0].mean(0)
    np.testing.assert_allclose(d.vectors[0], expected / np.linalg.norm(expected), atol=1e-5)
    assert d.names == ["shirt→boot"]
    assert d.metadata["mean_distance"][0] == pytest.approx(np.linalg.norm(expected), rel=1e-5)
    # stepping mean_distance/std std-units from class 0's mean lands on class 2's mean
    steps = d.metadata["mean_distance"][0] / d.std[0]
    t = D.perturbation_targets(x[y == 0].mean(0), d, [float(steps)])
    np.testing.assert_allclose(t[0, 0], x[y == 2].mean(0), atol=1e-3)


def test_class_mean_all_vs_mean_ignores_unknown_labels() -> None:
    x, y = _blobs()
    y = y.copy()
    y[:5] = -1
    d = D.class_mean_directions(x, y)
    assert len(d) == 3 and d.names == ["mean→0", "mean→1", "mean→2"]
    known = y >= 0
    e = x[y == 1].mean(0) - x[known].mean(0)
    np.testing.assert_allclose(d.vectors[1], e / np.linalg.norm(e), atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(d.vectors, axis=1), 1, atol=1e-6)


def test_class_mean_errors() -> None:
    x, y = _blobs()
    with pytest.raises(UsageError, match="feats.h5:g has no labels"):
        D.class_mean_directions(x, None, source="feats.h5:g")
    with pytest.raises(UsageError, match="class 7 has no labelled rows"):
        D.class_mean_directions(x, y, pairs=[(0, 7)])
    with pytest.raises(InputError, match="3 labels for 120"):
        D.class_mean_directions(x, y[:3])


# ---------------------------------------------------------------------------------- random / npy


def test_random_directions_unit_and_seeded() -> None:
    a = D.random_directions(32, 4, seed=3)
    b = D.random_directions(32, 4, seed=3)
    np.testing.assert_array_equal(a.vectors, b.vectors)
    np.testing.assert_allclose(np.linalg.norm(a.vectors, axis=1), 1, atol=1e-6)
    assert a.std is None
    assert not np.allclose(a.vectors, D.random_directions(32, 4, seed=4).vectors)
    x = np.random.default_rng(0).normal(size=(50, 32))
    with_std = D.random_directions(32, 4, seed=3, features=x)
    np.testing.assert_allclose(with_std.std, ((x - x.mean(0)) @ a.vectors.T).std(0, ddof=1), rtol=1e-4)


def test_load_directions_normalises_and_checks_dim(tmp_path: Path) -> None:
    f = tmp_path / "dirs.npy"
    np.save(f, np.array([[3.0, 4.0, 0.0], [0.0, 0.0, 2.0]]))
    d = D.load_directions(f, 3)
    np.testing.assert_allclose(d.vectors, [[0.6, 0.8, 0], [0, 0, 1]], atol=1e-6)
    assert d.names == ["dirs[0]", "dirs[1]"]
    with pytest.raises(UsageError, match=r"dirs.npy holds 3-dim directions but the features have 5 dims"):
        D.load_directions(f, 5)
    with pytest.raises(UsageError, match="not found"):
        D.load_directions(tmp_path / "missing.npy", 3)
    np.save(tmp_path / "zero.npy", np.zeros((1, 3)))
    with pytest.raises(InputError, match="zero length"):
        D.load_directions(tmp_path / "zero.npy", 3)


# ---------------------------------------------------------------------------------- perturbation


def test_perturbation_targets_shape_scale_zero_and_units() -> None:
    x, _ = _blobs()
    d = D.pca_directions(x, [1, 2])
    base = x[0]
    scales = [-3, -1.5, 0, 1.5, 3]
    t = D.perturbation_targets(base, d, scales)
    assert t.shape == (2, 5, 8)
    np.testing.assert_allclose(t[:, 2], np.tile(base, (2, 1)), atol=1e-6)
    # moving +1.5 along PC2 changes the projection on PC2 by 1.5 std and nothing else
    delta = t[1, 3] - base
    np.testing.assert_allclose(d.vectors @ delta, [0, 1.5 * d.std[1]], atol=1e-4)
    with pytest.raises(UsageError, match="no std"):
        D.perturbation_targets(base, D.random_directions(8, 1), [1.0])
    with pytest.raises(UsageError, match="base has 3 dims but the directions have 8"):
        D.perturbation_targets(np.ones(3), d, [1.0])


def test_parse_components_and_scales() -> None:
    assert D.parse_components("1-5") == [1, 2, 3, 4, 5]
    assert D.parse_components("1,3,4") == [1, 3, 4]
    assert D.parse_components("2-3, 7,2") == [2, 3, 7]
    for bad in ("0-2", "a", "5-3", ""):
        with pytest.raises(UsageError, match="--components"):
            D.parse_components(bad)
    assert D.parse_scales("-3,-1.5,0,1.5,3") == [-3.0, -1.5, 0.0, 1.5, 3.0]
    for bad in ("1,x", "", "nan"):
        with pytest.raises(UsageError, match="--scales"):
            D.parse_scales(bad)
    assert M.parse_grid("4×6") == (4, 6) and M.parse_grid("2x3") == (2, 3)
    with pytest.raises(UsageError, match="--grid"):
        M.parse_grid("4by6")


# ---------------------------------------------------------------------------------- maps


def test_pca_map_inverse_of_transform_is_near_originals() -> None:
    rng = np.random.default_rng(0)
    # data on a 2-D plane in 10-D plus small noise: the 2-D PCA map loses only the noise
    plane = rng.normal(size=(2, 10))
    x = (rng.normal(size=(80, 2)) * [5.0, 2.0]) @ plane + 0.01 * rng.normal(size=(80, 10)) + 3.0
    m = M.fit_map(x, method="pca")
    pts = m.transform(x)
    np.testing.assert_allclose(pts, m.points, atol=1e-4)
    back = m.inverse_transform(pts)
    assert back.shape == x.shape
    assert np.abs(back - x).max() < 0.1
    xmin, xmax, ymin, ymax = m.bounds
    g = m.grid_points(3, 4)
    assert g.shape == (12, 2)
    assert g[0, 1] > g[-1, 1] and g[0, 0] < g[3, 0]  # row 0 at the top, columns left to right
    assert np.all((g[:, 0] >= xmin) & (g[:, 0] <= xmax) & (g[:, 1] >= ymin) & (g[:, 1] <= ymax))


def test_pca_map_cached_in_store(store_with, monkeypatch: pytest.MonkeyPatch) -> None:
    import sklearn.decomposition

    x, y = _blobs()
    st, group = store_with(x, y)
    monkeypatch.setattr(sklearn.decomposition, "PCA", _CountingPCA)
    _CountingPCA.fits = 0
    m1 = M.fit_map(x, method="pca", cache=(st, group))
    m2 = M.fit_map(x, method="pca", cache=(st, group))
    assert _CountingPCA.fits == 1 and not m1.cached and m2.cached
    np.testing.assert_array_equal(m1.points, m2.points)
    np.testing.assert_allclose(m1.inverse_transform(m1.points[:3]), m2.inverse_transform(m2.points[:3]))


def test_map_too_few_rows_message() -> None:
    x = np.random.default_rng(0).normal(size=(10, 4))
    msg = r"feats.h5:g has 10 row\(s\); UMAP with n_neighbors=15 needs at least 16"
    with pytest.raises(UsageError, match=msg):
        M.fit_map(x, method="umap", source="feats.h5:g")
    with pytest.raises(UsageError, match="needs at least 3"):
        M.fit_map(x[:2], method="pca")
    with pytest.raises(UsageError, match="unknown map method"):
        M.fit_map(x, method="tsne")  # type: ignore[arg-type]


def test_clamp_to_hull_moves_only_outside_points() -> None:
    x, _ = _blobs()
    m = M.fit_map(x, method="pca")
    inside = m.points[:3].mean(0, keepdims=True)
    xmin, xmax, ymin, ymax = m.bounds
    far = np.array([[xmax + 100.0, ymax + 100.0]])
    out = m.clamp_to_hull(np.vstack([inside, far]))
    np.testing.assert_allclose(out[0], inside[0], atol=1e-5)
    assert xmin <= out[1, 0] <= xmax and ymin <= out[1, 1] <= ymax


@pytest.mark.slow
def test_umap_map_cached_and_inverse(store_with) -> None:
    x, y = _blobs(n_per=30, dim=6)
    st, group = store_with(x, y)
    m = M.fit_map(x, method="umap", seed=0, cache=(st, group), n_neighbors=10)
    assert m.points.shape == (90, 2) and not m.cached
    again = M.fit_map(x, method="umap", seed=0, cache=(st, group), n_neighbors=10)
    assert again.cached
    np.testing.assert_array_equal(again.points, m.points)
    # the inverse of a class's embedded centre lies nearer that class's mean than the others'
    centres = np.stack([m.points[y == c].mean(0) for c in range(3)])
    inv = again.inverse_transform(centres)
    assert inv.shape == (3, 6)
    means = np.stack([x[y == c].mean(0) for c in range(3)])
    dists = np.linalg.norm(inv[:, None, :] - means[None], axis=2)
    assert list(dists.argmin(axis=1)) == [0, 1, 2]
    # grid points off the data's hull still give finite features
    grid = again.inverse_transform(again.grid_points(2, 2, margin=0.0))
    assert grid.shape == (4, 6) and np.all(np.isfinite(grid))


# -- the path through the data -------------------------------------------------------------------------------
def test_data_path_follows_the_data_where_the_line_crosses_empty_space():
    from probe.geometry.paths import data_path

    # 60 points on the upper unit half-circle from A = (-1, 0) to B = (1, 0); the straight line passes (0, 0),
    # where no point lies
    ang = np.linspace(np.pi, 0, 62)[1:-1]
    arc = np.stack([np.cos(ang), np.sin(ang)], 1)
    rng = np.random.default_rng(0)
    feats = arc[rng.permutation(len(arc))]
    pts, visited = data_path([-1.0, 0.0], [1.0, 0.0], feats, 7, neighbours=4)
    assert pts.shape == (7, 2) and np.allclose(pts[0], [-1, 0]) and np.allclose(pts[-1], [1, 0])
    assert np.abs(np.linalg.norm(pts, axis=1) - 1).max() < 0.01   # on the arc, not through the middle
    assert pts[3] == pytest.approx([0, 1], abs=0.02)                # equal arc length: the middle point at the top
    xs = feats[visited][:, 0]
    assert len(visited) == 60 and (np.diff(xs) > 0).all()           # every arc point, in order from A to B


def test_data_path_errors():
    from probe.geometry.paths import data_path

    # two far-apart blobs of 5 rows each: with 2 neighbours each, no edge joins them
    rng = np.random.default_rng(0)
    two_blobs = np.concatenate([rng.normal(0, 0.1, (5, 2)), rng.normal(50, 0.1, (5, 2))])
    with pytest.raises(UsageError, match="no path from A to B"):
        data_path([0.0, 0.0], [50.0, 50.0], two_blobs, 3, neighbours=2)
    with pytest.raises(UsageError, match="one feature space"):
        data_path([0.0, 0.0, 0.0], [1.0, 1.0, 1.0], two_blobs, 3)
