"""Per-visit counts from a multi-visit cohort's masks (`mseval.lesions.visit_counts`, `mseval visit-counts`)
against the simulator's truth, and the count-level world's Gd+ per visit (`visit_gd_counts`)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mseval.io.cohort import read_cohort
from mseval.io.schemas import read_table
from mseval.lesions.visit_counts import VISIT_COLUMNS, per_visit_counts
from mseval.simulate.model import WEEKS_PER_YEAR, TrialConfig


@pytest.fixture(scope="module")
def counted(visits_cohort: Path) -> tuple[pd.DataFrame, object]:
    c = read_cohort(visits_cohort)
    return per_visit_counts(c), c


def test_per_visit_counts_add_up_to_the_truth(counted) -> None:  # noqa: ANN001
    pv, c = counted
    assert list(pv.columns) == list(VISIT_COLUMNS)
    assert len(pv) == 12 * 3 and (pv.groupby("patient_id")["visit_index"].apply(list) == pd.Series([[1, 2, 3]] * 12, index=sorted(c.patient_ids))).all()
    gone = pv["missing"] != ""
    assert gone.any() and (~gone).sum() >= 12, "the fixture has missing and observed visits"
    assert pv.loc[gone, "net2"].isna().all() and pv.loc[gone, "gd_count"].isna().all()
    assert pv.loc[~gone, "net2"].notna().all() and pv.loc[~gone, "gd_count"].notna().all()
    assert int(pv["net2"].sum()) >= 20, "twice the default rate: enough lesions for the comparison to mean something"
    # cumulative: the observed visits' counts (each vs the previous scan that took place) add up to truth.csv's
    # realized NET2 from baseline to the last observed visit (lesions keep a one-voxel gap, so none merge)
    truth = c.truth[c.truth["allocated"].astype(bool)].set_index("patient_id")["realized_count"]
    total = pv[~gone].groupby("patient_id")["net2"].sum()
    assert total.to_dict() == truth.dropna().astype(int).to_dict()
    # per visit: where the previous scheduled visit was observed, the count is truth_visits' interval count
    tv = c.truth_visits[c.truth_visits["allocated"].astype(bool)].set_index(["patient_id", "visit"])["realized_count"]
    prev_obs = pv.groupby("patient_id")["missing"].shift(1, fill_value="") == ""
    both = pv[~gone & prev_obs]
    assert len(both) >= 10
    assert both["net2"].astype(int).tolist() == tv.loc[list(zip(both["patient_id"], both["visit"]))].astype(int).tolist()
    # the interval starts at the previous scan that took place
    v = c.visits.set_index(["patient_id", "visit"])
    obs = pv[~gone]
    assert np.array_equal(obs["end_weeks"].to_numpy(), v.loc[list(zip(obs["patient_id"], obs["visit"])), "weeks"].to_numpy(dtype=float))
    after_miss = pv[~gone & ~prev_obs]
    assert len(after_miss) >= 1 and (after_miss["start_weeks"] < after_miss["end_weeks"] - 30).all()


def test_gd_counts_are_the_recent_lesions_of_the_interval(counted) -> None:  # noqa: ANN001
    pv, c = counted
    lesions = pd.read_csv(c.root / "truth_lesions.csv")
    new = lesions[lesions["kind"].isin(["new", "enlarging"])]
    gd_weeks = TrialConfig().gd_per_rate * WEEKS_PER_YEAR
    obs = pv[pv["missing"] == ""]
    want = []
    for r in obs.itertuples():
        b = new.loc[new["patient_id"] == r.patient_id, "birth_weeks"].to_numpy()
        want.append(int(((b > max(r.start_weeks, r.end_weeks - gd_weeks)) & (b <= r.end_weeks)).sum()))
    assert sum(want) >= 8
    assert obs["gd_count"].astype(int).tolist() == want
    assert (obs["gd_count"] <= obs["net2"]).all()


def test_cli_writes_the_schema_table_and_bad_input_writes_nothing(visits_cohort: Path, tmp_path: Path, cli) -> None:  # noqa: ANN001
    out = tmp_path / "vc.csv"
    r = cli("visit-counts", visits_cohort, "--out", out)
    assert r.code == 0, r.err
    table = read_table(out, "visit_counts")
    assert table["connectivity"].eq(26).all() and len(table) == 36
    assert table["net2"].isna().sum() == (table["missing"].notna()).sum() > 0
    # an observed visit without its NET2 mask: one line naming the file, row and field; exit 2; nothing written
    broken = tmp_path / "broken"
    shutil.copytree(visits_cohort, broken)
    v = pd.read_csv(broken / "visits.csv", dtype=str, keep_default_na=False)
    k = int(np.flatnonzero((v["visit_index"] != "0") & (v["missing"] == ""))[0])
    v.loc[k, "net2_mask"] = ""
    v.to_csv(broken / "visits.csv", index=False)
    out2 = tmp_path / "vc2.csv"
    r = cli("visit-counts", broken, "--out", out2)
    assert r.code == 2 and "Traceback" not in r.err and len(r.err.strip().splitlines()) == 1
    assert "visits.csv" in r.err and f"row {k + 1}" in r.err and "net2_mask" in r.err
    assert not out2.exists()


def test_count_world_gd_per_visit_follows_the_image_simulators_law() -> None:
    """visit_gd_counts (vectorised) equals a direct count of the appearing events born in the last
    gd_per_rate years of each interval; the NET2 columns are unchanged by it."""
    from mseval.seeding import rng_for
    from mseval.simulate.counts_only import draw_event_table, simulate_count_trial, visit_gd_counts, world_counts
    from mseval.simulate.model import arm_rate_ratios, draw_patients

    cfg = TrialConfig(patients_per_arm=5, seed=4)
    tr = simulate_count_trial(cfg, samples=1)
    patients = draw_patients(cfg, rng_for(cfg.seed, "patients"))
    events = draw_event_table(patients, cfg, rng_for(cfg.seed, "counts-only"))
    _, visits = world_counts(patients, events, cfg)
    assert (tr.visits["missing"] == "").all()  # no dropout by default
    pd.testing.assert_frame_equal(tr.visits.drop(columns=["gd_count", "missing"]), visits)
    rho = arm_rate_ratios(patients, cfg)
    want = []
    for r in visits.itertuples():
        i = int(np.flatnonzero(patients["patient_id"] == r.patient_id)[0])
        e = events[events["patient"] == i]
        alive = e["thin"] < rho[patients["arm"].iloc[i]][i]
        lo = max(r.start_weeks, r.end_weeks - cfg.gd_per_rate * WEEKS_PER_YEAR)
        want.append(int((alive & (e["birth"] > lo) & (e["birth"] <= r.end_weeks)).sum()))
    assert sum(want) > 10 and tr.visits["gd_count"].astype(int).tolist() == want
    assert (tr.visits["gd_count"] <= tr.visits["net2"]).all()
    vm = visits.assign(missing=["missed" if k % 4 == 0 else "" for k in range(len(visits))])
    gd = visit_gd_counts(vm, patients, events, cfg)
    assert gd[vm["missing"] != ""].isna().all() and gd[vm["missing"] == ""].notna().all()
