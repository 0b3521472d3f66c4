"""What the rendered baseline images let a reader know about the count: a *readable* oracle beside the observable one.

The observable oracle (`mseval.simulate.observable_oracle`) reads the exact DAWM share F and the exact number of
visible pre-lesional sites V (`oracle_inputs.csv`): an ideal reader. Issue 21 asks a model to close half of the gap
between the count-feature NB2 baseline and that oracle, which is attainable only if the images show F and V. This
DEV diagnostic (never the TEST trial of issue 21) replaces the ideal reading by a measurement taken from the images:

- m, the FLAIR proxy of `bench/image_count_probe.py` (the log share of lesion-free white matter more than 2 MAD above
  the patient's white-matter median), centred per site within its trial (a location harmonisation);
- its law given the latent activity u, fitted on TRAIN with the simulator's true u (`latent_activity` of
  simulation.json's `latent`; allowed: it builds a reference, not a model): m = g(log u) + e, e ~ N(0, s^2), g a natural cubic
  spline (patsy `cr`, 4 df); the DAWM extent saturates in the images (a share below a voxel or two shows nothing), so
  the law is fitted on u directly rather than on log F;
- on DEV, the oracle's posterior of u takes the counts and m (`observable_pmf(extra_loglik=...)`); F and V are not
  read (the DAWM and pre-lesional terms off: marginalising V is exact, the count given u being Poisson(lambda rho T)).

That is the Bayes law of a reader who sees the lesion counts and this one image summary: a lower bound on what the
images make attainable (a better summary can do better), and an upper bound on what this summary can give.

    PYTHONPATH=. .venv/bin/python bench/readable_oracle.py --train TRAIN --dev DEV --cache ARRAYS.pkl

(ARRAYS.pkl: the arrays `bench/image_count_dev.py` caches for the same TRAIN/DEV; made here when absent.)
Prints, per visit, exact CRPS and P(active) AUC of the NB2 baseline, the counts-only Bayes law, the readable oracle
and the observable oracle on the DEV patients, with paired SEs.
"""

from __future__ import annotations

import argparse
import json
import pickle
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import patsy
from scipy import stats
from sklearn.metrics import roc_auc_score

from forecast.data import split_patients
from forecast.image_count_data import IMAGE_CHANNELS, MASK_CHANNELS, load_arrays, visit_horizons
from mseval.io.cohort import Cohort, read_cohort
from mseval.lesions.baseline_features import baseline_features
from mseval.metrics.calibration import crps_pmf
from mseval.simulate.observable_oracle import ModelParams, observable_pmf
from mseval.stats.baseline_nb2 import fit_nb2_baseline


DEFAULT_INPUTS = IMAGE_CHANNELS + MASK_CHANNELS
"""cond channels: the five sequences, then the T2 and Gd+ masks (index 5: the T2 lesion mask); optional images after."""


def tail_share(p, channel: int = 2, sign: float = 1.0) -> float:  # noqa: ANN001  (forecast.image_count_data arrays)
    """log share of lesion-free white-matter voxels (brain voxels above the 60th T1 percentile) whose cond[channel] is
    more than 2 MAD above (sign 1; below: sign -1) the patient's white-matter median. Default: the FLAIR proxy."""
    b = p.brain & (p.cond[5] == 0)
    t1 = p.cond[0]
    wm = b & (t1 > np.quantile(t1[b], 0.6))
    x = p.cond[channel][wm]
    med = np.median(x)
    mad = np.median(np.abs(x - med)) * 1.4826
    return float(np.log(np.mean(sign * (x - med) / mad > 2.0) + 1e-3))


def flair_proxy(p) -> float:  # noqa: ANN001
    """The FLAIR summary this bench reads (`tail_share` of channel 2, as bench/image_count_probe.py's `fl`)."""
    return tail_share(p, 2, 1.0)


def _load_part(root: str, ids: list, arms: list, inputs: tuple, normalization: str, with_targets: bool) -> list:
    return load_arrays(read_cohort(root), ids, arms, inputs=inputs, normalization=normalization, with_targets=with_targets)


