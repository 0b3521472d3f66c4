"""`mseval effects --sap`: the plan runs, its tables and provenance are written, the same plan on the
same data gives byte-identical outputs, and a bad plan is one line naming the file and field, exit 2,
nothing written."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import jsonschema
import numpy as np
import pandas as pd
import pytest

import data_schemas
from mseval.sap.default import default_sap_text
from mseval.simulate.arms import DEFAULT_ARMS
from mseval.simulate.model import TrialConfig
from mseval.simulate.trial import simulate_trial


@pytest.fixture(scope="module")
def trial(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A small simulated cohort (6 patients per arm, 20^3 voxels) and oracle-like counts drawn from its truth."""
    root = tmp_path_factory.mktemp("sap")
    arms = (DEFAULT_ARMS[0], DEFAULT_ARMS[3], DEFAULT_ARMS[4], DEFAULT_ARMS[5])  # placebo + three arms: a family for the multiplicity
    simulate_trial(root / "cohort", TrialConfig(patients_per_arm=6, shape=(20, 20, 20), seed=5, followup_weeks=48, arms=arms))
    truth = pd.read_csv(root / "cohort" / "truth.csv")
    rng = np.random.default_rng(1)
    S = 2
    counts = pd.DataFrame({"patient_id": np.repeat(truth["patient_id"].to_numpy(), S), "arm": np.repeat(truth["arm"].to_numpy(), S),
                           "sample": np.tile(np.arange(S, dtype=np.int64), len(truth)),
                           "count": rng.poisson(np.repeat(truth["expected_count"].to_numpy(), S)).astype(np.int64)})
    counts["volume_mm3"] = counts["count"] * 100.0
    counts.to_parquet(root / "counts.parquet")
    return root / "cohort", root / "counts.parquet"


def _run(cli, cohort: Path, counts: Path, out: Path, sap: object, *extra: object):  # noqa: ANN001, ANN202
    return cli("effects", cohort, "--counts", counts, "--out", out, "--power-sims", "0", "--sap", sap, *extra)


def _digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def test_effects_runs_the_default_plan_reproducibly(trial: tuple[Path, Path], tmp_path: Path, cli) -> None:  # noqa: ANN001
    cohort, counts = trial
    sap = tmp_path / "sap.yaml"
    sap.write_text(default_sap_text().replace("imputations: 20", "imputations: 2").replace("n_permutations: 999", "n_permutations: 199").replace("deltas: [0.0, 0.25, 0.5, 1.0, 1.5, 2.0]", "deltas: [0.0, 1.0]"))
    out = tmp_path / "eff"
    res = _run(cli, cohort, counts, out, sap)
    assert res.code == 0, res.err
    prim = pd.read_csv(out / "sap_primary.csv")
    arms = pd.read_csv(cohort / "arms.csv")
    assert list(prim["arm"]) == list(arms["arm"][arms["reference"]]) + [a for a, r in zip(arms["arm"], arms["reference"]) if not r]
    assert (prim["n_randomized"] == 6).all() and (prim["n_analysed"] == 6).all()
    for col in ("adjusted_rate", "rate_ci_low", "rate_ci_high", "rate_ratio", "rr_ci_low", "rr_ci_high", "rate_difference", "rd_ci_low", "rd_ci_high",
                "p_value", "p_adjusted", "events", "exposure_years", "estimand", "estimable", "note"):
        assert col in prim.columns, col
    # 6 per arm: the default plan's 'auto' runs the permutation test (its inverted CI, the seed of the plan), stated with the table
    comp = prim[~prim["reference"]]
    assert (comp["test"] == "permutation").all() and comp["ci_method"].str.contains("permutation").all()
    assert comp["p_value"].between(0, 1).all() and (comp["p_adjusted"] >= comp["p_value"]).all() and (prim["multiplicity"] == "holm").all()
    assert (comp["estimable"] | comp["note"].str.len().gt(0)).all()  # a CI that is not bounded is flagged, never printed as a number silently
    ok = comp[comp["estimable"]]
    assert ((ok["rr_ci_low"] < ok["rate_ratio"]) & (ok["rate_ratio"] < ok["rr_ci_high"])).all()
    rule = json.loads((out / "sap.json").read_text())["analyses"]["primary"]["test_rule"]
    assert "'auto' -> 'permutation'" in rule and "'auto' -> 'permutation'" not in (out / "sap_deviations.csv").read_text()
    # the cohort's visits.csv (one follow-up visit): CONSORT per visit, the MNAR tipping point; several-visit endpoints skipped
    consort = pd.read_csv(out / "sap_consort.csv").set_index("arm")
    assert consort.loc["all", "randomized"] == 24 and consort.loc["all", "analysed"] == prim["n_analysed"].sum()
    mnar = pd.read_csv(out / "sap_mnar_mnar_tipping_point.csv")
    assert sorted(set(mnar["delta"])) == [0.0, 1.0] and len(mnar) == 2 * 3 and (out / "sap_mnar_mnar_tipping_point_tipping.csv").is_file()
    assert sum("needs several visits" in line for line in (out / "sap_deviations.csv").read_text().splitlines()) == 3
    sens = pd.read_csv(out / "sap_sensitivity.csv")
    wald = sens[(sens["analysis"] == "robust_se") & ~sens["reference"]]
    assert len(wald) == 3 and wald["ci_method"].str.contains("sandwich").all() and wald["estimable"].sum() >= 2
    assert set(sens["analysis"]) == {"primary", "unadjusted", "robust_se"}
    assert (out / "sap_secondary_lesion_free.csv").is_file() and (out / "sap_model_terms.csv").is_file()
    record = json.loads((out / "sap.json").read_text())
    summary = json.loads((out / "effects.json").read_text())
    jsonschema.validate(summary, data_schemas.load("effects_summary"))
    jsonschema.validate(record["plan"], data_schemas.load("sap"))
    digest = hashlib.sha256(sap.read_bytes()).hexdigest()
    assert summary["sap"]["sha256"] == record["sha256"] == digest and (out / "sap.yaml").read_bytes() == sap.read_bytes()
    assert "SAP primary analysis" in res.out
    # same plan, same data: byte-identical outputs (run again into the same folder)
    first = _digest(out)
    again = _run(cli, cohort, counts, out, sap, "--overwrite")
    assert again.code == 0, again.err
    assert _digest(out) == first
    # the report's section: the plan in words, the deviations, the adjusted primary table with the reference first
    from reports.render import _md_table
    from reports.sap_section import read_sap, sap_context, sap_md
    from reports.style import arm_labels

    ctx = sap_context(read_sap(out), arms, arm_labels(arms))
    md = "\n".join(sap_md(ctx, _md_table))
    assert md.startswith("## Statistical analysis plan: Default MRI analysis plan") and "- Covariates: site, baseline Gd+ lesions (0 vs >= 1)" in md
    assert "**Deviations from the plan:**" in md and "p, adjusted (holm)" in md and "### Sensitivity analyses" in md
    assert ctx["primary"]["rows"][0][0] == arm_labels(arms)["placebo"] and ctx["primary"]["rows"][0][4] == "reference"
    assert "Odds ratio of being lesion-free" in md and "Hazard ratio: not estimated" in md
    assert "### CONSORT flow" in md and "### Sensitivity: MNAR tipping point (mnar_tipping_point)" in md and "exp(delta)" in md
    assert "### Secondary, several visits" not in md  # one follow-up visit: skipped (deviations) or the lesion-free odds ratio


