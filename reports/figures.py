"""Publication figures: one function per figure, each usable on its own.

Every function takes result tables (pandas DataFrames, as `mseval evaluate` / `mseval effects`
write them) and the arms table (or a list of arm identifiers), and returns a matplotlib
`Figure` drawn in the mseval style (`reports/mseval.mplstyle`). Arms always appear in
arms-table order and in their fixed colour (`reports.style.arm_colors`).

```python
import pandas as pd
from reports import figures, style
arms = pd.read_csv("cohort/arms.csv")
fig = figures.forest_plot(pd.read_csv("effects/primary_endpoint.csv"), arms)
style.save_figure(fig, "figure2")          # figure2.pdf (vector text) + figure2.png (300 dpi)
```

Abbreviations: NET2 new or enlarging T2 lesion; RR rate ratio; CI confidence interval; PIT
probability integral transform; ROC receiver operating characteristic; AUC area under the ROC
curve; FLAIR fluid-attenuated inversion recovery MRI.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FixedLocator, NullLocator

from reports.style import DOUBLE, SINGLE, arm_colors, arm_labels, arm_linestyles, arm_markers, arm_order, context, new_figure
from reports.ticks import log_count_axis, log_ratio_axis

ArmsLike = pd.DataFrame | Sequence[str]

ESTIMATES = (
    ("observed", "Observed (NB2 regression)", "o"),
    ("forecast", "Forecast (NB2 on the synthetic samples)", "s"),
    ("counterfactual", "Counterfactual (ensemble means, all patients)", "D"),
)
GREY = "#7f7f7f"


def _arms_in(df: pd.DataFrame, arms: ArmsLike, column: str = "arm") -> list[str]:
    present = set(df[column].astype(str)) if column in df.columns else set()
    return [a for a in arm_order(arms) if a in present]


def _reference(arms: ArmsLike, reference: str | None) -> str | None:
    if reference is not None:
        return reference
    if isinstance(arms, pd.DataFrame) and "reference" in arms.columns:
        ref = arms.loc[arms["reference"].astype(str).str.lower().isin(["true", "1"]), "arm"]
        if len(ref):
            return str(ref.iloc[0])
    order = arm_order(arms)
    return order[0] if order else None


# -- primary endpoint -------------------------------------------------------------------------
def forest_plot(primary: pd.DataFrame, arms: ArmsLike, *, reference: str | None = None, title: str | None = None) -> Figure:
    """Forest plot of NET2 rate ratios vs the reference arm, log scale.

    primary: `primary_endpoint.csv` (arm, observed_rate_ratio, observed_ci_low/high, forecast_*,
    counterfactual_*, optional true_ratio_of_means). Per arm, three estimates with 95% CIs
    (marker shape = estimate, colour = arm) and the simulator's true ratio (x) when present.
    """
    ref = _reference(arms, reference)
    labels, colors = arm_labels(arms), arm_colors(arms)
    order = [a for a in _arms_in(primary, arms) if a != ref]
    p = primary.assign(arm=primary["arm"].astype(str)).set_index("arm")
    has_truth = "true_ratio_of_means" in p.columns and p["true_ratio_of_means"].notna().any()
    fig = new_figure(DOUBLE, 0.75 + 0.62 * max(len(order), 1) + 0.55)
    with context():
        ax = fig.add_subplot()
        offsets = np.linspace(0.22, -0.22, len(ESTIMATES))
        allv = []
        for i, arm in enumerate(order):
            y0 = len(order) - 1 - i
            if i % 2 == 0:
                ax.axhspan(y0 - 0.45, y0 + 0.45, color="#f2f2f2", zorder=0, lw=0)
            for (key, _name, marker), dy in zip(ESTIMATES, offsets):
                est, lo, hi = (p.loc[arm].get(f"{key}_rate_ratio"), p.loc[arm].get(f"{key}_ci_low"), p.loc[arm].get(f"{key}_ci_high"))
                if est is None or not np.isfinite(est):
                    continue
                allv += [est, lo, hi]
                if lo is not None and hi is not None and np.isfinite(lo) and np.isfinite(hi):
                    ax.plot([lo, hi], [y0 + dy] * 2, color=colors[arm], lw=1.4, solid_capstyle="butt", zorder=4)  # CI above the marker
                ax.plot([est], [y0 + dy], marker=marker, color=colors[arm], mfc=colors[arm] if key == "observed" else "white",
                        mew=1.3, ms=6, ls="none", zorder=3)
            if has_truth and np.isfinite(p.loc[arm, "true_ratio_of_means"]):
                ax.plot([p.loc[arm, "true_ratio_of_means"]], [y0], marker="x", color="black", ms=7, mew=1.5, ls="none", zorder=4)
                allv.append(p.loc[arm, "true_ratio_of_means"])
        ax.axvline(1.0, color=GREY, lw=0.8, ls="--", zorder=1)
        ax.set_yticks(range(len(order)))
        ax.set_yticklabels([labels[a] for a in reversed(order)])
        ax.set_ylim(-0.6, len(order) - 0.4)
        ax.set_xlabel(f"NET2 rate ratio vs {labels.get(ref, ref)} (log scale; < 1 favours the arm)")
        ax.tick_params(axis="y", length=0)
        ax.spines["left"].set_visible(False)
        handles = [Line2D([], [], marker=m, color="#444444", mfc="#444444" if k == "observed" else "white", ls="-", lw=1.2, label=n)
                   for k, n, m in ESTIMATES]
        if has_truth:
            handles.append(Line2D([], [], marker="x", color="black", ls="none", mew=1.5, label="Truth (simulator)"))
        fig.legend(handles=handles, loc="outside lower center", ncol=2,
                   title="Estimate (95% CI; forecast and counterfactual CIs conditional on the forecaster)")
        ax.set_title(title or "Primary endpoint: NET2 lesion rate ratios")
        log_ratio_axis(ax, np.array(allv, dtype=float))  # last: the tick labels are fitted to the final layout
    return fig


def lesion_free_plot(lesion_free: pd.DataFrame, arms: ArmsLike, *, title: str | None = None) -> Figure:
    """Proportion of patients free of NET2 lesions at follow-up, per arm, with Wilson 95% CIs.

    lesion_free: `lesion_free.csv` (arm, lesion_free_pct, n; odds_ratio, ci_low, ci_high vs the
    reference are printed beside each bar when present).
    """
    from mseval.metrics.activity import wilson

    order = _arms_in(lesion_free, arms)
    labels, colors = arm_labels(arms), arm_colors(arms)
    d = lesion_free.assign(arm=lesion_free["arm"].astype(str)).set_index("arm")
    fig = new_figure(DOUBLE, 0.6 + 0.42 * len(order) + 0.5)
    with context():
        ax = fig.add_subplot()
        for i, arm in enumerate(order):
            y = len(order) - 1 - i
            pct, n = float(d.loc[arm, "lesion_free_pct"]), int(d.loc[arm, "n"])
            k = int(round(pct * n / 100.0))
            lo, hi = wilson(k, n)
            ax.barh(y, pct, color=colors[arm], height=0.62, alpha=0.85)
            ax.plot([100 * lo, 100 * hi], [y, y], color="black", lw=1.1)
            orr = d.loc[arm].get("odds_ratio")
            txt = f"{k}/{n}"
            if i == 0 and (orr is None or not np.isfinite(orr)):
                txt += "   reference"
            if orr is not None and np.isfinite(orr):
                txt += f"   OR {orr:.2f} ({d.loc[arm, 'ci_low']:.2f} to {d.loc[arm, 'ci_high']:.2f})"
            ax.text(102, y, txt, va="center", fontsize=7.5)
        ax.set_yticks(range(len(order)))
        ax.set_yticklabels([labels[a] for a in reversed(order)])
        ax.set_xlim(0, 160)
        ax.set_xticks([0, 20, 40, 60, 80, 100])
        ax.set_xlabel("Patients free of NET2 lesions at follow-up (%, 95% Wilson CI)")
        ax.tick_params(axis="y", length=0)
        ax.set_title(title or "Proportion free of NET2 lesions (OR: odds ratio vs reference)")
    return fig


# -- activity and calibration -----------------------------------------------------------------
def _roc(score: np.ndarray, label: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(-score, kind="stable")
    s, y = score[order], label[order].astype(bool)
    distinct = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]
    tps, fps = np.cumsum(y)[distinct], np.cumsum(~y)[distinct]
    P, N = max(y.sum(), 1), max((~y).sum(), 1)
    return np.r_[0.0, fps / N], np.r_[0.0, tps / P]


def activity_roc(patients: pd.DataFrame, *, auc: float | None = None, auc_ci: tuple[float, float] | None = None,
                 operating_points: pd.DataFrame | None = None, title: str | None = None) -> Figure:
    """ROC curve of P(active) (share of samples with >= 1 NET2 lesion) for the observed activity
    (>= 1 NET2 lesion at follow-up).

    patients: `patients.csv` (p_active, observed_active). auc/auc_ci: from metrics.csv (shown in
    the legend). operating_points: `confusion.csv` rows of the overall group (tp, fp, tn, fn,
    operating_point, threshold), drawn as points.
    """
    score = patients["p_active"].to_numpy(dtype=float)
    label = patients["observed_active"].astype(str).str.lower().isin(["true", "1"]).to_numpy()
    fpr, tpr = _roc(score, label)
    fig = new_figure(SINGLE, 3.6)
    with context():
        ax = fig.add_subplot()
        ax.plot([0, 1], [0, 1], color=GREY, lw=0.8, ls="--", label="Chance")
        name = "P(active)"
        if auc is not None and np.isfinite(auc):
            name += f": AUC {auc:.2f}" + (f" ({auc_ci[0]:.2f} to {auc_ci[1]:.2f})" if auc_ci and all(np.isfinite(auc_ci)) else "")
        ax.step(fpr, tpr, where="post", color="#0072B2", lw=1.6, label=name)
        if operating_points is not None:
            for marker, (_, r) in zip(("o", "s", "^"), operating_points.iterrows()):
                sens = r["tp"] / max(r["tp"] + r["fn"], 1)
                fp_rate = r["fp"] / max(r["fp"] + r["tn"], 1)
                lab = f"threshold {float(r['threshold']):.2f}" + (" (Youden)" if str(r["operating_point"]) == "youden" else "")
                ax.plot([fp_rate], [sens], marker=marker, color="#D55E00", ls="none", ms=6, mfc="white", mew=1.4, label=lab)
        ax.set_xlim(-0.02, 1.02)
        ax.set_ylim(-0.02, 1.02)
        ax.set_aspect("equal")
        ax.set_xlabel("1 - specificity (false-positive rate)")
        ax.set_ylabel("Sensitivity (true-positive rate)")
        ax.legend(loc="lower right")
        ax.set_title(title or "Activity: ROC curve")
    return fig


def reliability_diagram(reliability: pd.DataFrame, *, voxel_reliability: pd.DataFrame | None = None, group: str = "all",
                        ece: float | None = None, title: str | None = None) -> Figure:
    """Reliability diagram: observed share active vs forecast P(active), per bin, with 95% CIs
    (marker area ~ patients); with `voxel_reliability`, a second panel for voxel probabilities.

    reliability: `reliability.csv` (group, mean_predicted, observed_rate, ci_low, ci_high, n).
    voxel_reliability: `voxel_reliability.csv` (mean_predicted, observed_rate, voxels).
    """
    r = reliability[reliability["group"].astype(str) == group] if "group" in reliability.columns else reliability
    r = r[r["n"] > 0]
    two = voxel_reliability is not None and len(voxel_reliability)
    fig = new_figure(DOUBLE if two else SINGLE, 3.6)
    with context():
        axes = fig.subplots(1, 2) if two else [fig.add_subplot()]
        ax = axes[0]
        ax.plot([0, 1], [0, 1], color=GREY, lw=0.8, ls="--", label="Perfect calibration")
        yerr = np.vstack([r["observed_rate"] - r["ci_low"], r["ci_high"] - r["observed_rate"]]).clip(min=0)
        ax.errorbar(r["mean_predicted"], r["observed_rate"], yerr=yerr, fmt="none", ecolor="#0072B2", elinewidth=1)
        sizes = 12 + 120 * r["n"] / max(float(r["n"].max()), 1.0)
        ax.scatter(r["mean_predicted"], r["observed_rate"], s=sizes, color="#0072B2", zorder=3,
                   label="Bin (area ~ patients)")
        ax.set_xlim(-0.02, 1.02)
        ax.set_ylim(-0.02, 1.02)
        ax.set_aspect("equal")
        ax.set_xlabel("Forecast P(active) (probability)")
        ax.set_ylabel("Observed share active (proportion)")
        ax.legend(loc="upper left")
        ax.set_title("Patients: P(>= 1 NET2 lesion)" + (f", ECE {ece:.3f}" if ece is not None and np.isfinite(ece) else ""))
        if two:
            v = voxel_reliability[voxel_reliability["voxels"] > 0]
            ax2 = axes[1]
            ax2.plot([0, 1], [0, 1], color=GREY, lw=0.8, ls="--")
            ax2.plot(v["mean_predicted"], v["observed_rate"], marker="o", color="#009E73", lw=1.2, label="Voxel bins")
            ax2.set_xlim(-0.02, 1.02)
            ax2.set_ylim(-0.02, 1.02)
            ax2.set_aspect("equal")
            ax2.set_xlabel("Forecast voxel probability")
            ax2.set_ylabel("Observed share of voxels in NET2")
            ax2.legend(loc="upper left")
            ax2.set_title("Voxels inside the brain")
        if title:
            fig.suptitle(title)
    return fig


def pit_histogram(pit: pd.DataFrame, *, group: str = "all", title: str | None = None) -> Figure:
    """Histogram of the randomized PIT (probability integral transform) of observed NET2 counts
    under their forecast distributions; flat when calibrated (dashed line: expected count,
    band: 95% binomial range per bin). A U shape means too narrow, a hump too wide.

    pit: `pit_histogram.csv` (group, lower, upper, n, expected).
    """
    from scipy import stats

    h = pit[pit["group"].astype(str) == group] if "group" in pit.columns else pit
    total = int(h["n"].sum())
    fig = new_figure(SINGLE, 3.0)
    with context():
        ax = fig.add_subplot()
        widths = (h["upper"] - h["lower"]).to_numpy()
        ax.bar(h["lower"], h["n"], width=widths, align="edge", color="#56B4E9", edgecolor="white", lw=0.8, label="Patients", zorder=2)
        p = widths / widths.sum() if widths.sum() else widths
        lo, hi = stats.binom.ppf(0.025, total, p), stats.binom.ppf(0.975, total, p)
        xs = np.r_[h["lower"].to_numpy(), h["upper"].to_numpy()[-1]]
        ax.fill_between(xs, np.r_[lo, lo[-1]], np.r_[hi, hi[-1]], step="post", color=GREY, alpha=0.25, lw=0, label="95% range if calibrated", zorder=1)
        ax.step(xs, np.r_[h["expected"].to_numpy(), h["expected"].to_numpy()[-1]], where="post", color="black", ls="--", lw=1, label="Expected if calibrated", zorder=3)
        ax.set_xlim(0, 1)
        ax.set_xlabel("PIT value of the observed NET2 count")
        ax.set_ylabel("Patients (count)")
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=1)
        ax.set_title(title or "Count calibration: PIT histogram")
    return fig


def coverage_plot(coverage: pd.DataFrame, arms: ArmsLike, *, title: str | None = None) -> Figure:
    """Empirical vs nominal coverage of central prediction intervals of the NET2 count
    (randomized PIT interval, exact at any ensemble size), overall (black, with 95% CIs) and per
    allocated arm (arm colours).

    coverage: `coverage.csv` (group, level, randomized, randomized_ci_low/high, or coverage, ci_low/high).
    """
    col = "randomized" if "randomized" in coverage.columns else "coverage"
    lo_c, hi_c = (f"{col}_ci_low", f"{col}_ci_high") if col == "randomized" else ("ci_low", "ci_high")
    colors, labels = arm_colors(arms), arm_labels(arms)
    markers, styles = arm_markers(arms), arm_linestyles(arms)
    fig = new_figure(DOUBLE, 3.6)
    with context():
        ax = fig.add_subplot()
        ax.plot([0, 1], [0, 1], color=GREY, lw=0.8, ls="--", label="Nominal")
        groups = [a for a in arm_order(arms) if a in set(coverage["group"].astype(str))]
        for j, g in enumerate(groups):
            d = coverage[coverage["group"].astype(str) == g].sort_values("level")
            ax.plot(d["level"] + 0.006 * (j - len(groups) / 2), d[col], marker=markers[g], ms=3.5, lw=0.9, ls=styles[g], color=colors[g], alpha=0.9, label=labels[g])
        d = coverage[coverage["group"].astype(str) == "all"].sort_values("level")
        if len(d):
            yerr = np.vstack([d[col] - d[lo_c], d[hi_c] - d[col]]).clip(min=0)
            ax.errorbar(d["level"], d[col], yerr=yerr, color="black", marker="s", ms=5, lw=1.6, capsize=2, label="All patients (95% CI)", zorder=5)
        lv = coverage["level"].astype(float)
        ax.set_xlim(max(lv.min() - 0.1, 0), min(lv.max() + 0.05, 1))
        ax.set_ylim(max(lv.min() - 0.3, 0), 1.02)
        ax.set_xlabel("Nominal coverage of the central interval (proportion)")
        ax.set_ylabel("Observed counts inside (proportion)")
        ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0))
        ax.set_title(title or "Prediction-interval coverage")
    return fig


def count_scatter(patients: pd.DataFrame, arms: ArmsLike, *, level: int = 80, title: str | None = None) -> Figure:
    """Observed NET2 count vs the forecast mean count per patient (allocated arm), with the
    forecast's central `level`% interval; identity line dashed.

    patients: `patients.csv` (arm, observed_count, mean_count, lower_<level>, upper_<level>).
    """
    colors, labels, markers = arm_colors(arms), arm_labels(arms), arm_markers(arms)
    fig = new_figure(DOUBLE, 3.8)
    with context():
        ax = fig.add_subplot()
        mx = float(max(patients["observed_count"].max(), patients.get(f"upper_{level}", patients["mean_count"]).max(), 1))
        ax.plot([0, mx], [0, mx], color=GREY, lw=0.8, ls="--", label="Identity")
        for arm in _arms_in(patients, arms):
            d = patients[patients["arm"].astype(str) == arm]
            if f"lower_{level}" in d:
                ax.vlines(d["observed_count"], d[f"lower_{level}"], d[f"upper_{level}"], color=colors[arm], lw=0.6, alpha=0.45, zorder=4)
            ax.scatter(d["observed_count"], d["mean_count"], s=16, color=colors[arm], marker=markers[arm], label=labels[arm], zorder=3,
                       edgecolor="white", linewidth=0.3)
        ax.set_xlabel("Observed NET2 lesions at follow-up (count; square-root scale)")
        ax.set_ylabel(f"Forecast NET2 lesions (mean, {level}% interval)")
        ticks = [t for t in (0, 1, 2, 5, 10, 20, 50, 100, 200, 500) if t <= mx * 1.05]
        for setter, lim, axis in ((ax.set_xscale, ax.set_xlim, ax.xaxis), (ax.set_yscale, ax.set_ylim, ax.yaxis)):
            setter("function", functions=(lambda x: np.sqrt(np.clip(x, 0, None)), np.square))
            lim(0, mx * 1.05)
            axis.set_major_locator(FixedLocator(ticks))
        ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0))
        ax.set_title(title or "Forecast vs observed NET2 counts")
    return fig


# -- detection --------------------------------------------------------------------------------
def detection_plot(detection: pd.DataFrame, arms: ArmsLike, *, title: str | None = None) -> Figure:
    """Lesion-wise detection of the forecast samples against the observed NET2 mask, per
    allocated arm: per-patient means over samples of lesion-wise recall, precision, F1 and voxel
    Dice (cases with no lesion on either side excluded and counted under the axis).

    detection: `detection.csv` (patient_id, arm, sample, recall, precision, f1, dice, empty_case).
    """
    colors, labels = arm_colors(arms), arm_labels(arms)
    metrics = (("recall", "Lesion-wise recall"), ("precision", "Lesion-wise precision"), ("f1", "Lesion-wise F1"), ("dice", "Voxel Dice"))
    empty = detection["empty_case"].astype(str).str.lower().isin(["true", "1"])
    scored = detection[~empty]
    per = scored.groupby(["arm", "patient_id"], sort=False)[[m for m, _ in metrics]].mean().reset_index()
    order = _arms_in(detection, arms)
    fig = new_figure(DOUBLE, 4.4)
    rng = np.random.default_rng(0)
    with context():
        axes = fig.subplots(1, len(metrics), sharey=True)
        for ax, (m, name) in zip(axes, metrics):
            for i, arm in enumerate(order):
                y = len(order) - 1 - i
                v = per.loc[per["arm"].astype(str) == arm, m].dropna().to_numpy()
                if len(v):
                    ax.scatter(v, y + rng.uniform(-0.18, 0.18, len(v)), s=7, color=colors[arm], alpha=0.6, lw=0)
                    ax.plot([np.mean(v)], [y], marker="|", ms=14, mew=2, color="black")
            ax.set_xlim(-0.05, 1.05)
            ax.set_xticks([0, 0.5, 1])
            ax.set_title(name, fontsize=8.5, loc="center", fontweight="normal")
            ax.grid(axis="x")
        axes[0].set_yticks(range(len(order)))
        axes[0].set_yticklabels([labels[a] for a in reversed(order)])
        n_empty = int(empty.sum())
        fig.supxlabel(f"Per-patient mean over forecast samples (proportion; | = arm mean)\n{n_empty} of {len(detection)} "
                      "sample-cases with no lesion in forecast or observed mask are excluded (reported apart)", fontsize=8)
        fig.suptitle(title or "Detection of observed NET2 lesions by forecast samples", x=0.02, ha="left")
    return fig


# -- counterfactual effects -------------------------------------------------------------------
def effect_distribution(cf_patients: pd.DataFrame, arms: ArmsLike, *, reference: str | None = None, title: str | None = None) -> Figure:
    """Distribution over patients of the forecast counterfactual effect of each arm: the
    difference in expected NET2 count (arm - reference) for the same patient.

    cf_patients: `counterfactual_patients.csv` (patient_id, arm, difference).
    """
    ref = _reference(arms, reference)
    colors, labels = arm_colors(arms), arm_labels(arms)
    order = [a for a in _arms_in(cf_patients, arms) if a != ref]
    fig = new_figure(DOUBLE, 0.8 + 0.55 * len(order) + 0.4)
    rng = np.random.default_rng(0)
    with context():
        ax = fig.add_subplot()
        for i, arm in enumerate(order):
            y = len(order) - 1 - i
            v = cf_patients.loc[cf_patients["arm"].astype(str) == arm, "difference"].dropna().to_numpy(dtype=float)
            ax.scatter(v, y + rng.uniform(-0.25, 0.25, len(v)), s=7, color=colors[arm], lw=0, alpha=0.7)
            q1, med, q3 = np.quantile(v, [0.25, 0.5, 0.75]) if len(v) else (np.nan,) * 3
            ax.plot([q1, q3], [y, y], color="black", lw=2.5, solid_capstyle="butt", zorder=3)
            ax.plot([med], [y], marker="o", color="white", mec="black", ms=5, zorder=4)
        ax.axvline(0, color=GREY, lw=0.8, ls="--")
        ax.set_xscale("symlog", linthresh=1.0, linscale=0.6)
        v = cf_patients["difference"].to_numpy(dtype=float)
        lo, hi = (np.nanmin(v), np.nanmax(v)) if len(v) else (-1.0, 1.0)
        cands = [-500, -200, -100, -50, -20, -10, -5, -2, -1, 0, 1, 2, 5, 10, 20, 50, 100, 200, 500]
        ticks = [t for t in cands if lo * 1.1 - 0.5 <= t <= hi * 1.1 + 0.5] or [0]
        ax.xaxis.set_major_locator(FixedLocator(ticks))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xticklabels([f"{t:g}" for t in ticks])
        ax.set_xlim(min(lo * 1.15, -1.0), max(hi * 1.15, 1.0))
        ax.set_yticks(range(len(order)))
        ax.set_yticklabels([labels[a] for a in reversed(order)])
        ax.tick_params(axis="y", length=0)
        ax.set_xlabel(f"Difference in expected NET2 lesions vs {labels.get(ref, ref)}, same patient\n"
                      "(lesions over follow-up; symmetric log scale, linear within +/-1; < 0 favours the arm)")
        ax.set_title(title or "Per-patient counterfactual effects (median, interquartile range)")
    return fig


def responder_plot(responders: pd.DataFrame, arms: ArmsLike, *, title: str | None = None) -> Figure:
    """Observed rate ratios (95% CI, log scale) among the top 10/30/50% predicted responders
    and in all patients, per arm; open squares: the rate ratio the forecasts predict for the stratum;
    x: the true ratio (simulated cohorts).

    responders: `responders.csv` (arm, stratum, fraction, observed_rate_ratio, ci_low, ci_high,
    predicted_rate_ratio, optional true_rate_ratio, n_arm, n_reference).
    """
    colors, labels = arm_colors(arms), arm_labels(arms)
    order = _arms_in(responders, arms)
    strata = list(dict.fromkeys(responders.sort_values("fraction")["stratum"].astype(str)))
    n = len(order)
    ncol = 3 if n > 4 else max(n, 1)
    nrow = int(np.ceil(n / ncol))
    fig = new_figure(DOUBLE, 0.6 + 1.9 * nrow)
    with context():
        axes = np.atleast_1d(fig.subplots(nrow, ncol, sharex=True, sharey=True)).ravel()
        vals = pd.concat([responders[c] for c in ("observed_rate_ratio", "ci_low", "ci_high", "predicted_rate_ratio") if c in responders]).to_numpy(dtype=float)
        for ax, arm in zip(axes, order):
            d = responders[responders["arm"].astype(str) == arm].set_index("stratum")
            for j, s in enumerate(strata):
                y = len(strata) - 1 - j
                if s not in d.index:
                    continue
                r = d.loc[s]
                if np.isfinite(r.get("observed_rate_ratio", np.nan)):
                    ax.plot([r["ci_low"], r["ci_high"]], [y, y], color=colors[arm], lw=1.3, zorder=4)
                    ax.plot([r["observed_rate_ratio"]], [y], marker="o", color=colors[arm], ms=5)
                else:
                    ax.text(0.03, y, "not estimable", fontsize=6.5, ha="left", va="center", color=GREY, transform=ax.get_yaxis_transform())
                if np.isfinite(r.get("predicted_rate_ratio", np.nan)):
                    ax.plot([r["predicted_rate_ratio"]], [y + 0.22], marker="s", mfc="white", mec=colors[arm], ms=4.5, mew=1.1, ls="none")
                if "true_rate_ratio" in r and np.isfinite(r["true_rate_ratio"]):
                    ax.plot([r["true_rate_ratio"]], [y - 0.22], marker="x", color="black", ms=4.5, mew=1.1, ls="none")
            ax.axvline(1, color=GREY, lw=0.8, ls="--")
            ax.set_title(labels[arm], fontsize=8.5, loc="center", fontweight="normal", color="black")
            ax.set_yticks(range(len(strata)))
            ax.set_yticklabels(list(reversed(strata)))
            ax.set_ylim(-0.6, len(strata) - 0.4)
        for ax in axes[len(order):]:
            ax.set_visible(False)
        fig.supxlabel("NET2 rate ratio vs reference in the stratum (log scale; 95% CI)", fontsize=9)
        fig.supylabel("Predicted responders (by forecast benefit)", fontsize=9)
        handles = [Line2D([], [], marker="o", color="#444444", label="Observed\n(randomized, in stratum)"),
                   Line2D([], [], marker="s", mfc="white", mec="#444444", ls="none", label="Predicted by forecasts")]
        if "true_rate_ratio" in responders.columns:
            handles.append(Line2D([], [], marker="x", color="black", ls="none", label="Truth (simulator)"))
        if len(order) < len(axes):
            spare = axes[len(order)]
            spare.set_visible(True)
            spare.axis("off")
            leg = spare.legend(handles=handles, loc="center", frameon=False, fontsize=7.5)
            leg.set_in_layout(False)  # keep the panels aligned
        else:
            fig.legend(handles=handles, loc="outside lower center", ncol=3)
        fig.suptitle(title or "Effects in predicted-responder strata", x=0.02, ha="left")
        log_ratio_axis(axes[0], vals, max_ticks=5)  # shared by every panel; fitted to the final layout
    return fig


def qini_plot(qini_curve: pd.DataFrame, arms: ArmsLike, *, qini_area: pd.DataFrame | None = None, title: str | None = None) -> Figure:
    """Qini curves: cumulative observed reduction in NET2 lesions when treating patients in
    order of forecast benefit (solid) vs in random order (dashed), per arm.

    qini_curve: `qini_curve.csv` (arm, fraction, qini, random). qini_area: `qini_area.csv`
    (arm, qini_coefficient), shown in the legend.
    """
    colors, labels = arm_colors(arms), arm_labels(arms)
    coef = {} if qini_area is None else dict(zip(qini_area["arm"].astype(str), qini_area["qini_coefficient"]))
    fig = new_figure(DOUBLE, 3.8)
    with context():
        ax = fig.add_subplot()
        for arm in _arms_in(qini_curve, arms):
            d = qini_curve[qini_curve["arm"].astype(str) == arm].sort_values("fraction")
            lab = labels[arm] + (f" (Qini coef. {coef[arm]:+.2f})" if arm in coef and np.isfinite(coef[arm]) else "")
            ax.plot(100 * d["fraction"], d["qini"], color=colors[arm], lw=1.5, label=lab, marker=arm_markers(arms)[arm], ms=4, markevery=max(1, len(d) // 5))
            ax.plot(100 * d["fraction"], d["random"], color=colors[arm], lw=0.9, ls="--")
        ax.axhline(0, color=GREY, lw=0.6)
        ax.set_xlim(0, 100)
        ax.set_xlabel("Patients treated, ranked by forecast benefit (%)")
        ax.set_ylabel("Cumulative NET2 lesions avoided (count)")
        handles, _ = ax.get_legend_handles_labels()
        handles.append(Line2D([], [], color=GREY, ls="--", lw=0.9, label="Random order"))
        ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.0, 1.0))
        ax.set_title(title or "Qini curves (uplift from targeting)")
    return fig


# -- prognostic adjustment and power ----------------------------------------------------------
def prognostic_plot(prognostic: pd.DataFrame, arms: ArmsLike, *, title: str | None = None) -> Figure:
    """Prognostic adjustment: the observed rate ratio without and with the forecast under the
    reference arm as a covariate (left, log scale), and the resulting reduction in standard
    error and sample size (right, %).

    prognostic: `prognostic.csv` (arm, rate_ratio_unadjusted, rate_ratio_adjusted,
    ci_low_adjusted, ci_high_adjusted, se_unadjusted, se_adjusted, se_reduction_pct, sample_size_saving_pct).
    """
    colors, labels = arm_colors(arms), arm_labels(arms)
    order = _arms_in(prognostic, arms)
    p = prognostic.assign(arm=prognostic["arm"].astype(str)).set_index("arm")
    fig = new_figure(DOUBLE, 0.9 + 0.5 * len(order))
    with context():
        ax1, ax2 = fig.subplots(1, 2, sharey=True, gridspec_kw={"width_ratios": [1.3, 1]})
        allv = []
        for i, arm in enumerate(order):
            y = len(order) - 1 - i
            r = p.loc[arm]
            z = 1.959963984540054
            u, se_u = r["rate_ratio_unadjusted"], r["se_unadjusted"]
            with np.errstate(over="ignore"):  # an infinite bound (huge SE) is left out below
                lo_u, hi_u = u * np.exp(-z * se_u), u * np.exp(z * se_u)
            ax1.plot([lo_u, hi_u], [y + 0.15] * 2, color=colors[arm], lw=1.2, zorder=4)
            ax1.plot([u], [y + 0.15], marker="o", mfc="white", mec=colors[arm], mew=1.3, color=colors[arm])
            ax1.plot([r["ci_low_adjusted"], r["ci_high_adjusted"]], [y - 0.15] * 2, color=colors[arm], lw=1.6, zorder=4)
            ax1.plot([r["rate_ratio_adjusted"]], [y - 0.15], marker="o", color=colors[arm])
            allv += [lo_u, hi_u, r["ci_low_adjusted"], r["ci_high_adjusted"]]
            ax2.barh(y + 0.17, r["se_reduction_pct"], height=0.32, color=colors[arm], alpha=0.55)
            ax2.barh(y - 0.17, r["sample_size_saving_pct"], height=0.32, color=colors[arm])
        ax1.axvline(1, color=GREY, lw=0.8, ls="--")
        ax1.set_yticks(range(len(order)))
        ax1.set_yticklabels([labels[a] for a in reversed(order)])
        ax1.tick_params(axis="y", length=0)
        ax1.set_xlabel("NET2 rate ratio (log scale; 95% CI)")
        ax2.set_xlabel("Reduction vs unadjusted (%)")
        ax2.set_xlim(0, 100)
        ax2.tick_params(axis="y", length=0)
        handles = [Line2D([], [], marker="o", mfc="white", mec="#444444", color="#444444", label="Unadjusted"),
                   Line2D([], [], marker="o", color="#444444", label="Adjusted for prognostic forecast"),
                   Line2D([], [], color="#444444", alpha=0.55, lw=6, label="Standard error (top bar)"),
                   Line2D([], [], color="#444444", lw=6, label="Sample size (bottom bar)")]
        fig.legend(handles=handles, loc="outside lower center", ncol=2)
        fig.suptitle(title or "Prognostic adjustment with the forecast under the reference arm", x=0.02, ha="left")
        log_ratio_axis(ax1, np.array(allv, dtype=float))  # last: fitted to the final layout
    return fig


def power_plot(power_analytic: pd.DataFrame, arms: ArmsLike, *, power_simulated: pd.DataFrame | None = None,
               max_n: int | None = None, title: str | None = None) -> Figure:
    """Power of a two-arm trial (arm vs reference, two-sided 5% level) against patients per arm:
    analytic NB2 curves (lines) and simulated trials (points: open unadjusted, filled adjusted for
    the prognostic forecast; bars: Monte Carlo 95% range), drawn from the observed-data NB2 fit
    with the forecast ratio of means as the assumed rate ratio (never from the forecasts).

    power_analytic: `power_analytic.csv` (arm, rate_reference, rate_arm, dispersion, years,
    n_per_arm_80, n_per_arm_90). power_simulated: `power_simulated.csv` (arm, n_per_arm,
    adjusted, power, mc_se).
    """
    from mseval.stats.power import analytic_power

    colors, labels = arm_colors(arms), arm_labels(arms)
    order = _arms_in(power_analytic, arms)
    pa = power_analytic.assign(arm=power_analytic["arm"].astype(str)).set_index("arm")
    if max_n is None:
        top = pd.to_numeric(pa["n_per_arm_90"], errors="coerce").max()
        max_n = int(min(max(np.nan_to_num(top, nan=100.0) * 1.3, 20), 2000))
    grid = np.unique(np.geomspace(2, max_n, 60).round().astype(int))
    fig = new_figure(DOUBLE, 3.8)
    with context():
        ax = fig.add_subplot()
        for arm in order:
            r = pa.loc[arm]
            pw = [analytic_power(r["rate_reference"], r["rate_arm"], float(n), years=r["years"], dispersion=r["dispersion"]) for n in grid]
            rr = f"assumed RR {r['rate_ratio']:.2f}" if 1e-3 <= float(r["rate_ratio"]) <= 1e3 else "assumed RR not estimable"
            ax.plot(grid, pw, color=colors[arm], lw=1.5, ls=arm_linestyles(arms)[arm], marker=arm_markers(arms)[arm], ms=4, markevery=max(1, len(grid) // 4),
                    label=f"{labels[arm]} ({rr})")
            if power_simulated is not None:
                d = power_simulated[power_simulated["arm"].astype(str) == arm]
                for _, s in d.iterrows():
                    adj = str(s["adjusted"]).lower() in ("true", "1")
                    ax.errorbar([s["n_per_arm"] * (1.04 if adj else 0.96)], [s["power"]], yerr=[[min(1.96 * s["mc_se"], s["power"])], [min(1.96 * s["mc_se"], 1 - s["power"])]],
                                fmt="o", ms=4.5, color=colors[arm], mfc=colors[arm] if adj else "white", mew=1.1, elinewidth=0.8)
        for lv in (0.8, 0.9):
            ax.axhline(lv, color=GREY, lw=0.6, ls=":")
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("Patients per arm (log scale)")
        ax.set_ylabel("Power (two-sided 5% level)")
        handles, _ = ax.get_legend_handles_labels()
        if power_simulated is not None:
            handles += [Line2D([], [], marker="o", mfc="white", color="#444444", ls="none", label="Simulated, unadjusted"),
                        Line2D([], [], marker="o", color="#444444", ls="none", label="Simulated, prognostic-adjusted")]
        ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.0, 1.0))
        ax.set_title(title or "Power by sample size (NB2 Wald test)")
        log_count_axis(ax, 2, max_n)  # last: plain-number ticks (2, 5, 10, ...) fitted to the final layout
    return fig


# -- images -----------------------------------------------------------------------------------
def example_slices(flair: np.ndarray, observed: np.ndarray, probabilities: dict[str, np.ndarray], arms: ArmsLike, *,
                   spacing: tuple[float, float] = (1.0, 1.0), patient: str = "", slice_label: str = "", right_side: str = "R",
                   title: str | None = None) -> Figure:
    """One axial slice: baseline FLAIR with the observed NET2 mask, and the forecast probability
    map (share of samples in which a voxel is in a NET2 lesion) under each arm given.

    flair, observed: 2D (X, Y) arrays of one slice (x: left-right, y: posterior-anterior, as
    in RAS+); probabilities: arm -> 2D map in [0, 1]; spacing: (x, y) voxel size in mm (sets
    the aspect and the 20 mm scale bar); right_side: the patient side at the image's right
    ("R" for RAS+ data, i.e. neurological convention; "L" for LAS+).
    """
    from matplotlib.colors import ListedColormap

    labels, colors = arm_labels(arms), arm_colors(arms)
    arms_shown = [a for a in arm_order(arms) if a in probabilities] + [a for a in probabilities if a not in arm_order(arms)]
    ncol = 1 + len(arms_shown)
    fig = new_figure(DOUBLE if ncol > 1 else SINGLE, 3.2)
    f = np.asarray(flair, dtype=float)
    lo, hi = np.percentile(f, [1, 99.5])
    extent = (0, f.shape[0] * spacing[0], 0, f.shape[1] * spacing[1])
    red = ListedColormap(["#D55E00"])
    import matplotlib as mpl

    # plasma without its darkest tenth, so that low probabilities do not read as dark holes in the FLAIR
    prob_cmap = ListedColormap(mpl.colormaps["plasma"](np.linspace(0.12, 1.0, 256)), name="plasma_light")
    with context():
        axes = fig.subplots(1, ncol)
        im = None
        for k, ax in enumerate(axes):
            ax.imshow(f.T, origin="lower", cmap="gray", vmin=lo, vmax=hi, extent=extent, interpolation="nearest")
            if k == 0:
                m = np.ma.masked_where(np.asarray(observed).T == 0, np.asarray(observed).T)
                ax.imshow(m, origin="lower", cmap=red, alpha=0.9, extent=extent, interpolation="nearest")
                ax.set_title("Observed NET2 (follow-up)", fontsize=8.5, loc="center", fontweight="normal")
            else:
                arm = arms_shown[k - 1]
                pm = np.asarray(probabilities[arm], dtype=float).T
                im = ax.imshow(np.ma.masked_where(pm <= 0, pm), origin="lower", cmap=prob_cmap, vmin=0, vmax=1, alpha=0.95, extent=extent,
                               interpolation="nearest")
                ax.set_title(f"Forecast: {labels.get(arm, arm)}", fontsize=8.5, loc="center", fontweight="normal", color="black")
                for s in ax.spines.values():
                    s.set_visible(True)
                    s.set_color(colors.get(arm, "black"))
                    s.set_linewidth(2)
            ax.set_xticks([])
            ax.set_yticks([])
            if k == 0:
                left_side = {"R": "L", "L": "R"}.get(right_side, "")
                ax.text(0.03, 0.5, left_side, transform=ax.transAxes, color="white", fontsize=8, va="center", ha="left")
                ax.text(0.97, 0.5, right_side, transform=ax.transAxes, color="white", fontsize=8, va="center", ha="right")
                x0, y0 = extent[1] * 0.06, extent[3] * 0.05
                ax.plot([x0, x0 + 20], [y0, y0], color="white", lw=2)
                ax.text(x0 + 10, y0 + extent[3] * 0.03, "20 mm", color="white", fontsize=7, ha="center", va="bottom")
        if im is not None:
            cb = fig.colorbar(im, ax=list(axes), shrink=0.8, pad=0.01)
            cb.set_label("P(voxel in a NET2 lesion)")
        sub = ", ".join(x for x in (f"patient {patient}" if patient else "", slice_label) if x)
        fig.suptitle((title or "Example: baseline FLAIR with observed and forecast NET2 lesions") + (f"\n{sub[0].upper()}{sub[1:]}" if sub else ""),
                     x=0.02, ha="left", fontsize=9.5)
    return fig


FIGURES = {
    "forest_plot": forest_plot,
    "lesion_free": lesion_free_plot,
    "activity_roc": activity_roc,
    "reliability": reliability_diagram,
    "pit_histogram": pit_histogram,
    "coverage": coverage_plot,
    "count_scatter": count_scatter,
    "detection": detection_plot,
    "effect_distribution": effect_distribution,
    "responders": responder_plot,
    "qini": qini_plot,
    "prognostic": prognostic_plot,
    "power": power_plot,
    "example_slices": example_slices,
}
"""Figure name (file stem in a report's figures/) -> function."""
