"""`mseval forecast image-train` / `image-laws` on the 20^3 three-visit cohort: a checkpoint from observed outcomes, the
law table's estimands and contrasts, and one clean line (exit 2) for each input the checkpoint cannot take."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mseval.io.cohort import read_cohort

from forecast.image_count_pipeline import LAW_COLUMNS


@pytest.fixture(scope="module")
def trained(visits_cohort: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from mseval.cli import main

    out = tmp_path_factory.mktemp("icli") / "ckpt"
    assert main(["forecast", "image-train", str(visits_cohort), "--out", str(out), "--epochs", "2", "--hidden", "4", "--count-hidden", "3",
                 "--count-trunk", "gated", "--seed", "4", "--val-fraction", "0.5"]) == 0
    return out


def test_train_then_laws(cli, trained: Path, visits_cohort: Path, tmp_path: Path) -> None:
    assert (trained / "image_count.json").is_file() and (trained / "weights.pt").is_file()
    from forecast.image_count import multiscale_geometry
    from forecast.image_count_checkpoint import load_image_count
    from forecast.image_count_data import cohort_spacing

    net, meta, _ = load_image_count(trained)  # the grid in mm is recorded, and the trunk's scales are set from it
    spacing = cohort_spacing(read_cohort(visits_cohort), read_cohort(visits_cohort).patient_ids[0])
    assert meta.spacing == spacing and meta.min_distance_mm == 22.0
    assert {k: meta.net[k] for k in ("sigmas", "margin")} == multiscale_geometry(spacing)
    r = cli("forecast", "image-laws", visits_cohort, trained, "--out", tmp_path / "laws.csv", "--reference-arm", "placebo")
    assert r.code == 0, r.err
    assert "no training uncertainty" in r.out
    t = pd.read_csv(tmp_path / "laws.csv")
    assert tuple(t.columns) == LAW_COLUMNS and len(t) == 12 * 6 * 3 and t["estimable"].all()
    assert (t["reference_arm"] == "placebo").all() and np.allclose(t.loc[t["arm"] == "placebo", "log_rate_ratio"], 0.0)
    g = t.sort_values("scheduled_weeks").groupby(["patient_id", "arm"])
    assert (g["expected_net2"].diff().dropna() >= 0).all()  # cumulative counts never decrease over the schedule
    a, m = t["dispersion"], t["expected_net2"]
    assert np.allclose(t["p_active"], 1 - (1 + a * m) ** (-1 / a))
    pla = t[t["arm"] == "placebo"].set_index(["patient_id", "visit"])["expected_net2"]
    for arm, d in t[t["arm"] != "placebo"].groupby("arm"):  # the contrast is the patient's own mean ratio
        d = d.set_index(["patient_id", "visit"])
        assert np.allclose(d["log_rate_ratio"], np.log(d["expected_net2"] / pla.loc[d.index]), atol=1e-5), arm
    assert t.groupby("arm")["log_rate_ratio"].mean().abs().max() > 1e-6  # the arm reaches the law


def test_bad_inputs_one_line_exit_2(cli, trained: Path, visits_cohort: Path, tiny_cohort: Path, tmp_path: Path) -> None:
    out = tmp_path / "laws.csv"
    bad = tmp_path / "bad"
    shutil.copytree(visits_cohort, bad)
    v = pd.read_csv(bad / "visits.csv")
    v.loc[v["visit"] == "w96", "scheduled_weeks"] = 104.0
    v.to_csv(bad / "visits.csv", index=False)
    cases = [
        (("forecast", "image-laws", tiny_cohort, trained, "--out", out), "shape"),  # a 32^3 single-visit cohort
        (("forecast", "image-laws", bad, trained, "--out", out), "week 104"),
        (("forecast", "image-laws", visits_cohort, tmp_path / "nothing", "--out", out), "not found"),
        (("forecast", "image-laws", visits_cohort, trained, "--out", out, "--reference-arm", "x"), "never seen"),
        (("forecast", "image-train", visits_cohort, "--out", tmp_path / "c", "--count-head", "gam"), "choose one of"),
        (("forecast", "image-train", visits_cohort, "--out", tmp_path / "c", "--count-terms", "spline"), "choose one of"),
        (("forecast", "image-train", visits_cohort, "--out", tmp_path / "c", "--count-terms", "flexible"), "--count-head linear"),
        (("forecast", "image-train", visits_cohort, "--out", tmp_path / "c", "--val-fraction", "1"), "strictly between"),
    ]
    for args, message in cases:
        r = cli(*args)
        assert r.code == 2 and message in r.err and len(r.err.strip().splitlines()) == 1 and "Traceback" not in r.err, (message, r.err)
    assert not out.exists() and not (tmp_path / "c").exists()
    mixed = tmp_path / "mixed"  # one patient on another voxel size: refused at training, naming the row
    shutil.copytree(visits_cohort, mixed)
    import nibabel as nib

    pid = pd.read_csv(mixed / "manifest.csv")["patient_id"].iloc[2]
    for path in (mixed / "images" / pid).rglob("*.nii.gz"):  # every file of the patient, so that its own files agree
        img = nib.load(path)
        nib.save(nib.Nifti1Image(np.asarray(img.dataobj), img.affine @ np.diag([1.5, 1.5, 1.5, 1.0])), path)
    r = cli("forecast", "image-train", mixed, "--out", tmp_path / "m", "--epochs", "1", "--val-fraction", "0.5")
    assert r.code == 2 and "one voxel size" in r.err and "row 3" in r.err and len(r.err.strip().splitlines()) == 1, r.err
    assert not (tmp_path / "m" / "image_count.json").exists()
    stale = tmp_path / "stale"  # a stopped run's folder whose training state is not one this run can resume
    stale.mkdir()
    (stale / "training_state.pt").write_bytes(b"garbage")
    r = cli("forecast", "image-train", visits_cohort, "--out", stale, "--epochs", "1", "--hidden", "2", "--count-hidden", "2", "--val-fraction", "0.5")
    assert r.code == 2 and "training_state.pt" in r.err and "not a readable training state" in r.err and len(r.err.strip().splitlines()) == 1
    assert not (stale / "image_count.json").exists()


def test_sampled_trajectories_are_coherent_and_order_free(cli, trained: Path, visits_cohort: Path, tmp_path: Path) -> None:
    """Each member's counts never decrease, its lesions present at a visit are those born by then, and a patient's
    members are the same when sampled alone (seeds from names, not order)."""
    from forecast.image_count_pipeline import forecast_trajectories

    r = cli("forecast", "image-sample", visits_cohort, trained, "--out", tmp_path / "s", "--samples", "6", "--seed", "9")
    assert r.code == 0, r.err
    counts, lesions = pd.read_csv(tmp_path / "s" / "counts.csv"), pd.read_csv(tmp_path / "s" / "lesions.csv")
    assert len(counts) == 12 * 6 * 6 * 3
    order = {"w24": 0, "w48": 1, "w96": 2}
    for (pid, arm, m), c in counts.groupby(["patient_id", "arm", "member"]):
        c = c.sort_values("scheduled_weeks")
        assert (np.diff(c["net2"]) >= 0).all()
        born = lesions[(lesions.patient_id == pid) & (lesions.arm == arm) & (lesions.member == m)]["birth_visit"].map(order)
        assert [int((born <= v).sum()) for v in range(3)] == c["placed"].tolist()
    two, two_lesions = forecast_trajectories(visits_cohort, trained, samples=6, seed=9, workers=2)  # read in two processes, 16 at a time
    assert two.equals(counts) and two_lesions.equals(lesions)
    pid = counts["patient_id"].iloc[-1]
    alone, _ = forecast_trajectories(visits_cohort, trained, samples=6, seed=9, patients=[pid])
    assert alone.reset_index(drop=True).equals(counts[counts.patient_id == pid].reset_index(drop=True))
    assert counts["net2"].sum() > 0 and len(lesions) > 0


def test_a_boundary_rate_ratio_is_flagged_not_printed(visits_cohort: Path, tmp_path: Path) -> None:
    """A log-linear count law whose dmf term is 30 nats down (what an arm without a training lesion drives such a head
    to; on 12 training patients the fitted head does it by itself): dmf's rows keep their law (expected count,
    dispersion, P(active)) but their rate ratio, e^-30, is outside [0.001, 1000]: estimable False, the ratio empty, a
    note naming the rule; every other arm is estimable."""
    import math

    import torch

    from forecast.image_count import ImageCountNet
    from forecast.image_count_checkpoint import save_image_count
    from forecast.image_count_data import IMAGE_CHANNELS, MASK_CHANNELS, visit_schedule
    from forecast.image_count_pipeline import forecast_laws

    c = read_cohort(visits_cohort)
    arms, (visits, weeks) = list(c.arms["arm"]), visit_schedule(c)
    net = ImageCountNet(7, len(arms), len(visits), hidden=2, count_hidden=2, count_trunk="gated", count_head="linear", arm_age=False)
    with torch.no_grad():
        net.count.slope.weight.zero_()
        net.count.slope.weight[0, -len(arms) + arms.index("dmf")] = -30.0
        net.count.intercept.fill_(math.log(5.0))
    save_image_count(tmp_path / "edge", net, inputs=IMAGE_CHANNELS + MASK_CHANNELS, normalization="brain_z", arms=arms, visits=visits,
                     weeks=weeks, shape=(20, 20, 20))
    t = forecast_laws(visits_cohort, tmp_path / "edge", reference_arm="placebo")
    dmf, rest = t[t["arm"] == "dmf"], t[t["arm"] != "dmf"]
    assert not dmf["estimable"].any() and dmf["log_rate_ratio"].isna().all() and (dmf["expected_net2"] > 0).all()
    assert dmf["note"].str.contains("below 0.001").all() and rest["estimable"].all()
    assert np.allclose(rest["log_rate_ratio"], 0.0)


def lesions_checkpoint(folder: Path) -> str:
    return str(pd.read_csv(folder / "counts.csv")["checkpoint"].iloc[0])


def test_sampled_centres_keep_the_distance_in_mm(cli, trained: Path, visits_cohort: Path, tmp_path: Path) -> None:
    """A member's lesion centres are at least --min-distance-mm apart (Chebyshev, in mm on the cohort's anisotropic
    voxels; default the checkpoint's 22 mm), and the distance changes the samples (at the default some pair is closer than
    the larger distance allows)."""
    from itertools import combinations

    from forecast.image_count_data import cohort_spacing

    spacing = np.array(cohort_spacing(read_cohort(visits_cohort), read_cohort(visits_cohort).patient_ids[0]))
    closest = {}
    (tmp_path / "sNone").mkdir()  # a folder an earlier sampling by another checkpoint left its provenance in: replaced
    (tmp_path / "sNone" / "provenance.json").write_text('{"format": "mseval-forecast-provenance", "checkpoints": {"0123456789ab": {}}}')
    for d in (None, 45.0):
        out = tmp_path / f"s{d}"
        r = cli("forecast", "image-sample", visits_cohort, trained, "--out", out, "--samples", "3", "--seed", "2",
                *(() if d is None else ("--min-distance-mm", str(d))))
        assert r.code == 0, r.err
        lesions = pd.read_csv(out / "lesions.csv")
        gaps = [np.abs(a - b).max() for _, m in lesions.groupby(["patient_id", "arm", "member"])
                for a, b in combinations(m[["x", "y", "z"]].to_numpy() * spacing, 2)]
        closest[d] = min(gaps)
        assert list(json.loads((out / "provenance.json").read_text())["checkpoints"]) == [str(lesions_checkpoint(out))]
    assert 22.0 <= closest[None] < 45.0 <= closest[45.0], closest
    r = cli("forecast", "image-sample", visits_cohort, trained, "--out", tmp_path / "neg", "--min-distance-mm", "-1")
    assert r.code == 2 and "min-distance-mm" in r.err and not (tmp_path / "neg").exists()


def test_a_degenerate_count_law_is_flagged_not_printed(cli, trained: Path, visits_cohort: Path, tmp_path: Path) -> None:
    """A count law with absurd rates (the head's interval biases pushed up by 30 nats, and no rate bounds): the law table
    keeps its rows with estimable False, a note and no numbers; sampling stops with one line naming the checkpoint's
    weights. With the bounds training set, the same push is held near the training range."""
    import torch

    from forecast.image_count_checkpoint import load_image_count, save_image_count

    net, meta, _ = load_image_count(trained)
    with torch.no_grad():
        net.count[-1].bias[: net.n_intervals] += 30.0
    # with the rate bounds set at training, the same push stays within e^1 of the training range: estimable
    save_image_count(tmp_path / "bounded", net, inputs=meta.inputs, normalization=meta.normalization, arms=meta.arms, visits=meta.visits,
                     weeks=meta.weeks, shape=meta.shape)
    r = cli("forecast", "image-laws", visits_cohort, tmp_path / "bounded", "--out", tmp_path / "bounded.csv")
    assert r.code == 0 and pd.read_csv(tmp_path / "bounded.csv")["estimable"].all(), r.err
    with torch.no_grad():  # without them (a checkpoint saved before the bounds existed): degenerate
        net.rate_lo.fill_(-float("inf"))
        net.rate_hi.fill_(float("inf"))
    save_image_count(tmp_path / "deg", net, inputs=meta.inputs, normalization=meta.normalization, arms=meta.arms, visits=meta.visits,
                     weeks=meta.weeks, shape=meta.shape)
    r = cli("forecast", "image-laws", visits_cohort, tmp_path / "deg", "--out", tmp_path / "laws.csv")
    assert r.code == 0, r.err
    t = pd.read_csv(tmp_path / "laws.csv")
    assert not t["estimable"].any() and t["expected_net2"].isna().all() and t["note"].str.contains("not estimable").all()
    r = cli("forecast", "image-sample", visits_cohort, tmp_path / "deg", "--out", tmp_path / "s")
    assert r.code == 2 and "degenerate" in r.err and "weights.pt" in r.err and len(r.err.strip().splitlines()) == 1
    assert not (tmp_path / "s").exists()


@pytest.fixture(scope="module")
def sampled(trained: Path, visits_cohort: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three members per patient and arm from `image-sample`, kept for two patients x two arms (plain CSV tables)."""
    from mseval.cli import main

    root = tmp_path_factory.mktemp("sampled")
    assert main(["forecast", "image-sample", str(visits_cohort), str(trained), "--out", str(root / "all"), "--samples", "3", "--seed", "2"]) == 0
    (root / "s").mkdir()
    for name in ("counts.csv", "lesions.csv"):
        t = pd.read_csv(root / "all" / name)
        t[t["patient_id"].isin(["P001", "P002"]) & t["arm"].isin(["placebo", "dmf"])].to_csv(root / "s" / name, index=False)
    shutil.copy(root / "all" / "provenance.json", root / "s" / "provenance.json")
    return root / "s"


def test_rendered_trajectories_are_nested_batch_free_and_resume(cli, sampled: Path, renderer: Path, visits_cohort: Path, tmp_path: Path) -> None:
    """One store per visit; each member's W24 mask lies inside its W48 mask, inside its W96 mask; the lesion table's
    volumes are the W96 mask's claimed voxels; the masks do not depend on the batch size; a second run over a finished
    folder rewrites nothing."""
    from mseval.io.store import ForecastStore

    run = ("forecast", "image-render", visits_cohort, sampled, "--renderer", renderer, "--mask-threshold", "0.9", "--steps", "1")
    r = cli(*run, "--out", tmp_path / "r", "--batch-size", "2", "--prob")
    assert r.code == 0, r.err
    assert "lesions rendered" in r.out
    assert cli(*run, "--out", tmp_path / "r8", "--batch-size", "8").code == 0
    lesions = pd.read_csv(tmp_path / "r" / "lesions.csv")
    keys = ["patient_id", "arm", "member", "lesion"]
    drawn = pd.read_csv(sampled / "lesions.csv").sort_values(keys).reset_index(drop=True)
    assert len(lesions) == len(drawn) > 0 and lesions[keys + ["x", "y", "z"]].equals(drawn[keys + ["x", "y", "z"]])
    stores = {v: ForecastStore.open(tmp_path / "r" / v) for v in ("w24", "w48", "w96")}
    other = ForecastStore.open(tmp_path / "r8" / "w96")
    assert len(stores["w96"].keys()) == 4
    for key in stores["w96"].keys():
        m = [stores[v].block(*key).masks()[0].astype(bool) for v in ("w24", "w48", "w96")]
        assert (m[0] <= m[1]).all() and (m[1] <= m[2]).all()
        assert np.array_equal(m[2], other.block(*key).masks()[0].astype(bool))  # batch size 2 or 8: the same members
        prob = stores["w96"].block(*key).prob()[0]  # --prob: the last visit keeps the rendered probabilities
        assert prob.shape == m[2].shape and (m[2] <= (prob > 0.9)).all() and 0 < m[2].mean() < 0.5
        vox = float(abs(np.linalg.det(stores["w96"].block(*key).masks()[1][:3, :3])))
        own = lesions[(lesions.patient_id == key[0]) & (lesions.arm == key[1])].groupby("member")["volume_mm3"].sum()
        assert np.allclose([m[2][k].sum() * vox for k in range(3)], [own.get(k, 0.0) for k in range(3)])
    from mseval.provenance import forecast_provenance

    # each store names both models behind its masks: the forecaster (trained on this very cohort: not held-out) and the decoder
    prov = {p["checkpoint"]: p for p in forecast_provenance(visits_cohort, tmp_path / "r" / "w96")["checkpoints"]}
    trajectories = str(pd.read_csv(sampled / "counts.csv")["checkpoint"].iloc[0])
    assert set(prov) == {trajectories, stores["w96"].index()["checkpoint"].iloc[0]}
    assert prov[trajectories]["status"] in ("in-sample", "validation", "mixed") and prov[trajectories]["n_trained_on"] > 0
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "r").rglob("*.nii.gz")}
    assert before and cli(*run, "--out", tmp_path / "r").code == 0
    assert pd.read_csv(tmp_path / "r" / "lesions.csv").equals(lesions)
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "r").rglob("*.nii.gz")} == before


