"""The shipped demo checkpoint (forecast/checkpoints/tiny_centre, rebuilt by `make checkpoint`):
small, loadable, count-conditioned, and recording what it trained and was tuned on."""

from __future__ import annotations

from forecast.checkpoint import load_checkpoint
from forecast.release import POOL_SEED, SHIPPED_CHECKPOINT, VALIDATION_SEED


def test_the_shipped_checkpoint_is_small_and_says_what_it_learned_from() -> None:
    assert (SHIPPED_CHECKPOINT / "checkpoint.pt").stat().st_size < 5 * 2**20
    ckpt = load_checkpoint(SHIPPED_CHECKPOINT)
    cfg = ckpt.config
    assert cfg.count_head and cfg.centre_map and cfg.name == "tiny_centre" and ckpt.optimizer is None
    assert ckpt.model.keys() == ckpt.ema.keys()
    prov = ckpt.provenance
    assert str(POOL_SEED) in prov["trained_on"] and str(VALIDATION_SEED) in prov["tuned_on"]["cohort"]
    assert prov["tuned_on"]["chosen"]["guidance"] == cfg.guidance
    assert prov["count_head"]["n_train"] == len(ckpt.train_ids) and prov["count_head"]["n_val"] == len(ckpt.val_ids)
    assert prov["location"]["n_train"] <= len(ckpt.train_ids) and prov["location"]["centres_val"] > 0
    assert len(prov["train"]) == len(ckpt.train_ids)  # per-patient fingerprints of the training patients
    assert (SHIPPED_CHECKPOINT / "tuning.json").is_file()


def test_export_keeps_the_ema_weights_and_changes_only_sampling_defaults(trained, tmp_path) -> None:
    """An exported checkpoint samples exactly as its source (EMA weights) at the same settings;
    it refuses a config that changes the network."""
    import numpy as np
    import pytest

    from forecast.checkpoint import export_checkpoint
    from mseval.errors import InputError

    src = load_checkpoint(trained)
    out = export_checkpoint(src, tmp_path / "rel", config=src.config.with_(guidance=2.0), provenance={"note": "x"})
    assert out.optimizer is None and out.config.guidance == 2.0 and out.provenance["exported_from"] == src.id
    assert all(np.array_equal(out.ema[k].numpy(), src.ema[k].numpy()) for k in src.ema)
    with pytest.raises(InputError, match="channels"):
        export_checkpoint(src, tmp_path / "bad", config=src.config.with_(channels=(16, 16, 16)))


def test_exported_and_source_sample_the_same(trained, tiny_cohort, tmp_path) -> None:
    import numpy as np

    from forecast.checkpoint import export_checkpoint
    from forecast.ensemble import forecast_cohort
    from forecast.sampler import SamplerSettings
    from mseval.io.store import ForecastStore

    src = load_checkpoint(trained)
    export_checkpoint(src, tmp_path / "rel")
    kw = dict(samples=2, arms="placebo", settings=SamplerSettings("ddim", 2, 1.0), patients=["P001"], seed=4)
    forecast_cohort(tiny_cohort, trained, tmp_path / "a", **kw)
    forecast_cohort(tiny_cohort, tmp_path / "rel", tmp_path / "b", **kw)
    a, b = ForecastStore.open(tmp_path / "a"), ForecastStore.open(tmp_path / "b")
    assert np.array_equal(a.block("P001", "placebo").masks()[0], b.block("P001", "placebo").masks()[0])


def test_the_shipped_tuning_json_names_its_checkpoint_and_no_path() -> None:
    """tuning.json beside the weights names the id of the checkpoint it sits with (the training run
    it was tuned with apart), and the validation trial as the provenance does, not a temporary path."""
    import json

    ckpt = load_checkpoint(SHIPPED_CHECKPOINT)
    text = (SHIPPED_CHECKPOINT / "tuning.json").read_text()
    tuning = json.loads(text)
    for rec in (tuning, tuning["mask_threshold"]):
        assert rec["checkpoint"] == ckpt.id
        assert rec["tuned_with_checkpoint"] == ckpt.provenance["exported_from"]
        assert rec["validation"]["cohort"] == ckpt.provenance["tuned_on"]["cohort"]
    assert '"/' not in text and "tmp" not in text
    assert tuning["chosen"] == ckpt.provenance["tuned_on"]["chosen"] and tuning["mask_threshold"]["chosen"] == ckpt.config.mask_threshold


