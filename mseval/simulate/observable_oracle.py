"""The observable oracle: the Bayes predictive law of the NET2 count given what the baseline shows.

The simulator (`mseval.simulate.model`, `mseval.simulate.events`) draws, per patient i with age
a_i, c(a) = base_rate exp(age_effect (a - 37) / 10), lambda_i = c(a_i) u_i:

    u_i ~ Gamma(1/k, k)                                   latent activity (k = dispersion, mean 1)
    G_i ~ Poisson(g lambda_i)                             baseline Gd+ lesions (g = gd_per_rate)
    T_i = max(G_i, 1 + X_i),  X_i ~ NB2(mean b sqrt(lambda_i), k_T)   baseline T2 lesions
    F_i = f0 u_i^s exp(sd N - sd^2/2)                     DAWM share of white matter (s = dawm_strength)
    V_i ~ Poisson(lambda_i v (1 - p_enl) E[L])            pre-lesional sites visible at baseline
    R_ia = exp(response_sd Z),  rho_ia = RR_a^(m(a_i) R_ia)      response to arm a (1 on the reference)
    Y_ia(t0, t1) = A + B                                   NET2 count in weeks (t0, t1] under arm a:
        A | V ~ Binomial(V, rho pi),  pi = I(t0, t1) / E[L]   the visible sites that appear in the window
        B ~ Poisson(lambda rho ((t1 - t0)/52.18 - v (1 - p_enl) I(t0, t1)))   every other event
    (I(t0, t1) = integral of P(L > r) over the window, in years: `events.prelesion_integral`).

Given (G, T, F, V, a, t0, t1, arm) the rest of the baseline (volumes, shapes, places, EDSS, sex, site,
anatomy) is drawn from u-free laws or through these, so this tuple is sufficient: no forecaster
working from the baseline can beat, in expected proper score, the posterior predictive

    P(Y = y) = E_R integral [Binomial(.; V, rho pi) * Poisson(.; c u rho T')](y) p(u | G, T, F, V, a) du

with p(u | ...) ∝ Gamma(u; 1/k, k) Poisson(G; g c u) P(T | G, c u) LogNormal(F | u) Poisson(V; c u v' E[L]).
The u integral is a quadrature on a log-spaced grid (Jacobian u, weights normalised in log space;
301 points from 1e-6 to 80 agree with 1601 to about 1e-8, tested), the R expectation a 12-point
Gauss-Hermite rule (exact when response_sd is 0). The oracle reads F and V as an ideal reader would
(the DAWM extent and every visible pre-lesional site exactly): an upper bound on what a model can
get from images whose pre-lesional contrast is faint. Visit history (earlier follow-up counts) is
not conditioned on: this is the baseline oracle for every horizon. The pmf is truncated where the
remaining tail is about 1e-12. The true-law oracle (`true_law_pmf`) is Poisson(expected_count): it
knows u_i and R_ia (and not the realised pre-lesional sites).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import special, stats

from mseval.simulate.model import AGE_CENTRE, WEEKS_PER_YEAR, TrialConfig, effect_multiplier

U_MIN, U_MAX = 1e-6, 80.0
_HERMITE = 12


@dataclass(frozen=True)
class ModelParams:
    """The simulator's parameters the observable oracle needs (from `TrialConfig` or simulation.json).
    Knobs absent from an older simulation.json take the value that recovers that version's world (0)."""

    base_rate: float
    dispersion: float
    age_effect: float
    modifier: float
    gd_per_rate: float
    baseline_lesions_per_sqrt_rate: float
    rate_ratios: Mapping[str, float]
    reference_arm: str
    t2_count_dispersion: float = 0.0
    response_sd: float = 0.0
    dawm_strength: float = 0.0
    dawm_fraction: float = 0.04
    dawm_sd: float = 0.4
    prelesion_fraction: float = 0.0
    p_enlarging: float = 0.25
    prelesion_months: tuple[float, float] = (2.0, 12.0)

    @classmethod
    def from_config(cls, cfg: TrialConfig | Mapping) -> ModelParams:
        """From a TrialConfig or the `config` dict of a cohort's simulation.json."""
        d = cfg.to_dict() if isinstance(cfg, TrialConfig) else dict(cfg)
        arms = d["arms"]
        rr = {a["arm"]: (1.0 if a.get("reference") else float(a["rate_ratio"])) for a in arms}
        ref = next(a["arm"] for a in arms if a.get("reference"))
        keys = ("base_rate", "dispersion", "age_effect", "modifier", "gd_per_rate", "baseline_lesions_per_sqrt_rate")
        optional = ("t2_count_dispersion", "response_sd", "dawm_strength", "dawm_fraction", "dawm_sd", "prelesion_fraction", "p_enlarging")
        extra = {k: float(d[k]) for k in optional if k in d}
        if "prelesion_months" in d:
            extra["prelesion_months"] = tuple(float(x) for x in d["prelesion_months"])  # type: ignore[assignment]
        return cls(**{k: float(d[k]) for k in keys}, rate_ratios=rr, reference_arm=ref, **extra)

    @property
    def mean_latency_years(self) -> float:
        return 0.5 * (self.prelesion_months[0] + self.prelesion_months[1]) / 12.0

    @property
    def visible_share(self) -> float:
        """v (1 - p_enl): the share of events whose pre-lesional change can be seen at baseline."""
        return self.prelesion_fraction * (1.0 - self.p_enlarging)

    def prelesion_integral(self, a_weeks: np.ndarray, b_weeks: np.ndarray) -> np.ndarray:
        """I(a, b) in years, elementwise (see `mseval.simulate.events.prelesion_integral`)."""
        wpm = WEEKS_PER_YEAR / 12.0
        lo, hi = self.prelesion_months[0] * wpm, self.prelesion_months[1] * wpm

        def big_f(r: np.ndarray) -> np.ndarray:
            r = np.clip(np.asarray(r, dtype=float), 0.0, hi)
            return np.where(r <= lo, r, lo + ((hi - lo) ** 2 - (hi - r) ** 2) / (2.0 * (hi - lo)))

        return (big_f(b_weeks) - big_f(a_weeks)) / WEEKS_PER_YEAR

    def arm_rate_ratio(self, arm: np.ndarray, age: np.ndarray, response: np.ndarray | float = 1.0) -> np.ndarray:
        """RR_a ** (m(age) R) per patient (the reference arm: 1)."""
        arm = np.asarray(arm, dtype=object)
        unknown = sorted(set(arm) - set(self.rate_ratios))
        if unknown:
            raise ValueError(f"arm {unknown[0]!r} is not an arm of the simulated trial ({', '.join(self.rate_ratios)})")
        base = np.array([self.rate_ratios[a] for a in arm], dtype=float)
        m = effect_multiplier(np.asarray(age, dtype=float), self.modifier)
        return np.where(arm == self.reference_arm, 1.0, base ** (m * response))


