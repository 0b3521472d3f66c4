"""Shared fixtures: small simulated cohorts (made once per session) and a CLI runner."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from mseval.cli import main
from mseval.simulate.model import TrialConfig


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist (`make test` runs `-n 2`), send each test module to one worker
    (`--dist loadscope`) instead of spreading single tests: a module-scoped fixture (a simulated
    trial, a built report, a trained demo) is then built once, not once per worker. An explicit
    `--dist` other than xdist's default `load` is left as given. Modules go out in the order of
    `pytest_collection_modifyitems` (longest first), not xdist's default reorder by test count, which
    sent the few-test but long demo modules last."""
    if getattr(config.option, "dist", "no") == "load" and getattr(config.option, "numprocesses", None):
        config.option.dist = "loadscope"
        config.option.loadscopereorder = False


LONGEST_FIRST = (
    "tests/commands/test_reliability.py", "tests/bids/test_roundtrip.py", "tests/stats/test_effects.py", "tests/reports/test_report.py",
    "tests/test_demo_training.py", "tests/forecast/test_evaluate.py", "tests/test_demo_shipped.py", "tests/stats/test_sap.py",
    "tests/simulate/test_trial.py", "tests/commands/test_forecast_image_cli.py", "tests/reports/test_projections.py",
    "tests/bids/test_forecast_provenance.py",
    "tests/commands/test_simulate_cli.py", "tests/validity/test_observed_validity.py", "tests/commands/test_forecasters_cli.py",
    "tests/bids/test_forecast_import.py", "tests/simulate/test_observable_oracle.py", "tests/bids/test_grids_and_bad_input.py",
    "tests/test_demo.py", "tests/forecast/test_centres.py",
)
"""The costliest test modules, longest first (per-module sums of a full run's durations)."""


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Run the modules of LONGEST_FIRST first, in that order, and the others after them in collection
    order (tests keep their order within a module). Under `--dist loadscope` xdist hands modules out
    in this order, so the long ones start at once and the short ones fill the workers' tails (xdist's
    own order, by test count, sent the few-test demo modules last, to run alone at the end)."""
    rank = {name: k for k, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::")[0], len(rank)))


@pytest.fixture(scope="session")
def tiny_cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two patients per arm (12 in all) at 32^3: the cohort bad-input tests copy and break."""
    from mseval.simulate.trial import simulate_trial

    out = tmp_path_factory.mktemp("cohorts") / "tiny"
    simulate_trial(out, TrialConfig(patients_per_arm=2, shape=(32, 32, 32), seed=11, followup_weeks=48))
    return out


@pytest.fixture(scope="session")
def visits_cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 20^3 three-visit cohort (w24, w48, w96) with dropout and missed visits, 2 patients per arm
    (12 in all) at twice the default NET2 rate (so that most observed visits have lesions): the
    cohort the per-visit tests read."""
    from mseval.simulate.trial import simulate_trial

    out = tmp_path_factory.mktemp("cohorts") / "visits"
    simulate_trial(out, TrialConfig(patients_per_arm=2, shape=(20, 20, 20), seed=1, base_rate=12.0, dropout_per_year=0.2, missed_visit=0.2))
    return out


@pytest.fixture(scope="session")
def renderer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 20^3 centre-conditioned diffusion decoder with seeded random weights: the mechanics of rendering, not its skill
    (the shipped decoder's is measured in bench/render_dev.py)."""
    import torch

    from forecast.checkpoint import Checkpoint, save_checkpoint
    from forecast.config import ForecastConfig
    from forecast.model import NET2Denoiser

    cfg = ForecastConfig(name="r", channels=(8, 8, 16), attention_levels=(False, False, False), num_head_channels=8, norm_num_groups=8,
                         shape=(20, 20, 20), count_head=True, centre_map=True, mask_threshold=0.5, sample_steps=2,
                         arms=("placebo", "laquinimod", "ifnb1a_im", "ifnb1a_sc", "dmf", "ocrelizumab"))
    torch.manual_seed(0)
    net = NET2Denoiser(cfg)
    with torch.no_grad():  # MONAI zero-initialises the output convolution: perturb every weight so the output varies
        for prm in net.parameters():
            prm.add_(0.2 * torch.randn_like(prm))
    state = net.state_dict()
    out = tmp_path_factory.mktemp("render") / "renderer"
    save_checkpoint(Checkpoint(config=cfg, model=state, ema=state, optimizer=None, step=0, train_ids=[], val_ids=[]), out)
    return out


@pytest.fixture()
def cohort_copy(tiny_cohort: Path, tmp_path: Path) -> Path:
    """A private copy of `tiny_cohort` that a test may break."""
    dst = tmp_path / "cohort"
    shutil.copytree(tiny_cohort, dst)
    return dst


class CliResult:
    def __init__(self, code: int, out: str, err: str) -> None:
        self.code, self.out, self.err = code, out, err


@pytest.fixture()
def cli(capsys: pytest.CaptureFixture[str]):  # noqa: ANN201
    """Run `mseval ARGS...` in-process; returns exit code, stdout and stderr."""

    def run(*args: str | Path) -> CliResult:
        code = main([str(a) for a in args])
        cap = capsys.readouterr()
        return CliResult(code, cap.out, cap.err)

    return run


def _count_trial(seed: int, patients_per_arm: int = 40):  # noqa: ANN202
    """A trial drawn exactly as `mseval simulate` draws it (counts from the continuous-time lesion
    events, `simulate_count_trial`), without images: (features + observed net2 from baseline to the
    last visit, true expected count under the allocated arm, latent activity). Features hold what an
    ideal reader reads off the baseline: gd_count, t2_count, t2_volume_mm3 (the lesion count times a
    u-free per-patient lesion size), dawm_fraction and prelesional_sites."""
    from mseval.simulate.counts_only import simulate_count_trial
    from mseval.simulate.model import draw_patients  # noqa: F401 - same law

    cfg = TrialConfig(patients_per_arm=patients_per_arm, seed=seed)
    tr = simulate_count_trial(cfg, samples=1)
    feats = tr.table[["patient_id", "arm", "age", "followup_years", "gd_count", "t2_count", "t2_volume_mm3", "dawm_fraction",
                      "prelesional_sites", "net2"]].copy()
    alloc = tr.truth[tr.truth["allocated"]].set_index("patient_id")
    mu = alloc.loc[feats["patient_id"], "expected_count"].to_numpy()
    from mseval.seeding import rng_for

    u = draw_patients(cfg, rng_for(cfg.seed, "patients"))["latent_activity"].to_numpy()
    return feats.reset_index(drop=True), mu, u


@pytest.fixture()
def count_trial():  # noqa: ANN201
    """count_trial(seed, patients_per_arm=40) -> (features with observed net2, true allocated mean, latent activity):
    a trial of the simulator's count model without images (baseline features as the inputs show them)."""
    return _count_trial
