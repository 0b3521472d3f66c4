"""The shipped demo checkpoint (forecast/checkpoints/tiny_count, rebuilt by `make checkpoint`):
small, loadable, count-conditioned, and recording what it trained and was tuned on."""

from __future__ import annotations

from forecast.checkpoint import load_checkpoint
from forecast.release import POOL_SEED, SHIPPED_CHECKPOINT, VALIDATION_SEED


def test_the_shipped_checkpoint_is_small_and_says_what_it_learned_from() -> None:
    assert (SHIPPED_CHECKPOINT / "checkpoint.pt").stat().st_size < 5 * 2**20
    ckpt = load_checkpoint(SHIPPED_CHECKPOINT)
    cfg = ckpt.config
    assert cfg.count_head and cfg.name == "tiny_count" and ckpt.optimizer is None
    assert ckpt.model.keys() == ckpt.ema.keys()
    prov = ckpt.provenance
    assert str(POOL_SEED) in prov["trained_on"] and str(VALIDATION_SEED) in prov["tuned_on"]["cohort"]
    assert prov["tuned_on"]["chosen"]["guidance"] == cfg.guidance
    assert prov["count_head"]["n_train"] == len(ckpt.train_ids) and prov["count_head"]["n_val"] == len(ckpt.val_ids)
    assert len(prov["train"]) == len(ckpt.train_ids)  # per-patient fingerprints of the training patients
    assert (SHIPPED_CHECKPOINT / "tuning.json").is_file()