def test_render_refuses_bad_inputs_in_one_line(cli, sampled: Path, renderer: Path, visits_cohort: Path, tmp_path: Path) -> None:
    from forecast.release import SHIPPED_CHECKPOINT

    bad = tmp_path / "bad"
    shutil.copytree(sampled, bad)
    t = pd.read_csv(bad / "lesions.csv")
    t.loc[0, "birth_visit"] = "w12"
    t.to_csv(bad / "lesions.csv", index=False)
    far = tmp_path / "far"
    shutil.copytree(sampled, far)
    t2 = pd.read_csv(far / "lesions.csv")
    t2.loc[0, "x"] = 999
    t2.to_csv(far / "lesions.csv", index=False)
    neg = tmp_path / "neg"
    shutil.copytree(sampled, neg)
    t2.loc[0, "x"] = -1
    t2.to_csv(neg / "lesions.csv", index=False)
    cases = [
        ((visits_cohort, bad, "--renderer", renderer), "lesions.csv"),
        ((visits_cohort, far, "--renderer", renderer), "outside"),
        ((visits_cohort, neg, "--renderer", renderer), "non-negative integer"),
        ((visits_cohort, tmp_path / "none", "--renderer", renderer), "image-sample"),
        ((visits_cohort, sampled, "--renderer", SHIPPED_CHECKPOINT), "shape"),  # a 32^3 decoder, a 20^3 cohort
        ((visits_cohort, sampled, "--renderer", renderer, "--mask-threshold", "1.5"), "strictly between"),
    ]
    for args, message in cases:
        r = cli("forecast", "image-render", *args, "--out", tmp_path / "o")
        assert r.code == 2 and message in r.err and len(r.err.strip().splitlines()) == 1 and "Traceback" not in r.err, (message, r.err)
    assert not (tmp_path / "o").exists()


