"""The report's Settings as a short table a person reads: one row per distinct sampler setting
with the patients it applies to, the model's provenance row (always present), and the analysis
settings. The full records stay in `summary.json` (`settings.forecaster.sampler`, every distinct
record) and in a collapsed details element of the HTML.
"""

from __future__ import annotations

import json
from typing import Any

import pandas as pd

MAX_DISTINCT_SHOWN = 4
"""A sampler key that takes more distinct values than this across the store's blocks (e.g. the
count each block was asked for) is summarised ('differs per block: N values'), not listed."""

MAX_NAMES = 6
"""Patients named per row before '... and N more'."""


def _record(s: Any) -> dict[str, Any]:
    if isinstance(s, dict):
        return dict(s)
    try:
        d = json.loads(str(s))
    except ValueError:
        return {"sampler": str(s)}
    return d if isinstance(d, dict) else {"sampler": str(s)}


def _names(xs: list[str]) -> str:
    return ", ".join(xs[:MAX_NAMES]) + (f" and {len(xs) - MAX_NAMES} more" if len(xs) > MAX_NAMES else "")


def _value(v: Any) -> str:
    return json.dumps(v, sort_keys=True) if isinstance(v, (dict, list)) else str(v)


def sampler_groups(index: pd.DataFrame) -> list[dict[str, Any]]:
    """Distinct sampler settings of a store index (columns patient_id, arm, sampler: JSON text or dict).

    Keys with more than MAX_DISTINCT_SHOWN distinct values are per-block data, not settings: they
    are left out of the grouping and named in `per_block`. Returns, per distinct setting (most
    blocks first): {"setting": {key: value}, "patients": [...], "arms": [...], "blocks": n, "per_block": {key: n values}}.
    """
    recs = [_record(s) for s in index["sampler"]]
    keys = sorted({k for r in recs for k in r})
    distinct = {k: len({_value(r.get(k)) for r in recs}) for k in keys}
    per_block = {k: n for k, n in distinct.items() if n > MAX_DISTINCT_SHOWN}
    groups: dict[str, dict[str, Any]] = {}
    for r, pid, arm in zip(recs, index["patient_id"].astype(str), index["arm"].astype(str)):
        setting = {k: r[k] for k in keys if k in r and k not in per_block}
        g = groups.setdefault(json.dumps(setting, sort_keys=True, default=str),
                              {"setting": setting, "patients": [], "arms": [], "blocks": 0, "per_block": per_block})
        g["blocks"] += 1
        if pid not in g["patients"]:
            g["patients"].append(pid)
        if arm not in g["arms"]:
            g["arms"].append(arm)
    out = sorted(groups.values(), key=lambda g: (-g["blocks"], json.dumps(g["setting"], sort_keys=True, default=str)))
    for g in out:
        g["patients"].sort()
    return out


def sampler_rows(groups: list[dict[str, Any]], labels: dict[str, str], n_patients: int, n_arms: int) -> list[tuple[str, str]]:
    """One ('Sampler', text) row per distinct setting (`sampler_groups`): the setting, then the patients and arms it applies to."""
    rows = []
    for k, g in enumerate(groups, start=1):
        what = ", ".join(f"{key} {_value(v)}" for key, v in g["setting"].items()) or "no settings recorded"
        who = (f"all {n_patients} patients" if len(g["patients"]) == n_patients else f"{len(g['patients'])} patients ({_names(g['patients'])})")
        arms = (f"all {n_arms} arms" if len(g["arms"]) == n_arms else ", ".join(labels.get(a, a) for a in g["arms"]))
        extra = "; ".join(f"{key} differs per block ({n} values)" for key, n in g["per_block"].items())
        rows.append((f"Sampler{f' {k} of {len(groups)}' if len(groups) > 1 else ''}",
                     f"{what}; applies to {who} under {arms} ({g['blocks']} blocks)" + (f"; {extra}" if extra else "")))
    return rows


def model_row(provenance: dict[str, Any], store_provenance: dict[str, Any] | None = None) -> tuple[str, str]:
    """('Model', what each checkpoint was trained, validated and tuned on, and how this cohort relates to it).

    Always returned, even when nothing is recorded (then it says so). `store_provenance`: the
    store's provenance.json checkpoints ({id: record}), for a recorded `tuned_on`.
    """
    parts = []
    recorded = store_provenance or {}
    for c in provenance.get("checkpoints", []) or []:
        ck, status = c.get("checkpoint", "?"), c.get("status", "unknown")
        if status == "not trained":
            parts.append(f"{ck}: a simulated forecaster (no trained model)")
            continue
        if status == "unknown" or c.get("n_trained_on") is None:
            parts.append(f"{ck}: training data not recorded in the forecast store (provenance.json), so in-sample use cannot be ruled out")
            continue
        tuned = (recorded.get(ck) or {}).get("tuned_on")
        parts.append(f"{ck}: trained on {c['n_trained_on']} patients and validated on {c.get('n_validated_on', 0)} of cohort "
                     f"{c.get('trained_on_cohort')}; of the {c.get('n_patients')} patients here {c.get('n_in_sample')} were in training, "
                     f"{c.get('n_validation')} in validation and {c.get('n_held_out')} held out"
                     + (f"; sampler settings tuned on {tuned}" if tuned else "; sampler tuning data not recorded")
                     + (f"; trained on {c['device']} ({c.get('world_size', 1)} process(es), {c.get('torch_threads')} torch threads)" if c.get("device") else ""))
    return ("Model", "; ".join(parts) if parts else "no checkpoint recorded in the forecast store")


