"""Shared helpers for the live R parity tests of the NB2 fitter (tests/stats/test_count_model.py and
bench/bench_effects.py): random NB2 trials, R's own data sets, and one Rscript call that fits them all."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pandas as pd

R_SCRIPT = Path(__file__).parent / "data" / "r_glm_nb.R"


def sweep_trials(n_trials: int = 40, seed: int = 2026) -> list[tuple[str, pd.DataFrame]]:
    """Random NB2 trials: 2-4 arms, n 20-400, theta log-uniform on [0.3, 50] (every 8th: Poisson data,
    at or near the boundary), a covariate, follow-up 0.5-1 year; every 10th has an arm without events."""
    rng = np.random.default_rng(seed)
    out = []
    for t in range(n_trials):
        k = int(rng.integers(2, 5))
        n = int(rng.integers(20, 401))
        arms = ["placebo", "a", "b", "c"][:k]
        arm = rng.choice(arms, n)
        arm[:k] = arms  # every arm present
        rr = dict(zip(arms, [1.0, *np.exp(rng.normal(-0.5, 0.4, k - 1))]))
        x = rng.normal(0, 1, n).round(3)
        years = rng.uniform(0.5, 1.0, n).round(4)
        mu = rng.uniform(0.5, 8.0) * np.array([rr[a] for a in arm]) * years * np.exp(0.3 * x)
        if t % 8 == 7:
            y = rng.poisson(mu)
        else:
            theta = float(np.exp(rng.uniform(np.log(0.3), np.log(50.0))))
            y = rng.poisson(mu * rng.gamma(theta, 1.0 / theta, n))
        if t % 10 == 9:
            y[arm == arms[-1]] = 0
        if y.sum() == 0:
            y[0] = 1
        out.append((f"sweep{t:02d}", pd.DataFrame({"arm": arm, "x": x, "followup_years": years, "net2": y})))
    return out


def r_available() -> bool:
    import shutil

    if shutil.which("Rscript") is None:
        return False
    return subprocess.run(["Rscript", "-e", "suppressMessages(library(MASS))"], capture_output=True).returncode == 0


def export_r_datasets(folder: Path) -> dict[str, pd.DataFrame]:
    """MASS::epil (per-patient totals), MASS::quine, MASS::Insurance as exported by r_glm_nb.R."""
    subprocess.run(["Rscript", str(R_SCRIPT), "export", str(folder)], check=True, capture_output=True, text=True)
    return {name: pd.read_csv(folder / f"{name}.csv") for name in ("epil", "quine", "insurance")}


# (data set, mseval formula, offset column, arm column, reference, R formula)
R_DATASET_MODELS = [
    ("epil", "y ~ trt + lbase + age", "years", "trt", "placebo", "y ~ trt + lbase + age + offset(log(years))"),
    ("quine", "Days ~ Eth + Sex + Age + Lrn", None, "Eth", "A", "Days ~ Eth + Sex + Age + Lrn"),
    ("insurance", "Claims ~ District + Group + Age", "Holders", "District", "d1", "Claims ~ District + Group + Age + offset(log(Holders))"),
]


def run_r(jobs: list[tuple[str, Path, str, str, str]], folder: Path) -> pd.DataFrame:
    """Fit (id, csv path, R formula, factor, reference level) jobs with glm.nb(epsilon = 1e-12, maxit = 500)
    and glm(family = poisson) in one Rscript call."""
    pd.DataFrame(jobs, columns=["id", "data", "formula", "factor", "reference"]).to_csv(folder / "jobs.csv", index=False)
    out = subprocess.run(["Rscript", str(R_SCRIPT), "fit", str(folder / "jobs.csv")], check=True, capture_output=True, text=True)
    (folder / "r_fits.csv").write_text(out.stdout)
    return pd.read_csv(folder / "r_fits.csv")


def r_name(term: str, arm_col: str, arm_levels: set[str]) -> str:
    """mseval's term name as R spells it: arm levels get the arm column's name in front, patsy's
    'Sex[T.M]' becomes 'SexM'."""
    if term == "Intercept":
        return "(Intercept)"
    if term in arm_levels:
        return f"{arm_col}{term}"
    return term.replace("[T.", "").replace("]", "")