@pytest.mark.parametrize(("edit", "field", "words"), [
    (lambda t: t.replace("column: gd_count", "column: gd_lesions"), "primary.covariates[1].column", "is not a column of the data"),
    (lambda t: t.replace("procedure: holm", "procedure: bonferroni"), "multiplicity.procedure", "'bonferroni' is not one of"),
    (lambda t: t.replace("  alpha: 0.05\n", "  alpha: 0.05\n  gatekeeping: true\n"), "multiplicity.gatekeeping", "unknown field"),
    (lambda t: t.replace("sap_version: 1\n", "sap_version: 1\nreference_arm: aspirin\n"), "reference_arm", "is not in the arms table"),
    (lambda t: t.replace("procedure: holm", "procedure: fixed_sequence\n  order: [dmf, aspirin, ocrelizumab]"), "multiplicity.order",
     "'aspirin' is not in the arms table"),
    (lambda t: t.replace("test: auto", "test: score"), "small_sample_test.test", "is not one of"),
    (lambda t: t.replace("seed: 0", "seed: -3"), "seed", "minimum"),
    (lambda t: t.replace("strategy: exposure", "strategy: last_value_carried_forward"), "missing_data.strategy", "is not one of"),
    (lambda t: t.replace("    cov: robust\n", "    cov: robust\n    deltas: [1.0]\n"), "sensitivity[1].deltas", "not a field of a model_variation"),
    (lambda t: t.replace("imputations: 20", "imputations: 1"), "sensitivity[2].imputations", "minimum"),
    (lambda t: t.replace("    corr: ar1\n    ci: small_sample\n    single_visit: skip\n", "    corr: ar1\n"), "secondary[2].corr", "needs several visits per patient"),
    (lambda t: t.replace("n_permutations: 999", "n_permutations: 10"), "small_sample_test.n_permutations", "minimum"),
    (lambda t: t.replace("  cov: expected\n", "  cov: expected\n  dispersion: per_site\n"), "primary.dispersion", "is not one of"),
    (lambda t: t.replace("    corr: ar1\n", "    corr: ar1\n    dispersion: by_arm\n"), "secondary[2].dispersion", "only for endpoint net2_cumulative"),
    (lambda t: t.replace("    corr: ar1\n", "    corr: ar1\n    ci_reference: student\n"), "secondary[2].ci_reference", "is not one of"),
])
def test_bad_plan_is_one_line_exit_2_nothing_written(trial: tuple[Path, Path], tmp_path: Path, cli, edit, field: str, words: str) -> None:  # noqa: ANN001
    cohort, counts = trial
    sap = tmp_path / "bad_sap.yaml"
    sap.write_text(edit(default_sap_text()))
    res = _run(cli, cohort, counts, tmp_path / "eff", sap)
    err = res.err.strip()
    assert res.code == 2 and "\n" not in err and "Traceback" not in err, res.err
    assert str(sap) in err and f"field '{field}'" in err and words in err, err
    assert not (tmp_path / "eff").exists()