def details_json(settings_doc: dict[str, Any]) -> str:
    """The full settings record (as in summary.json), indented, for the collapsed details element."""
    return json.dumps(settings_doc, indent=1, sort_keys=True, default=str)


def observed_ci_words(effects_summary: dict[str, Any]) -> str:
    """The observed rate ratio's interval in a caption's words, from effects.json `observed_model.primary_interval`
    (effects run before it existed: the NB2 model-based Wald CI)."""
    pi = (effects_summary.get("observed_model") or {}).get("primary_interval") or {}
    return str(pi.get("ci_method") or "Wald, NB2 model-based SE")


def forecast_ci_words(pooling: str) -> str:
    """The forecast RR's estimator and interval in a figure caption's words, from effects.json `forecast_model.pooling`."""
    if "permutation" in pooling:
        return ("the same model fitted to each patient's forecast total over the ensemble samples of the allocated arm (offset "
                "log(samples x follow-up years)), with the randomization CI (inverted permutation score test)")
    stacked = "the same model fitted once on all fully synthetic ensemble samples of the allocated arm, stacked, "
    if "two-level" in pooling or "between-forecaster" in pooling:
        return stacked + "with a two-level CI (within-forecaster sandwich plus the between-forecaster spread)"
    return stacked + "with a patient-cluster sandwich CI"


def settings_rows(s: dict[str, Any], prov: dict[str, Any], labels: dict[str, str], ref: str, covs: list[str], forecast_method: str,
                  n_patients: int, n_arms: int) -> list[tuple[str, str]]:
    """The Settings table of a report, (name, value) per row, from the summary's settings record `s`."""
    ev, ef, det, om = s["evaluation"], s["effects"], s["detection"], s["observed_model"]
    fc = s["forecaster"]
    alpha = om.get("alpha")
    return [
        ("Forecast provenance", prov.get("sentence", "unknown")),
        fc.get("model_row") or model_row(prov),
        ("Forecaster (checkpoint)", ", ".join(fc["checkpoint"])),
        *sampler_rows(fc.get("sampler_groups") or [], labels, n_patients, n_arms),
        ("Samples per patient and arm", ", ".join(str(x) for x in fc["samples_per_patient_and_arm"])),
        ("Sample seeds", fc["sample_seeds"]),
        *[(str(k), str(v)) for k, v in s.get("extra", [])],
        ("Lesion definition", f"connected components, {s['lesions']['connectivity']}-connectivity, minimum volume {s['lesions']['min_volume_mm3']} mm³ "
                              "(forecasts and observed masks alike)"),
        ("Detection rule", f"preset: {det['preset']}; criterion {det.get('criterion')}, threshold {det.get('threshold')}, "
                           f"matching {det.get('matching')}, {det.get('connectivity')}-connectivity, >= {det.get('min_volume_mm3')} mm³"),
        ("Activity", f"active = >= {ev.get('k')} NET2 lesion(s); operating points: P(active) >= 0.5 (fixed in advance) and "
                     f"{ev.get('operating_point')} (one threshold chosen on all patients, so optimistic; arm columns use that same threshold)"),
        ("Calibration", f"{ev.get('n_bins')} {ev.get('bin_strategy')} bins for P(active); PIT {ev.get('pit_kind')}, "
                        f"{ev.get('pit_bins')} bins; interval levels {ev.get('levels')}; {ev.get('n_boot')} bootstrap resamples; seed {ev.get('seed')}"),
        ("Count model", f"{om.get('model') or 'NB2'}; formula {ef.get('formula')} "
                        f"({'adjusted for ' + ', '.join(covs) if covs else 'no covariates'}); reference arm {labels.get(ref, ref)}; "
                        f"dispersion alpha {'not estimable' if alpha is None else f'{float(alpha):.2f}'}; SEs from the {ef.get('cov')} information"
                        f"{'; arm CIs and p: ' + om['primary_interval'] if om.get('primary_interval') else ''}"),
        ("Forecast-based estimates", forecast_method),
        ("Estimability", "one rule for every number (mseval/stats/estimability.py): a ratio is shown when finite, inside [0.001, 1000] with a CI "
                         "spanning at most a factor 1000; an additive estimate when its CI is at most 1000 wide; otherwise 'not estimable' and why"),
        ("Power simulation", f"{ef.get('power_sims')} simulated trials per arm, seed {ef.get('seed')}"),
        ("Computation", s.get("computation", "")),
        ("Software", ", ".join(f"{k} {v}" for k, v in s["versions"].items())),
    ]