def _u_grid(grid: int) -> tuple[np.ndarray, np.ndarray]:
    """Log-spaced nodes u (G,) and log trapezoid weights in u (including the Jacobian u)."""
    z = np.linspace(np.log(U_MIN), np.log(U_MAX), grid)
    dz = np.full(grid, z[1] - z[0])
    dz[[0, -1]] *= 0.5
    u = np.exp(z)
    return u, np.log(dz) + z


def posterior_weights(gd: np.ndarray, t2_count: np.ndarray, age: np.ndarray, params: ModelParams, *, grid: int = 301,
                      dawm_fraction: np.ndarray | None = None, prelesional_sites: np.ndarray | None = None,
                      extra_loglik: Callable[[np.ndarray], np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Quadrature nodes u (G,) and normalised posterior weights (n, G) of the latent activity.

    gd, t2_count: (n,) baseline Gd+ and T2 lesion counts (a T2 count below the Gd+ count, impossible
    in the simulator, is raised to it); age: (n,) years; dawm_fraction: (n,) DAWM share of white
    matter; prelesional_sites: (n,) pre-lesional sites visible at baseline. The last two are needed
    when the world's DAWM / pre-lesional channels are on (ValueError otherwise). extra_loglik: u (G,) ->
    (n, G) log-likelihood of any further baseline observation given u (conditionally independent of the
    counts given u), e.g. an image measurement whose law given u was fitted on a training trial
    (bench/readable_oracle.py).
    """
    gd = np.asarray(gd, dtype=float)[:, None]
    t2 = np.maximum(np.asarray(t2_count, dtype=float), np.asarray(gd[:, 0]))[:, None]
    c = params.base_rate * np.exp(params.age_effect * (np.asarray(age, dtype=float) - AGE_CENTRE) / 10.0)[:, None]
    u, logw = _u_grid(grid)
    k = params.dispersion
    lam = c * u[None, :]
    log_prior = stats.gamma.logpdf(u, 1.0 / k, scale=k)[None, :]
    log_gd = stats.poisson.logpmf(gd, params.gd_per_rate * lam)
    lam_t = params.baseline_lesions_per_sqrt_rate * np.sqrt(lam)
    if params.t2_count_dispersion > 0:  # X ~ NB2(mean lam_t, alpha): scipy nbinom(n = 1/alpha, p = 1/(1 + alpha mu))
        n_nb, p_nb = 1.0 / params.t2_count_dispersion, 1.0 / (1.0 + params.t2_count_dispersion * lam_t)
        log_t_gt = stats.nbinom.logpmf(t2 - 1.0, n_nb, p_nb)
        log_t_eq = stats.nbinom.logcdf(gd - 1.0, n_nb, p_nb)
    else:
        log_t_gt = stats.poisson.logpmf(t2 - 1.0, lam_t)
        log_t_eq = stats.poisson.logcdf(gd - 1.0, lam_t)  # T = G: 1 + X <= G
    log_t = np.where(t2 > gd, log_t_gt, log_t_eq)
    lw = log_prior + log_gd + log_t + logw[None, :]
    if params.dawm_strength > 0:
        if dawm_fraction is None:
            raise ValueError("the world's DAWM channel is on (dawm_strength > 0): the oracle needs dawm_fraction")
        f = np.asarray(dawm_fraction, dtype=float)[:, None]
        mean_log = np.log(params.dawm_fraction) + params.dawm_strength * np.log(u)[None, :] - 0.5 * params.dawm_sd ** 2
        lw = lw + stats.norm.logpdf(np.log(np.maximum(f, 1e-300)), mean_log, max(params.dawm_sd, 1e-9))
    if params.visible_share > 0:
        if prelesional_sites is None:
            raise ValueError("the world's pre-lesional channel is on (prelesion_fraction > 0): the oracle needs prelesional_sites")
        v = np.asarray(prelesional_sites, dtype=float)[:, None]
        lw = lw + stats.poisson.logpmf(v, lam * params.visible_share * params.mean_latency_years)
    if extra_loglik is not None:
        lw = lw + np.asarray(extra_loglik(u), dtype=float)
    lw -= special.logsumexp(lw, axis=1, keepdims=True)
    return u, np.exp(lw)


_EXP_PATH_MU = 600.0
"""Nodes whose Poisson mean exceeds this somewhere in a block take the log-space path of `mixture_pmf` (exp(-mu) would underflow)."""


def mixture_pmf(u: np.ndarray, weights: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """pmf (n, K) of the Poisson mixture sum_g weights[i, g] Poisson(scale_i u_g) (tail beyond K: about 1e-12).

    Each node's Poisson pmf comes from the recursion p_k = p_(k-1) mu / k from p_0 = exp(-mu) (one exp
    per node, not per node and count; equal to exp(k log mu - mu - log k!) to about 1e-15), except at nodes
    whose mean exceeds _EXP_PATH_MU, where exp(-mu) underflows: those are summed in log space. A row whose
    scale is 0 (no exposure) is the point mass at 0; a negative or non-finite scale gives a NaN row (and
    does not set the support of the other rows)."""
    scale = np.asarray(scale, dtype=float)
    bad = ~np.isfinite(scale) | (scale < 0)
    scale = np.where(bad, 0.0, scale)
    mu = scale[:, None] * u[None, :]
    # support: up to the 1 - 1e-12 Poisson quantile of the largest node holding weight above 1e-13
    mu_top = np.where(weights > 1e-13, mu, 0.0).max(axis=1)
    kmax = int(max(20.0, float(stats.poisson.ppf(1.0 - 1e-12, mu_top.max(initial=0.0)))))
    out = np.empty((len(mu), kmax + 1))
    ks = np.arange(kmax + 1, dtype=float)
    lgk = special.gammaln(ks + 1.0)
    for a in range(0, len(mu), 256):  # bound the (block, G) arrays (and the (block, G, K) tensor of the log-space path)
        w = weights[a:a + 256]
        keep = w.max(axis=0) > 1e-16 * w.max()  # nodes with weight for some patient of the block
        m, wk = mu[a:a + 256][:, keep], w[:, keep]
        small = m.max(axis=0, initial=0.0) <= _EXP_PATH_MU
        o = out[a:a + 256]
        ms = m[:, small]
        p = wk[:, small] * np.exp(-ms)  # weight x Poisson pmf at k = 0
        o[:, 0] = p.sum(1)
        for k in range(1, kmax + 1):
            p *= ms
            p *= 1.0 / k
            o[:, k] = p.sum(1)
        if not small.all():
            mb = m[:, ~small]
            with np.errstate(divide="ignore", invalid="ignore"):  # rows of scale 0 (set at the end) meet log(0) here
                logp = ks[None, None, :] * np.log(mb)[:, :, None] - mb[:, :, None] - lgk[None, None, :]
            o += np.einsum("ng,ngk->nk", wk[:, ~small], np.exp(logp))
    zero = (scale == 0) & ~bad
    out[zero] = 0.0
    out[zero, 0] = 1.0
    out[bad] = np.nan
    return out


def _window(features: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """(start, end) weeks of each row's count window: `start_weeks`/`end_weeks` when given, else
    (0, followup_years * 52.1775)."""
    end = features["end_weeks"].to_numpy(dtype=float) if "end_weeks" in features else features["followup_years"].to_numpy(dtype=float) * WEEKS_PER_YEAR
    start = features["start_weeks"].to_numpy(dtype=float) if "start_weeks" in features else np.zeros(len(features))
    return start, end


def observable_pmf(features: pd.DataFrame, params: ModelParams, *, arm_col: str = "arm", grid: int = 301,
                   extra_loglik: Callable[[np.ndarray], np.ndarray] | None = None) -> np.ndarray:
    """Predictive pmf (n, K) of each row's NET2 count under the row's arm, in the row's window.

    features: columns gd_count, t2_count, age (years), `arm_col`, and followup_years (window from
    baseline) or start_weeks/end_weeks; dawm_fraction and prelesional_sites when those channels are on.
    extra_loglik: a further observation's log-likelihood given u (`posterior_weights`).
    """
    opt = {k: features[k].to_numpy() for k in ("dawm_fraction", "prelesional_sites") if k in features}
    u, w = posterior_weights(features["gd_count"].to_numpy(), features["t2_count"].to_numpy(), features["age"].to_numpy(), params,
                             grid=grid, extra_loglik=extra_loglik, **opt)
    age = features["age"].to_numpy(dtype=float)
    arm = features[arm_col].to_numpy()
    c = params.base_rate * np.exp(params.age_effect * (age - AGE_CENTRE) / 10.0)
    start, end = _window(features)
    share = params.visible_share
    integral = params.prelesion_integral(start, end) if share > 0 else np.zeros(len(features))
    exposure = (end - start) / WEEKS_PER_YEAR - share * integral
    sites = np.asarray(opt.get("prelesional_sites", np.zeros(len(features))), dtype=np.int64) if share > 0 else np.zeros(len(features), np.int64)
    pi = integral / params.mean_latency_years if share > 0 else np.zeros(len(features))
    if params.response_sd > 0:
        x, wh = special.roots_hermitenorm(_HERMITE)
        nodes, node_w = np.exp(params.response_sd * x), wh / wh.sum()
    else:
        nodes, node_w = np.ones(1), np.ones(1)
    parts = []
    for r, wr in zip(nodes, node_w):
        rho = params.arm_rate_ratio(arm, age, r)
        base = mixture_pmf(u, w, c * rho * exposure)
        if sites.max(initial=0) > 0:
            base = _convolve_binomial(base, sites, rho * pi)
        parts.append((wr, base))
    kmax = max(p.shape[1] for _, p in parts)
    out = np.zeros((len(features), kmax))
    for wr, p in parts:
        out[:, :p.shape[1]] += wr * p
    return out


def cohort_observable_pmf(root: str | Path, features: pd.DataFrame) -> np.ndarray | None:
    """The observable oracle's pmf (n, K) for the rows of `features` (their `arm`) of the simulated cohort in
    `root`: the simulator's parameters from its simulation.json, DAWM extent and visible pre-lesional sites
    from oracle_inputs.csv (read as an ideal reader would). None for a cohort that was not simulated."""
    sim = Path(root) / "simulation.json"
    if not sim.is_file():
        return None
    cfg = json.loads(sim.read_text()).get("config")
    if not cfg:
        return None
    inputs = Path(root) / "oracle_inputs.csv"
    feats = features
    if inputs.is_file():
        extra = pd.read_csv(inputs)[["patient_id", "dawm_fraction", "prelesional_sites"]]
        feats = features.drop(columns=[c for c in ("dawm_fraction", "prelesional_sites") if c in features]).merge(
            extra, on="patient_id", how="left")
    return observable_pmf(feats, ModelParams.from_config(cfg))


def _convolve_binomial(pmf: np.ndarray, n: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Row-wise convolution of pmf (N, K) with Binomial(n_i, p_i); returns (N, K + max n)."""
    n = np.asarray(n, dtype=np.int64)
    top = int(n.max())
    b = stats.binom.pmf(np.arange(top + 1)[None, :], n[:, None], np.clip(p, 0.0, 1.0)[:, None])  # (N, top + 1), 0 beyond n_i
    out = np.zeros((pmf.shape[0], pmf.shape[1] + top))
    for j in range(top + 1):
        out[:, j:j + pmf.shape[1]] += b[:, j:j + 1] * pmf
    return out


def true_law_pmf(expected_count: np.ndarray) -> np.ndarray:
    """pmf (n, K) of Poisson(expected_count): the true-law oracle (knows the latent activity)."""
    mu = np.asarray(expected_count, dtype=float)
    kmax = int(np.ceil(max(20.0, float((mu + 12 * np.sqrt(mu + 1) + 30).max()))))
    return stats.poisson.pmf(np.arange(kmax + 1)[None, :], mu[:, None])
