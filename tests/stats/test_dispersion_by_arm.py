"""One NB2 dispersion per arm through the analyses that offer it (small-sample tests, cumulative multi-visit
NB2, exposure-based NB2, the SAP's `dispersion` field) and the NB-GEE's t reference."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from mseval.errors import InputError
from mseval.sap.default import default_sap_text
from mseval.sap.runner import run_sap
from mseval.sap.schema import parse_sap
from mseval.sap.text import plan_lines
from mseval.simulate.counts_only import simulate_count_trial
from mseval.simulate.model import TrialConfig
from mseval.stats.count_model import fit_count_model
from mseval.stats.gee import fit_gee
from mseval.stats.missing_data import exposure_nb2
from mseval.stats.small_sample import primary_tests
from mseval.stats.visits import fit_cumulative_nb2, patient_totals


@pytest.fixture(scope="module")
def trial():  # noqa: ANN201
    return simulate_count_trial(TrialConfig(patients_per_arm=20, seed=11), samples=1)


def test_small_sample_by_arm_estimate_se_and_permutation_p(trial) -> None:  # noqa: ANN001
    """Wald with dispersion by arm: the estimate and SE of `fit_count_model(dispersion="by_arm")` (expected
    information at each arm's alpha), to rounding; the permutation p value does not depend on the
    dispersion model (the exact score test at the common null fit), its CI does."""
    d = trial.table
    by = fit_count_model(d, "net2 ~ arm", reference="placebo", dispersion="by_arm").table.set_index("term")
    w = primary_tests(d, "net2 ~ arm", reference="placebo", method="wald", dispersion="by_arm").table.set_index("arm")
    assert np.allclose(w["rate_ratio"], by.loc[w.index, "rate_ratio"], rtol=1e-9)
    assert np.allclose(np.log(w["ci_high"] / w["rate_ratio"]), stats.norm.ppf(0.975) * by.loc[w.index, "se"], rtol=1e-9)
    sub = d[d["arm"].isin(["placebo", "dmf"])].reset_index(drop=True)
    pc = primary_tests(sub, "net2 ~ arm", reference="placebo", method="permutation", n_permutations=199, seed=4).table.iloc[0]
    pb = primary_tests(sub, "net2 ~ arm", reference="placebo", method="permutation", n_permutations=199, seed=4, dispersion="by_arm").table.iloc[0]
    assert pc["p_value"] == pb["p_value"]
    assert (pc["ci_low"], pc["ci_high"]) != (pb["ci_low"], pb["ci_high"])
    assert pb["ci_low"] < pb["rate_ratio"] < pb["ci_high"]
    with pytest.raises(InputError, match="dispersion"):
        primary_tests(d, "net2 ~ arm", reference="placebo", dispersion="by_site")


def test_cumulative_and_exposure_nb2_pass_the_dispersion_through(trial) -> None:  # noqa: ANN001
    """The cumulative multi-visit NB2 and the exposure-based NB2 with dispersion by arm are the by-arm NB2
    of the patient totals (same rate ratios and SEs to rounding); the bias-reduced sandwich (one alpha) is refused."""
    cum = fit_cumulative_nb2(trial.visits, trial.table, reference="placebo", cov="expected", dispersion="by_arm")
    tot = patient_totals(trial.visits, trial.table)
    tot = tot[tot["net2"].notna()].assign(net2=lambda z: z["net2"].astype(int))
    ref = fit_count_model(tot, "net2 ~ arm", reference="placebo", dispersion="by_arm")
    assert cum.dispersion == "by_arm" and np.allclose(cum.table["se"], ref.table["se"], rtol=1e-9)
    assert len(cum.alpha_by_arm) == 6 and (cum.alpha_by_arm["alpha"] >= 0).all()
    ex = exposure_nb2(tot, "net2 ~ arm", reference="placebo", dispersion="by_arm").fit
    assert np.allclose(ex.table["coef"], ref.table["coef"], rtol=1e-9)
    with pytest.raises(InputError) as err:
        fit_cumulative_nb2(trial.visits, trial.table, reference="placebo", dispersion="by_arm")
    assert err.value.field == "dispersion"


def test_gee_t_reference(trial) -> None:  # noqa: ANN001
    """ci_reference 't': the same estimate and SE, the CI half-width on the log scale scaled by
    t_{0.975}(patients - coefficients) / z_{0.975} and p = 2 P(T > |z|), to rounding."""
    z = fit_gee(trial.visits, trial.table, corr="exchangeable", reference="placebo").table.set_index("term")
    t = fit_gee(trial.visits, trial.table, corr="exchangeable", reference="placebo", ci_reference="t")
    dof = 120 - 6
    assert t.ci_reference == f"t({dof})"
    tt = t.table.set_index("term")
    assert np.allclose(tt["se"], z["se"], rtol=1e-12)
    ratio = np.log(tt["ci_high"] / tt["rate_ratio"]) / np.log(z["ci_high"] / z["rate_ratio"])
    assert np.allclose(ratio, stats.t.ppf(0.975, dof) / stats.norm.ppf(0.975), rtol=1e-9)
    assert np.allclose(tt["p_value"], 2 * stats.t.sf(np.abs(tt["coef"] / tt["se"]), dof), rtol=1e-9)
    # t_arms: each arm's contrast against t(20 + 20 - 2 = 38): the half-width scales by t_38 / z
    ta = fit_gee(trial.visits, trial.table, corr="exchangeable", reference="placebo", ci_reference="t_arms").table.set_index("term")
    ratio = np.log(ta["ci_high"] / ta["rate_ratio"]) / np.log(z["ci_high"] / z["rate_ratio"])
    assert np.allclose(ratio, stats.t.ppf(0.975, 38) / stats.norm.ppf(0.975), rtol=1e-9)
    with pytest.raises(InputError) as err:
        fit_gee(trial.visits, trial.table, reference="placebo", ci_reference="student")
    assert err.value.field == "ci_reference"


def _by_arm_plan(test: str) -> object:
    text = default_sap_text().replace("  cov: expected\n", "  cov: expected\n  dispersion: by_arm\n").replace("test: auto", f"test: {test}")
    text = text.replace("n_permutations: 999", "n_permutations: 199")
    return parse_sap(text[:text.index("  - name: robust_se")].encode(), "s.yaml")


def test_sap_dispersion_field_runs_the_by_arm_fit(trial) -> None:  # noqa: ANN001
    """primary.dispersion: by_arm reaches the fit (the table's CI is the by-arm fit's), the CI method and the
    reference row's note say so, the plan text says so; the default stays 'common' when the field is absent."""
    d = trial.table[trial.table["arm"].isin(["placebo", "dmf", "laquinimod"])].reset_index(drop=True)
    arms = ["placebo", "dmf", "laquinimod"]
    res = run_sap(_by_arm_plan("wald"), d, arms=arms, reference="placebo")
    tab = res.primary.table.set_index("arm")
    assert res.primary.info["dispersion"] == "by_arm" and set(res.primary.info["alpha_by_arm"]) == set(arms)
    assert "NB2 dispersion per arm" in tab.loc["dmf", "ci_method"] and "dispersion per arm" in tab.loc["placebo", "note"]
    # the primary table's CI is the by-arm fit's Wald CI of the plan's adjusted formula
    terms = res.primary.terms.set_index("term")
    assert np.allclose(tab.loc[["dmf", "laquinimod"], "rr_ci_low"], terms.loc[["dmf", "laquinimod"], "ci_low"], rtol=1e-12)
    plain = default_sap_text().replace("  dispersion: by_arm\n", "").replace("test: auto", "test: wald")
    common = run_sap(parse_sap(plain[:plain.index("  - name: robust_se")].encode(), "c.yaml"), d, arms=arms, reference="placebo")
    assert common.primary.info["dispersion"] == "common"
    assert not np.allclose(common.primary.table.set_index("arm").loc[["dmf"], "rr_ci_low"], tab.loc[["dmf"], "rr_ci_low"])
    assert any("dispersion: one per arm" in line for line in plan_lines(_by_arm_plan("wald").resolved))
    no_field = default_sap_text().replace("  dispersion: by_arm\n", "").replace("  dispersion: common\n", "")
    assert parse_sap(no_field.encode(), "d.yaml").resolved["primary"]["dispersion"] == "common"
    perm = run_sap(_by_arm_plan("permutation"), d, arms=arms, reference="placebo").primary.table.set_index("arm")
    assert perm.loc["dmf", "ci_method"].startswith("inverted permutation") and perm.loc["dmf", "ci_method"].endswith("per arm")
