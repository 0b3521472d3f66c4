"""The trial's count model without images: fast trials for statistical validity checks and references.

Draws patients, their lesion events in continuous time (`mseval.simulate.events`, vectorised over
patients) and the NET2 counts per visit interval under the allocated arm, exactly the laws the image
simulator follows, minus the masks; plus an oracle ensemble (every patient x arm x sample,
Poisson(expected_count)). Use it where thousands of trials are needed.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import lru_cache

import numpy as np
import pandas as pd

from mseval.seeding import rng_for
from mseval.simulate.model import (WEEKS_PER_MONTH, WEEKS_PER_YEAR, TrialConfig, arm_rate_ratios, draw_patients,
                                   truth_frame)


@dataclass(frozen=True)
class CountTrial:
    """table: one row per patient (analysis table: covariates, arm, followup_years, net2 from baseline
    to the last visit, the oracle inputs dawm_fraction and prelesional_sites); counts: ensemble counts
    (patient_id, arm, sample, count) under every arm; truth: truth.csv rows; visits: one row per
    patient and visit (interval start/end weeks, the interval's observed NET2 count)."""

    table: pd.DataFrame
    counts: pd.DataFrame
    truth: pd.DataFrame
    visits: pd.DataFrame


def draw_event_table(patients: pd.DataFrame, cfg: TrialConfig, rng: np.random.Generator) -> pd.DataFrame:
    """Every patient's events (the law of `mseval.simulate.events.draw_events`), one row per event:
    patient (row index), birth and latency (weeks), enlarging, visible, thin."""
    lo, hi = (m * WEEKS_PER_MONTH for m in cfg.prelesion_months)
    h = np.maximum(patients["followup_weeks"].to_numpy(dtype=float), hi)
    n = rng.poisson(patients["placebo_rate"].to_numpy() * h / WEEKS_PER_YEAR)
    idx = np.repeat(np.arange(len(patients)), n)
    birth = rng.uniform(0.0, 1.0, idx.size) * h[idx]
    latency = rng.uniform(lo, hi, idx.size)
    enlarging = rng.random(idx.size) < cfg.p_enlarging
    visible = (~enlarging) & (rng.random(idx.size) < cfg.prelesion_fraction) & (latency > birth)
    return pd.DataFrame({"patient": idx, "birth": birth, "latency": latency, "enlarging": enlarging, "visible": visible,
                         "thin": rng.random(idx.size)})


def world_counts(patients: pd.DataFrame, events: pd.DataFrame, cfg: TrialConfig) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(per-patient oracle inputs + net2 over follow-up, per-visit interval counts) under the allocated arm."""
    rho_all = arm_rate_ratios(patients, cfg)
    rho = np.array([rho_all[a][i] for i, a in enumerate(patients["arm"])])
    p = events["patient"].to_numpy()
    appears = events["thin"].to_numpy() < rho[p]
    n_vis = np.bincount(p[events["visible"].to_numpy()], minlength=len(patients))
    rows, prev = [], np.zeros(len(patients))
    birth = events["birth"].to_numpy()
    for k, label in enumerate(cfg.visit_labels):
        wk = patients[f"visit_{k + 1}_weeks"].to_numpy(dtype=float)
        inside = appears & (birth > prev[p]) & (birth <= wk[p])
        cnt = np.bincount(p[inside], minlength=len(patients))
        rows.append(pd.DataFrame({"patient_id": patients["patient_id"].to_numpy(), "visit": label, "visit_index": k + 1,
                                  "start_weeks": prev, "end_weeks": wk, "net2": cnt}))
        prev = wk
    visits = pd.concat(rows, ignore_index=True).sort_values(["patient_id", "visit_index"]).reset_index(drop=True)
    last = patients["followup_weeks"].to_numpy(dtype=float)
    total = np.bincount(p[appears & (birth <= last[p])], minlength=len(patients))
    per = pd.DataFrame({"patient_id": patients["patient_id"].to_numpy(), "prelesional_sites": n_vis, "net2": total})
    return per, visits


def visit_gd_counts(visits: pd.DataFrame, patients: pd.DataFrame, events: pd.DataFrame, cfg: TrialConfig) -> pd.Series:
    """Gd+ lesions on each visit's scan (Int64, aligned with `visits`), as the image simulator draws
    them: the NET2 lesions of the visit's interval (start_weeks, end_weeks] that appeared under the
    allocated arm within the last `gd_per_rate` years before the scan (Gd+ enhancement lasts that
    long). Rows whose `missing` is set (a visit that did not take place) get <NA>."""
    rho_all = arm_rate_ratios(patients, cfg)
    rho = np.array([rho_all[a][i] for i, a in enumerate(patients["arm"])])
    p = events["patient"].to_numpy()
    birth = events["birth"].to_numpy()
    appears = events["thin"].to_numpy() < rho[p]
    row_of = pd.Series(np.arange(len(patients)), index=patients["patient_id"].to_numpy())
    vp = row_of.loc[visits["patient_id"]].to_numpy()
    start = visits["start_weeks"].to_numpy(dtype=float)
    end = visits["end_weeks"].to_numpy(dtype=float)
    lo = np.maximum(start, end - cfg.gd_per_rate * WEEKS_PER_YEAR)
    # events of appearing lesions sorted by (patient, birth): each visit's count is a difference of two ranks
    order = np.lexsort((birth, p))
    ep, eb = p[order][appears[order]], birth[order][appears[order]]
    key = ep * 1e6 + eb  # birth < 1e6 weeks: (patient, birth) sorts as one number
    counts = np.searchsorted(key, vp * 1e6 + end, side="right") - np.searchsorted(key, vp * 1e6 + lo, side="right")
    out = pd.Series(pd.array(counts, dtype="Int64"), index=visits.index)
    if "missing" in visits.columns:
        out[visits["missing"].fillna("").astype(str).to_numpy() != ""] = pd.NA
    return out


def simulate_count_trial(cfg: TrialConfig, *, samples: int = 20, forecast_seed: int = 0) -> CountTrial:
    patients = draw_patients(cfg, rng_for(cfg.seed, "patients"))
    truth = truth_frame(patients, cfg)
    rng = rng_for(cfg.seed, "counts-only")
    events = draw_event_table(patients, cfg, rng)
    per, visits = world_counts(patients, events, cfg)
    visits, observed = observe_visits(patients, visits, cfg)
    visits["gd_count"] = visit_gd_counts(visits, patients, events, cfg)
    net2 = per["net2"].to_numpy()
    truth["realized_count"] = pd.array([None] * len(truth), dtype="Int64")
    truth.loc[truth["allocated"].to_numpy(), "realized_count"] = pd.Series(net2, index=patients["patient_id"]).loc[truth.loc[truth["allocated"], "patient_id"]].to_numpy()
    table = patients[["patient_id", "arm", "site", "followup_weeks", "age", "sex", "edss", "gd_count"]].copy()
    table["t2_count"] = patients["n_baseline_lesions"].to_numpy()
    # T2 volume: the count times a u-free per-patient lesion size, as in the image simulator
    table["t2_volume_mm3"] = patients["n_baseline_lesions"].to_numpy() * 150.0 * rng.lognormal(0.0, 0.3, len(patients))
    table["followup_years"] = table["followup_weeks"] / WEEKS_PER_YEAR
    table["dawm_fraction"] = patients["dawm_fraction"].to_numpy()
    table["prelesional_sites"] = per["prelesional_sites"].to_numpy()
    table["net2"] = net2
    table = table.merge(observed, on="patient_id", how="left")
    frng = rng_for(forecast_seed, "counts-only-forecast", cfg.seed)
    mu = truth["expected_count"].to_numpy()
    draws = frng.poisson(np.repeat(mu, samples))
    counts = pd.DataFrame({
        "patient_id": np.repeat(truth["patient_id"].to_numpy(), samples),
        "arm": np.repeat(truth["arm"].to_numpy(), samples),
        "sample": np.tile(np.arange(samples, dtype=np.int64), len(truth)),
        "count": draws.astype(np.int64),
        "volume_mm3": draws * 100.0,
    })
    return CountTrial(table, counts, truth, visits)


def observe_visits(patients: pd.DataFrame, visits: pd.DataFrame, cfg: TrialConfig) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(visits with `missing` and the start_weeks / net2 of what was observed, per patient
    observed_years and observed_net2). Missing reasons follow the image simulator's law
    (`mseval.simulate.trial.observed_visits`, its own seeded stream here); without dropout and missed
    visits nothing is drawn and the visits are unchanged but for missing = ''."""
    from mseval.simulate.trial import observed_visits

    V = len(cfg.schedule)
    visits = visits.copy()
    counts = visits["net2"].to_numpy(dtype=np.int64).reshape(-1, V)  # sorted by patient_id, visit_index
    row_of = {pid: k for k, pid in enumerate(visits["patient_id"].to_numpy()[::V])}
    rng = rng_for(cfg.seed, "counts-only-dropout")
    reasons = np.full(counts.shape, "", dtype=object)
    for row in patients.to_dict("records"):
        k = row_of[row["patient_id"]]
        reasons[k] = observed_visits(row, counts[k], cfg, rng)
    visits["missing"] = reasons.ravel()
    end = visits["end_weeks"].to_numpy(dtype=float).reshape(-1, V)
    seen = reasons == ""
    # cumulative count at each observed scan; each observed visit counts from the previous observed one
    cum = np.cumsum(counts, axis=1)
    last_cum, last_week = np.zeros(len(counts), dtype=np.int64), np.zeros(len(counts))
    net2 = np.zeros(counts.shape, dtype=np.int64)
    start = visits["start_weeks"].to_numpy(dtype=float).reshape(-1, V).copy()
    for j in range(V):
        s = seen[:, j]
        net2[s, j] = cum[s, j] - last_cum[s]
        start[s, j] = last_week[s]
        last_cum[s], last_week[s] = cum[s, j], end[s, j]
    any_seen = seen.any(axis=1)
    pids = visits["patient_id"].to_numpy()[::V]
    observed = pd.DataFrame({"patient_id": pids,
                             "observed_years": np.where(any_seen, last_week, np.nan) / WEEKS_PER_YEAR,
                             "observed_net2": pd.array(np.where(any_seen, last_cum, 0), dtype="Int64")})
    observed.loc[~any_seen, "observed_net2"] = pd.NA
    if not seen.all():
        visits["start_weeks"] = start.ravel()
        visits["net2"] = pd.array(net2.ravel(), dtype="Int64")
        visits.loc[~seen.ravel(), "net2"] = pd.NA
    else:
        observed["observed_net2"] = observed["observed_net2"].astype(np.int64)
    return visits, observed


@lru_cache(maxsize=16)
def population_rate_ratios(cfg: TrialConfig, n: int = 400_000, seed: int = 12345) -> dict[str, float]:
    """Superpopulation marginal rate ratios E[mu_a] / E[mu_ref] by Monte Carlo over the patient model
    (the target of an arm-only NB2 analysis of a randomized trial). MC relative error about 0.3%."""
    big = replace(cfg, patients_per_arm=max(n // len(cfg.arms), 1))
    pats = draw_patients(big, np.random.default_rng(seed))
    truth = truth_frame(pats, big)
    m = truth.groupby("arm")["annual_rate"].mean()
    return {a: float(m[a] / m[big.reference_arm]) for a in m.index}
