"""Persistence scores: dispersion definitions, edge cases, loading inputs, outputs and the CLI."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from probe.errors import InputError, UsageError
from probe.persistence import attributes as A
from probe.persistence import scoring as C
from probe.persistence.samples import load_samples

CONT = A.Attribute("x", "continuous", lambda im: 0.0)
VEC = A.Attribute("v", "vector", lambda im: np.zeros(2))
CORR = A.Attribute("c", "vector", lambda im: np.zeros(4), dispersion="correlation")
CAT = A.Attribute("k", "categorical", lambda im: "a")


# ---------------------------------------------------------------------------------------------- dispersion


def test_continuous_dispersion_is_unbiased_variance():
    x = [0.1, 0.4, 0.2, 0.9]
    assert C.dispersion(CONT, x) == pytest.approx(np.var(x, ddof=1))


def test_vector_dispersion_is_trace_of_covariance():
    x = np.random.default_rng(0).random((6, 3))
    assert C.dispersion(VEC, list(x)) == pytest.approx(np.trace(np.cov(x.T)))
    pairs = [np.sum((a - b) ** 2) / 2 for i, a in enumerate(x) for b in x[i + 1:]]
    assert C.dispersion(VEC, list(x)) == pytest.approx(np.mean(pairs))  # the pairwise identity


def test_categorical_dispersion_is_pair_disagreement():
    assert C.dispersion(CAT, ["a", "a", "b", "b"]) == pytest.approx(1 - 2 / 6)
    assert C.dispersion(CAT, ["a", "b", "c"]) == pytest.approx(1.0)
    assert C.dispersion(CAT, ["a"] * 5) == 0.0


def test_correlation_dispersion():
    a = np.array([0.0, 1.0, 2.0, 3.0])
    assert C.dispersion(CORR, [a, 2 * a + 1]) == pytest.approx(0.0)  # same layout, other contrast
    assert C.dispersion(CORR, [a, -a]) == pytest.approx(2.0)
    flat = np.full(4, 0.5)
    assert C.dispersion(CORR, [flat, flat * 0.2]) == pytest.approx(0.0)  # both without layout
    assert C.dispersion(CORR, [flat, a]) == pytest.approx(1.0)


@pytest.mark.parametrize("attr, values", [
    (CONT, [0.3] * 4), (VEC, [np.array([0.1, 0.7])] * 3), (CORR, [np.arange(4.0)] * 3), (CAT, ["x"] * 3),
    (CONT, [0.1 + 0.2] * 7),  # a value whose mean would round: identical must still be exactly 0
])
def test_identical_samples_have_zero_dispersion_and_score(attr, values):
    assert C.dispersion(attr, values) == 0.0
    assert C.persistence(attr, values, 0.5).score == 0.0


def test_group_size_does_not_bias_the_score():
    """Pairwise (U-statistic) dispersions: a group equal to the reference scores exactly 1, and a
    2-sample group drawn from the reference scores ≈1 on average (a 1/n variance would give ≈0.5)."""
    ref = list(np.random.default_rng(1).standard_normal(4000))
    rd = C.dispersion(CONT, ref)
    assert C.persistence(CONT, ref, rd).score == pytest.approx(1.0)
    pairs = np.array(ref).reshape(-1, 2)
    mean_score = np.mean([C.persistence(CONT, list(p), rd).score for p in pairs])
    assert mean_score == pytest.approx(1.0, abs=0.1)


# ---------------------------------------------------------------------------------------------- edge cases


def test_one_sample_is_undefined_with_a_reason():
    sc = C.persistence(CONT, [0.5], 1.0)
    assert math.isnan(sc.score) and sc.reason == "one sample" and sc.n_samples == 1
    assert math.isnan(C.dispersion(CONT, []))


def test_constant_attribute_in_reference_is_nan_not_division_error():
    ref = C.dispersion(CONT, [0.2] * 10)
    assert ref == 0.0
    sc = C.persistence(CONT, [0.1, 0.3], ref)
    assert math.isnan(sc.score) and sc.reason == "constant in reference"
    sc = C.persistence(CONT, [0.2, 0.2], ref)  # 0/0 as well
    assert math.isnan(sc.score) and sc.reason == "constant in reference"


def test_non_finite_measurement_is_undefined():
    sc = C.persistence(CONT, [0.1, float("nan")], 1.0)
    assert math.isnan(sc.score) and sc.reason == "measurement undefined"


def test_score_values_aggregates_ranks_and_counts_exclusions():
    free = A.Attribute("free", "continuous", lambda im: 0.0)
    fixed = A.Attribute("fixed", "continuous", lambda im: 0.0)
    const = A.Attribute("const", "continuous", lambda im: 0.0)
    rng = np.random.default_rng(2)
    ref = {"free": list(rng.random(50)), "fixed": list(rng.random(50)), "const": [1.0] * 50}
    groups = [
        {"free": list(rng.random(4)), "fixed": [0.5, 0.5, 0.5, 0.5], "const": [1.0] * 4},
        {"free": list(rng.random(4)), "fixed": [0.2, 0.2, 0.2, 0.21], "const": [1.0] * 4},
        {"free": [0.3], "fixed": [0.3], "const": [1.0]},  # one sample
    ]
    summaries, per_group = C.score_values([free, fixed, const], groups, ref, C.CompareConfig(n_boot=200))
    assert [s.name for s in summaries] == ["fixed", "free", "const"]
    fixed_s, free_s, const_s = summaries
    assert fixed_s.n_targets == 2 and fixed_s.n_excluded == 1 and fixed_s.excluded_reasons == {"one sample": 1}
    assert fixed_s.mean < 0.01 and fixed_s.verdict == "encoded"
    assert math.isnan(const_s.mean) and const_s.verdict == "undefined"
    assert const_s.excluded_reasons == {"constant in reference": 2, "one sample": 1}
    assert free_s.ci_low <= free_s.mean <= free_s.ci_high
    assert len(per_group) == 3 and [s.attribute for s in per_group[0]] == ["free", "fixed", "const"]


def test_bootstrap_is_seeded_and_degenerate_cases():
    s = np.array([0.1, 0.5, 0.3, 0.9, 0.2])
    a = C.bootstrap_ci(s, 500, 0.95, np.random.default_rng(7))
    b = C.bootstrap_ci(s, 500, 0.95, np.random.default_rng(7))
    assert a == b and a[0] <= s.mean() <= a[1] and s.min() <= a[0] and a[1] <= s.max()
    assert all(math.isnan(v) for v in C.bootstrap_ci(s[:1], 500, 0.95, np.random.default_rng(0)))
    assert C.bootstrap_ci(np.full(4, 0.25), 100, 0.9, np.random.default_rng(0)) == pytest.approx((0.25, 0.25))


def test_config_validation():
    with pytest.raises(UsageError):
        C.CompareConfig(ci_level=1.5)
    with pytest.raises(UsageError):
        C.CompareConfig(n_boot=-1)


# ---------------------------------------------------------------------------------------------- inputs


def _png(path: Path, img: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((np.clip(img, 0, 1) * 255).round().astype(np.uint8)).save(path)
    return path


def _square(colour, left, top, size=32, side=10) -> np.ndarray:
    img = np.zeros((size, size, 3))
    img[top:top + side, left:left + side] = colour
    return img


def make_decode_dir(root: Path, n_targets=3, n_samples=4, seed=0, extra_sample_for=None) -> Path:
    """A decode output dir: each target has a fixed colour and a random position; baselines are random."""
    rng = np.random.default_rng(seed)
    out = root / "dec"
    for s in range(n_samples):
        _png(out / "baseline" / f"s{s:02d}.png", _square(rng.random(3), *rng.integers(0, 22, 2)))
    lines = []
    for t in range(n_targets):
        colour = rng.random(3) * 0.7 + 0.3
        count = n_samples + (1 if extra_sample_for == t else 0)
        for s in reversed(range(count)):  # written out of order: loader must sort by sample
            rel = f"images/t{t}_s{s:02d}.png"
            _png(out / rel, _square(colour, *rng.integers(0, 22, 2)))
            _png(out / f"final/t{t}_s{s:02d}.png", _square(colour, 0, 0))
            lines.append(json.dumps({
                "target_id": f"t{t}", "target_index": t, "sample": s, "seed": s, "image": rel,
                "final_image": f"final/t{t}_s{s:02d}.png", "baseline_image": f"baseline/s{s:02d}.png",
                "target": {"kind": "hdf5", "source": "x.h5", "index": t, "label": f"class{t}"},
            }))
    (out / "manifest.jsonl").write_text("\n".join(lines) + "\n")
    return out


def test_load_decode_dir(tmp_path):
    out = make_decode_dir(tmp_path)
    ss = load_samples(out)
    assert ss.kind == "decode" and [g.group_id for g in ss.groups] == ["t0", "t1", "t2"]
    assert [p.name for p in ss.groups[0].paths] == [f"t0_s{s:02d}.png" for s in range(4)]
    assert ss.groups[1].label == "class1" and ss.groups[1].meta["target_index"] == 1
    assert [p.name for p in ss.reference] == [f"s{s:02d}.png" for s in range(4)]
    final = load_samples(out, image_key="final_image")
    assert final.groups[0].paths[0].parent.name == "final"


def test_decode_dir_repeated_record_counts_once(tmp_path):
    out = make_decode_dir(tmp_path)
    lines = (out / "manifest.jsonl").read_text().splitlines()
    with open(out / "manifest.jsonl", "a") as f:
        f.write(lines[0] + "\n")  # a resumed run wrote the same sample again
    assert [len(g.paths) for g in load_samples(out).groups] == [4, 4, 4]


def test_decode_dir_bad_manifest_line(tmp_path):
    out = make_decode_dir(tmp_path)
    with open(out / "manifest.jsonl", "a") as f:
        f.write("{not json\n")
    with pytest.raises(InputError, match=r"manifest.jsonl: line 13 is not JSON"):
        load_samples(out)


def test_decode_dir_missing_image_and_missing_baseline(tmp_path):
    out = make_decode_dir(tmp_path)
    (out / "images" / "t1_s02.png").unlink()
    with pytest.raises(InputError, match="t1_s02.png does not exist"):
        load_samples(out)
    out2 = make_decode_dir(tmp_path / "b")
    for p in (out2 / "baseline").iterdir():
        p.unlink()
    with pytest.raises(InputError, match="--reference"):
        load_samples(out2)
    assert len(load_samples(out2, reference=out2 / "final").reference) == 12  # explicit reference


def test_decode_dir_mismatched_groups(tmp_path):
    out = make_decode_dir(tmp_path, extra_sample_for=1)
    with pytest.raises(InputError, match="mismatched groups: 't1' has 5 samples"):
        load_samples(out)
    assert len(load_samples(out, allow_unequal=True).groups[1].paths) == 5


def make_folders(root: Path, groups: dict[str, int], reference: int | None = 4) -> Path:
    rng = np.random.default_rng(3)
    for name, n in groups.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            _png(root / name / f"{i}.png", rng.random((16, 16, 3)))
    if reference is not None:
        for i in range(reference):
            _png(root / "baseline" / f"{i}.png", rng.random((16, 16, 3)))
    return root


def test_load_image_folders(tmp_path):
    root = make_folders(tmp_path / "imgs", {"b": 3, "a": 3}, reference=3)
    ss = load_samples(root)
    assert ss.kind == "folders" and [g.group_id for g in ss.groups] == ["a", "b"]  # baseline is no group
    assert len(ss.reference) == 3
    ref = make_folders(tmp_path / "ref", {"x": 2, "y": 2}, reference=None)  # dataset with class folders
    ss = load_samples(root, reference=ref)
    assert len(ss.reference) == 4 and [g.group_id for g in ss.groups] == ["a", "b", "baseline"]


def test_folder_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="empty folder"):
        load_samples(tmp_path / "empty", reference=make_folders(tmp_path / "r", {"x": 2}, None))
    with pytest.raises(InputError, match="does not exist"):
        load_samples(tmp_path / "nope")
    root = make_folders(tmp_path / "g", {"a": 2, "b": 0})
    with pytest.raises(InputError, match=r"b: group has no images"):
        load_samples(root)
    loose = tmp_path / "loose"
    _png(loose / "x.png", np.zeros((4, 4, 3)))
    with pytest.raises(UsageError, match="--reference"):
        load_samples(loose)
    with pytest.raises(InputError, match="no sub-folders"):
        load_samples(loose, reference=tmp_path / "r")
    with pytest.raises(InputError, match="mismatched groups"):
        load_samples(make_folders(tmp_path / "m", {"a": 2, "b": 3, "c": 2}))
    (tmp_path / "noimg").mkdir()
    with pytest.raises(InputError, match="reference folder has no images"):
        load_samples(root, reference=tmp_path / "noimg")


def test_unreadable_image(tmp_path):
    root = make_folders(tmp_path / "u", {"a": 2, "b": 2})
    (root / "a" / "1.png").write_bytes(b"not a png")
    with pytest.raises(InputError, match=r"1.png: (unreadable image|not an image file)"):
        C.compare(load_samples(root), A.get_attributes(["brightness"]))


# ---------------------------------------------------------------------------------------------- end to end


def test_compare_end_to_end_colour_persists_position_does_not(tmp_path):
    out = make_decode_dir(tmp_path, n_targets=4, n_samples=5)
    attrs = A.get_attributes(["red", "hue", "mask_area", "mask_centroid", "brightness"])
    result = C.compare(load_samples(out), attrs, C.CompareConfig(n_boot=200, seed=1))
    by = {s.name: s for s in result.summaries}
    for name in ("red", "hue", "brightness"):  # same colour everywhere (up to summation-order noise)
        assert by[name].mean == pytest.approx(0.0, abs=1e-12) and by[name].verdict == "encoded"
    assert by["mask_centroid"].mean > 0.2
    assert math.isnan(by["mask_area"].mean)  # every square has the same area: constant in reference
    assert any("mask_area" in w for w in result.warnings)
    assert result.summaries[-1].name == "mask_area"  # undefined sorts last
    assert result.targets[0].scores["red"].n_samples == 5

    doc = json.loads(result.to_json())  # strict JSON: NaN became null
    assert doc["attributes"][0]["name"] in {"red", "hue", "brightness"}
    assert doc["attributes"][-1]["mean"] is None
    assert doc["targets"][0]["scores"]["mask_area"]["reason"] == "constant in reference"
    rows = list(csv.DictReader(io.StringIO(result.to_csv())))
    assert [r["attribute"] for r in rows] == [s.name for s in result.summaries] and rows[-1]["mean"] == ""
    rows = list(csv.DictReader(io.StringIO(result.to_csv(per_target=True))))
    assert len(rows) == 4 * len(attrs) and {r["target_id"] for r in rows} == {"t0", "t1", "t2", "t3"}

    again = C.compare(load_samples(out), attrs, C.CompareConfig(n_boot=200, seed=1))
    assert again.to_json() == result.to_json()  # seeded bootstrap: reproducible


def test_reference_images_are_resized_to_the_samples(tmp_path):
    root = make_folders(tmp_path / "s", {"a": 2, "b": 2}, reference=None)
    _png(tmp_path / "ref" / "big.png", np.ones((64, 48, 3)))
    _png(tmp_path / "ref" / "big2.png", np.zeros((64, 48, 3)))
    result = C.compare(load_samples(root, reference=tmp_path / "ref"), A.get_attributes(["thumbnail"]))
    assert result.summaries[0].reference_dispersion == pytest.approx(0.0)  # two flat images
    assert result.n_reference == 2


def test_model_attribute_in_compare(tmp_path):
    """A classifier attribute flows through compare as a categorical score (test-double encoder)."""
    torch = pytest.importorskip("torch")

    class Double(torch.nn.Module):
        spec, class_names, has_text = "test:double", ["dark", "bright"], False

        def forward(self, x):
            return x.mean(dim=(1, 2, 3))[:, None]

        def classify(self, x):
            m = x.mean(dim=(1, 2, 3))
            return torch.stack([0.5 - m, m - 0.5], dim=1)

    root = tmp_path / "m"
    for g, level in (("dark", 0.1), ("bright", 0.9)):
        for i in range(3):
            _png(root / g / f"{i}.png", np.full((8, 8, 3), level + 0.01 * i))
    for i, level in enumerate([0.1, 0.9, 0.2, 0.8]):
        _png(root / "baseline" / f"{i}.png", np.full((8, 8, 3), level))
    attr = A.classifier_attribute(Double())
    result = C.compare(load_samples(root), [attr], C.CompareConfig(n_boot=50))
    s = result.summaries[0]
    assert s.kind == "categorical" and s.dispersion == "disagreement" and s.mean == 0.0
    assert s.reference_dispersion == pytest.approx(1 - 2 / 6)


# ---------------------------------------------------------------------------------------------- render + CLI


def test_chart_and_html_report(tmp_path):
    from probe.render.report import html_report, persistence_chart

    out = make_decode_dir(tmp_path)
    ss = load_samples(out)
    result = C.compare(ss, A.get_attributes(["red", "mask_area", "thumbnail"]), C.CompareConfig(n_boot=50))
    png = persistence_chart(result, tmp_path / "chart.png")
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and (tmp_path / "chart.png").stat().st_size == len(png)
    page = html_report(result, ss, tmp_path / "r.html")
    assert page.count("data:image/png;base64,") >= 2 + len(ss.groups)  # chart, sheet, one strip per target
    srcs = [chunk.split("'")[0] for chunk in page.split("src='")[1:]]
    assert srcs and all(s.startswith("data:image/png;base64,") for s in srcs)  # self-contained
    assert "t2" in page and "class2" in page and "constant in reference" in page


def test_cli_json_and_files(tmp_path):
    from probe.cli.compare import compare

    out = make_decode_dir(tmp_path)
    args = [str(out), "-a", "red,brightness", "-a", "mask_centroid", "--classifier", "none", "--bootstrap", "50",
            "--csv", str(tmp_path / "s.csv"), "--targets-csv", str(tmp_path / "t.csv"),
            "--chart", str(tmp_path / "c.png"), "--html", str(tmp_path / "r.html")]
    res = CliRunner().invoke(compare, [*args, "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert {a["name"] for a in doc["attributes"]} == {"red", "brightness", "mask_centroid"}
    for name in ("s.csv", "t.csv", "c.png", "r.html"):
        assert (tmp_path / name).stat().st_size > 0
    res = CliRunner().invoke(compare, [str(out), "-a", "red", "--classifier", "none", "--per-target"])
    assert res.exit_code == 0 and "red" in res.output and "Per-target" in res.output


def test_cli_list_and_errors(tmp_path):
    from probe.cli.compare import compare

    res = CliRunner().invoke(compare, ["--list-attributes"])
    assert res.exit_code == 0 and "edge_orientation" in res.output
    (tmp_path / "empty").mkdir()
    res = CliRunner().invoke(compare, [str(tmp_path / "empty"), "--reference", str(tmp_path / "empty")])
    assert isinstance(res.exception, InputError)
    out = make_decode_dir(tmp_path)
    res = CliRunner().invoke(compare, [str(out), "--classifier", "none", "--prompt", "a red object"])
    assert isinstance(res.exception, UsageError) and "--clip" in str(res.exception)
    res = CliRunner().invoke(compare, [str(out), "--classifier", "none", "-a", "nope"])
    assert isinstance(res.exception, UsageError)


def test_cli_exit_codes_through_the_probe_group(tmp_path):
    main = pytest.importorskip("probe.cli.main")
    (tmp_path / "empty").mkdir()
    res = CliRunner().invoke(main.cli, ["compare", str(tmp_path / "empty"), "-r", str(tmp_path / "empty")])
    assert res.exit_code == 3 and "error:" in res.output


def test_cli_default_classifier_and_cross_model(tmp_path):
    """No --classifier: the bundled classifier is used when its weights exist, else a note (never an error);
    a cross-model attribute's name prints intact (rich markup must not eat it)."""
    pytest.importorskip("probe.models.registry")
    pytest.importorskip("timm")
    from probe.cli.compare import compare

    out = make_decode_dir(tmp_path)
    res = CliRunner().invoke(compare, [str(out), "-a", "red", "--cross-model", "timm:resnet18",
                                       "--cross-model-weights", "random", "--device", "cpu", "--bootstrap", "20"],
                             env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    assert "features (timm:resnet18)" in res.output
    assert "class (bundled:fashion-cnn)" in res.output or "default classifier" in res.output


def test_compare_finds_every_image_extract_reads(tmp_path):
    """One input walker: a .pgm that extract reads is an image to compare too; hidden files are not."""
    from probe.images import collect_inputs

    for name in ("a/x.pgm", "a/y.png", "a/.z.png", "baseline/r.ppm", "baseline/s.png"):
        _png(tmp_path / name, np.full((4, 4, 3), 0.5))
    ss = load_samples(tmp_path)
    assert [p.name for p in ss.groups[0].paths] == ["x.pgm", "y.png"] and len(ss.reference) == 2
    assert [p.name for p in collect_inputs([str(tmp_path / "a")])] == ["x.pgm", "y.png"]
