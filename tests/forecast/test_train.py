"""Training: the loss goes down, checkpoints round-trip exactly, resume continues bit-for-bit."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from forecast.checkpoint import build_model, load_checkpoint, save_checkpoint
from forecast.data import TrainingSet, load_patients, split_patients
from forecast.diffusion import alphas_cumprod, diffusion_loss, to_signed
from forecast.model import arm_weights
from forecast.train import init_model, train
from mseval.errors import InputError
from mseval.io.cohort import read_cohort
from tests.forecast.conftest import interrupt_training


def _states_equal(a: dict, b: dict) -> bool:
    if a.keys() != b.keys():
        return False
    for k in a:
        x, y = a[k], b[k]
        if isinstance(x, dict):
            if not _states_equal(x, y):
                return False
        elif isinstance(x, torch.Tensor):
            if not torch.equal(x, y):
                return False
        elif x != y:
            return False
    return True


def test_training_steps_lower_the_loss_on_a_fixed_batch(tiny_cohort, small_cfg):
    cohort = read_cohort(tiny_cohort)
    cfg = small_cfg.with_(arms=tuple(cohort.arms["arm"]), p_uncond=0.0)
    data = TrainingSet(load_patients(cohort, cohort.patient_ids[:2], cfg))
    cond, target, arms = data.batch([0, 1], None, [0, 0])
    model = init_model(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    acp = alphas_cumprod(cfg)
    labels = arm_weights(cfg, arms)

    def loss() -> torch.Tensor:
        return diffusion_loss(model, to_signed(target), cond, labels, cfg, acp, torch.Generator().manual_seed(3))

    before = float(loss().detach())
    for _ in range(5):
        opt.zero_grad()
        loss().backward()
        opt.step()
    assert float(loss().detach()) < 0.9 * before


def test_checkpoint_save_load_round_trip_is_exact(trained, tmp_path):
    ckpt = load_checkpoint(trained)
    assert ckpt.step == 2 and len(ckpt.log) == 2
    save_checkpoint(ckpt, tmp_path / "copy")
    again = load_checkpoint(tmp_path / "copy")
    assert again.config == ckpt.config
    assert (again.train_ids, again.val_ids, again.step) == (ckpt.train_ids, ckpt.val_ids, ckpt.step)
    assert _states_equal(again.model, ckpt.model) and _states_equal(again.ema, ckpt.ema)
    assert _states_equal(again.optimizer, ckpt.optimizer)
    assert _states_equal(build_model(again).state_dict(), {k: v for k, v in ckpt.ema.items()})
    assert (trained / "config.json").is_file() and (trained / "train_log.csv").read_text().startswith("step,loss")


def test_resume_after_interrupt_equals_uninterrupted(tiny_cohort, small_cfg, tmp_path):
    cfg = small_cfg.with_(steps=4, checkpoint_every=10, val_fraction=0.5)
    straight = train(tiny_cohort, cfg, tmp_path / "a", device="cpu")
    interrupt_training(tiny_cohort, cfg, tmp_path / "b", at_step=3)
    assert load_checkpoint(tmp_path / "b").step == 3  # saved on interrupt, not at a checkpoint_every step
    resumed = train(tiny_cohort, cfg, tmp_path / "b", resume=True, device="cpu")
    assert resumed.step == straight.step == 4
    assert _states_equal(resumed.model, straight.model)
    assert _states_equal(resumed.ema, straight.ema)
    assert _states_equal(resumed.optimizer, straight.optimizer)
    assert [r["loss"] for r in resumed.log] == [r["loss"] for r in straight.log]


def test_split_is_patient_level_and_recorded(trained, tiny_cohort):
    ckpt = load_checkpoint(trained)
    ids = read_cohort(tiny_cohort).patient_ids
    assert sorted(ckpt.train_ids + ckpt.val_ids) == sorted(ids)
    assert not set(ckpt.train_ids) & set(ckpt.val_ids)
    tr, va = split_patients(ids, ["a", "b"] * 6, 0.5, seed=1)
    assert len(va) == 6 and not set(tr) & set(va)
    assert split_patients(ids, ["a", "b"] * 6, 0.5, seed=1) == (tr, va)


def test_training_into_an_existing_checkpoint_needs_resume(trained, tiny_cohort, small_cfg):
    with pytest.raises(InputError, match="--resume"):
        train(tiny_cohort, small_cfg, trained, device="cpu")


def test_cohort_arm_unknown_to_config_is_an_input_error(tiny_cohort, small_cfg, tmp_path):
    with pytest.raises(InputError, match="not among the config's arms"):
        train(tiny_cohort, small_cfg.with_(arms=("placebo",)), tmp_path / "x", device="cpu")
    assert not Path(tmp_path / "x").exists()
