"""The NB2 fits of the simulation loops (forecast sandwich: 20 warm-started per-sample fits; simulated
power: cold fits of small trials), timed with `nb2_mle.fit_nb2` + `nb2_wald` and with the lean fitter
of git revision --baseline-rev (removed since), in the same run; also the largest coefficient and SE
differences between the two (fitter round-off expected).

    PYTHONPATH=$PWD python bench/bench_nb2_loops.py --baseline-rev e57c491
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np

from mseval.simulate.counts_only import simulate_count_trial
from mseval.simulate.model import TrialConfig
from mseval.stats.design import design_matrix
from mseval.stats.nb2_mle import fit_nb2, nb2_wald


def _new(y, X, off, warm):
    f = fit_nb2(y, X, off, beta0=None if warm is None else warm[0], alpha0=None if warm is None else warm[1])
    return f.beta, nb2_wald(X, off, f.beta, f.alpha).se, (f.beta, f.alpha)


def main(rev: str) -> None:
    warnings.simplefilter("ignore")
    from baseline_module import module_at

    with module_at(rev, "mseval/stats/nb2_lean.py", "_baseline_nb2_lean") as old:
        pass  # the lean fitter needs no file once imported

    def _old(y, X, off, warm):
        f = old.fit_nb2(y, X, off, start=None if warm is None else warm[0])
        return f.beta, f.se, (f.beta, f.alpha)

    tr = simulate_count_trial(TrialConfig(patients_per_arm=355, seed=7), samples=20)
    des = design_matrix(tr.table, "arm + gd_count", reference="placebo")
    wide = tr.counts.merge(tr.table[["patient_id", "arm"]]).pivot(index="patient_id", columns="sample", values="count")
    Y = wide.loc[tr.table["patient_id"].to_numpy()[des.rows]].to_numpy(dtype=float)
    rng = np.random.default_rng(1)
    small = []
    for _ in range(200):  # simulated-power-sized trials: 2 x 100 patients, arm + score
        t = np.r_[np.zeros(100), np.ones(100)]
        s = rng.normal(size=200)
        yrs = rng.uniform(1.5, 2.0, 200)
        mu = np.exp(1.5 - 0.5 * t + 0.4 * s) * yrs
        small.append((rng.poisson(mu * rng.gamma(1.0, 1.0, 200)).astype(float), np.c_[np.ones(200), t, s], np.log(yrs)))
    res = {}
    for name, fn in (("new", _new), ("lean", _old)):
        t0 = time.perf_counter()
        warm, out_e = None, []
        for s in range(Y.shape[1]):
            b, se, warm = fn(Y[:, s], des.X, des.offset, warm)
            out_e.append(np.r_[b, se])
        te = time.perf_counter() - t0
        t0 = time.perf_counter()
        out_p = [np.concatenate(fn(y, X, off, None)[:2]) for y, X, off in small]
        tp = time.perf_counter() - t0
        res[name] = (te, tp, np.array(out_e), np.array(out_p))
    (ne, np_, be, bp), (oe, op, ce, cp) = res["new"], res["lean"]
    print(f"ensemble 2130 pts x 20 warm fits: new {ne:.2f} s, lean {oe:.2f} s, ratio new/lean {ne / oe:.2f}")
    print(f"power 200 cold fits of 200 pts:    new {np_:.2f} s, lean {op:.2f} s, ratio new/lean {np_ / op:.2f}")
    print(f"max |diff| beta & SE: ensemble {np.max(np.abs(be - ce)):.2e}, power {np.max(np.abs(bp - cp)):.2e}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--baseline-rev", default="e57c491")
    main(ap.parse_args().baseline_rev)
