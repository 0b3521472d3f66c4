"""Diagnostic on the issue-21 DEV trials (not a result, never the TEST trial): does a hand-made image summary
improve the count-feature NB2 baseline's count CRPS on DEV? The summaries, per patient: the log share of
white-matter voxels (lesion-free brain voxels above the 60th T1 percentile) whose FLAIR (PD) is more than
2 MAD above the patient's white-matter median (T1: below), centred per site within each trial (a location
harmonisation). Reads, from the folder WORK of a bench/image_count_dev.py run (--train WORK/train --dev WORK/dev
--cache WORK/arrays.pkl): the arrays it cached, the TRAIN and DEV cohorts and the TRAIN trial's oracle_inputs.csv (only
to report the summary's correlation with the true DAWM share).

    PYTHONPATH=. .venv/bin/python bench/image_count_probe.py WORK
"""
import pickle
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from mseval.io.cohort import read_cohort
from forecast.data import split_patients
from forecast.image_count_data import visit_horizons
from mseval.lesions.baseline_features import baseline_features
from mseval.metrics.calibration import crps_pmf
from mseval.stats.baseline_nb2 import fit_nb2_baseline, BASELINE_FORMULA
from bench.readable_oracle import tail_share
if len(sys.argv) != 2:
    sys.exit(__doc__)
work = Path(sys.argv[1])
train_p, val_p, dev_p = pickle.loads((work / "arrays.pkl").read_bytes())
def probe(p):
    return {nm: tail_share(p, ch, sign) for ch, nm, sign in ((2, "fl", 1.0), (3, "pd", 1.0), (0, "t1", -1.0))}
tr, dv = read_cohort(work / "train"), read_cohort(work / "dev")
ids = tr.patient_ids; arm_of = tr.manifest.set_index("patient_id")["arm"]
fit_ids, val_ids = split_patients(ids, [arm_of[i] for i in ids], 0.1, 0)
allp = dict(zip(list(fit_ids) + list(val_ids), train_p + val_p))
ftr = baseline_features(tr, ids, outcome=False); fdv = baseline_features(dv, outcome=False)
ftr = ftr.assign(**pd.DataFrame([probe(allp[i]) for i in ftr.patient_id]).to_dict("list"))
fdv = fdv.assign(**pd.DataFrame([probe(p) for p in dev_p]).to_dict("list"))
site_tr = tr.manifest.set_index("patient_id").loc[ftr.patient_id, "site"].to_numpy(); site_dv = dv.manifest.set_index("patient_id").loc[fdv.patient_id, "site"].to_numpy()
for col in ("fl", "pd", "t1"):
    ftr[col] = ftr[col] - ftr.groupby(site_tr)[col].transform("mean"); fdv[col] = fdv[col] - fdv.groupby(site_dv)[col].transform("mean")
print("corr fl with log dawm (train):", np.corrcoef(ftr.fl, np.log(pd.read_csv(work / "train" / "oracle_inputs.csv").set_index("patient_id").loc[ftr.patient_id].dawm_fraction))[0,1])
for v, label in enumerate(visit_horizons(dv)):
    y = np.array([p.counts[v] for p in dev_p]); ok = np.isfinite(y)
    tt = ftr.assign(net2=[allp[i].counts[v] for i in ftr.patient_id], followup_years=[allp[i].years[v] for i in ftr.patient_id])
    dd = fdv.assign(followup_years=[p.years[v] for p in dev_p])[ok]
    s0 = crps_pmf(fit_nb2_baseline(tt, reference="placebo").pmf(dd), y[ok].astype(int))
    for extra in ("fl",):
        s1 = crps_pmf(fit_nb2_baseline(tt, reference="placebo", formula=BASELINE_FORMULA + " + " + extra).pmf(dd), y[ok].astype(int))
        d = s1 - s0
        P0 = fit_nb2_baseline(tt, reference="placebo").pmf(dd); P1 = fit_nb2_baseline(tt, reference="placebo", formula=BASELINE_FORMULA + " + " + extra).pmf(dd)
        yy = y[ok].astype(int); k = np.arange(P0.shape[1])
        ll0 = np.log(P0[np.arange(len(yy)), yy]); ll1 = np.log(P1[np.arange(len(yy)), yy])
        print("  mean pred", (P0 @ k).mean().round(3), (P1 @ np.arange(P1.shape[1])).mean().round(3), "obs", yy.mean().round(3), "logscore diff", (ll1 - ll0).mean().round(4), ((ll1-ll0).std()/np.sqrt(len(yy))).round(4))
        print(label, extra, "nb2", s0.mean().round(4), "probe", s1.mean().round(4), "diff", d.mean().round(4), "se", (d.std(ddof=1) / np.sqrt(len(d))).round(4))
