"""recipes/train_ddpm.py's learning-rate schedule (the recipe trains the bundled priors; --lr-schedule anneals them)."""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

import pytest

RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "train_ddpm.py"


@pytest.fixture(scope="module")
def recipe():
    spec = importlib.util.spec_from_file_location("train_ddpm", RECIPE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def args(schedule: str, **kw) -> argparse.Namespace:
    return argparse.Namespace(**{"lr": 1e-4, "warmup": 100, "max_steps": 1000, "lr_schedule": schedule, **kw})


def test_warm_up_then_constant(recipe):
    a = args("constant")
    assert recipe.learning_rate(a, 0) == pytest.approx(1e-6)
    assert recipe.learning_rate(a, 99) == recipe.learning_rate(a, 999) == pytest.approx(1e-4)


def test_cosine_halves_at_mid_run_and_reaches_zero_at_max_steps(recipe):
    a = args("cosine")
    assert recipe.learning_rate(a, 500) == pytest.approx(0.5e-4)
    assert recipe.learning_rate(a, 1000) == pytest.approx(0.0, abs=1e-12)
    assert recipe.learning_rate(a, 1000, run_fraction=0.5) == pytest.approx(0.0, abs=1e-12)
    assert recipe.learning_rate(a, 200, run_fraction=0.9) == recipe.learning_rate(a, 200)  # steps only


def test_cosine_time_follows_whichever_ends_first(recipe):
    a = args("cosine-time")
    assert recipe.learning_rate(a, 200, run_fraction=0.5) == pytest.approx(0.5e-4)  # the minutes lead
    assert recipe.learning_rate(a, 500, run_fraction=0.1) == pytest.approx(0.5e-4)  # the steps lead
    assert recipe.learning_rate(a, 200, run_fraction=1.3) == pytest.approx(0.0, abs=1e-12)
