"""Forecast fixtures: one thread, a tiny network, and one short training run shared by the tests."""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("monai")

from forecast.config import ForecastConfig  # noqa: E402

TEST_NET = {"channels": (8, 8, 16), "attention_levels": (False, False, True), "num_head_channels": 8, "norm_num_groups": 8}


def interrupt_training(cohort: Path, cfg: ForecastConfig, out: Path, at_step: int) -> None:
    """Train `cfg` into `out` and stop it with Ctrl-C (KeyboardInterrupt) right after step `at_step`."""
    from forecast.train import train

    def stop(step: int, loss: float) -> None:
        if step == at_step:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(cohort, cfg, out, device="cpu", on_step=stop)


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def cohort16(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two patients per arm (12 in all) at 16^3 (seed 5: seed 11 does not fit at 16^3): the trial of the
    tests that train a network whose cost at 32^3 is the test's cost (DDP, the paper layout)."""
    from mseval.simulate.model import TrialConfig
    from mseval.simulate.trial import simulate_trial

    out = tmp_path_factory.mktemp("cohorts") / "cohort16"
    simulate_trial(out, TrialConfig(patients_per_arm=2, shape=(16, 16, 16), seed=5, followup_weeks=48))
    return out


@pytest.fixture(scope="session")
def small_cfg() -> ForecastConfig:
    """A tiny denoiser at 32^3 (three levels, attention at 8^3 only), a few steps."""
    return ForecastConfig(name="test", **TEST_NET, steps=2, batch_size=2, checkpoint_every=1, sample_steps=3, lr=1e-3, seed=5)


@pytest.fixture(scope="session")
def trained(tiny_cohort: Path, small_cfg: ForecastConfig, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A checkpoint folder after two training steps on the tiny cohort."""
    from forecast.train import train

    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("ckpt") / "model"
    train(tiny_cohort, small_cfg, out, device="cpu")
    return out
