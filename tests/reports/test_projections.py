"""The report's primary table holds observed effects only; forecast-derived ratios are model-based
projections in their own section, beside the observed interval of the forecaster's training trial
(found through the store's provenance) or a sentence saying why it is unavailable, and flagged
where their interval is narrower than the observed one (issue 22, item 2)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mseval.projections import TRAINING, THIS_TRIAL, projections_frame
from reports import projections as P
from reports import tables as T
from reports.builder import ReportSettings, build_report

FAST = ReportSettings(n_boot=20, observed_bootstrap=199, power_sims=2, figure_dpi=40, html_dpi=30, figure_formats=("png",))


def _md_table_after(md: str, heading: str) -> tuple[list[str], list[list[str]]]:
    block = md.split(heading, 1)[1].split("\n\n")[1].splitlines()
    rows = [[c.strip() for c in ln.strip("|").split(" | ")] for ln in block if ln.startswith("| ")]
    return rows[0], rows[1:]


@pytest.fixture(scope="module")
def demo_like(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Laid out as `mseval demo --train` lays it out: out/train_cohort, out/cohort, out/forecasts; the
    store's provenance records a checkpoint trained on train_cohort's first patients (oracle samples
    stand in for the model's, so no torch is needed)."""
    from mseval.io.cohort import read_cohort
    from mseval.io.store import ForecastStore
    from mseval.provenance import training_provenance, write_store_provenance
    from mseval.simulate.forecasters import ForecasterSpec, simulate_forecasts
    from mseval.simulate.model import TrialConfig
    from mseval.simulate.trial import simulate_trial

    root = tmp_path_factory.mktemp("demo_like")
    simulate_trial(root / "train_cohort", TrialConfig(patients_per_arm=4, shape=(24, 24, 24), seed=21, followup_weeks=48))
    simulate_trial(root / "cohort", TrialConfig(patients_per_arm=4, shape=(24, 24, 24), seed=22, followup_weeks=48))
    simulate_forecasts(root / "cohort", root / "forecasts", ForecasterSpec("oracle", samples=6, seed=3))
    ck = str(ForecastStore.open(root / "forecasts").index()["checkpoint"].iloc[0])
    tc = read_cohort(root / "train_cohort")
    write_store_provenance(root / "forecasts", ck, training_provenance(tc, tc.patient_ids[:20], tc.patient_ids[20:]))
    return {"root": root, "cohort": root / "cohort", "fc": root / "forecasts", "train": root / "train_cohort"}


def test_primary_table_is_observed_only_and_projections_sit_beside_the_training_trial(demo_like: dict[str, Path]) -> None:
    from mseval.io.cohort import read_cohort
    from mseval.lesions.observed import analysis_table
    from mseval.stats.count_model import fit_count_model

    rep = build_report(demo_like["cohort"], demo_like["fc"], demo_like["root"] / "report", settings=FAST)
    md, html = (rep.out / "report.md").read_text(), rep.html.read_text()
    head, _ = _md_table_after(md, "## Primary endpoint: NET2 lesion rate ratios")
    assert not any(k in h for h in head for k in ("Forecast", "Counterfactual", "alibrated")), head
    consort = pd.read_csv(rep.out / "tables" / "primary_consort.csv")
    assert not [c for c in consort.columns if c.startswith(("forecast_", "counterfactual_"))]
    head, rows = _md_table_after(md, f"## {P.SECTION}")
    assert head[:5] == ["Arm", P.OBSERVED_THIS, P.OBSERVED_TRAINING, T.FORECAST_COL, T.COUNTERFACTUAL_COL] and len(rows) == 5
    assert 'id="projections"' in html and P.SECTION in html
    # the training trial's column is its observed NB2 on the checkpoint's 20 training patients, with the interval the
    # trial's own observed column has (the default of mseval effects: the studentized bootstrap, the report's seed)
    from mseval.stats.observed_ci import observed_intervals, with_intervals

    tc = read_cohort(demo_like["train"])
    tab = analysis_table(tc)
    tab = tab[tab["patient_id"].isin(tc.patient_ids[:20])].reset_index(drop=True)
    fit = fit_count_model(tab, "net2 ~ arm", reference=tc.reference_arm, adjusted_means=False)
    ref = with_intervals(fit, observed_intervals(tab, fit, seed=FAST.seed)).set_index("term")
    from reports import numbers as N

    labels = dict(zip(tc.arms["arm"], tc.arms["label"])) if "label" in tc.arms.columns else {}
    for r in rows:
        arm = next(a for a in ref.index if labels.get(a, a) == r[0])
        x = ref.loc[arm]
        assert r[2] == N.ratio_text(x["rate_ratio"], x["ci_low"], x["ci_high"], estimable=x["estimable"], note=x["note"]), (r, x)
    assert "Training trial: observed NB2 (net2 ~ arm) on the 20 training patients" in md
    frame = pd.read_csv(rep.out / "tables" / "projections.csv")
    assert set(frame["quantity"]) == {"forecast_rate_ratio", "counterfactual_ratio_of_means"}
    # every flag shown is one the numbers say, and says against what
    narrower = frame[frame["narrower_than_observed"] == True]  # noqa: E712
    assert sum(r[-1].count("CI narrower than") for r in rows) == len(narrower)
    assert all(c in (TRAINING, THIS_TRIAL) for c in narrower["comparator"])


