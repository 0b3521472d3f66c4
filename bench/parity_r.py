"""NB2 fitter vs R's MASS::glm.nb(control = glm.control(epsilon = 1e-12, maxit = 500)): the largest
relative differences over the sweep of random trials and R's own data sets (the cases of
tests/stats/test_count_model.py::test_mle_matches_r_glm_nb_on_a_sweep_and_r_datasets).

Run: `.venv/bin/python bench/parity_r.py` (needs Rscript with MASS: `make r` on Debian).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np
from scipy import stats

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "stats"))
import r_parity  # noqa: E402

from mseval.stats.count_model import fit_count_model  # noqa: E402


def main() -> None:
    if not r_parity.r_available():
        sys.exit("Rscript with MASS is not installed (Debian: apt-get install r-base-core r-cran-mass)")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        ds = r_parity.export_r_datasets(folder)
        jobs, cases = [], []
        for tid, d in r_parity.sweep_trials():
            d.to_csv(folder / f"{tid}.csv", index=False)
            for f in ("net2 ~ arm", "net2 ~ arm + x"):
                jobs.append((f"{tid}:{f}", folder / f"{tid}.csv", f + " + offset(log(followup_years))", "arm", "placebo"))
                cases.append((f"{tid}:{f}", d, f, "followup_years", "arm", "placebo"))
        for name, f, off, arm_col, ref, rf in r_parity.R_DATASET_MODELS:
            jobs.append((name, folder / f"{name}.csv", rf, arm_col, ref))
            cases.append((name, ds[name], f, off, arm_col, ref))
        R = r_parity.run_r(jobs, folder)
        version = f"R {R['r_version'].iloc[0]}, MASS {R['mass_version'].iloc[0]}"
        groups: dict[str, dict[str, float]] = {}
        n_boundary = n_nb_error = 0
        for jid, d, f, off, arm_col, ref in cases:
            fit = fit_count_model(d, f, offset_years=off, reference=ref, arm_col=arm_col)
            rj = R[R["id"] == jid]
            n_nb_error += bool((rj[rj["model"] == "glm.nb"]["status"] == "error").any())
            n_boundary += fit.boundary
            r = rj[rj["model"] == ("poisson" if fit.boundary else "glm.nb")].set_index("term")
            g = groups.setdefault("sweep (80 fits)" if jid.startswith("sweep") else jid, {"rr": 0.0, "se": 0.0, "z": 0.0, "llf_gain": -np.inf})
            g["llf_gain"] = max(g["llf_gain"], fit.llf - r["loglik"].iloc[0])
            lv = set(d[arm_col].astype(str))
            for row in fit.table.itertuples():
                if not row.estimable and "no events" in row.note:
                    continue
                rr = r.loc[r_parity.r_name(row.term, arm_col, lv)]
                g["rr"] = max(g["rr"], abs(row.rate_ratio / np.exp(rr["coef"]) - 1))
                g["se"] = max(g["se"], abs(row.se / rr["se"] - 1))
                if rr["p_value"] < 0.999:
                    g["z"] = max(g["z"], abs(stats.norm.isf(row.p_value / 2) / stats.norm.isf(rr["p_value"] / 2) - 1))
        print(f"{version}; {n_boundary} fits at the Poisson boundary (compared with R's Poisson GLM); glm.nb stopped with an error on {n_nb_error}")
        print(f"{'data':20s} {'max rel RR':>12s} {'max rel SE':>12s} {'max rel z':>12s} {'max llf ours - R':>18s}")
        for k, g in groups.items():
            print(f"{k:20s} {g['rr']:12.2g} {g['se']:12.2g} {g['z']:12.2g} {g['llf_gain']:18.2g}")


if __name__ == "__main__":
    main()
