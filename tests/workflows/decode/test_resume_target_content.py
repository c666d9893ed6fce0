"""A resumed decode refuses a target whose content changed under the same name (issue 22).

Vector and store-row targets carry ``vector_sha256``; image targets carry their file's ``image_sha256``;
a text target's prompt is its identity. Records written before a hash existed still resume.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


def _image(path: Path, value: int) -> None:
    Image.fromarray(np.full((20, 20, 3), value, dtype=np.uint8)).save(path)


def _vector(path: Path, value: int) -> None:
    np.save(path, np.linspace(0, 1, 96, dtype=np.float32) * (1 + value))


# (target flag, writer of the target file, hash key the record carries)
CASES = [("--image", _image, "image_sha256", ".png"), ("--vector", _vector, "vector_sha256", ".npy")]


@pytest.fixture()
def decode_args(tmp_path, tiny_ckpt):
    from tests.tiny_diffusion import save_pixel_prior

    prior = save_pixel_prior(tmp_path / "prior")
    return ["decode", "--prior", prior, "-m", "timm:test_resnet", "--weights", tiny_ckpt, "--device", "cpu",
            "--steps", "2", "-n", "1", "--no-baseline"]


@pytest.mark.parametrize("flag,write,key,suffix", CASES, ids=[c[0] for c in CASES])
def test_resume_refuses_a_changed_target_file(run_cli, tmp_path, decode_args, flag, write, key, suffix):
    target = tmp_path / f"t{suffix}"
    write(target, 10)
    args = [*decode_args, flag, target, "-o", tmp_path / "d"]
    r = run_cli(*args)
    assert r.exit_code == 0, r.output
    manifest = tmp_path / "d" / "manifest.jsonl"
    rec = json.loads(manifest.read_text().splitlines()[0])
    assert len(rec["target"][key]) == 64
    assert run_cli(*args).exit_code == 0  # same content: resumes
    write(target, 200)
    r = run_cli(*args)
    assert r.exit_code == 2, r.output
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and str(tmp_path / "d") in errors[0] and "content changed" in errors[0], r.stderr
    assert "Traceback" not in r.stderr
    # a record written before the hash existed still resumes (its content cannot be checked)
    lines = [json.loads(ln) for ln in manifest.read_text().splitlines()]
    for ln in lines:
        ln["target"].pop(key)
    manifest.write_text("".join(json.dumps(ln) + "\n" for ln in lines))
    r = run_cli(*args)
    assert r.exit_code == 0, r.output


def test_text_target_identity_is_its_prompt():
    from probe.targets import Target

    a = Target(id="text-a-cat", vector=np.zeros(3, np.float32), kind="text", source="text:a cat", label="a cat")
    b = Target(id="text-a-cat", vector=np.ones(3, np.float32), kind="text", source="text:a cat!", label="a cat!")
    assert a.record() != b.record()  # another prompt under the same id is another target
    assert "vector_sha256" not in a.record() and "image_sha256" not in a.record()  # re-encoded per device