def test_simulated_forecaster_says_why_the_training_trial_is_unavailable(demo_like: dict[str, Path], tmp_path: Path) -> None:
    """The oracle learned from no trial: the column reads 'unavailable', the note says why, and the
    flag compares with this trial's observed interval."""
    import shutil

    fc = tmp_path / "fc"
    shutil.copytree(demo_like["fc"], fc)
    (fc / "provenance.json").unlink()
    rep = build_report(demo_like["cohort"], fc, tmp_path / "report", settings=FAST)
    md = (rep.out / "report.md").read_text()
    _, rows = _md_table_after(md, f"## {P.SECTION}")
    assert rows and all(r[2] == "unavailable" for r in rows)
    assert "unavailable: the forecasts come from a simulated forecaster, which learned from no trial" in md
    frame = pd.read_csv(rep.out / "tables" / "projections.csv")
    assert set(frame["comparator"].dropna()) <= {THIS_TRIAL}
    assert "than this trial's observed interval (the training trial's is unavailable)" in md


def test_flag_marks_a_projection_narrower_than_the_observed_interval() -> None:
    primary = pd.DataFrame([{"arm": "drug", "observed_rate_ratio": 0.5, "observed_ci_low": 0.2, "observed_ci_high": 1.25, "observed_estimable": True,
                             "observed_note": "", "forecast_rate_ratio": 0.45, "forecast_ci_low": 0.35, "forecast_ci_high": 0.58, "forecast_estimable": True,
                             "forecast_note": "", "counterfactual_rate_ratio": 0.4, "counterfactual_ci_low": 0.01, "counterfactual_ci_high": 9.0,
                             "counterfactual_estimable": True, "counterfactual_note": ""}])
    training = pd.DataFrame([{"term": "drug", "rate_ratio": 0.6, "ci_low": 0.3, "ci_high": 1.2, "estimable": True, "note": ""}])
    f = projections_frame(primary, training).set_index("quantity")
    assert f.loc["forecast_rate_ratio", "comparator"] == TRAINING and bool(f.loc["forecast_rate_ratio", "narrower_than_observed"])
    assert not bool(f.loc["counterfactual_ratio_of_means", "narrower_than_observed"])
    assert np.isclose(f.loc["forecast_rate_ratio", "comparator_width_factor"], 4.0)
    f2 = projections_frame(primary, None, training_note="x").set_index("quantity")
    assert f2.loc["forecast_rate_ratio", "comparator"] == THIS_TRIAL and f2.loc["forecast_rate_ratio", "training_note"] == "x"
    text = P.flag_text(f.loc["forecast_rate_ratio"].to_dict(), "Forecast RR")
    assert "narrower than the training trial's observed CI (width x1.66 vs x4.00)" in text
