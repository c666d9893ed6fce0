"""``probe extract``, ``probe info`` and ``probe export`` as a user runs them (in-process CliRunner).

Most runs use timm's tiny ``test_resnet`` with a fixed seeded checkpoint (conftest ``tiny_ckpt``): 96-d
embedding, 160 px input, deterministic across runs, milliseconds per image.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from probe.images import read_image01
from probe.models.registry import load_encoder
from probe.store import FeatureStore

GROUP = "timm_test_resnet/embedding"


@pytest.fixture(scope="module")
def tiny_enc(tiny_ckpt):
    return load_encoder("timm:test_resnet", weights=str(tiny_ckpt), device="cpu")


def _features(enc, paths) -> np.ndarray:
    with torch.no_grad():
        return torch.cat([enc(read_image01(p)[None]) for p in paths]).numpy()


def _rows(store: Path, group: str = GROUP):
    with FeatureStore(store) as st:
        g = st.group(group)
        return g.rows(slice(None)), g.paths, g.labels, g.attrs


# ------------------------------------------------------------------------------ bad inputs


def _damaged_folder(copy_images, small_images) -> tuple[list[Path], Path, Path]:
    good = copy_images(small_images[:4])
    folder = good[0].parent
    truncated = folder / "truncated.png"
    truncated.write_bytes(small_images[5].read_bytes()[:300])  # a PNG cut off in its pixel data
    fake = folder / "notes.png"
    fake.write_text("not an image at all\n")
    (folder / "readme.txt").write_text("ignored: not an image suffix")
    return good, truncated, fake


def test_corrupt_and_non_image_files_warn_and_run_on(run_cli, tmp_path, copy_images, small_images,
                                                      tiny_encoder_args, tiny_enc):
    good, truncated, fake = _damaged_folder(copy_images, small_images)
    store = tmp_path / "f.h5"
    # default --workers: the reader runs in a worker process
    r = run_cli("extract", good[0].parent, "-o", store, *tiny_encoder_args, "--batch-size", "2", "--json")
    assert r.exit_code == 0, r.output
    assert f"warning: {truncated}: unreadable image" in r.stderr
    assert f"warning: {fake}: not an image file" in r.stderr
    assert "readme.txt" not in r.output  # folders only yield image suffixes
    summary = json.loads(r.stdout)
    assert summary["stored"] == 4 and summary["skipped"] == 0
    assert sorted(f["path"] for f in summary["failed"]) == sorted([str(fake), str(truncated)])
    assert "failed 2" in r.stderr
    feats, paths, _, _ = _rows(store)
    assert sorted(paths) == sorted(str(p) for p in good)
    order = [paths.index(str(p)) for p in good]
    np.testing.assert_allclose(feats[order], _features(tiny_enc, good), atol=1e-5)


def test_all_inputs_bad_exit_3(run_cli, tmp_path, tiny_encoder_args):
    bad = [tmp_path / "a.png", tmp_path / "b.jpg"]
    bad[0].write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    bad[1].write_bytes(b"")
    r = run_cli("extract", *bad, "-o", tmp_path / "f.h5", *tiny_encoder_args, "--workers", "0")
    assert r.exit_code == 3
    assert "error: nothing extracted: all 2 inputs failed" in r.stderr
    assert f"warning: {bad[0]}" in r.stderr and f"warning: {bad[1]}" in r.stderr
    if (tmp_path / "f.h5").exists():
        with FeatureStore(tmp_path / "f.h5") as st:
            assert st.group_names() == []


def test_missing_inputs_and_misuse_exit_codes(run_cli, tmp_path, small_images, tiny_encoder_args):
    store = tmp_path / "f.h5"
    r = run_cli("extract", tmp_path / "nope.png", "-o", store, *tiny_encoder_args)
    assert r.exit_code == 3 and "nope.png: no such file, directory or glob match" in r.stderr
    (tmp_path / "empty").mkdir()
    r = run_cli("extract", tmp_path / "empty", "-o", store, *tiny_encoder_args)
    assert r.exit_code == 3 and "no image files found" in r.stderr
    r = run_cli("extract", "-o", store, *tiny_encoder_args)
    assert r.exit_code == 2 and "give images" in r.stderr
    r = run_cli("extract", small_images[0], *tiny_encoder_args)  # no -o
    assert r.exit_code == 2 and "--out" in r.stderr
    r = run_cli("extract", small_images[0], "-o", store, "--no-such-option")
    assert r.exit_code == 2 and "No such option" in r.stderr
    r = run_cli("extract", small_images[0], "-o", store, *tiny_encoder_args, "--labels", "grandparent")
    assert r.exit_code == 2
    assert not store.exists()


def test_glob_input(run_cli, tmp_path, small_images, tiny_encoder_args):
    store = tmp_path / "f.h5"
    r = run_cli("extract", str(small_images[0].parent / "img0[0-2].png"), "-o", store, *tiny_encoder_args,
                "--workers", "0")
    assert r.exit_code == 0, r.output
    assert _rows(store)[1] == [str(p) for p in small_images[:3]]


# ------------------------------------------------------------------------------ input lists


def test_list_from_stdin_keeps_order(run_cli, tmp_path, small_images, tiny_encoder_args, tiny_enc):
    chosen = [small_images[7], small_images[2], small_images[9]]
    text = "# images to extract\n" + "\n".join(map(str, chosen)) + f"\n\n  {chosen[0]}  \n"  # repeat dropped
    store = tmp_path / "f.h5"
    r = run_cli("extract", "--list", "-", "-o", store, *tiny_encoder_args, "--workers", "0", "--json", input=text)
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["stored"] == 3
    feats, paths, _, _ = _rows(store)
    assert paths == [str(p) for p in chosen]
    np.testing.assert_allclose(feats, _features(tiny_enc, chosen), atol=1e-5)


def test_list_file_and_unreadable_list(run_cli, tmp_path, small_images, tiny_encoder_args):
    lst = tmp_path / "inputs.txt"
    lst.write_text(f"{small_images[1]}\n{small_images[0]}\n")
    store = tmp_path / "f.h5"
    r = run_cli("extract", "--list", lst, "-o", store, *tiny_encoder_args, "--workers", "0")
    assert r.exit_code == 0, r.output
    assert _rows(store)[1] == [str(small_images[1]), str(small_images[0])]
    r = run_cli("extract", "--list", tmp_path / "missing.txt", "-o", store, *tiny_encoder_args)
    assert r.exit_code == 3 and "missing.txt: cannot read list file" in r.stderr


# ------------------------------------------------------------------------------ reruns


def test_overwrite_replaces_the_group(run_cli, tmp_path, small_images, tiny_encoder_args):
    store = tmp_path / "f.h5"
    assert run_cli("extract", *small_images[:2], "-o", store, *tiny_encoder_args, "--workers", "0").exit_code == 0
    r = run_cli("extract", *small_images[1:4], "-o", store, *tiny_encoder_args, "--workers", "0", "--json")
    assert json.loads(r.stdout)["stored"] == 2 and json.loads(r.stdout)["skipped"] == 1  # resume: only new ones
    assert _rows(store)[1] == [str(p) for p in small_images[:4]]
    r = run_cli("extract", *small_images[1:3], "-o", store, *tiny_encoder_args, "--workers", "0", "--overwrite",
                "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["stored"] == 2
    assert _rows(store)[1] == [str(p) for p in small_images[1:3]]


def test_group_of_other_weights_is_refused(run_cli, tmp_path, small_images, tiny_encoder_args):
    import timm

    torch.manual_seed(1)
    other = tmp_path / "other.pth"
    torch.save(timm.create_model("test_resnet").state_dict(), other)
    store = tmp_path / "f.h5"
    assert run_cli("extract", *small_images[:2], "-o", store, *tiny_encoder_args, "--workers", "0").exit_code == 0
    before = _rows(store)[0]
    r = run_cli("extract", small_images[2], "-o", store, "-m", "timm:test_resnet", "--weights", other,
                "--workers", "0")
    assert r.exit_code == 2
    assert f"group {GROUP} was made with weights=" in r.stderr and str(other) in r.stderr
    assert "--overwrite" in r.stderr and r.stderr.count("\n") == r.stderr.count("warning") + 2  # say + error
    np.testing.assert_array_equal(_rows(store)[0], before)  # nothing appended
    # same weights but pooled differently is another model too
    r = run_cli("extract", small_images[2], "-o", store, *tiny_encoder_args, "--keep-spatial", "--workers", "0")
    assert r.exit_code == 2 and "keep_spatial" in r.stderr
    # --overwrite is the way out
    r = run_cli("extract", small_images[2], "-o", store, "-m", "timm:test_resnet", "--weights", other,
                "--workers", "0", "--overwrite")
    assert r.exit_code == 0 and _rows(store)[3]["weights"] == str(other)


def test_keyboard_interrupt_keeps_finished_batches(run_cli, monkeypatch, tmp_path, small_images,
                                                   tiny_encoder_args, tiny_enc):
    import probe.workflows.extract.pipeline as E

    read = E.read_image01

    def interrupted(path, *args):
        if Path(path).name == "img05.png":
            raise KeyboardInterrupt
        return read(path, *args)
    monkeypatch.setattr(E, "read_image01", interrupted)
    store = tmp_path / "f.h5"
    r = run_cli("extract", *small_images[:8], "-o", store, *tiny_encoder_args, "--batch-size", "2",
                "--workers", "0")
    assert r.exit_code == 130
    assert "interrupted: every finished batch is kept; rerun the same command to resume" in r.stderr
    feats, paths, _, _ = _rows(store)
    assert paths == [str(p) for p in small_images[:4]]
    np.testing.assert_allclose(feats, _features(tiny_enc, small_images[:4]), atol=1e-5)
    monkeypatch.setattr(E, "read_image01", read)
    r = run_cli("extract", *small_images[:8], "-o", store, *tiny_encoder_args, "--batch-size", "2",
                "--workers", "0", "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["stored"] == 4 and json.loads(r.stdout)["skipped"] == 4
    assert _rows(store)[1] == [str(p) for p in small_images[:8]]


# ------------------------------------------------------------------------------ options


def test_labels_parent_and_export(run_cli, tmp_path, fashion_dir, tiny_encoder_args):
    store = tmp_path / "f.h5"
    folders = sorted(p.name for p in fashion_dir.iterdir())
    assert folders == ["Sneaker", "T-shirt-top", "Trouser"]
    # first only one class, then the whole tree: rows stored first keep their label's meaning
    r = run_cli("extract", fashion_dir / "Trouser", "-o", store, *tiny_encoder_args, "--labels", "parent",
                "--workers", "0")
    assert r.exit_code == 0, r.output
    r = run_cli("extract", fashion_dir, "-o", store, *tiny_encoder_args, "--labels", "parent", "--workers", "0",
                "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["stored"] == 6
    feats, paths, labels, attrs = _rows(store)
    names = attrs["label_names"]
    assert sorted(names) == folders and len(paths) == 9
    assert [names[k] for k in labels] == [Path(p).parent.name for p in paths]
    assert labels.dtype == np.int64

    out = tmp_path / "export" / "feats.npy"
    r = run_cli("export", store, "-o", out, "--json")
    assert r.exit_code == 0, r.output
    result = json.loads(r.stdout)
    assert result == {"group": GROUP, "rows": 9, "dim": 96,
                      "files": [str(out), str(out.with_suffix(".paths.txt")), str(out.with_suffix(".labels.npy")),
                                str(out.with_suffix(".label_names.txt"))]}
    np.testing.assert_array_equal(np.load(out), feats)
    assert out.with_suffix(".paths.txt").read_text().splitlines() == paths
    np.testing.assert_array_equal(np.load(out.with_suffix(".labels.npy")), labels)
    assert out.with_suffix(".label_names.txt").read_text().splitlines() == names


def test_export_needs_group_when_several(run_cli, tmp_path, small_images, tiny_encoder_args):
    store = tmp_path / "f.h5"
    r = run_cli("extract", *small_images[:2], "-o", store, *tiny_encoder_args, "--layer", "embedding",
                "--layer", "layer3", "--workers", "0")
    assert r.exit_code == 0, r.output
    r = run_cli("export", store, "-o", tmp_path / "x.npy")
    assert r.exit_code == 2 and "holds 2 groups" in r.stderr and "--group" in r.stderr
    r = run_cli("export", store, "--group", "timm_test_resnet/layer3", "-o", tmp_path / "x.npy")
    assert r.exit_code == 0 and np.load(tmp_path / "x.npy").shape == (2, 192)
    assert not (tmp_path / "x.labels.npy").exists()  # no labels were stored
    assert "wrote 2x192 from timm_test_resnet/layer3" in r.stderr
    r = run_cli("export", tmp_path / "none.h5", "-o", tmp_path / "y.npy")
    assert r.exit_code == 3 and "feature store not found" in r.stderr


def test_info_json_and_table(run_cli, tmp_path, small_images, tiny_encoder_args, tiny_ckpt):
    store = tmp_path / "f.h5"
    assert run_cli("extract", *small_images[:3], "-o", store, *tiny_encoder_args, "--workers", "0").exit_code == 0
    r = run_cli("info", store, "--json")
    assert r.exit_code == 0
    desc = json.loads(r.stdout)
    assert desc["file"] == str(store) and len(desc["groups"]) == 1
    g = desc["groups"][0]
    assert (g["name"], g["rows"], g["dim"], g["dtype"], g["labelled"]) == (GROUP, 3, 96, "float32", False)
    assert g["attrs"]["model_spec"] == "timm:test_resnet" and g["attrs"]["weights"] == str(tiny_ckpt)
    assert g["attrs"]["preprocess"]["size"] == 160 and g["attrs"]["feature_shape"] == [96]
    r = run_cli("info", store)
    assert r.exit_code == 0 and GROUP in r.stdout and "timm:test_resnet" in r.stdout  # listings: stdout


def test_float16(run_cli, tmp_path, small_images, tiny_encoder_args, tiny_enc):
    store = tmp_path / "f.h5"
    r = run_cli("extract", *small_images[:3], "-o", store, *tiny_encoder_args, "--float16", "--workers", "0")
    assert r.exit_code == 0, r.output
    with FeatureStore(store) as st:
        assert st.group().features.dtype == np.float16
    feats = _rows(store)[0]
    assert feats.dtype == np.float32  # rows() hands back float32
    ref = _features(tiny_enc, small_images[:3])
    np.testing.assert_allclose(feats, ref, rtol=2e-3, atol=2e-3 * np.abs(ref).max())


def test_quiet_prints_only_json_and_warnings(run_cli, tmp_path, small_images, tiny_encoder_args):
    r = run_cli("-q", "extract", small_images[0], "-o", tmp_path / "f.h5", *tiny_encoder_args, "--workers", "0",
                "--json")
    assert r.exit_code == 0 and r.stderr == "" and json.loads(r.stdout)["stored"] == 1


def test_torchscript_model_end_to_end(run_cli, tmp_path, small_images):
    from torch import nn

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 5, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten()).eval()
    path = tmp_path / "net.pt"
    torch.jit.trace(net, torch.rand(1, 3, 24, 24)).save(str(path))
    path.with_name("net.pt.json").write_text(json.dumps({"size": 24, "crop_pct": 1.0}))
    store = tmp_path / "f.h5"
    r = run_cli("extract", *small_images[:2], "-o", store, "-m", f"torchscript:{path}", "--workers", "0")
    assert r.exit_code == 0, r.output
    key = f"torchscript_{str(path).replace('/', '_')}/embedding"
    feats, paths, _, attrs = _rows(store, key)
    assert feats.shape == (2, 5) and attrs["preprocess"]["size"] == 24
    enc = load_encoder(f"torchscript:{path}", device="cpu")
    np.testing.assert_allclose(feats, _features(enc, small_images[:2]), atol=1e-6)


# ------------------------------------------------------------------------------ CLIP text prompts


def test_clip_text_prompts_stored_in_text_group(run_cli, tmp_path, small_images):
    store = tmp_path / "f.h5"
    clip = ["-m", "open_clip:ViT-B-32", "--weights", "random", "--device", "cpu", "--workers", "0"]
    r = run_cli("extract", small_images[0], "-o", store, *clip, "--text", "a photo of a cat",
                "--text", "a rocket", "--text", "a photo of a cat", "--json")
    assert r.exit_code == 0, r.output
    image_summary, text_summary = json.loads(r.stdout)
    assert image_summary["groups"] == ["open_clip_ViT-B-32/embedding"] and image_summary["stored"] == 1
    assert text_summary["groups"] == ["open_clip_ViT-B-32/text"] and text_summary["stored"] == 2
    with FeatureStore(store) as st:
        assert st.group_names() == ["open_clip_ViT-B-32/embedding", "open_clip_ViT-B-32/text"]
        text = st.group("open_clip_ViT-B-32/text")
        assert text.paths == ["text:a photo of a cat", "text:a rocket"]
        assert text.dim == st.group("open_clip_ViT-B-32/embedding").dim == 512
        assert text.attrs["kind"] == "text" and text.attrs["layer"] == "text"
        assert text.attrs["model_spec"] == "open_clip:ViT-B-32"


def test_text_prompts_need_a_clip_model(run_cli, tmp_path, tiny_encoder_args):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a cat\n\na dog\n")
    r = run_cli("extract", "--text-file", prompts, "-o", tmp_path / "f.h5", *tiny_encoder_args)
    assert r.exit_code == 2 and "not a CLIP model" in r.stderr
