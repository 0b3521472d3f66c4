"""The image count model's checkpoint folder and the checks a cohort must pass before it is forecast."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from forecast.image_count import ImageCountNet, collate, fit_image_count
from forecast.image_count_checkpoint import check_cohort, load_image_count, save_image_count
from forecast.image_count_data import IMAGE_CHANNELS, MASK_CHANNELS, load_arrays, visit_horizons
from mseval.errors import InputError
from mseval.io.cohort import read_cohort

INPUTS = IMAGE_CHANNELS + MASK_CHANNELS


@pytest.fixture(scope="module")
def saved(visits_cohort: Path, tmp_path_factory: pytest.TempPathFactory):
    c = read_cohort(visits_cohort)
    arms = list(c.arms["arm"])
    ps = load_arrays(c, c.patient_ids, arms)
    net = ImageCountNet(len(INPUTS), len(arms), hidden=4, mlp=8, count_hidden=3, count_trunk="gated", count_head="linear")
    fit = fit_image_count(net, ps[:9], ps[9:], epochs=1, batch=5, seed=1)
    v = c.visits[c.visits["visit_index"] > 0].drop_duplicates("visit").sort_values("visit_index")
    folder = tmp_path_factory.mktemp("ick") / "ckpt"
    save_image_count(folder, net, inputs=INPUTS, normalization="brain_z", arms=arms, visits=visit_horizons(c),
                     weeks=v["scheduled_weeks"].tolist(), shape=ps[0].brain.shape, fit=fit, provenance={"train": c.patient_ids[:9]})
    return c, ps, net, folder


def _out(net: ImageCountNet, ps: list) -> list[torch.Tensor]:
    b = collate(ps)
    with torch.no_grad():
        return list(net(b["cond"], b["brain"], b["tab"], b["arm"], b["years"]))


def test_round_trip_gives_the_same_forecast_law(saved) -> None:
    c, ps, net, folder = saved
    again, meta, digest = load_image_count(folder)
    for a, b in zip(_out(net, ps[:4]), _out(again, ps[:4])):
        assert torch.equal(a, b)
    assert meta.inputs == INPUTS and meta.visits == ("w24", "w48", "w96") and meta.weeks == (24.0, 48.0, 96.0)
    assert meta.net["count_head"] == "linear" and meta.net["centre_trunk"] == "multiscale" and meta.fit["n_train"] == 9
    assert load_image_count(folder)[2] == digest and len(digest) == 64
    description = json.loads((folder / "image_count.json").read_text())["description"]
    assert "log-linear NB2 regression" in description and "arm x age" in description and "no mask renderer" in description


def test_broken_checkpoints_are_refused_naming_the_file(saved, tmp_path: Path) -> None:
    _, _, _, folder = saved
    with pytest.raises(InputError, match="not found"):
        load_image_count(tmp_path / "absent")
    bad = tmp_path / "bad"
    shutil.copytree(folder, bad)
    (bad / "weights.pt").write_bytes((folder / "weights.pt").read_bytes()[:100])
    with pytest.raises(InputError, match="cannot read the weights") as e:
        load_image_count(bad)
    assert Path(e.value.file).name == "weights.pt"
    shutil.copy(folder / "weights.pt", bad / "weights.pt")
    doc = json.loads((folder / "image_count.json").read_text())
    (bad / "image_count.json").write_text(json.dumps(doc | {"net": doc["net"] | {"hidden": 5}}))
    with pytest.raises(InputError, match="do not fit the recorded network"):
        load_image_count(bad)
    (bad / "image_count.json").write_text(json.dumps(doc | {"format": "something else"}))
    with pytest.raises(InputError, match="not an image count checkpoint") as e:
        load_image_count(bad)
    assert e.value.field == "format"
    state = torch.load(folder / "weights.pt", weights_only=True)
    state["base.bias"] = state["base.bias"] + 1.0
    torch.save(state, bad / "weights.pt")
    (bad / "image_count.json").write_text(json.dumps(doc))
    with pytest.raises(InputError, match="digest differs"):
        load_image_count(bad)


def test_cohorts_the_checkpoint_cannot_forecast_are_refused_before_sampling(saved, tmp_path: Path) -> None:
    """No schedule, another scheduled week (a horizon outside the trained range), an unknown visit, an unseen arm, a
    missing input image, another grid: each one InputError line naming what is missing and what the checkpoint needs."""
    c, _, _, folder = saved
    _, meta, _ = load_image_count(folder)
    check_cohort(meta, c)  # the cohort it was trained on passes
    cases = [
        (replace(c, visits=None), "no visit schedule", "visit"),
        (replace(c, visits=c.visits.assign(scheduled_weeks=c.visits["scheduled_weeks"].replace(96.0, 120.0))), "week 120", "scheduled_weeks"),
        (replace(c, visits=c.visits.assign(visit=c.visits["visit"].replace("w96", "w120"))), "outside the trained schedule", "visit"),
        (replace(c, manifest=c.manifest.assign(arm=c.manifest["arm"].where(c.manifest.index > 0, "newdrug"))), "never seen", "arm"),
        (replace(c, manifest=c.manifest.assign(flair=np.nan), visits=c.visits.assign(flair=np.nan)), "no baseline flair", "flair"),
    ]
    for cohort, message, fieldname in cases:
        with pytest.raises(InputError, match=message) as e:
            check_cohort(meta, cohort)
        assert e.value.field == fieldname and "\n" not in e.value.message, message
        assert "checkpoint" in e.value.message or "inputs" in e.value.message
    with pytest.raises(InputError, match="trained on") as e:
        check_cohort(replace(meta, shape=(32, 32, 32)), c)
    assert e.value.field == "brain_mask" and e.value.row == 1
    assert np.isfinite(meta.fit["val_count_nll"])
    spacing = c.load_patient(c.patient_ids[0], ("brain_mask",))["brain_mask"].spacing
    check_cohort(replace(meta, spacing=tuple(spacing)), c)  # the same grid in mm passes
    with pytest.raises(InputError, match=r"voxels of .* mm, the checkpoint was trained on 1 x 1 x 1 mm") as e:
        check_cohort(replace(meta, spacing=(1.0, 1.0, 1.0)), c)
    assert e.value.field == "brain_mask" and e.value.row == 1


def test_voxel_size_and_centre_distance_are_recorded_and_covered_by_the_digest(saved, tmp_path: Path) -> None:
    """A checkpoint saved with its voxel size and the sampler's distance keeps them; they enter the digest (a forged
    voxel size is refused), and a checkpoint without them (written before they were recorded) still loads."""
    c, ps, net, folder = saved
    _, meta, digest = load_image_count(folder)
    assert meta.spacing is None and meta.min_distance_mm is None
    out = tmp_path / "mm"
    save_image_count(out, net, inputs=meta.inputs, normalization=meta.normalization, arms=meta.arms, visits=meta.visits, weeks=meta.weeks,
                     shape=meta.shape, spacing=(7.0, 8.0, 7.0), min_distance_mm=30.0)
    _, again, other = load_image_count(out)
    assert again.spacing == (7.0, 8.0, 7.0) and again.min_distance_mm == 30.0 and other != digest
    doc = json.loads((out / "image_count.json").read_text())
    (out / "image_count.json").write_text(json.dumps(doc | {"spacing": [1.0, 1.0, 1.0]}))
    with pytest.raises(InputError, match="digest differs"):
        load_image_count(out)