def test_render_labels_reach_the_decoder_and_none_is_arm_blind(cli, sampled: Path, renderer: Path, visits_cohort: Path, tmp_path: Path) -> None:
    """The same members (centres, births and seeds) listed under two arms: with --labels none the rendered probabilities
    are the same under both (the arm cannot reach the shapes; up to float rounding); with the default arm-count labels
    they differ by far more."""
    from mseval.io.store import ForecastStore

    twin = tmp_path / "twin"
    twin.mkdir()
    for name in ("counts.csv", "lesions.csv"):
        t = pd.read_csv(sampled / name)
        t = t[(t["patient_id"] == "P001") & (t["arm"] == "placebo")]
        pd.concat([t, t.assign(arm="dmf")]).to_csv(twin / name, index=False)
    masks = {}
    for labels in ("none", "arm-count"):
        out = tmp_path / labels
        r = cli("forecast", "image-render", visits_cohort, twin, "--renderer", renderer, "--out", out, "--labels", labels, "--prob", "--steps", "1")
        assert r.code == 0, r.err
        store = ForecastStore.open(out / "w96")
        masks[labels] = [store.block("P001", arm).prob()[0] for arm in ("placebo", "dmf")]  # the rendered probabilities
        assert store.block("P001", "dmf").sampler["labels"] == labels
    # the same up to float rounding: both arms share one network batch, where a member's row changes the last bits (3.7e-6)
    assert np.abs(masks["none"][0] - masks["none"][1]).max() < 1e-5
    assert np.abs(masks["arm-count"][0] - masks["arm-count"][1]).max() > 1e-4


