"""`build_report` / `mseval report`: every file and section without dates or paths, and bad input
(a forecast store missing patients or arms) gives one line naming what is missing, exit code 2
and no report folder."""

from __future__ import annotations

import json
import shutil
from html import unescape
from pathlib import Path

import pandas as pd
import pytest

import data_schemas
from mseval.errors import InputError
from reports.builder import ReportSettings, build_report

FAST = ReportSettings(n_boot=50, observed_bootstrap=199, power_sims=4, figure_dpi=60, html_dpi=40)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny simulated trial (4 patients per arm, 32x38x32 voxels) and oracle forecasts (4 samples)."""
    from mseval.simulate.forecasters import ForecasterSpec, simulate_forecasts
    from mseval.simulate.model import TrialConfig
    from mseval.simulate.trial import simulate_trial

    root = tmp_path_factory.mktemp("trial")
    simulate_trial(root / "cohort", TrialConfig(patients_per_arm=4, shape=(32, 38, 32), seed=11, followup_weeks=48))
    simulate_forecasts(root / "cohort", root / "fc", ForecasterSpec("oracle", samples=4, seed=5))
    return {"root": root, "cohort": root / "cohort", "fc": root / "fc"}


@pytest.fixture(scope="module")
def trial(store: dict[str, Path]) -> dict[str, Path]:
    """`store` plus its evaluation and effects folders."""
    from mseval.effects import EffectsSettings, run_effects
    from mseval.evaluation import EvaluationSettings, evaluate
    from mseval.lesions.ensemble import CountSettings, count_store

    root = store["root"]
    count_store(root / "fc", root / "counts", CountSettings())
    counts = root / "counts" / "counts.parquet"
    evaluate(root / "cohort", root / "fc", root / "ev", EvaluationSettings(n_boot=50, voxel=False), counts=counts)
    run_effects(root / "cohort", root / "fc", root / "eff", EffectsSettings(power_sims=4), counts_path=counts)
    return {**store, "ev": root / "ev", "eff": root / "eff"}


@pytest.fixture(scope="module")
def built(trial: dict[str, Path], tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    """One report built with FAST settings from `trial`'s ready-made evaluation and effects folders, read
    by the tests that check a build from given folders (they built the same report twice before)."""
    out = tmp_path_factory.mktemp("built")
    return build_report(trial["cohort"], trial["fc"], out / "a", evaluation_dir=trial["ev"], effects_dir=trial["eff"], settings=FAST)


def _files(folder: Path) -> dict[str, bytes]:
    keep = [folder / "report.html", folder / "report.md", folder / "summary.json", *sorted((folder / "tables").glob("*.csv")),
            *sorted((folder / "figures").iterdir())]
    return {str(p.relative_to(folder)): p.read_bytes() for p in keep}


def test_a_build_from_given_folders_has_every_file_and_section_and_no_path_or_date(built):
    """build_report with ready-made evaluation and effects folders: every file, no date, no output path,
    and the contents `_check_contents` lists. That two builds give the same bytes in two folders is
    tested end to end (results/ included) by tests/commands/test_reliability.py."""
    a = built
    fa = _files(a.out)
    assert {"report.html", "report.md", "summary.json", "tables/table1_baseline.csv", "figures/forest_plot.pdf", "figures/forest_plot.png",
            "figures/example_slices.png"} <= set(fa)
    # no dates or output paths leak into the files
    where = str(a.out.parent)
    assert where not in fa["report.html"].decode() and where not in fa["summary.json"].decode()
    assert b"CreationDate" not in fa["figures/forest_plot.pdf"]
    _check_contents(a)


def _check_contents(rep) -> None:  # noqa: ANN001
    """summary.json follows its schema; the HTML has every section and fetches nothing."""
    import jsonschema

    trial = {"cohort": Path(json.loads((rep.out / "summary.json").read_text())["inputs"]["cohort"])}
    summary = json.loads((rep.out / "summary.json").read_text())
    jsonschema.validate(summary, data_schemas.load("report_summary") if "report_summary" in data_schemas.SCHEMAS
                        else json.loads((Path(data_schemas.__file__).parent / "report_summary.schema.json").read_text()))
    arms = list(pd.read_csv(trial["cohort"] / "arms.csv")["arm"])
    assert [a["arm"] for a in summary["arms"]] == arms
    html = rep.html.read_text()
    for heading in ("Table 1. Baseline characteristics", "Primary endpoint", "Proportion free of NET2 lesions", "Activity classification",
                    "Calibration", "Detection against the observed NET2 masks", "Counterfactual effects", "predicted-responder strata",
                    "Prognostic adjustment", "Power and sample size", "Example slices", "Abbreviations", "Settings"):
        assert heading in html, heading
    assert "http://" not in html.replace("http://www.w3.org", "") and "https://" not in html  # self-contained: nothing fetched
    settings = html.split('<h2 id="settings">')[1].split("</table>")[0]
    assert "<td>Model</td>" in settings and settings.count("<td>Sampler") == len(summary["settings"]["forecaster"]["sampler_groups"]) >= 1
    assert len(settings) < 8000  # a short table; the full record is collapsed below it
    assert '<details class="record">' in html and '"sampler_groups"' in unescape(html.split('<details class="record">')[1])
    md = (rep.out / "report.md").read_text()
    assert "## Primary endpoint" in md and "| Arm |" in md
    # the power caption names the law the simulation drew from, as effects recorded it (not the forecasts)
    law = pd.read_csv(rep.out / "tables" / "power_analytic.csv")["outcome_law"].dropna().iloc[0]
    caption = next(line for line in md.splitlines() if line.startswith("*Figure") and "Power of a two-arm" in line)
    assert law.startswith("observed") and f"drawn from the {law}, never from the forecasts" in caption
    assert "simulated from the forecasts" not in md
    # issue 25: the responders' all-patients row holds the primary table's numbers, and the report says so
    rsp = pd.read_csv(rep.out / "tables" / "responders.csv")
    allrows = rsp[rsp["stratum"] == "all"].set_index("arm")
    prim = pd.read_csv(rep.out / "tables" / "primary_endpoint.csv").set_index("arm")
    assert len(allrows) == len(prim) >= 1
    for arm, r in allrows.iterrows():
        assert r["observed_rate_ratio"] == prim.at[arm, "observed_rate_ratio"]
        assert abs(r["predicted_rate_ratio"] - prim.at[arm, "counterfactual_rate_ratio"]) <= 1e-9 * prim.at[arm, "counterfactual_rate_ratio"]
        if "true_ratio_of_means" in prim.columns:
            assert abs(r["true_rate_ratio"] - prim.at[arm, "true_ratio_of_means"]) <= 1e-9 * prim.at[arm, "true_ratio_of_means"]
    assert "its predicted RR the counterfactual ratio of means" in md
    t1 = pd.read_csv(rep.out / "tables" / "table1_baseline.csv")
    assert "p" not in [c.lower() for c in t1.columns] and not any("p-value" in c for c in t1.columns)


def _cli(argv: list[str]) -> int:
    from mseval import cli
    from mseval.commands.report import report

    names = {c.name or (c.callback.__name__ if c.callback else None) for c in cli.app.registered_commands}
    if "report" not in names:
        cli.app.command("report")(report)
    return cli.main(argv)


def test_store_missing_an_arm_is_one_line_exit_2_and_leaves_nothing(store, tmp_path, capsys):
    trial = store
    from mseval.simulate.forecasters import ForecasterSpec, simulate_forecasts

    arms = list(pd.read_csv(trial["cohort"] / "arms.csv")["arm"])
    partial = tmp_path / "fc_partial"
    simulate_forecasts(trial["cohort"], partial, ForecasterSpec("oracle", samples=2, seed=1), arms=arms[:-1])
    out = tmp_path / "rep"
    code = _cli(["report", str(trial["cohort"]), str(partial), "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2
    errors = [line for line in err.splitlines() if line.startswith("mseval: error:")]
    assert len(errors) == 1 and arms[-1] in errors[0] and "lacks" in errors[0] and "Traceback" not in err
    assert not out.exists() and list(tmp_path.glob(".rep*")) == []


def test_store_missing_patients_names_them(store, tmp_path):
    trial = store
    cohort = tmp_path / "cohort"
    shutil.copytree(trial["cohort"], cohort)
    man = pd.read_csv(cohort / "manifest.csv")
    truth = pd.read_csv(cohort / "truth.csv")
    man = pd.concat([man, man.iloc[[0]].assign(patient_id="P999")], ignore_index=True)
    truth = pd.concat([truth, truth[truth["patient_id"] == man.iloc[0]["patient_id"]].assign(patient_id="P999")], ignore_index=True)
    man.to_csv(cohort / "manifest.csv", index=False)
    truth.to_csv(cohort / "truth.csv", index=False)
    for name in ("visits.csv", "truth_visits.csv", "oracle_inputs.csv"):  # the patient is complete but for the store
        t = pd.read_csv(cohort / name, dtype=str, keep_default_na=False)
        pd.concat([t, t[t["patient_id"] == man.iloc[0]["patient_id"]].assign(patient_id="P999")]).to_csv(cohort / name, index=False)
    with pytest.raises(InputError, match="P999") as exc:
        build_report(cohort, trial["fc"], tmp_path / "rep", settings=FAST)
    assert "\n" not in exc.value.message and str(trial["fc"]) in exc.value.message, exc.value.message
    assert not (tmp_path / "rep").exists()


def test_report_shows_forecast_inference_as_computed_not_as_rubin_imputation(trial, built):
    """Issue 9 in the report: the forecast RR is an NB2 fit per fully synthetic sample with a sandwich CI
    (never 'Rubin' / 'imputation'), forecast-derived CIs say they are conditional on the forecaster,
    every estimand in effects.json is named, and the heterogeneity interaction test is shown with the
    numbers of heterogeneity.csv (by the shared estimability rule)."""
    from reports import numbers as N
    from reports import tables as T

    rep = built
    html, md = rep.html.read_text(), (rep.out / "report.md").read_text()
    for text in (html, md):
        assert "rubin" not in text.lower() and "imputation" not in text.lower()
        assert T.FORECAST_COL in text and T.COUNTERFACTUAL_COL in text  # primary table headers
        assert "Design rate ratio (forecast ratio of means, an assumption)" in text
        assert "Radcliffe" in text
    cap = json.loads((rep.out / "summary.json").read_text())
    caption = html.split('id="fig-forest_plot"')[1].split("</figure>")[0]
    assert "conditional on the forecaster" in caption  # forest plot caption
    # the caption names the forecast RR's interval that effects computed (small trial: the randomization interval)
    ef0 = json.loads((trial["eff"] / "effects.json").read_text())
    import html as H0

    forecast_words = caption.split("Open squares")[1].split("Open diamonds")[0]
    assert "permutation" in ef0["forecast_model"]["pooling"] and "randomization CI" in forecast_words and "sandwich" not in forecast_words
    # ... and the observed RR's (small trial: the studentized bootstrap, not the glm.nb Wald CI)
    observed_words = caption.split("Filled circles")[1].split("Open squares")[0]
    assert ef0["observed_model"]["primary_interval"]["method"] == "bootstrap_t"
    assert "studentized bootstrap" in observed_words and "999 resamples" in observed_words
    for text in (md, H0.unescape(html)):  # the primary table's note names the same interval and test (not "Wald")
        assert "Observed RR CI and p (two-sided): studentized bootstrap" in text and "Wald test of the observed RR" not in text
    # every estimand sentence of effects.json appears in the report
    ef = json.loads((trial["eff"] / "effects.json").read_text())
    import html as H

    for q, e in ef["estimands"].items():
        assert e["estimand"] in H.unescape(html), q
        assert e["estimand"] in md, q
    assert cap["forecast_model"]["samples"] == ef["forecast_model"]["samples"]
    # the interaction test: its own section, every arm's ratio of rate ratios and p as heterogeneity.csv says
    het = pd.read_csv(trial["eff"] / "heterogeneity.csv")
    section = md.split("### Heterogeneity of the effect: the interaction test (primary)")[1].split("###")[0]
    assert "Ratio of rate ratios per SD of predicted benefit" in section
    for r in het.to_dict("records"):
        cell = N.ratio_text(r["interaction_ratio"], r["ci_low"], r["ci_high"], estimable=r["estimable"], note=r["note"])
        assert cell in section, (r["arm"], cell)
        if not cell.startswith(N.NOT_ESTIMABLE):
            assert T.p_text(r["p_value"]) in section
    # responder strata: exploratory, and no non-estimable stratum printed as a number
    rsp = pd.read_csv(trial["eff"] / "responders.csv")
    rsec = md.split("### Effects in predicted-responder strata (exploratory)")[1].split("\n\n")[1]
    ne_rows = [ln for ln in rsec.splitlines() if "| exploratory |" in ln]
    assert len(ne_rows) == int((rsp["analysis"] == "exploratory").sum())
    assert all(N.NOT_ESTIMABLE in ln for ln, ok in zip(ne_rows, rsp[rsp["analysis"] == "exploratory"]["estimable"]) if not ok)
    # prognostic saving carries its bootstrap CI
    pg = pd.read_csv(trial["eff"] / "prognostic.csv").iloc[0]
    assert f"{pg['sample_size_saving_pct']:.0f}% ({pg['saving_ci_low_pct']:.0f}% to {pg['saving_ci_high_pct']:.0f}%)" in md
    # simulated cohort: the attainable saving (observable oracle's score) stands beside the measured one (issue 22)
    psec = md.split("## Prognostic adjustment")[1].split("\n## ")[0]
    assert "Sample-size saving, measured (95% CI) | Sample-size saving, attainable (observable oracle) |" in psec
    assert f"({pg['saving_ci_low_pct']:.0f}% to {pg['saving_ci_high_pct']:.0f}%) | {pg['attainable_saving_pct']:.0f}% |" in psec


def test_report_shows_the_calibrated_ratio_when_held_out_patients_are_given(trial, tmp_path):
    """With held-out patients the calibrated ratio is its own column of the model-based projections
    (never of the primary table), labelled for what it is when the held-out patients are the trial's
    own: an observed-data ratio estimator with the forecast as covariate (issue 22)."""
    from mseval.effects import EffectsSettings, run_effects

    ids = list(pd.read_csv(trial["cohort"] / "manifest.csv")["patient_id"].astype(str))
    eff = tmp_path / "eff_cal"
    run_effects(trial["cohort"], trial["fc"], eff, EffectsSettings(power_sims=2, prognostic_bootstrap=20, heldout_patients=tuple(ids)),
                counts_path=trial["root"] / "counts" / "counts.parquet")
    assert (eff / "counterfactual_calibrated.csv").is_file()
    rep = build_report(trial["cohort"], trial["fc"], tmp_path / "r", evaluation_dir=trial["ev"], effects_dir=eff, settings=FAST)
    md = (rep.out / "report.md").read_text()
    header = md.split("## Primary endpoint: NET2 lesion rate ratios")[1].split("\n\n")[1].splitlines()[0]
    assert "alibrated" not in header and "Forecast" not in header
    proj = md.split("## Model-based projections")[1].split("\n\n")[1].splitlines()[0]
    assert "Calibrated ratio: observed-data ratio estimator (forecast as covariate) (95% CI)" in proj
    assert "with every patient held out it is an adjusted analysis of the observed trial" in md
