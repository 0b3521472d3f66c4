"""Issue 13: can a small MLP NB2 head on what the inputs show beat the NB2 baseline? (count-only simulation)

Per trial pair k (8 pairs): a training set of N per arm (argv[1], e.g. 400 -> 2,400 patients) drawn as
`mseval simulate` draws counts (bench/forecast_references.count_trial), a validation set (epoch choice)
and a 240-patient test trial (seed 20000 + k, as in forecast_references). Scored on the test trial with
the exact CRPS and the AUC of 1 - P(0): the observable oracle, the NB2 baseline fitted on 240 patients
and on the same N x 6 patients, and the MLP head (2 x 32, NB2 log mean and log dispersion, Adam, epoch
with the lowest validation NLL). Prints the means over pairs and the CRPS above the oracle.
This prototype's head is the model of forecast/count_head.py in miniature (features: log1p Gd+, log1p T2,
log1p T2 volume / 5, (age - 37) / 10, follow-up years, arm one-hot).

    .venv/bin/python bench/count_head_vs_nb2.py 400     # about 90 s
"""
import sys, time
from pathlib import Path
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT)); sys.path.insert(0, str(ROOT / "bench"))
import numpy as np, pandas as pd, torch
from forecast_references import count_trial
from sklearn.metrics import roc_auc_score
from mseval.metrics.calibration import crps_pmf
from mseval.simulate.model import TrialConfig
from mseval.simulate.observable_oracle import ModelParams, observable_pmf
from mseval.stats.baseline_nb2 import fit_nb2_baseline
torch.set_num_threads(1)
ARMS = [a.arm for a in TrialConfig().arms]
def feats(f):
    x = np.c_[np.log1p(f.gd_count), np.log1p(f.t2_count), np.log1p(f.t2_volume_mm3)/5, (f.age-37)/10, f.followup_years]
    a = np.eye(len(ARMS))[[ARMS.index(v) for v in f.arm]]
    return torch.tensor(np.c_[x, a], dtype=torch.float32)
class Head(torch.nn.Module):
    def __init__(s, d, h=32):
        super().__init__(); s.net = torch.nn.Sequential(torch.nn.Linear(d, h), torch.nn.SiLU(), torch.nn.Linear(h, h), torch.nn.SiLU(), torch.nn.Linear(h, 2))
    def forward(s, x):
        o = s.net(x); return o[:, 0] + torch.log(x[:, 4]), o[:, 1]
def nll(lmu, la, y):
    r = torch.exp(-la); mu = torch.exp(lmu)
    return -(torch.lgamma(y + r) - torch.lgamma(r) - torch.lgamma(y + 1) + r * torch.log(r / (r + mu)) + y * torch.log(mu / (r + mu))).mean()
def fit(train, val, epochs=3000):
    torch.manual_seed(0)
    m = Head(train[0].shape[1]); opt = torch.optim.Adam(m.parameters(), 3e-3, weight_decay=1e-4)
    best, state = 1e9, None
    for e in range(epochs):
        opt.zero_grad(); l = nll(*m(train[0]), train[1]); l.backward(); opt.step()
        if e % 25 == 0:
            with torch.no_grad(): v = nll(*m(val[0]), val[1]).item()
            if v < best: best, state = v, {k: t.clone() for k, t in m.state_dict().items()}
    m.load_state_dict(state); return m
def pmf(m, x, K=300):
    with torch.no_grad(): lmu, la = m(x)
    from scipy import stats
    mu, a = lmu.exp().numpy().astype(float), la.exp().numpy().astype(float)
    r = 1/a; p = r/(r+mu); k = np.arange(K)
    return stats.nbinom.pmf(k[None], r[:, None], p[:, None])
params = ModelParams.from_config(TrialConfig())
N = int(sys.argv[1])  # per arm training
rows = []
for k in range(8):
    tr = pd.concat([count_trial(30000 + 100*k + j, 40)[0] for j in range(N // 40)], ignore_index=True)
    va = pd.concat([count_trial(40000 + 100*k + j, 40)[0] for j in range(max(1, N // 160))], ignore_index=True)
    te, mu = count_trial(20000 + k, 40)
    y = te.net2.to_numpy()
    t0 = time.time()
    m = fit((feats(tr), torch.tensor(tr.net2.values, dtype=torch.float32)), (feats(va), torch.tensor(va.net2.values, dtype=torch.float32)))
    laws = {"oracle": observable_pmf(te, params), "nb2_240": fit_nb2_baseline(count_trial(10000 + k, 40)[0], reference="placebo").pmf(te),
            "nb2_N": fit_nb2_baseline(tr, reference="placebo").pmf(te), "mlp": pmf(m, feats(te))}
    for n, p in laws.items():
        rows.append({"trial": k, "f": n, "auc": roc_auc_score(y > 0, 1 - p[:, 0]), "crps": float(crps_pmf(p, y).mean())})
    print(k, round(time.time() - t0, 1), flush=True)
r = pd.DataFrame(rows); print(r.groupby("f")[["auc", "crps"]].mean())
piv = r.pivot(index="trial", columns="f", values="crps"); print((piv.sub(piv.oracle, axis=0)).describe().loc[["mean","std"]])
