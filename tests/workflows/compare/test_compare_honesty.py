"""``probe compare`` stays honest (issue 10): circular attributes, the independent classifier, off-manifold
samples, the target picture in the HTML report, colour on grey images and the few-targets warning — each on a
synthetic decode folder whose answer is known."""

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

from probe.persistence import attributes as A
from probe.persistence import scoring as C
from probe.persistence.samples import load_samples

FAST = C.CompareConfig(n_boot=50)


def _png(path: Path, img: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = (np.clip(img, 0, 1) * 255).round().astype(np.uint8)
    Image.fromarray(arr[..., 0] if arr.ndim == 3 and arr.shape[2] == 1 else arr).save(path)
    return path


def make_run(root: Path, n_targets: int = 3, n_samples: int = 4, *, grey: bool = False, encoder: str | None = None,
             weights: str | None = None, flags: dict[tuple[int, int], bool] | None = None,
             target_image: dict[int, str] | None = None, side: int = 16, seed: int = 0) -> Path:
    """A decode folder: target t's natural samples are flat images of one level (or colour) per target, so
    every colour/brightness attribute is exactly persistent; a sample flagged off-manifold is random noise."""
    rng = np.random.default_rng(seed)
    out = root / "run"
    ch = 1 if grey else 3
    for s in range(n_samples):
        _png(out / "baseline" / f"s{s:02d}.png", np.full((side, side, ch), rng.random(ch)))
    lines = []
    for t in range(n_targets):
        level = rng.random(ch) * 0.6 + 0.2
        for s in range(n_samples):
            flagged = (flags or {}).get((t, s))
            img = rng.random((side, side, ch)) if flagged else np.full((side, side, ch), level)
            rel = f"images/t{t}_s{s:02d}.png"
            _png(out / rel, img)
            rec = {"target_id": f"t{t}", "target_index": t, "sample": s, "image": rel,
                   "target": {"kind": "hdf5", "source": "x.h5", "index": t, "label": f"c{t}"}}
            if encoder is not None:
                rec["encoder"] = encoder
            if weights is not None:
                rec["encoder_weights"] = weights
            if flags is not None:
                rec["off_manifold"] = bool(flagged)
                rec["naturalness"] = 3.0 if flagged else 1.0
            if target_image and t in target_image:
                rec["target_image"] = target_image[t]
            lines.append(json.dumps(rec))
    (out / "manifest.jsonl").write_text("\n".join(lines) + "\n")
    return out


class Double:
    """A classifier test double with a spec and weights, like an Encoder (dark vs bright)."""

    class_names = ["dark", "bright"]
    has_text = False

    def __init__(self, spec: str, weights: str | None = None):
        self.spec, self.weights = spec, weights

    def classify(self, x):
        m = x.mean(dim=(1, 2, 3))
        return __import__("torch").stack([0.5 - m, m - 0.5], dim=1)


# ---------------------------------------------------------------------------------------------- circular


def test_decoded_networks_class_is_circular_and_ranked_apart(tmp_path):
    pytest.importorskip("torch")
    run = make_run(tmp_path, encoder="bundled:fashion-cnn", weights="")
    ss = load_samples(run)
    assert ss.decoded_encoders == [{"spec": "bundled:fashion-cnn", "weights": "", "weights_sha256": ""}]
    own = A.classifier_attribute(Double("bundled:fashion-cnn"))
    other = A.classifier_attribute(Double("bundled:fashion-mlp"), role="independent classifier for x")
    result = C.compare(ss, [own, other, *A.get_attributes(["brightness"])], FAST)
    by = {s.name: s for s in result.summaries}
    assert by[own.name].circular and by[own.name].verdict == "circular"
    assert "circular: the decoded network" in by[own.name].circular_reason
    assert not by[other.name].circular and by[other.name].verdict == "encoded"  # flat images: one class each
    assert result.summaries[-1].name == own.name  # after every ranked attribute
    assert {s.name for s in result.ranked} == {other.name, "brightness"}
    doc = json.loads(result.to_json())
    assert {a["name"]: a["circular"] for a in doc["attributes"]} == {own.name: True, other.name: False,
                                                                     "brightness": False}
    models = {a["name"]: a["model"] for a in doc["attributes"]}
    assert models[other.name] == {"spec": "bundled:fashion-mlp", "weights": "", "weights_sha256": "",
                                  "role": "independent classifier for x"}
    assert models["brightness"] is None
    rows = list(csv.DictReader(io.StringIO(result.to_csv())))
    circ = [r for r in rows if r["circular"] == "true"]
    assert [r["attribute"] for r in circ] == [own.name] and circ[0]["rank"] == "" and rows[-1] == circ[0]
    assert any("circular" in w and own.name in w for w in result.warnings)
    per = list(csv.DictReader(io.StringIO(result.to_csv(per_target=True))))
    assert {r["circular"] for r in per if r["attribute"] == own.name} == {"true"}


@pytest.mark.parametrize("recorded, attr_weights, circular", [
    ("", None, True),                      # same spec, default weights on both sides
    ("/ckpt/a.pt", "/ckpt/a.pt", True),    # same local checkpoint
    ("/ckpt/a.pt", None, False),           # the decode used another checkpoint than the classifier
    (None, "/ckpt/b.pt", True),            # older manifest: weights not recorded -> cautious: circular
])
def test_circular_needs_same_spec_and_weights(recorded, attr_weights, circular):
    attr = A.classifier_attribute(Double("timm:resnet18", attr_weights))
    got = C.circular_attributes([attr], [{"spec": "timm:resnet18", "weights": recorded}])
    assert (attr.name in got) is circular
    if recorded is None:
        assert "did not record its weights" in got[attr.name]
    assert C.circular_attributes([attr], [{"spec": "timm:resnet50", "weights": ""}]) == {}


def test_circular_compares_weight_files_by_content():
    """A checkpoint moved to another path is the same network; one overwritten at the same path is not."""
    moved = Double("timm:resnet18", "/new/place.pt")
    moved.weights_sha256 = "aa"
    attr = A.classifier_attribute(moved)
    assert attr.name in C.circular_attributes([attr], [{"spec": "timm:resnet18", "weights": "/old/place.pt",
                                                        "weights_sha256": "aa"}])
    assert C.circular_attributes([attr], [{"spec": "timm:resnet18", "weights": "/new/place.pt",
                                           "weights_sha256": "bb"}]) == {}
    assert C.circular_attributes(A.get_attributes(["red"]), [{"spec": "timm:resnet18", "weights": ""}]) == {}


def test_independent_classifier_table():
    assert A.default_classifier(["bundled:fashion-cnn"]) == (
        "bundled:fashion-mlp", "independent classifier for bundled:fashion-cnn")
    assert A.default_classifier(["timm:resnet18"]) == (A.FALLBACK_CLASSIFIER, None)
    assert A.default_classifier([]) == (A.FALLBACK_CLASSIFIER, None)  # an image folder: nothing was decoded
    assert A.default_classifier(["bundled:fashion-cnn", "timm:resnet18"])[1] is None  # mixed runs: no guess


def test_bundled_fashion_mlp_is_an_mlp_that_classifies_fashion_mnist():
    torch = pytest.importorskip("torch")
    from probe.datasets import FASHION_DIR, fashion_mnist
    from probe.models.registry import load_encoder

    if not (FASHION_DIR / "t10k-images-idx3-ubyte.gz").exists():
        pytest.skip("Fashion-MNIST not installed")
    enc = load_encoder("bundled:fashion-mlp")
    assert not any(isinstance(m, torch.nn.Conv2d) for m in enc.model.modules())  # another kind than the CNN
    assert enc.class_names[9] == "Ankle boot" and enc.input_size == 32
    x, y = fashion_mnist("test")
    with torch.no_grad():
        pred = enc.classify(torch.from_numpy(x[:1000].astype(np.float32) / 255.0)[:, None]).argmax(1).numpy()
    assert (pred == y[:1000]).mean() > 0.85  # 88.2 % on all 10,000 (MODEL_CARD.md)
    assert enc(torch.rand(2, 1, 32, 32)).shape == (2, 64)


def test_cli_default_class_is_read_by_the_independent_classifier(tmp_path):
    pytest.importorskip("torch")
    from probe.cli.compare import compare

    run = make_run(tmp_path, encoder="bundled:fashion-cnn", weights="", side=32)
    res = CliRunner().invoke(compare, [str(run), "-a", "brightness", "--bootstrap", "20", "--device", "cpu",
                                       "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    cls = [a for a in doc["attributes"] if a["kind"] == "categorical"]
    assert [a["name"] for a in cls] == ["class (bundled:fashion-mlp)"]
    assert cls[0]["model"]["role"] == "independent classifier for bundled:fashion-cnn" and not cls[0]["circular"]
    # asking for the decoded network's own class: scored, but marked and ranked apart
    res = CliRunner().invoke(compare, [str(run), "-a", "brightness", "--classifier", "bundled:fashion-cnn",
                                       "--bootstrap", "20", "--device", "cpu"], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    assert "(circular: the decoded network)" in res.output


# ---------------------------------------------------------------------------------------------- off-manifold


FLAGS = {(0, 2): True, (0, 3): True, (1, 0): True, (1, 1): True, (1, 2): True}


def test_off_manifold_samples_are_excluded_by_default(tmp_path):
    run = make_run(tmp_path, flags=FLAGS)
    ss = load_samples(run)
    assert [len(g.paths) for g in ss.groups] == [2, 1, 4] and [len(g.excluded) for g in ss.groups] == [2, 3, 0]
    om = ss.off_manifold
    assert om["n_recorded"] == 12 and om["n_flagged"] == 5 and om["share"] == pytest.approx(5 / 12)
    assert om["excluded"] == {"t0": 2, "t1": 3} and om["too_few"] == ["t1"]
    result = C.compare(ss, A.get_attributes(["brightness"]), FAST)
    t0, t1, t2 = result.targets
    assert t0.scores["brightness"].score == 0.0  # the natural samples agree exactly: the noise is gone
    assert math.isnan(t1.scores["brightness"].score) and t1.scores["brightness"].reason == "too few natural samples"
    assert t2.scores["brightness"].score == 0.0
    assert result.summaries[0].excluded_reasons == {"too few natural samples": 1}
    assert any("excluded from the scores (per target: t0 2, t1 3)" in w for w in result.warnings)
    assert json.loads(result.to_json())["off_manifold"]["share"] == pytest.approx(5 / 12)


@pytest.mark.parametrize("policy", ["mark", "keep"])
def test_off_manifold_mark_and_keep_score_every_sample(tmp_path, policy):
    run = make_run(tmp_path, flags=FLAGS)
    ss = load_samples(run, off_manifold=policy)
    assert [len(g.paths) for g in ss.groups] == [4, 4, 4] and ss.off_manifold["excluded"] == {}
    result = C.compare(ss, A.get_attributes(["brightness"]), FAST)
    assert result.targets[0].scores["brightness"].score > 0  # the noisy samples now count
    assert result.targets[0].meta["off_manifold"] == {"excluded": 0, "flagged_scored": 2}
    assert any("5 of 12 samples (42%) flagged" in w for w in result.warnings)


def test_off_manifold_unknown_in_older_manifests(tmp_path):
    ss = load_samples(make_run(tmp_path))  # no flags written
    assert ss.off_manifold["n_recorded"] == 0 and ss.off_manifold["share"] is None
    assert all(len(g.paths) == 4 and g.off_manifold == [None] * 4 for g in ss.groups)
    with pytest.raises(C.UsageError, match="off-manifold policy"):
        load_samples(make_run(tmp_path / "x"), off_manifold="drop")


def test_cli_off_manifold_option(tmp_path):
    from probe.cli.compare import compare

    run = make_run(tmp_path, flags=FLAGS)
    res = CliRunner().invoke(compare, [str(run), "-a", "brightness", "--classifier", "none", "--bootstrap", "20"])
    assert res.exit_code == 0, res.output
    assert "t0 2, t1 3" in res.stderr and "too few natural samples" in res.stderr
    res = CliRunner().invoke(compare, [str(run), "-a", "brightness", "--classifier", "none", "--bootstrap", "20",
                                       "--off-manifold", "keep", "--json"])
    assert res.exit_code == 0 and json.loads(res.stdout)["off_manifold"]["policy"] == "keep"


# ---------------------------------------------------------------------------------------------- target picture


def test_target_picture_in_the_html_only_from_inside_the_run(tmp_path):
    from probe.render.report import html_report

    outside = _png(tmp_path / "secret.png", np.ones((16, 16, 3)))
    run = make_run(tmp_path, target_image={0: "targets/t0.png", 1: "../secret.png", 2: str(outside)})
    _png(run / "targets" / "t0.png", np.zeros((16, 16, 3)))
    ss = load_samples(run)
    assert ss.groups[0].meta["target_image"] == str(run / "targets" / "t0.png")
    assert "target_image" not in ss.groups[1].meta and "target_image" not in ss.groups[2].meta
    result = C.compare(ss, A.get_attributes(["brightness"]), FAST)
    page = html_report(result, ss)
    assert "First column: the target's own picture" in page
    without = html_report(C.compare(load_samples(make_run(tmp_path / "b")), A.get_attributes(["brightness"]),
                                    FAST), load_samples(make_run(tmp_path / "c")))
    assert "No target pictures in the run folder" in without


def test_decode_copies_the_target_picture_and_records_the_encoder_weights(tmp_path):
    torch = pytest.importorskip("torch")
    from probe.diffusion.schedules import GuidanceConfig
    from probe.targets import Target, encode_images01
    from probe.workflows.decode.pipeline import DecodeSettings, decode_targets
    from tests.tiny_diffusion import tiny_encoder, tiny_pixel_prior

    prior, enc = tiny_pixel_prior(), tiny_encoder()
    pic = _png(tmp_path / "in" / "pic.png", np.random.default_rng(0).random((300, 200, 1)))
    vec = encode_images01(enc, torch.rand(1, 1, 16, 16, generator=torch.Generator().manual_seed(0)))[0].numpy()
    targets = [Target("p", vec, "image", str(pic), image_path=str(pic)), Target("v", vec, "vector", "test")]
    cfg = GuidanceConfig(name="test", steps=2, rounds=1, early_rounds=1, early_steps=1, update="ddim")
    out = tmp_path / "out"
    decode_targets(prior, enc, targets, out, DecodeSettings(samples=2, batch_size=4, config=cfg, sheet=False))
    recs = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert {r["target_id"]: r.get("target_image") for r in recs} == {"p": "targets/p.png", "v": None}
    assert Image.open(out / "targets" / "p.png").size == (171, 256)  # shrunk to ≤ 256 px, aspect kept
    assert all(r["encoder_weights"] == "" and r["encoder_weights_sha256"] == "" and r["encoder"] == enc.spec
               for r in recs)
    ss = load_samples(out)
    assert ss.groups[0].meta["target_image"] == str(out / "targets" / "p.png")
    assert ss.decoded_encoders == [{"spec": enc.spec, "weights": "", "weights_sha256": ""}]


# ---------------------------------------------------------------------------------------------- grey, few targets


def test_colour_collapses_on_grey_images(tmp_path):
    names = ["red", "green", "blue", "value", "rgb_spread", "value_spread", "hue", "hue_spread", "hue_histogram",
             "saturation", "saturation_spread", "brightness", "contrast"]
    grey = C.compare(load_samples(make_run(tmp_path / "g", grey=True)), A.get_attributes(names), FAST)
    assert {s.name for s in grey.summaries} == {"brightness", "contrast"}
    (c,) = grey.collapsed
    assert c["label"] == "colour (grey images: same as luminance)" and set(c["attributes"]) == set(names[:11])
    assert c["same_as"]["red"] == "brightness" and c["same_as"]["value_spread"] == "contrast"
    assert c["same_as"]["hue"] is None
    assert json.loads(grey.to_json())["collapsed"][0]["label"] == c["label"]
    # why: on a grey image the channel means are the luma mean and the spreads its standard deviation
    img = np.random.default_rng(0).random((8, 8, 1)).repeat(3, 2)
    assert A.is_grey(img) and not A.is_grey(np.random.default_rng(1).random((8, 8, 3)))
    for n, same in (("red", "brightness"), ("value", "brightness"), ("rgb_spread", "contrast")):
        assert A.ATTRIBUTES[n].fn(img) == pytest.approx(A.ATTRIBUTES[same].fn(img))
    colour = C.compare(load_samples(make_run(tmp_path / "c")), A.get_attributes(names), FAST)
    assert colour.collapsed == [] and len(colour.summaries) == len(names)
    only = C.compare(load_samples(make_run(tmp_path / "o", grey=True)), A.get_attributes(["red"]), FAST)
    assert [s.name for s in only.summaries] == ["red"]  # nothing else to score: kept rather than emptied


def test_warns_when_intervals_rest_on_few_targets(tmp_path):
    few = C.compare(load_samples(make_run(tmp_path / "a", n_targets=3, n_samples=2)),
                    A.get_attributes(["brightness"]), FAST)
    assert any("rest on 3 target(s), fewer than 10" in w for w in few.warnings)
    assert any("fewer than 10" in w for w in json.loads(few.to_json())["warnings"])
    enough = C.compare(load_samples(make_run(tmp_path / "b", n_targets=10, n_samples=2)),
                       A.get_attributes(["brightness"]), FAST)
    assert not any("fewer than 10" in w for w in enough.warnings)