def test_the_tuning_record_for_a_checkpoint_folder_is_neutral() -> None:
    """`make checkpoint` (forecast/release.py) and `mseval forecast evaluate --record` write tuning.json
    through `tuning_for_checkpoint`: the folder's checkpoint id, the id tuned with kept apart, no path."""
    from forecast.evaluate import tuning_for_checkpoint

    tuned = {"checkpoint": "run@10:aaa", "validation": {"cohort": "/tmp/x/val", "patients": 2},
             "mask_threshold": {"checkpoint": "run@10:aaa", "validation": {"cohort": "/tmp/x/val"}, "chosen": 0.5}}
    out = tuning_for_checkpoint(tuned, "rel@10:bbb", "simulated trial seed 1, 2 of its patients")
    assert out["checkpoint"] == out["mask_threshold"]["checkpoint"] == "rel@10:bbb"
    assert out["tuned_with_checkpoint"] == out["mask_threshold"]["tuned_with_checkpoint"] == "run@10:aaa"
    assert "/tmp" not in str(out) and tuned["validation"]["cohort"] == "/tmp/x/val"  # the input is not changed
    same = tuning_for_checkpoint({"checkpoint": "rel@10:bbb", "validation": {"cohort": "/a"}}, "rel@10:bbb", "val")
    assert "tuned_with_checkpoint" not in same and same["validation"]["cohort"] == "val"


def test_the_shipped_image_forecaster_names_the_shipped_decoder_and_its_recipe() -> None:
    """`forecast/checkpoints/image_count` (make checkpoint's second half): its render settings were tuned with the
    decoder that ships beside it (rebuilding one without the other fails here), by the recorded criterion, and the
    model is the recipe's, trained on its own trial and tuned on the validation trial, never on a test trial."""
    from forecast.evaluate import THRESHOLD_GRID
    from forecast.image_count_checkpoint import load_image_count
    import numpy as np

    from forecast.image_count_tuning import size_choice
    from forecast.image_release import RECIPE, SHIPPED_IMAGE_CHECKPOINT, TRAIN_SEED, read_render_settings

    _, meta, digest = load_image_count(SHIPPED_IMAGE_CHECKPOINT)
    doc = read_render_settings(SHIPPED_IMAGE_CHECKPOINT)
    assert doc is not None and doc["renderer"] == load_checkpoint(SHIPPED_CHECKPOINT).id and doc["trajectories_checkpoint"] == digest[:12]
    size = {float(t): v for t, v in doc["tuned_on"]["size_ratio"].items()}
    assert sorted(size) == sorted(THRESHOLD_GRID) and doc["mask_threshold"] == size_choice(size)
    assert abs(np.log(size[doc["mask_threshold"]])) < 0.1  # the shipped lesions' mean size within 10% of validation's observed
    assert meta.normalization == RECIPE["normalization"] and all(meta.net[k] == v for k, v in RECIPE["net"].items())
    assert f"seed {TRAIN_SEED}" in doc["trained_on"] and f"seed {VALIDATION_SEED}" in doc["tuned_on"]["cohort"]
    assert tuple(meta.shape) == (32, 32, 32) and meta.visits == ("w24", "w48", "w96")
    assert sum(f.stat().st_size for f in SHIPPED_IMAGE_CHECKPOINT.iterdir()) < 200_000


def test_the_release_tunes_guidance_only_where_it_can_change_the_criterion() -> None:
    """tiny_centre's count comes from its count head, so the count criterion cannot tell guidance values apart (the
    shipped tuning.json's rows are identical): its release samples guidance 1 only; a count-conditioned config keeps
    its grid."""
    import json

    from forecast.release import default_guidance_grid

    assert default_guidance_grid("tiny_centre") == (1.0,) and default_guidance_grid("tiny_count") == (1.0, 2.0, 3.0)
    rows = json.loads((SHIPPED_CHECKPOINT / "tuning.json").read_text())["candidates"]
    if len(rows) > 1:  # a checkpoint built before the grid was narrowed: its rows show why
        keys = ("crps_count", "auc_p_active", "forecast_mean", "pit_chi2_p")
        assert all([r[k] for k in keys] == [rows[0][k] for k in keys] for r in rows)
