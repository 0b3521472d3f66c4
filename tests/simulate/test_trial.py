"""The synthetic trial: deterministic, complete truth, masks that hold exactly the drawn lesions,
lesions in white matter, and counts that match the true rates."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import cc3d
import numpy as np
import pandas as pd
import pytest
from scipy import stats

from mseval.errors import SimulationError
from mseval.io.cohort import read_cohort
from mseval.io.nifti import load_volume
from mseval.simulate.arms import DEFAULT_ARMS
from mseval.seeding import rng_for
from mseval.simulate.model import AGE_CENTRE, WEEKS_PER_YEAR, TrialConfig, draw_patients, effect_multiplier, response_column
from mseval.simulate.trial import simulate_trial


def _digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def trial(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """40 patients per arm (240) at 24^3: enough for the statistical checks below (they read the
    truth and counts, which do not depend on the grid; the mask checks hold on any grid that fits the lesions)."""
    out = tmp_path_factory.mktemp("trial") / "cohort"
    simulate_trial(out, TrialConfig(patients_per_arm=40, shape=(24, 24, 24), seed=2024))
    return out


def test_same_seed_gives_byte_identical_cohort_for_any_worker_count(tmp_path: Path, tiny_cohort: Path) -> None:
    cfg = TrialConfig(patients_per_arm=2, shape=(32, 32, 32), seed=11, followup_weeks=48)
    simulate_trial(tmp_path / "again", cfg, workers=2)
    assert _digest(tmp_path / "again") == _digest(tiny_cohort)
    simulate_trial(tmp_path / "other", TrialConfig(patients_per_arm=2, shape=(32, 32, 32), seed=12, followup_weeks=48))
    assert _digest(tmp_path / "other") != _digest(tiny_cohort)


def test_truth_holds_every_patient_under_every_arm(trial: Path) -> None:
    c = read_cohort(trial)
    truth = c.truth
    assert truth is not None and len(truth) == len(c.manifest) * len(c.arms)
    assert set(zip(truth["patient_id"], truth["arm"])) == {(p, a) for p in c.patient_ids for a in c.arms["arm"]}
    alloc = truth[truth["allocated"].astype(bool)]
    assert len(alloc) == len(c.manifest) and alloc["realized_count"].notna().all()
    assert truth.loc[~truth["allocated"].astype(bool), "realized_count"].isna().all()
    merged = alloc.merge(c.manifest[["patient_id", "arm"]], on="patient_id", suffixes=("", "_m"))
    assert (merged["arm"] == merged["arm_m"]).all()
    assert np.allclose(truth["p_active"], 1 - np.exp(-truth["expected_count"]))


def test_rate_ratios_follow_the_arm_and_the_effect_modifier(trial: Path) -> None:
    c = read_cohort(trial)
    truth = c.truth.merge(c.manifest[["patient_id", "age"]], on="patient_id")  # type: ignore[union-attr]
    rr = {a.arm: a.rate_ratio for a in DEFAULT_ARMS}
    m = effect_multiplier(truth["age"].to_numpy(), TrialConfig().modifier)
    sim = json.loads((trial / "simulation.json").read_text())
    cfg = TrialConfig.from_dict(sim["config"])
    pats = draw_patients(cfg, rng_for(cfg.seed, "patients")).set_index("patient_id")
    resp = np.array([pats.loc[p, response_column(a)] for p, a in zip(truth["patient_id"], truth["arm"])])
    expected = np.array([rr[a] for a in truth["arm"]]) ** (m * resp)  # rho = RR^(m R): age modifier and own response
    assert np.allclose(truth["rate_ratio"], expected)
    placebo = truth[truth["arm"] == "placebo"].set_index("patient_id")["annual_rate"]
    for arm in rr:
        sub = truth[truth["arm"] == arm].set_index("patient_id")
        assert np.allclose(sub["annual_rate"], placebo[sub.index] * sub["rate_ratio"])
        assert np.allclose(sub["expected_count"], sub["annual_rate"] * sub["followup_weeks"] / WEEKS_PER_YEAR)
    # younger patients respond more: the median rate ratio on dmf rises with age
    young = truth[(truth["arm"] == "dmf") & (truth["age"] < AGE_CENTRE - 5)]["rate_ratio"]
    old = truth[(truth["arm"] == "dmf") & (truth["age"] > AGE_CENTRE + 5)]["rate_ratio"]
    assert young.median() < rr["dmf"] < old.median()


def test_observed_counts_match_true_rates_per_arm(trial: Path) -> None:
    """Given the truth, counts are Poisson: the sum over an arm is Poisson(sum of expected counts).
    Six arms at a family-wise 0.001 level (Bonferroni): |z| < 3.76 for each."""
    truth = read_cohort(trial).truth
    alloc = truth[truth["allocated"].astype(bool)]  # type: ignore[index]
    for arm, sub in alloc.groupby("arm"):
        mu = sub["expected_count"].sum()
        z = (sub["realized_count"].astype(float).sum() - mu) / np.sqrt(mu)
        assert abs(z) < 3.76, (arm, z)


def test_placebo_mean_rate_matches_the_design(trial: Path) -> None:
    """Mean true placebo rate over patients vs the design's population mean (base rate x E[age
    factor]), within 4 standard errors of the sample mean."""
    c = read_cohort(trial)
    cfg = TrialConfig()
    truth = c.truth[c.truth["arm"] == "placebo"].merge(c.manifest[["patient_id", "age"]], on="patient_id")  # type: ignore[index]
    age_factor = np.exp(cfg.age_effect * (truth["age"] - AGE_CENTRE) / 10.0)
    design = cfg.base_rate * age_factor.mean()
    se = truth["annual_rate"].std(ddof=1) / np.sqrt(len(truth))
    assert abs(truth["annual_rate"].mean() - design) < 4 * se


def test_masks_hold_exactly_the_drawn_lesions_at_every_connectivity(trial: Path) -> None:
    c = read_cohort(trial)
    truth = c.truth.set_index(["patient_id", "arm"])  # type: ignore[union-attr]
    lesions = pd.read_csv(trial / "truth_lesions.csv")
    for pid, arm in zip(c.manifest["patient_id"][:60], c.manifest["arm"][:60]):
        v = c.load_patient(pid, ("t2_lesion_mask", "gd_lesion_mask", "t2_lesion_mask_followup", "net2_mask"))
        drawn = int(truth.loc[(pid, arm), "realized_count"])
        mine = lesions[lesions["patient_id"] == pid]
        n_new_enl = int(mine["kind"].isin(["new", "enlarging"]).sum())
        n_base = int((mine["kind"] != "new").sum())
        assert n_new_enl == drawn
        for conn in (6, 18, 26):
            assert cc3d.connected_components(v["net2_mask"].data, connectivity=conn).max() == drawn
            assert cc3d.connected_components(v["t2_lesion_mask"].data, connectivity=conn).max() == n_base
            assert cc3d.connected_components(v["t2_lesion_mask_followup"].data, connectivity=conn).max() == len(mine)
        gd_components = cc3d.connected_components(v["gd_lesion_mask"].data, connectivity=26).max()
        assert gd_components == int(c.row(pid)["gd_count"]) == int(mine["gd"].sum())
        assert not np.any(v["gd_lesion_mask"].data & ~v["t2_lesion_mask"].data)
        enlarging = mine[mine["kind"] == "enlarging"]
        assert (enlarging["followup_voxels"] >= 1.5 * enlarging["baseline_voxels"]).all()


def test_lesions_lie_in_white_matter(trial: Path) -> None:
    c = read_cohort(trial)
    for pid in c.patient_ids[:40]:
        tissues = load_volume(trial / "images" / pid / "tissues.nii.gz").data
        follow = c.load_patient(pid, ("t2_lesion_mask_followup",))["t2_lesion_mask_followup"].data
        assert follow.sum() > 0 and np.all(tissues[follow > 0] == 3)


def test_new_lesions_do_not_touch_baseline_lesions(trial: Path) -> None:
    """A new lesion has no baseline voxel; an enlarging one contains its whole baseline lesion."""
    c = read_cohort(trial)
    for pid in c.patient_ids[:40]:
        v = c.load_patient(pid, ("t2_lesion_mask", "net2_mask"))
        base, net2 = v["t2_lesion_mask"].data, v["net2_mask"].data
        labels = cc3d.connected_components(net2, connectivity=26)
        base_labels = cc3d.connected_components(base, connectivity=26)
        for k in range(1, labels.max() + 1):
            comp = labels == k
            overlap = base[comp].sum()
            if overlap:
                ids = np.unique(base_labels[comp & (base > 0)])
                assert len(ids) == 1 and np.all(comp[base_labels == ids[0]])


def test_images_carry_signal_about_future_activity(trial: Path) -> None:
    c = read_cohort(trial)
    truth = c.truth[c.truth["arm"] == "placebo"].set_index("patient_id")  # type: ignore[index]
    rate = truth.loc[c.manifest["patient_id"], "annual_rate"].to_numpy()
    for covariate in ("gd_count", "t2_volume_mm3"):
        rho, p = stats.spearmanr(c.manifest[covariate], rate)
        assert rho > 0 and p < 1e-3, covariate


def test_flair_shows_lesions_bright(trial: Path) -> None:
    c = read_cohort(trial)
    pid = c.patient_ids[0]
    v = c.load_patient(pid, ("flair", "t1", "t2_lesion_mask"))
    tissues = load_volume(trial / "images" / pid / "tissues.nii.gz").data
    lesion = v["t2_lesion_mask"].data > 0
    wm = (tissues == 3) & ~lesion
    assert v["flair"].data[lesion].mean() > 1.2 * v["flair"].data[wm].mean()
    assert v["t1"].data[lesion].mean() < v["t1"].data[wm].mean()


def test_too_small_a_volume_says_so(tmp_path: Path) -> None:
    cfg = TrialConfig(patients_per_arm=2, shape=(16, 16, 16), seed=1, base_rate=300.0)
    with pytest.raises(SimulationError, match="no room for .* use a larger --shape"):
        simulate_trial(tmp_path / "small", cfg)
    assert not (tmp_path / "small").exists() and list(tmp_path.iterdir()) == []


def test_net2_events_without_room_are_tallied_and_the_masks_show_every_counted_lesion(tmp_path: Path) -> None:
    """A patient whose white matter fills up (16^3, 100 NET2 lesions a year on placebo) no longer stops the trial: a new
    lesion without room enlarges an uncounted baseline lesion (tallied in `net2_confluent`, an enlarging lesion of that
    visit), the events the masks cannot show are tallied per visit in `net2_without_room`, and each visit's realized
    count is exactly the lesions its NET2 mask shows (one 26-connected component each: lesions keep a one-voxel gap)."""
    cfg = TrialConfig(patients_per_arm=1, shape=(16, 16, 16), seed=1, base_rate=100.0, baseline_lesions_per_sqrt_rate=0.0)
    out = simulate_trial(tmp_path / "full", cfg)
    sim = json.loads((out / "simulation.json").read_text())
    without, confluent = sim["net2_without_room"], sim["net2_confluent"]
    assert without and confluent  # a new lesion read as its baseline lesion enlarging, then no room at all
    lesions = pd.read_csv(out / "truth_lesions.csv")
    for pid, visits in confluent.items():
        for visit, n in visits.items():
            grown = lesions[(lesions["patient_id"] == pid) & (lesions["visit"] == visit) & (lesions["kind"] == "enlarging")]
            assert len(grown) >= n, (pid, visit)
    truth = pd.read_csv(out / "truth_visits.csv")
    observed = truth[truth["allocated"] & truth["realized_count"].notna()]
    visits = pd.read_csv(out / "visits.csv")
    for pid in without:
        for row in observed[observed["patient_id"] == pid].itertuples():
            path = visits[(visits["patient_id"] == pid) & (visits["visit"] == row.visit)]["net2_mask"].iloc[0]
            mask = load_volume(out / path, mask=True).data
            assert cc3d.connected_components(mask, connectivity=26).max() == row.realized_count, (pid, row.visit)
