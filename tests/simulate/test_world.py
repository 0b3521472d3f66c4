"""The multi-visit world (issue 20): visits add up, masks follow the NET2 rule, dropout is absent
(never zero), knobs are checked, the cohort is byte-identical per seed for any worker count."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from mseval.lesions.components import count_lesions
from mseval.lesions.net2 import Net2Rule, net2_from_visits
from mseval.simulate.arms import DEFAULT_ARMS
from mseval.simulate.counts_only import simulate_count_trial
from mseval.simulate.model import TrialConfig
from mseval.simulate.trial import simulate_trial

CFG = TrialConfig(patients_per_arm=2, shape=(32, 32, 32), seed=23)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("world") / "c"
    simulate_trial(out, CFG)
    return out


def _load(root: Path, rel: str) -> np.ndarray:
    return np.asarray(nib.load(root / rel).dataobj)


def test_expected_counts_of_the_intervals_add_up_to_the_cumulative_count(world: Path) -> None:
    tv = pd.read_csv(world / "truth_visits.csv")
    for (_, _), g in tv.groupby(["patient_id", "arm"]):
        g = g.sort_values("visit_index")
        assert np.allclose(g["expected_count"].cumsum().to_numpy(), g["expected_cumulative_count"].to_numpy(), rtol=1e-12)
    truth = pd.read_csv(world / "truth.csv")
    last = tv[tv["visit"] == "w96"].set_index(["patient_id", "arm"])["expected_cumulative_count"]
    for r in truth.itertuples():  # no dropout: the manifest's follow-up is the last visit
        assert r.expected_count == pytest.approx(last[(r.patient_id, r.arm)], rel=1e-12)


def test_net2_masks_per_interval_agree_with_the_cumulative_mask_and_the_net2_rule(world: Path) -> None:
    visits = pd.read_csv(world / "visits.csv", keep_default_na=False)
    tv = pd.read_csv(world / "truth_visits.csv")
    rule = Net2Rule(min_volume_mm3=0.0)
    checked = 0
    for pid, g in visits.groupby("patient_id"):
        g = g.sort_values("visit_index")
        base = _load(world, g.iloc[0]["t2_lesion_mask"])
        union = np.zeros_like(base)
        prev = base
        for r in g.iloc[1:].itertuples():
            affine = nib.load(world / r.net2_mask).affine
            t2k, interval, cum = (_load(world, x) for x in (r.t2_lesion_mask, r.net2_mask, r.net2_mask_cumulative))
            union |= interval
            assert np.array_equal(union, cum)  # the interval masks make up the cumulative one
            assert np.array_equal(net2_from_visits(base, t2k, affine, rule).mask, cum)  # the NET2 rule vs baseline
            assert np.array_equal(net2_from_visits(prev, t2k, affine, rule).mask, interval)  # ... vs the previous scan
            n = count_lesions(interval, affine, connectivity=26, min_volume_mm3=0.0).count
            want = tv[(tv.patient_id == pid) & (tv.visit == r.visit) & tv.allocated]["realized_count"].iloc[0]
            assert n == want
            prev = t2k
            checked += 1
    assert checked == 3 * len(visits["patient_id"].unique())


def test_the_cohort_is_byte_identical_for_a_seed_and_any_worker_count(world: Path, tmp_path: Path) -> None:
    other = tmp_path / "c2"
    simulate_trial(other, CFG, workers=2)

    def digest(root: Path) -> dict[str, str]:
        return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}

    assert digest(world) == digest(other)


def test_dropout_leaves_visits_absent_never_zero(tmp_path: Path) -> None:
    cfg = replace(CFG, patients_per_arm=3, dropout_per_year=0.9, missed_visit=0.2, seed=5)
    simulate_trial(tmp_path / "c", cfg)
    visits = pd.read_csv(tmp_path / "c" / "visits.csv", keep_default_na=False)
    gone = visits[visits["missing"] != ""]
    assert {"dropout"} <= set(gone["missing"])
    assert (gone["net2_mask"] == "").all() and (gone["weeks"] == "").all()
    tv = pd.read_csv(tmp_path / "c" / "truth_visits.csv")
    miss = tv.merge(gone[["patient_id", "visit"]], on=["patient_id", "visit"])
    assert miss[miss["allocated"]]["realized_count"].isna().all()  # absent, not 0
    manifest = pd.read_csv(tmp_path / "c" / "manifest.csv")
    obs = visits[(visits["missing"] == "") & (visits["visit_index"] > 0)].groupby("patient_id")["weeks"].last().astype(float)
    for r in manifest.itertuples():
        if r.patient_id in obs.index:
            assert r.followup_weeks == obs[r.patient_id]


@pytest.mark.parametrize("kw, match", [
    ({"visits": (48.0, 24.0)}, "increasing"),
    ({"visits": (-4.0, 24.0)}, "positive"),
    ({"dawm_strength": -1.0}, "dawm_strength"),
    ({"dawm_contrast": 11.0}, "dawm_contrast"),
    ({"dropout_per_year": 1.0}, r"\[0, 1\)"),
    ({"missed_visit": -0.1}, r"\[0, 1\)"),
])
def test_bad_knobs_are_refused(kw: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        TrialConfig(**kw)


def test_size_multiplier_scales_new_lesion_volume_on_its_arm() -> None:
    """The arm's size multiplier scales the radius of its new lesions by mult^(1/3) (volume x mult);
    the bench (bench/world_realism.py) measures the realised volume ratio at 96 x 114 x 96."""
    from mseval.simulate.trial import new_lesion_radius_mm

    spec = replace(DEFAULT_ARMS[-1], size_multiplier=0.7)
    assert new_lesion_radius_mm(CFG, spec) ** 3 == pytest.approx(0.7 * CFG.new_radius_mm ** 3)


def test_image_knobs_at_zero_leave_no_pre_lesional_sites_and_uninformative_dawm() -> None:
    """prelesion_fraction 0: no visible sites; dawm_strength 0: the DAWM share is independent of the
    activity (correlation within 4 SE of 0 over 1,800 patients), while on it rises with it."""
    on = simulate_count_trial(TrialConfig(patients_per_arm=300, seed=3), samples=1).table
    off = simulate_count_trial(replace(TrialConfig(patients_per_arm=300, seed=3), prelesion_fraction=0.0, dawm_strength=0.0), samples=1).table
    assert (off["prelesional_sites"] == 0).all() and (on["prelesional_sites"] > 0).mean() > 0.2

    def corr(t: pd.DataFrame) -> float:
        return float(np.corrcoef(np.log(t["dawm_fraction"]), np.log1p(t["net2"] / t["followup_years"]))[0, 1])

    assert corr(on) > 0.15
    assert abs(corr(off)) < 4 / np.sqrt(len(off))


def test_dawm_contrast_scales_the_dawm_rendering_only() -> None:
    """`dawm_contrast` multiplies the DAWM's intensity change on every sequence (noiseless images: FLAIR inside the DAWM
    rises by about k x the 1x change over the white matter around it, before partial-volume smoothing); 1 is
    `synthesize_mri`'s own default (bit-identical); the DAWM mask and everything else are untouched."""
    from mseval.simulate.anatomy import make_anatomy
    from mseval.simulate.mri import synthesize_mri

    anat = make_anatomy((32, 32, 32))
    wm = anat.wm_mask.astype(bool)
    dawm = np.zeros(wm.shape, np.uint8)
    idx = np.argwhere(wm)
    c = idx[len(idx) // 2]
    dawm[c[0] - 2:c[0] + 3, c[1] - 2:c[1] + 3, c[2] - 2:c[2] + 3] = 1
    dawm[~wm] = 0
    zero = np.zeros(wm.shape, np.uint8)

    def flair(k: float | None) -> np.ndarray:
        kw = {} if k is None else {"dawm_contrast": k}
        return synthesize_mri(anat, zero, zero, np.random.default_rng(0), noise=0.0, sequences=("flair",), dawm_mask=dawm, **kw)["flair"]

    base, one, two, off = flair(None), flair(1.0), flair(2.0), flair(0.0)
    assert np.array_equal(base, one)
    core = tuple(c)
    assert two[core] - off[core] == pytest.approx(2 * (one[core] - off[core]), rel=1e-4) and one[core] - off[core] > 20.0


def test_default_dawm_looks_as_dawm_is_described_and_old_trials_keep_their_contrast() -> None:
    """DAWM is described as intermediate between NAWM and focal lesions, its signal close to grey matter's (docs/world.md).
    At the default `dawm_contrast` the DAWM's FLAIR (and T2, PD) lies between white matter and lesion and its FLAIR is
    within 25% of grey matter's excess over white matter; a config written before the knob existed reads back at 1."""
    from mseval.simulate.mri import DAWM_DELTA, TISSUE_INTENSITY

    k = TrialConfig().dawm_contrast
    for seq in ("flair", "t2", "pd"):
        t = TISSUE_INTENSITY[seq]
        assert t["wm"] < t["wm"] + k * DAWM_DELTA[seq] < t["lesion"]
    gm_excess = TISSUE_INTENSITY["flair"]["gm"] - TISSUE_INTENSITY["flair"]["wm"]
    assert abs(k * DAWM_DELTA["flair"] - gm_excess) <= 0.25 * gm_excess
    old = TrialConfig().to_dict()
    assert TrialConfig.from_dict(old).dawm_contrast == k
    del old["dawm_contrast"]
    assert TrialConfig.from_dict(old).dawm_contrast == 1.0


def test_small_lesions_are_fainter_at_1p5_tesla_and_the_knob_at_one_switches_it_off() -> None:
    """WORLD_FACTS 8: 3 T shows more (small) T2 lesions than 1.5 T. In the images, a lesion under
    `small_lesion_mm3` keeps `small_lesion_contrast_1p5t` of its FLAIR contrast at a 1.5 T site;
    large lesions and the masks are untouched; at 1.0 the images are bit-identical."""
    from mseval.simulate.anatomy import make_anatomy
    from mseval.simulate.model import site_scanner
    from mseval.simulate.mri import synthesize_mri
    from mseval.simulate.trial import small_lesions

    anat = make_anatomy((32, 32, 32))
    wm_mask = anat.wm_mask.astype(bool)
    wm = np.argwhere(wm_mask)
    labels = np.zeros(anat.labels.shape, np.int32)
    c = wm[len(wm) // 2]
    labels[tuple(c)] = 1  # one-voxel lesion: small
    big = wm[len(wm) // 4]
    labels[big[0] - 1:big[0] + 2, big[1] - 1:big[1] + 2, big[2] - 1:big[2] + 2] = 2  # 27 voxels: large at 5 voxels' cut
    labels[~wm_mask] = 0
    small = small_lesions(labels, 5.0)
    assert small[tuple(c)] and not small[labels == 2].any()

    def flair(contrast: float) -> np.ndarray:
        return synthesize_mri(anat, (labels > 0).astype(np.uint8), np.zeros_like(labels, np.uint8), np.random.default_rng(0), noise=0.0,
                              sequences=("flair",), faint_mask=small, faint_contrast=contrast)["flair"]

    full, faint, off = flair(1.0), flair(0.5), flair(1.0)
    assert faint[tuple(c)] < full[tuple(c)] - 50.0  # lesion 930 vs WM 400 a.u.: half the contrast is ~265 a.u. less, before smoothing
    assert np.allclose(faint[labels == 2], full[labels == 2], atol=30.0)  # the large lesion's core barely moves (the faint voxel's blur only)
    assert np.array_equal(full, off)
    cfg = TrialConfig(n_sites=40, seed=3)
    fields = [site_scanner(cfg, f"site-{k}").field_strength_t for k in range(1, 41)]
    assert set(fields) == {1.5, 3.0} and fields == [site_scanner(cfg, f"site-{k}").field_strength_t for k in range(1, 41)]
    assert all(site_scanner(replace(cfg, field_3t_share=1.0), f"site-{k}").field_strength_t == 3.0 for k in range(1, 41))


def test_no_room_for_lesions_is_one_clear_error_with_any_worker_count(tmp_path: Path) -> None:
    """An error raised in a worker process reaches the caller as the same SimulationError (it pickles
    with its keywords), not as a broken process pool; nothing is written."""
    import pickle

    from mseval.errors import SimulationError

    e = SimulationError("f.csv", "no room", row=3, field="x")
    back = pickle.loads(pickle.dumps(e))
    assert type(back) is SimulationError and back.message == e.message == "f.csv (row 3, field 'x'): no room"
    cfg = TrialConfig(patients_per_arm=1, shape=(16, 16, 16), seed=2, base_rate=300.0)
    for workers in (1, 2):
        with pytest.raises(SimulationError, match="no room"):
            simulate_trial(tmp_path / f"c{workers}", cfg, workers=workers)
        assert not (tmp_path / f"c{workers}").exists()


def test_load_preference_pulls_the_centre_law_toward_baseline_lesions(tmp_path: Path) -> None:
    """Ablation: load_preference 0 vs 6 changes the saved centre law, and at 6 it puts more of its mass
    within two voxels of the patient's baseline lesions (the same baseline: the knob acts after them)."""
    from scipy import ndimage

    near_mass = {}
    for b in (0.0, 6.0):
        out = tmp_path / f"b{b}"
        simulate_trial(out, TrialConfig(patients_per_arm=1, shape=(24, 28, 24), seed=4, load_preference=b, followup_weeks=24))
        pid = pd.read_csv(out / "manifest.csv")["patient_id"].iloc[0]
        law = nib.load(out / "images" / pid / "centre_intensity.nii.gz").get_fdata()
        t2 = nib.load(out / "images" / pid / "t2_lesion_mask.nii.gz").get_fdata() > 0
        near = ndimage.binary_dilation(t2, iterations=3) & ~t2
        near_mass[b] = (float(law[near].sum()), t2)
    assert np.array_equal(near_mass[0.0][1], near_mass[6.0][1])
    assert near_mass[6.0][0] > 1.2 * near_mass[0.0][0], (near_mass[6.0][0], near_mass[0.0][0])