def test_an_interrupted_render_resumes_to_the_uninterrupted_result(sampled: Path, renderer: Path, visits_cohort: Path, tmp_path: Path) -> None:
    """Stopped after its first (patient, arm) block, a render started again over the same folder skips that block and
    ends with the masks and lesion table of a run that was never stopped."""
    from forecast.image_count_render import render_trajectories
    from mseval.io.store import ForecastStore

    settings = {"steps": 1, "threshold": 0.9}

    def stop(done: int, _total: int) -> None:
        if done == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        render_trajectories(visits_cohort, sampled, renderer, tmp_path / "a", **settings, progress=stop)
    assert len(ForecastStore.open(tmp_path / "a" / "w96").keys()) == 1
    seen = []
    resumed = render_trajectories(visits_cohort, sampled, renderer, tmp_path / "a", **settings, progress=lambda d, n: seen.append(n))
    assert seen[-1] == 3  # the finished block is skipped
    straight = render_trajectories(visits_cohort, sampled, renderer, tmp_path / "b", **settings)
    assert resumed.equals(straight)
    for v in ("w24", "w48", "w96"):
        a, b = ForecastStore.open(tmp_path / "a" / v), ForecastStore.open(tmp_path / "b" / v)
        assert a.keys() == b.keys() and all(np.array_equal(a.block(*k).masks()[0], b.block(*k).masks()[0]) for k in a.keys())


def test_flexible_count_terms_from_the_command_line(cli, visits_cohort: Path, tmp_path: Path) -> None:
    """`--count-head linear --count-terms flexible` reaches the checkpoint (its architecture and its description) and the
    law table, whose dispersion then comes from a model over the arm and the counts (one value per patient and arm)."""
    from forecast.image_count_checkpoint import load_image_count

    out = tmp_path / "flex"
    r = cli("forecast", "image-train", visits_cohort, "--out", out, "--epochs", "1", "--hidden", "2", "--count-hidden", "2",
            "--count-trunk", "gated", "--count-head", "linear", "--count-terms", "flexible", "--seed", "4", "--val-fraction", "0.5")
    assert r.code == 0, r.err
    assert "quadratic count terms and a dispersion model" in r.out
    assert load_image_count(out)[1].net["count_terms"] == "flexible"
    r = cli("forecast", "image-laws", visits_cohort, out, "--out", tmp_path / "laws.csv")
    assert r.code == 0, r.err
    t = pd.read_csv(tmp_path / "laws.csv")
    assert t["dispersion"].nunique() > 1
