"""One declaration of the decode options: every decoding command has the same options with the same defaults,
and every option reaches the frozen DecodeOptions (none can be declared and then ignored)."""

from __future__ import annotations

import dataclasses

import pytest

from probe.cli.main import COMMANDS, cli
from probe.cli.options import DECODE_PARAMS
from probe.errors import UsageError
from probe.workflows.options import GUIDANCE_FIELDS, OVERRIDE_ALIASES, DecodeOptions, EncoderOptions

DECODING = ("decode", "interpolate", "perturb", "map")


def _params(name: str) -> dict:
    import click

    cmd = cli.get_command(click.Context(cli), name)
    return {p.name: p for p in cmd.params}


def test_decoding_commands_share_one_option_set():
    shared = None
    for name in DECODING:
        params = _params(name)
        decl = {n: (type(p.type).__name__, p.default if n != "samples" else None, tuple(p.opts))
                for n, p in params.items() if n in DECODE_PARAMS or n in ("prior", "spec", "token_pool", "out")}
        decl.pop("save_trajectory", None)  # decode only
        shared = shared or decl
        assert decl == shared, name
    assert _params("decode")["token_pool"].default == _params("extract")["token_pool"].default  # both: not given
    assert set(_params("decode")) >= set(DECODE_PARAMS)


def test_every_decode_option_reaches_the_options():
    own = {f.name for f in dataclasses.fields(DecodeOptions)}
    for cli_name, (key, _) in DECODE_PARAMS.items():
        assert key in own or OVERRIDE_ALIASES.get(key, key) in GUIDANCE_FIELDS, cli_name
    with pytest.raises(UsageError, match="unknown decode option"):
        DecodeOptions.build(sampels=3)
    # and the other way round: every sampler setting but the internal ones has its flag, which reaches it
    reached = {OVERRIDE_ALIASES.get(key, key) for key, _ in DECODE_PARAMS.values()}
    assert set(GUIDANCE_FIELDS) - reached == {"eta", "track_best", "unguided"}
    assert set(_params("decode")) - set(DECODE_PARAMS) == {
        "as_json", "device", "group", "images", "index", "keep_spatial", "layers", "out", "paths", "prior", "quiet",
        "shard", "spec", "store", "texts", "token_pool", "vectors", "weights"}


def test_encoder_inference_rule(tmp_path):
    assert EncoderOptions().resolved() == EncoderOptions(spec="bundled:fashion-cnn", token_pool="cls")
    assert EncoderOptions(spec="timm:x").resolved(tmp_path / "missing.h5").spec == "timm:x"
    assert set(COMMANDS) >= set(DECODING)
