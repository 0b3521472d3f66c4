"""bench/location_references.py: the reference maps at observed centres, the new/enlarging split, the conditional
score's bookkeeping, and the coverage of the patient-clustered SE."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from bench.location_references import EPS, clustered_mean, location_table, mixed_model_log, reference_logs
from forecast.centres import lesion_centres
from mseval.io.cohort import read_cohort


def test_reference_maps_at_observed_centres(visits_cohort: Path) -> None:
    """Uniform white matter scores a new lesion's centre -log(its support size) (mixed with eps of uniform-in-brain);
    a centre in the baseline lesions' margin is flagged enlarging and lies outside both references' support; the true
    intensity is a normalised law."""
    c = read_cohort(visits_cohort)
    seen_new = seen_enlarging = 0
    for pid in c.patient_ids:
        rows = c.visit_rows(pid)
        path = rows[rows["visit"] == "w96"]["net2_mask_cumulative"].iloc[0]
        if not isinstance(path, str) or not path:
            continue
        centres = lesion_centres(np.asarray(nib.load(visits_cohort / path).dataobj))
        if not len(centres):
            continue
        folder = visits_cohort / "images" / pid
        brain = np.asarray(nib.load(folder / "brain_mask.nii.gz").dataobj) > 0
        t2 = np.asarray(nib.load(folder / "t2_lesion_mask.nii.gz").dataobj) > 0
        wm = np.asarray(nib.load(folder / "tissues.nii.gz").dataobj) == 3
        margin = ndimage.binary_dilation(t2, structure=np.ones((3, 3, 3), bool))
        r = reference_logs(visits_cohort, pid, centres, brain)
        idx = tuple(centres.T)
        assert np.array_equal(r["enlarging"], margin[idx])
        support = wm & ~margin
        want = np.log((1 - EPS) * support[idx] / support.sum() + EPS / brain.sum())
        assert np.allclose(r["uniform_wm"], want)
        assert np.all(r["uniform_wm_outside"] == ~support[idx]) and np.all(r["proximity_prior_outside"][r["enlarging"]])
        assert np.all(np.isfinite(r["true_intensity"]))
        seen_new += int((~r["enlarging"]).sum())
        seen_enlarging += int(r["enlarging"].sum())
    assert seen_new > 0 and seen_enlarging > 0


def test_location_table_scores_new_lesions_by_the_conditional_law() -> None:
    """The "new" table holds the lesions outside the margin only and scores the conditional law there, the unconditional
    one beside it; the "all" table scores the unconditional law on every lesion."""
    refs = {"enlarging": np.array([False, True, False, False]), **{r: np.array([-8.0, -13.0, -7.0, -9.0]) for r in ("uniform_wm", "proximity_prior", "true_intensity")},
            **{f"{r}_outside": np.array([False, True, False, False]) for r in ("uniform_wm", "proximity_prior", "true_intensity")}}
    uncond = {"m": np.array([-8.5, -5.0, -7.5, -9.5])}
    cond = {"m": uncond["m"] + 0.3}
    t = location_table(uncond, refs, [0, 0, 1, 2], conditional=cond)
    assert t["new"]["lesions"] == 3 and t["new"]["patients"] == 3 and t["all"]["lesions"] == 4
    assert np.isclose(t["new"]["m_minus_uniform_wm"][0], -0.2) and np.isclose(t["new"]["m_unconditional_minus_uniform_wm"][0], -0.5)
    assert np.isclose(t["all"]["m_minus_uniform_wm"][0], np.mean([-0.5, 8.0, -0.5, -0.5]))
    assert np.isclose(mixed_model_log(np.log([1e-3]), 1000.0)[0], np.log(1e-3))


def test_clustered_se_covers_at_the_nominal_rate() -> None:
    """2,000 simulated DEV trials of 150 patients with 0-12 lesions each and a patient effect (intra-cluster correlation
    0.3): the mean +- 1.96 clustered SEs covers the true lesion mean in 95% of trials, within 3 binomial SEs (0.0146);
    the naive per-lesion SE would cover less."""
    rng = np.random.default_rng(2107)
    reps, hits, naive = 2000, 0, 0
    for _ in range(reps):
        n = rng.poisson(4.0, 150)
        g = np.repeat(np.arange(150), n)
        d = np.repeat(rng.normal(0, np.sqrt(0.3), 150), n)[: len(g)] + rng.normal(0, np.sqrt(0.7), len(g))
        m, se = clustered_mean(d, g)
        hits += abs(m) <= 1.96 * se
        naive += abs(m) <= 1.96 * d.std(ddof=1) / np.sqrt(len(d))
    assert abs(hits / reps - 0.95) < 3 * np.sqrt(0.95 * 0.05 / reps), hits / reps
    assert naive / reps < 0.90