def load_parallel(c: Cohort, ids: list, arms: list, inputs: tuple = DEFAULT_INPUTS, *, normalization: str = "brain_z",
                  workers: int = 1, with_targets: bool = True) -> list:
    """`load_arrays` over `workers` processes (same arrays, patient order kept): the N4 preprocessing costs ~2 s a patient."""
    if workers <= 1 or len(ids) < 2 * workers:
        return load_arrays(c, ids, arms, inputs=inputs, normalization=normalization, with_targets=with_targets)
    from concurrent.futures import ProcessPoolExecutor

    parts = [list(x) for x in np.array_split(np.asarray(ids, dtype=object), workers)]
    with ProcessPoolExecutor(workers) as ex:
        done = ex.map(_load_part, [str(c.root)] * workers, parts, [arms] * workers, [inputs] * workers, [normalization] * workers,
                      [with_targets] * workers)
        return [p for part in done for p in part]


def load_or_cache(tr: Cohort, dv: Cohort, cache: Path, fit_ids: list, val_ids: list, arms: list, inputs: tuple = DEFAULT_INPUTS, *,
                  normalization: str = "brain_z", workers: int = 1) -> tuple:
    """(TRAIN fitted, TRAIN held-out, DEV) arrays of `forecast.image_count_data.load_arrays` (images by `normalization`),
    pickled at `cache` (read when present)."""
    if cache.is_file():
        return pickle.loads(cache.read_bytes())
    kw = {"normalization": normalization, "workers": workers}
    out = (load_parallel(tr, fit_ids, arms, inputs, **kw), load_parallel(tr, val_ids, arms, inputs, **kw),
           load_parallel(dv, list(dv.patient_ids), arms, inputs, **kw))
    cache.write_bytes(pickle.dumps(out))
    return out


def latent(root: Path, patient_ids: pd.Series) -> np.ndarray:
    """(n,) the simulator's latent activity u of each patient (simulation.json `latent`)."""
    lat = json.loads((root / "simulation.json").read_text())["latent"]
    return np.array([lat[p]["latent_activity"] for p in patient_ids], dtype=float)


