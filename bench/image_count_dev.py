"""The image count model (`forecast.image_count`) against the references on the same patients: the count-feature NB2
baseline and the flexible count-feature baseline (fitted on the same training patients' observed counts), the
observable oracle, and the image-ablated model (image channels zeroed, masks and tabular features kept; trained the
same way). Development on DEV trials; with --checkpoint it is also the scorer that issue 21's pre-registered TEST
protocol names for the count, location and effect criteria (bench/RESULTS_forecast.md, amendment 7).

    PYTHONPATH=. .venv/bin/python bench/image_count_dev.py --train /work/exp21/train --dev /work/exp21/dev --out /tmp/ic.json
    (--train A,B pools several training trials; --count-only trains and scores the count pathway alone)

A shipped checkpoint judged as it is (issue 21's TEST protocol, reference (iv)): --checkpoint DIR scores that model as
"model" (not retrained) and trains its image-free twin by the checkpoint's own recipe (its net, epochs, seed and
normalisation; the same split of --train, which must be the trial it trained on); --array-cache DIR reuses the
per-patient arrays a build already read (`forecast.image_count_cache`, e.g. build/checkpoint/arrays):

    PYTHONPATH=. .venv/bin/python bench/image_count_dev.py --checkpoint forecast/checkpoints/image_count \
        --train build/checkpoint/image_train --array-cache build/checkpoint/arrays --dev DEV --image-references \
        --location-references --effects --out r.json

Scores: exact CRPS of the cumulative NET2 count from baseline to each visit (lesions; the NB2 law
of each model; the oracle's Bayes law), paired differences with SEs over the dev patients; log score
per observed lesion centre (last visit, nats) of the model's centre intensity vs uniform over the brain, and with
--location-references vs uniform white matter and the periventricular+proximity prior (paired over lesions).
"""

from __future__ import annotations

import argparse
import json
import pickle
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import roc_auc_score

from forecast.data import split_patients
from forecast.image_count import CENTRE_TRUNKS, COUNT_HEADS, COUNT_TERMS, COUNT_TRUNKS, ImageCountNet, collate, count_pmf, fit_image_count, logits_for
from forecast.image_count_data import IMAGE_CHANNELS, MASK_CHANNELS, load_arrays, visit_horizons
from mseval.io.cohort import read_cohort
from mseval.lesions.baseline_features import baseline_features
from mseval.metrics.calibration import crps_pmf, pit_uniformity, randomized_pit_pmf
from mseval.simulate.observable_oracle import cohort_observable_pmf
from mseval.stats.baseline_nb2 import BASELINE_FORMULA, fit_flexible_baseline, fit_nb2_baseline


MASK_INPUT = len(IMAGE_CHANNELS)
"""Index of the baseline T2 lesion mask among the inputs (IMAGE_CHANNELS + MASK_CHANNELS)."""


