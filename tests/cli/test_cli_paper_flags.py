"""The paper-exactness overrides and the prior's compute options on the command line (issue 11 shipped
them Python-only): every decoding command takes them, each value reaches the GuidanceConfig or the Prior,
a bad value is Click's usual error (exit 2), and leaving them out changes nothing."""

from __future__ import annotations

import json

import pytest

import probe
from probe.diffusion.schedules import preset
from probe.errors import UsageError
from probe.manifest import Manifest
from probe.workflows.options import DecodeOptions
from tests.tiny_diffusion import save_pixel_prior, tiny_pixel_prior

FAST = ["--steps", "3", "--rounds", "1", "--early-steps", "0", "--late-steps", "0", "--samples", "1"]
FLAGS = ["--clamp", "none", "--no-clip-x0", "--beta", "scheduler", "--loss-resize", "whole", "--best-by", "loss",
         "--precision", "bf16", "--checkpointing", "unet"]
CONFIG = {"clamp": "none", "clip_x0": False, "beta": "scheduler", "loss_resize": "whole", "best_by": "loss"}
WALKS = {"interpolate": ["a.png", "b.png"], "perturb": ["mean", "--from", "s.h5"], "map": ["s.h5", "--grid", "2x2"]}


@pytest.fixture(scope="module")
def prior_dir(tmp_path_factory):
    return save_pixel_prior(tmp_path_factory.mktemp("prior") / "ddpm")


@pytest.fixture()
def seen_priors(monkeypatch):
    """(precision, checkpoint) of every prior the decode workflow hands to the pipeline."""
    import probe.workflows.decode as W

    seen, real = [], W.decode_targets

    def spy(prior, *args, **kw):
        seen.append((prior.precision, prior.checkpoint))
        return real(prior, *args, **kw)
    monkeypatch.setattr(W, "decode_targets", spy)
    return seen


def _decode(run_cli, prior_dir, tiny_encoder_args, image, out, *flags):
    res = run_cli("-q", "decode", "--prior", prior_dir, *tiny_encoder_args, "--image", image, *FAST, *flags,
                  "--out", out, "--json")
    assert res.exit_code == 0, res.stderr
    return json.loads(res.stdout)["records"][0]["settings"]


def test_each_flag_reaches_the_config_and_the_prior(run_cli, prior_dir, tiny_encoder_args, small_images, tmp_path,
                                                     seen_priors):
    settings = _decode(run_cli, prior_dir, tiny_encoder_args, small_images[0], tmp_path / "o", *FLAGS)
    assert {k: settings[k] for k in CONFIG} == CONFIG and settings["precision"] == "bf16"
    assert seen_priors == [("bf16", "unet")]
    assert Manifest.read(tmp_path / "o").records[0].settings == settings  # as recorded on disk


def test_without_the_flags_nothing_changes(run_cli, prior_dir, tiny_encoder_args, small_images, tmp_path,
                                           seen_priors):
    settings = _decode(run_cli, prior_dir, tiny_encoder_args, small_images[0], tmp_path / "o")
    balanced = preset("balanced").to_dict()
    assert {k: settings[k] for k in CONFIG} == {k: balanced[k] for k in CONFIG}
    assert "precision" not in settings and seen_priors == [("fp32", "none")]  # manifests as before


@pytest.mark.parametrize("command", sorted(WALKS))
def test_the_walks_take_the_flags(run_cli, command, monkeypatch, tmp_path):
    """interpolate/perturb/map hand the same DecodeOptions to their workflow (stopped before any work)."""
    import importlib

    module = importlib.import_module(f"probe.workflows.walks.{command}")
    got = []

    def stop(*_args, options, **_kw):
        got.append(options)
        raise SystemExit(0)
    monkeypatch.setattr(module, "run", stop)
    res = run_cli(command, *WALKS[command], *FLAGS[:9], "--clip-x0", "--precision", "bf16", "--checkpointing", "all",
                  "--out", tmp_path / "o")
    assert res.exit_code == 0 and len(got) == 1, res.stderr
    auto = got[0].config()  # the default schedule: the flags reach both presets auto picks from
    for config in auto.choices:
        assert {k: getattr(config, k) for k in CONFIG} == {**CONFIG, "clip_x0": True}  # the last of the pair wins
    assert (got[0].precision, got[0].checkpoint) == ("bf16", "all")


@pytest.mark.parametrize("flag,value", [("--clamp", "soft"), ("--beta", "official"), ("--loss-resize", "crop"),
                                        ("--best-by", "distance"), ("--precision", "fp16"),
                                        ("--checkpointing", "yes")])
@pytest.mark.parametrize("command", ["decode", "interpolate"])
def test_a_bad_value_is_clicks_usage_error(run_cli, command, flag, value, tmp_path):
    res = run_cli(command, *WALKS.get(command, ["--image", "x.png"]), flag, value, "--out", tmp_path / "o")
    assert res.exit_code == 2 and f"Invalid value for '{flag}'" in res.stderr and repr(value) in res.stderr


def test_the_api_takes_them_too(tmp_path):
    opts = DecodeOptions.build(**CONFIG, precision="bf16", checkpoint="vae")
    assert {k: getattr(opts.config().fallback, k) for k in CONFIG} == CONFIG and \
        (opts.precision, opts.checkpoint) == ("bf16", "vae")
    with pytest.raises(UsageError, match="precision must be one of fp32, bf16"):
        DecodeOptions.build(precision="fp16")
    with pytest.raises(UsageError, match="checkpointing must be one of"):
        DecodeOptions(checkpoint="yes")
    prior = probe.load_prior(tiny_pixel_prior(), precision="bf16", checkpoint="unet")
    assert (prior.precision, prior.checkpoint) == ("bf16", "unet")
    assert (probe.load_prior(prior).precision, probe.load_prior(prior, checkpoint="none").checkpoint) == \
        ("bf16", "none")  # None keeps what the prior has


@pytest.mark.parametrize("native", [False, True])
def test_bf16_where_it_is_emulated_says_so_once(run_cli, prior_dir, tiny_encoder_args, small_images, tmp_path,
                                                monkeypatch, native):
    import probe.workflows.decode.pipeline as P

    monkeypatch.setattr(P, "native_bf16", lambda device: native)
    res = run_cli("-q", "decode", "--prior", prior_dir, *tiny_encoder_args, "--image", small_images[0], *FAST,
                  "--precision", "bf16", "--out", tmp_path / "o", "--json")
    assert res.exit_code == 0, res.stderr
    said = [line for line in res.stderr.splitlines() if "no bf16 instructions" in line]
    assert len(said) == (0 if native else 1) and (native or "leave --precision out" in said[0])


def test_native_bf16_is_a_property_of_the_device():
    from probe.hardware import native_bf16

    assert native_bf16("meta") is False  # neither a CPU nor a CUDA device
    assert isinstance(native_bf16("cpu"), bool)
