"""Issue 21's acceptance, point by point, from the two scorers' outputs on one trial: `bench/image_count_dev.py
--checkpoint ... --image-references --location-references --effects` (count, ablation, location, effects, count PIT)
and `bench/render_dev.py ... --forecaster` (size per arm, volume PIT). The rules are those pre-registered in
bench/RESULTS_forecast.md (issue 21's acceptance with amendments 1-8); this script only reads numbers and applies them,
so a DEV trial's dry run and the TEST judgement print the same table.

    PYTHONPATH=. .venv/bin/python bench/issue21_judgement.py COUNT.json RENDER.json [--label "DEV 7190"] [--out J.json]

Each row: the criterion, the value(s), the rule, met / not met. Criteria that need a number the outputs lack are
"not scored" (never met).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

SIZE_BAND = (0.8, 1.2)
"""Forecast / truth within 20% (size per arm, counterfactual population rate ratios)."""
SLOPE_BAND = (0.8, 1.25)
RMSE_FACTOR = 1.5
PIT_LEVEL = 0.01
LOCATION_NATS = 0.5


def _visit(count: dict, label: str) -> dict:
    return next(r for r in count["count"] if r["visit"] == label)


def judge(count: dict, render: dict) -> list[dict[str, Any]]:
    """The acceptance's rows (criterion, value, rule, met) from the two outputs (module docstring)."""
    rows: list[dict[str, Any]] = []

    def add(criterion: str, value: str, rule: str, met: bool | None) -> None:
        rows.append({"criterion": criterion, "value": value, "rule": rule, "met": "not scored" if met is None else ("met" if met else "NOT met")})

    w48 = _visit(count, "w48")
    d, se = w48["model_minus_nb2"], w48["model_minus_nb2_se"]
    add("images help: count CRPS vs NB2 baseline, W48", f"{d:+.3f} (SE {se:.3f})", "< -2 SE", d < -2 * se)
    share = w48.get("model_share_of_gap")
    add("images help: share of the NB2-to-oracle gap closed, W48", "n/a" if share is None else f"{share:.0%}", ">= 50%",
        None if share is None else share >= 0.5)
    am, ab = w48.get("auc_model"), w48.get("auc_nb2_baseline")
    add("images help: P(active) AUC vs NB2 baseline, W48", "n/a" if am is None else f"{am:.3f} vs {ab:.3f}", "above", None if am is None else am > ab)
    if "model_minus_no_images" in w48:
        d, se = w48["model_minus_no_images"], w48["model_minus_no_images_se"]
        add("ablation: model vs its image-zeroed twin, W48", f"{d:+.3f} (SE {se:.3f})", "< -2 SE", d < -2 * se)
    else:
        add("ablation: model vs its image-zeroed twin, W48", "n/a", "< -2 SE", None)

    loc = (count.get("location") or {}).get("new")
    if loc:
        u, p = loc["model_minus_uniform_wm"], loc["model_minus_proximity_prior"]
        add("location: log score per new lesion vs uniform white matter", f"{u[0]:+.3f} nat (SE {u[1]:.3f})", f">= {LOCATION_NATS} nat", u[0] >= LOCATION_NATS)
        add("location: vs the periventricular+proximity prior", f"{p[0]:+.3f} nat (SE {p[1]:.3f})", "> 2 SE", p[0] > 2 * p[1])
    else:
        add("location", "n/a", f">= {LOCATION_NATS} nat over uniform WM; > 2 SE over the prior", None)

    per_arm = render.get("per_arm") or {}
    ratios = {a: r["ratio"] for a, r in per_arm.items()}
    add("size: rendered / observed mean new-lesion volume, every arm", ", ".join(f"{a} {v:.2f}" for a, v in ratios.items()) or "n/a",
        "each in [0.8, 1.2]", None if not ratios else all(SIZE_BAND[0] <= v <= SIZE_BAND[1] for v in ratios.values()))
    pop = (count.get("population_ratios") or {}).get("model") or {}
    add("treatment: counterfactual population rate ratio / truth, every arm", ", ".join(f"{a} {r['law_over_population']:.2f}" for a, r in pop.items()) or "n/a",
        "each in [0.8, 1.2]", None if not pop else all(SIZE_BAND[0] <= r["law_over_population"] <= SIZE_BAND[1] for r in pop.values()))
    eff = count.get("effects") or {}
    if "model" in eff and "nb2_arm_age" in eff:
        s = eff["model"]["pooled"]["slope_pred_on_observable"]
        add("per-patient log rate ratio: slope on the truth's observable part (amendment 8)", f"{s:.3f} (literal {eff['model']['pooled']['slope_pred_on_true']:.3f}, "
            f"calibration {eff['model']['pooled']['slope_true_on_pred']:.3f})", "in [0.8, 1.25]", SLOPE_BAND[0] <= s <= SLOPE_BAND[1])
        r, r0 = eff["model"]["pooled"]["rmse"], eff["nb2_arm_age"]["pooled"]["rmse"]
        add("per-patient log rate ratio: RMSE vs NB2 + arm:age", f"{r:.3f} vs {r0:.3f}", f"<= {RMSE_FACTOR} x", r <= RMSE_FACTOR * r0)
    else:
        add("per-patient log rate ratio", "n/a", "slope in [0.8, 1.25]; RMSE <= 1.5 x NB2 + arm:age", None)

    visits = [r["visit"] for r in count["count"]]
    ks = {v: _visit(count, v).get("pit_ks_p_model") for v in visits}
    add("calibration: count PIT (KS p per visit)", ", ".join(f"{v} {p:.3f}" for v, p in ks.items() if p is not None) or "n/a", f"each >= {PIT_LEVEL}",
        None if any(p is None for p in ks.values()) else all(p >= PIT_LEVEL for p in ks.values()))
    pit = render.get("pit") or {}
    vol = {v: (pit[v]["volume"]["ks_p"], pit[v]["volume"]["chi2_p"]) for v in pit}
    add("calibration: volume PIT (KS / chi-square p per visit)", ", ".join(f"{v} {a:.3f}/{b:.3f}" for v, (a, b) in vol.items()) or "n/a",
        f"each >= {PIT_LEVEL}", None if not vol else all(min(a, b) >= PIT_LEVEL for a, b in vol.values()))
    crps = {v: _visit(count, v) for v in visits}
    degrade = all(crps[a]["crps_model"] < crps[b]["crps_model"] and crps[a]["crps_nb2_baseline"] < crps[b]["crps_nb2_baseline"]
                  for a, b in zip(visits, visits[1:]))
    add("spatio-temporal: every visit scored; CRPS grows with the horizon as the references'",
        ", ".join(f"{v} {crps[v]['crps_model']:.3f} (NB2 {crps[v]['crps_nb2_baseline']:.3f}, oracle {crps[v].get('crps_oracle', float('nan')):.3f})" for v in visits),
        "model and NB2 both increase", len(visits) >= 3 and degrade)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("count")
    ap.add_argument("render")
    ap.add_argument("--label", default="")
    ap.add_argument("--out", default="")
    a = ap.parse_args()
    rows = judge(json.loads(Path(a.count).read_text()), json.loads(Path(a.render).read_text()))
    print(f"| criterion ({a.label}) | value | rule | |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['criterion']} | {r['value']} | {r['rule']} | {r['met']} |")
    if a.out:
        Path(a.out).write_text(json.dumps({"label": a.label, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