def predict(net: ImageCountNet, pats, zero=(), centres: bool = True) -> tuple[np.ndarray, ...]:
    """Per patient the NB2 means and dispersions (N, V); per observed centre (patients in order) the log score gain over
    uniform-in-brain, the raw log probability under the arm's centre law, the patient's index, and the log of the mass
    the patient's centre law puts outside the baseline T2 lesions' one-voxel margin (where new, not enlarging, lesions
    arise; `bench/location_references.py`): raw minus it is the law of a new lesion's centre given that it is new."""
    from bench.location_references import lesion_margin

    mus, als, ls, raw, who, lnew = [], [], [], [], [], []
    with torch.no_grad():
        for lo in range(0, len(pats), 16):
            b = collate(pats[lo: lo + 16], zero_channels=zero)
            m, a, lg = net(b["cond"], b["brain"], b["tab"], b["arm"], b["years"], centres=centres)
            mus.append(m.numpy()); als.append(a.numpy())
            if lg is None:
                continue
            lp = torch.log_softmax(logits_for(lg, b["arm"]).flatten(1), 1)
            for j, p in enumerate(pats[lo: lo + 16]):
                if len(p.centres):
                    idx = np.ravel_multi_index(np.asarray(p.centres).T, p.brain.shape)
                    ls.extend((lp[j, idx] + np.log(p.brain.sum())).tolist())
                    raw.extend(lp[j, idx].tolist())
                    who.extend([lo + j] * len(idx))
                    margin = lesion_margin(p.cond[MASK_INPUT]).ravel()
                    lnew.extend([float(torch.logsumexp(lp[j][torch.from_numpy(~margin)], 0))] * len(idx))
    return (np.concatenate(mus), np.concatenate(als), np.asarray(ls), np.asarray(raw), np.asarray(who, dtype=np.int64),
            np.asarray(lnew))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--train", required=True)
    ap.add_argument("--dev", required=True)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--hidden", type=int, default=12)
    ap.add_argument("--count-hidden", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--limit", type=int, default=0)
    ap.add_argument("--out", required=True)
    ap.add_argument("--cache", default="", help="pickle of the loaded arrays (made when absent)")
    ap.add_argument("--variants", default="model,no_images")
    ap.add_argument("--count-only", action="store_true", help="train and score the count pathway alone")
    ap.add_argument("--image-references", action="store_true",
                    help="add NB2 laws fitted on TRAIN's observed counts with fixed image summaries beside the baseline's features: "
                         "the FLAIR tail share (bench.readable_oracle.tail_share) and the untrained gated detectors' 8 log shares; and, as "
                         "ceilings of a perfect image reader in that law, the true log DAWM share (+ log1p pre-lesional sites) of oracle_inputs.csv")
    ap.add_argument("--location-references", action="store_true",
                    help="score the centre laws against uniform white matter and the periventricular+proximity prior "
                         "(bench/location_references.py; reads the DEV trial's truth-only tissue maps for the references)")
    ap.add_argument("--effects", action="store_true",
                    help="per-patient log rate ratios at the last visit (each arm vs the first) against the truth (truth.csv rate_ratio), "
                         "beside the NB2 baseline and the NB2 with arm:age fitted on TRAIN's observed counts (bench/effects_references.py)")
    ap.add_argument("--count-head", default="mlp", choices=COUNT_HEADS, help="forecast.image_count.COUNT_HEADS")
    ap.add_argument("--count-terms", default="linear", choices=COUNT_TERMS, help="the linear head's count-feature terms (forecast.image_count.COUNT_TERMS)")
    ap.add_argument("--centre-trunk", default="multiscale", choices=CENTRE_TRUNKS, help="the centre pathway's trunk (forecast.image_count.CENTRE_TRUNKS)")
    ap.add_argument("--count-trunk", default="conv", choices=COUNT_TRUNKS, help="the count pathway's detector maps (forecast.image_count.COUNT_TRUNKS)")
    ap.add_argument("--normalization", default="brain_z", choices=("brain_z", "n4_whitestripe"),
                    help="how the images are read (forecast.preprocess); give each its own --cache")
    ap.add_argument("--checkpoint", default="", help="score this image count checkpoint as the model; train its twin by its recipe")
    ap.add_argument("--array-cache", default="", help="forecast.image_count_cache folder (instead of the --cache pickle)")
    ap.add_argument("--mtr", action="store_true", help="add the cohorts' MTR map as an input channel (cohorts simulated with --mtr)")
    a = ap.parse_args()
    torch.set_num_threads(2)
    shipped = meta = None  # with --checkpoint: (net, metadata, digest) and the metadata
    if a.checkpoint:  # the recipe is the checkpoint's, not the command line's
        from forecast.image_count_checkpoint import load_image_count

        shipped = load_image_count(a.checkpoint)
        meta = shipped[1]
        a.epochs, a.seed = int(meta.provenance["epochs"]), int(meta.provenance["seed"])
        a.normalization, a.count_only, a.mtr = meta.normalization, False, False
    trains, dv = [read_cohort(t) for t in a.train.split(",")], read_cohort(a.dev)
    inputs = IMAGE_CHANNELS + MASK_CHANNELS + (("mtr",) if a.mtr else ())
    arms = list(trains[0].arms["arm"])
    cache = Path(a.out).with_suffix(".arrays.pkl") if not a.cache else Path(a.cache)
    train_p, val_p, dev_p, feat_tabs = [], [], None, []
    t0 = time.time()
    for k, tr in enumerate(trains):  # several training trials: more patients and more scanners
        ids = tr.patient_ids[: a.limit] if a.limit else tr.patient_ids
        arm_of = tr.manifest.set_index("patient_id")["arm"]
        fit_ids, val_ids = split_patients(ids, [arm_of[i] for i in ids], 0.1, a.seed if shipped is not None else 0)
        if shipped is not None and k == 0 and (sorted(val_ids) != sorted(meta.provenance["validation"])
                                               or sorted(fit_ids) != sorted(meta.provenance["train"])):
            raise SystemExit(f"{a.train}: not the split {a.checkpoint} trained on (its provenance's train/validation patients)")
        ck = cache if k == 0 else cache.with_name(f"{cache.stem}.{k}.pkl")
        if a.array_cache:
            kw = {"inputs": inputs, "normalization": a.normalization, "cache": a.array_cache, "workers": 2}
            tp, vp = load_arrays(tr, fit_ids, arms, **kw), load_arrays(tr, val_ids, arms, **kw)
            dp = load_arrays(dv, dv.patient_ids, arms, **kw) if k == 0 else None
        elif ck.is_file():
            tp, vp, dp = pickle.loads(ck.read_bytes())
        else:
            kw = {"inputs": inputs, "normalization": a.normalization}
            tp, vp = load_arrays(tr, fit_ids, arms, **kw), load_arrays(tr, val_ids, arms, **kw)
            dp = load_arrays(dv, dv.patient_ids, arms, **kw) if k == 0 else None
            ck.write_bytes(pickle.dumps((tp, vp, dp)))
        dev_p = dp if k == 0 else dev_p
        train_p, val_p = train_p + tp, val_p + vp
        amap = dict(zip(list(fit_ids) + list(val_ids), tp + vp))
        f = baseline_features(tr, ids, outcome=False)
        feat_tabs.append(f.assign(_arrays=[amap[i] for i in f.patient_id], _root=str(tr.root)))
    print(f"loaded {len(train_p)}+{len(val_p)} train ({len(trains)} trials), {len(dev_p)} dev in {time.time() - t0:.0f}s", flush=True)
    C = len(inputs)
    res: dict = {"n_train": len(train_p), "n_val": len(val_p), "n_dev": len(dev_p)}
    nets = {}
    variants = {"model": (), "no_images": tuple(j for j, c in enumerate(inputs) if c not in MASK_CHANNELS)}  # every image channel zeroed
    for name, zero in ((k, variants[k]) for k in a.variants.split(",")):
        if shipped is not None:
            if list(meta.inputs) != list(inputs) or list(meta.arms) != arms:
                raise SystemExit(f"{a.checkpoint}: inputs {meta.inputs} / arms {meta.arms} differ from the trial's")
            if name == "model":
                nets[name] = (shipped[0], zero)
                res["fit_model"] = meta.fit | {"checkpoint": shipped[2]}
                continue
            net = ImageCountNet(**meta.net)
        else:
            net = ImageCountNet(C, len(arms), hidden=a.hidden, count_hidden=a.count_hidden, count_trunk=a.count_trunk, count_head=a.count_head,
                                centre_trunk=a.centre_trunk, count_terms=a.count_terms)
        t0 = time.time()
        # a shipped checkpoint's twin is a count reference only: its count pathway is trained (the pathways share no
        # parameter, so the centre loss never reaches it), its centre pathway is not
        fit = fit_image_count(net, train_p, val_p, epochs=a.epochs, zero_channels=zero, seed=a.seed, lr=a.lr, centres=not a.count_only and shipped is None,
                              progress=lambda e, n, v: print(f"  {name} epoch {e}/{n} val {v:.3f} ({time.time() - t0:.0f}s)", flush=True))
        print(f"  {name}: count epoch {fit.best_count_epoch} ({fit.val_count_nll:.4f}), centre epoch {fit.best_centre_epoch} ({fit.val_centre_nll:.4f})", flush=True)
        res[f"fit_{name}"] = fit.to_dict() | {"seconds": time.time() - t0}
        nets[name] = (net, zero)
    visits = visit_horizons(dv)
    feats_tr = pd.concat(feat_tabs, ignore_index=True)
    feats_dv = baseline_features(dv, outcome=False)
    preds = {k: predict(n, dev_p, z, centres=not a.count_only and (shipped is None or k == "model")) for k, (n, z) in nets.items()}
    extra_terms: dict[str, str] = {}
    if a.image_references:  # fixed image summaries as NB2 covariates (fitted on observed counts only)
        from bench.readable_oracle import tail_share
        from bench.tail_reader_oos import detector_shares

        def summaries(ps: list) -> pd.DataFrame:
            d = detector_shares(ps)
            return pd.DataFrame({"img_tail": [tail_share(p) for p in ps], **{f"img_det{j}": d[:, j] for j in range(d.shape[1])}})

        def truth(tab: pd.DataFrame, roots: list) -> pd.DataFrame:  # a perfect reader's inputs (the simulator's, a ceiling)
            o = pd.concat([pd.read_csv(Path(r) / "oracle_inputs.csv").assign(_root=str(r)) for r in dict.fromkeys(roots)])
            o = o.set_index(["_root", "patient_id"]).loc[list(zip(roots, tab["patient_id"]))]
            return pd.DataFrame({"true_log_dawm": np.log(np.maximum(o["dawm_fraction"].to_numpy(float), 1e-4)),
                                 "true_sites": np.log1p(o["prelesional_sites"].to_numpy(float))})

        s_tr = summaries(list(feats_tr["_arrays"]))
        feats_tr = pd.concat([feats_tr.reset_index(drop=True), s_tr, truth(feats_tr.reset_index(drop=True), list(feats_tr["_root"]))], axis=1)
        feats_dv = feats_dv.reset_index(drop=True)
        feats_dv = pd.concat([feats_dv, summaries(dev_p), truth(feats_dv, [str(dv.root)] * len(feats_dv))], axis=1)
        extra_terms = {"nb2_tail": " + img_tail", "nb2_detectors": "".join(f" + img_det{j}" for j in range(8)),
                       "nb2_true_dawm": " + true_log_dawm", "nb2_true_both": " + true_log_dawm + true_sites"}
    rows = []
    for v, label in enumerate(visits):
        y = np.array([p.counts[v] for p in dev_p])
        ok = np.isfinite(y)
        ttab = feats_tr.assign(net2=[q.counts[v] for q in feats_tr["_arrays"]], followup_years=[q.years[v] for q in feats_tr["_arrays"]]).drop(columns="_arrays")
        ttab = ttab[np.isfinite(ttab["net2"])]
        dtab = feats_dv.assign(followup_years=[p.years[v] for p in dev_p])
        laws = {"nb2_baseline": fit_nb2_baseline(ttab, reference="placebo").pmf(dtab[ok]),
                "flexible_baseline": fit_flexible_baseline(ttab).pmf(dtab[ok])}  # reference (v): the count features, flexibly
        for k, terms in extra_terms.items():
            laws[k] = fit_nb2_baseline(ttab, formula=BASELINE_FORMULA + terms, reference="placebo").pmf(dtab[ok])
        orc = cohort_observable_pmf(dv.root, dtab[ok].assign(gd_count=dtab.loc[ok, "gd_count"]))
        if orc is not None:
            laws["oracle"] = orc
        for k, (m, al, *_) in preds.items():
            laws[k] = count_pmf(m[ok, v], al[ok, v])
        sc = {k: crps_pmf(p, y[ok].astype(int)) for k, p in laws.items()}
        row = {"visit": label, "n": int(ok.sum())} | {f"crps_{k}": float(s.mean()) for k, s in sc.items()}
        for k, p in laws.items():  # calibration: randomised PIT of the observed count under each law (KS and chi-square p)
            t = pit_uniformity(randomized_pit_pmf(p, y[ok].astype(int), seed=v))
            row |= {f"pit_ks_p_{k}": t.ks_p, f"pit_chi2_p_{k}": t.chi2_p}
        active = y[ok] > 0
        if 0 < active.sum() < active.size:  # P(active) AUC: 1 - P(0 lesions) of each law against observed activity
            row |= {f"auc_{k}": float(roc_auc_score(active, 1.0 - np.asarray(p)[:, 0])) for k, p in laws.items()}
        for k in ("model", "no_images", "oracle", "flexible_baseline", *extra_terms):
            if k in sc:
                d = sc[k] - sc["nb2_baseline"]
                row[f"{k}_minus_nb2"] = float(d.mean()); row[f"{k}_minus_nb2_se"] = float(d.std(ddof=1) / np.sqrt(len(d)))
        if "model" in sc and "no_images" in sc:
            d = sc["model"] - sc["no_images"]
            row["model_minus_no_images"] = float(d.mean()); row["model_minus_no_images_se"] = float(d.std(ddof=1) / np.sqrt(len(d)))
        if "model" in sc and "oracle" in sc:  # the acceptance's share of the NB2-to-oracle gap closed
            row["model_share_of_gap"] = float((sc["model"].mean() - sc["nb2_baseline"].mean()) / (sc["oracle"].mean() - sc["nb2_baseline"].mean()))
        rows.append(row)
        print(row, flush=True)
    res["count"] = rows
    res["location_gain_vs_uniform_nats"] = {k: float(p[2].mean()) for k, p in preds.items() if len(p[2])}
    print(res["location_gain_vs_uniform_nats"])
    if a.location_references and any(len(p[3]) for p in preds.values()):
        from bench.location_references import location_table, mixed_model_log, reference_logs

        who = next(p[4] for p in preds.values() if len(p[4]))
        refs: dict[str, list] = {}
        for i in np.unique(who):
            r = reference_logs(dv.root, dv.patient_ids[i], dev_p[i].centres, dev_p[i].brain)
            for k, v in r.items():
                refs.setdefault(k, []).append(v)
        refs_a = {k: np.concatenate(v) for k, v in refs.items()}
        n_brain = np.array([dev_p[i].brain.sum() for i in who], dtype=np.float64)
        res["location"] = location_table({k: mixed_model_log(p[3], n_brain) for k, p in preds.items() if len(p[3])}, refs_a, list(who),
                                         conditional={k: mixed_model_log(p[3] - p[5], n_brain) for k, p in preds.items() if len(p[3])})
        # the share of centres each law puts in the margin, weighting each patient by its observed centres (as the observed share does)
        res["location"]["predicted_enlarging_share"] = {k: float(np.mean(1.0 - np.exp(p[5]))) for k, p in preds.items() if len(p[3])}
        res["location"]["observed_enlarging_share"] = float(np.mean(refs_a["enlarging"]))
        print(json.dumps(res["location"], indent=1), flush=True)
    if a.effects:
        from bench.effects_references import effect_accuracy, model_log_means, model_log_rate_ratios, nb2_log_rate_ratios, population_ratios

        last = len(visits) - 1
        ttab = feats_tr.assign(net2=[q.counts[last] for q in feats_tr["_arrays"]], followup_years=[q.years[last] for q in feats_tr["_arrays"]])
        ttab = ttab.drop(columns="_arrays")[lambda d: np.isfinite(d["net2"])]
        dtab = feats_dv.assign(followup_years=[p.years[last] for p in dev_p])
        preds_lrr = {k: model_log_rate_ratios(n, dev_p, arms, dv.patient_ids, zero=z) for k, (n, z) in nets.items()}
        preds_lrr |= {"nb2_baseline": nb2_log_rate_ratios(ttab, dtab, arms, BASELINE_FORMULA),
                      "nb2_arm_age": nb2_log_rate_ratios(ttab, dtab, arms, BASELINE_FORMULA + " + arm:age")}
        res["effects"] = effect_accuracy(preds_lrr, dv.root, arms[0])
        res["population_ratios"] = {k: population_ratios(model_log_means(n, dev_p, arms, dv.patient_ids, zero=z).assign(mu=lambda x: np.exp(x["log_mu"])),
                                                         dv.root, arms[0]) for k, (n, z) in nets.items()}
        print(json.dumps(res["population_ratios"], indent=1), flush=True)
        print(json.dumps(res["effects"], indent=1), flush=True)
    with open(a.out, "w") as f:
        json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