def site_centred(values: np.ndarray, sites: np.ndarray) -> np.ndarray:
    s = pd.Series(values)
    return (s - s.groupby(sites).transform("mean")).to_numpy()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train", required=True)
    ap.add_argument("--dev", required=True)
    ap.add_argument("--cache", required=True)
    ap.add_argument("--out", default="")
    a = ap.parse_args()
    tr, dv = read_cohort(a.train), read_cohort(a.dev)
    arms = list(tr.arms["arm"])
    ids = tr.patient_ids
    arm_of = tr.manifest.set_index("patient_id")["arm"]
    fit_ids, val_ids = split_patients(ids, [arm_of[i] for i in ids], 0.1, 0)
    tp, vp, dp = load_or_cache(tr, dv, Path(a.cache), fit_ids, val_ids, arms)
    amap = dict(zip(list(fit_ids) + list(val_ids), tp + vp))
    cfg = json.loads((Path(a.dev) / "simulation.json").read_text())["config"]
    params = ModelParams.from_config(cfg)

    # measurement model on TRAIN: m (site-centred) given log u
    ftr = baseline_features(tr, ids, outcome=False)
    site_tr = tr.manifest.set_index("patient_id").loc[ftr.patient_id, "site"].to_numpy()
    m_tr = site_centred(np.array([flair_proxy(amap[i]) for i in ftr.patient_id]), site_tr)
    u_tr = latent(Path(a.train), ftr.patient_id)
    spline = patsy.dmatrix("cr(x, df=4)", {"x": np.log(u_tr)})
    coef, *_ = np.linalg.lstsq(np.asarray(spline), m_tr, rcond=None)
    s = float(np.std(m_tr - np.asarray(spline) @ coef, ddof=spline.shape[1]))
    r2 = 1.0 - s**2 / float(np.var(m_tr, ddof=1))
    print(f"measurement model on TRAIN: m = g(log u) + N(0, {s:.3f}^2), R^2 {r2:.3f} (corr with log u {np.corrcoef(m_tr, np.log(u_tr))[0, 1]:.3f})")

    def g(u: np.ndarray) -> np.ndarray:
        x = np.clip(np.log(u), np.log(u_tr).min(), np.log(u_tr).max())  # flat beyond the training range
        return np.asarray(patsy.build_design_matrices([spline.design_info], {"x": x})[0]) @ coef

    fdv = baseline_features(dv, outcome=False)
    site_dv = dv.manifest.set_index("patient_id").loc[fdv.patient_id, "site"].to_numpy()
    m_dv = site_centred(np.array([flair_proxy(p) for p in dp]), site_dv)
    truth_in = pd.read_csv(Path(a.dev) / "oracle_inputs.csv").set_index("patient_id").loc[fdv.patient_id]
    counts_only = replace(params, dawm_strength=0.0, prelesion_fraction=0.0)
    rows = []
    for v, label in enumerate(visit_horizons(dv)):
        y = np.array([p.counts[v] for p in dp])
        ok = np.isfinite(y)
        ttab = ftr.assign(net2=[amap[i].counts[v] for i in ftr.patient_id], followup_years=[amap[i].years[v] for i in ftr.patient_id])
        ttab = ttab[np.isfinite(ttab["net2"])]
        d = fdv.assign(followup_years=[p.years[v] for p in dp])[ok]
        laws = {
            "nb2_baseline": fit_nb2_baseline(ttab, reference="placebo").pmf(d),
            "counts_only": observable_pmf(d, counts_only),
            "readable": observable_pmf(d, counts_only, extra_loglik=lambda u, m=m_dv[ok]: stats.norm.logpdf(m[:, None], g(u)[None, :], s)),
            "oracle": observable_pmf(d.assign(dawm_fraction=truth_in["dawm_fraction"].to_numpy()[ok],
                                              prelesional_sites=truth_in["prelesional_sites"].to_numpy()[ok]), params),
        }
        yy = y[ok].astype(int)
        sc = {k: crps_pmf(p, yy) for k, p in laws.items()}
        row = {"visit": label, "n": int(ok.sum())} | {f"crps_{k}": float(x.mean()) for k, x in sc.items()}
        act = yy > 0
        row |= {f"auc_{k}": float(roc_auc_score(act, 1.0 - p[:, 0])) for k, p in laws.items()}
        for k1, k0 in (("readable", "counts_only"), ("readable", "nb2_baseline"), ("oracle", "nb2_baseline"), ("counts_only", "nb2_baseline")):
            dd = sc[k1] - sc[k0]
            row[f"{k1}_minus_{k0}"], row[f"{k1}_minus_{k0}_se"] = float(dd.mean()), float(dd.std(ddof=1) / np.sqrt(len(dd)))
        gap = row["crps_nb2_baseline"] - row["crps_oracle"]
        row["readable_share_of_gap"] = (row["crps_nb2_baseline"] - row["crps_readable"]) / gap if gap > 0 else float("nan")
        rows.append(row)
    df = pd.DataFrame(rows)
    print("| visit | NB2 baseline | counts-only Bayes | readable oracle | observable oracle | readable - counts-only | readable - NB2 | "
          "share of the NB2-oracle gap | AUC NB2 / counts-only / readable / oracle |\n|---|---|---|---|---|---|---|---|---|")
    for r in df.itertuples():
        print(f"| {r.visit} | {r.crps_nb2_baseline:.3f} | {r.crps_counts_only:.3f} | {r.crps_readable:.3f} | {r.crps_oracle:.3f} | "
              f"{r.readable_minus_counts_only:+.3f} ({r.readable_minus_counts_only_se:.3f}) | {r.readable_minus_nb2_baseline:+.3f} "
              f"({r.readable_minus_nb2_baseline_se:.3f}) | {100 * r.readable_share_of_gap:.0f}% | {r.auc_nb2_baseline:.3f} / "
              f"{r.auc_counts_only:.3f} / {r.auc_readable:.3f} / {r.auc_oracle:.3f} |")
    if a.out:
        df.to_csv(a.out, index=False)


if __name__ == "__main__":
    main()
