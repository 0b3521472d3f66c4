"""The observable oracle (Bayes predictive law given what the inputs show) against the simulator's own draws,
and its place between the true-law oracle and the NB2 baseline on 240-patient trials."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from mseval.metrics.calibration import crps_pmf, pit_uniformity, randomized_pit_pmf
from mseval.simulate.model import TrialConfig, draw_patients
from mseval.simulate.observable_oracle import ModelParams, observable_pmf, posterior_weights, true_law_pmf
from mseval.stats.baseline_nb2 import fit_nb2_baseline

PARAMS = ModelParams.from_config(TrialConfig())


def test_quadrature_converges_and_rows_are_laws(count_trial):
    feats, _, _ = count_trial(3)
    a = observable_pmf(feats, PARAMS)
    b = observable_pmf(feats, PARAMS, grid=1601)
    k = min(a.shape[1], b.shape[1])
    assert np.abs(a[:, :k] - b[:, :k]).max() < 1e-7
    assert np.allclose(a.sum(1), 1.0, atol=1e-9)


def test_posterior_of_the_latent_matches_the_simulators_draws():
    """Within cells of (Gd+ count, T2 count), the latent activity the simulator drew averages to the
    posterior mean, and its spread to the posterior variance (z-tests at 4 SE over 40,000 patients)."""
    cfg = TrialConfig(patients_per_arm=40_000 // 6, seed=17)
    pats = draw_patients(cfg, np.random.default_rng(17))
    u_true = pats["latent_activity"].to_numpy()
    u, w = posterior_weights(pats["gd_count"].to_numpy(), pats["n_baseline_lesions"].to_numpy(), pats["age"].to_numpy(), PARAMS)
    m = (w * u).sum(1)
    v = (w * u**2).sum(1) - m**2
    resid = u_true - m
    t2_bin = np.digitize(pats["n_baseline_lesions"].to_numpy(), [4, 7, 10, 14])
    cells = pd.DataFrame({"gd": np.minimum(pats["gd_count"].to_numpy(), 4), "t2": t2_bin, "r": resid, "r2": resid**2 - v})
    checked = 0
    for _, g in cells.groupby(["gd", "t2"]):
        if len(g) < 200:
            continue
        checked += 1
        for col in ("r", "r2"):
            se = g[col].std(ddof=1) / np.sqrt(len(g))
            assert abs(g[col].mean()) < 4 * se, (col, len(g), g[col].mean(), se)
    assert checked >= 8
    # the test has power: a posterior that ignores the T2 count is off in some cell
    _, w_bad = posterior_weights(pats["gd_count"].to_numpy(), np.full(len(pats), 8), pats["age"].to_numpy(), PARAMS)
    bad = pd.DataFrame({"t2": t2_bin, "r": u_true - (w_bad * u).sum(1)}).groupby("t2")["r"].agg(["mean", "std", "size"])
    assert (bad["mean"].abs() > 4 * bad["std"] / np.sqrt(bad["size"])).any()


def test_observable_oracle_lies_between_the_true_law_and_the_nb2_baseline(count_trial):
    """Six 240-patient trials, each with its own 240-patient training trial for the NB2 baseline. The
    observable oracle's CRPS/AUC lie between the true law's and the baseline's within 3 MC standard
    errors (over trials), near the issue's figures (AUC 0.87, CRPS 1.06; true law 0.91 / 0.77: the
    tolerance is 3 SE plus their rounding), and its count PIT is uniform."""
    rows, pits = [], []
    for k in range(6):
        train, _, _ = count_trial(500 + k)
        test, mu, _ = count_trial(700 + k)
        y = test["net2"].to_numpy()
        laws = {"true": true_law_pmf(mu), "obs": observable_pmf(test, PARAMS),
                "nb2": fit_nb2_baseline(train, reference="placebo").pmf(test)}
        rows.append({**{f"crps_{n}": crps_pmf(p, y).mean() for n, p in laws.items()},
                     **{f"auc_{n}": roc_auc_score(y > 0, 1 - p[:, 0]) for n, p in laws.items()}})
        pits.append(randomized_pit_pmf(laws["obs"], y, seed=k))
    r = pd.DataFrame(rows)
    n = len(r)

    def below(a: str, b: str) -> None:  # mean(a) <= mean(b) within 3 SE of the paired difference
        d = r[a] - r[b]
        assert d.mean() < 3 * d.std(ddof=1) / np.sqrt(n), (a, b, r[a].mean(), r[b].mean())

    below("crps_true", "crps_obs")
    below("crps_obs", "crps_nb2")
    below("auc_obs", "auc_true")
    below("auc_nb2", "auc_obs")
    for col, target in (("auc_obs", 0.87), ("crps_obs", 1.06), ("auc_true", 0.91), ("crps_true", 0.77)):
        se = r[col].std(ddof=1) / np.sqrt(n)
        assert abs(r[col].mean() - target) < 3 * se + 0.005, (col, r[col].mean(), se)
    assert pit_uniformity(np.concatenate(pits)).chi2_p > 1e-3


def test_unknown_arm_is_refused(count_trial):
    feats, _, _ = count_trial(3, patients_per_arm=2)
    feats.loc[0, "arm"] = "aspirin"
    with pytest.raises(ValueError, match="aspirin"):
        observable_pmf(feats, PARAMS)
