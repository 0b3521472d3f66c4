"""forecast.preprocess: N4 bias correction and WhiteStripe, on the simulator's phantom (24^3)."""

from __future__ import annotations

import numpy as np
import pytest

from forecast.preprocess import n4_field, preprocess_images, white_stripe, whitestripe
from mseval.simulate import mri
from mseval.simulate.anatomy import make_anatomy


@pytest.fixture(scope="module")
def phantom() -> dict:
    """FLAIR and T1 of one 24^3 phantom with and without the scanner's bias field (same noise draw), its brain and
    white-matter masks, and a DAWM patch."""
    anat = make_anatomy((24, 24, 24), seed=3)
    brain = anat.labels > 0
    wm = anat.labels == 3
    z = np.zeros(anat.labels.shape, np.uint8)
    dawm = np.zeros_like(z)
    dawm[tuple(np.argwhere(wm)[::9].T)] = 1
    out = {"brain": brain, "wm": wm, "spacing": anat.spacing, "dawm": dawm > 0}
    keep = mri._BIAS_AMPLITUDE
    try:
        for name, amp in (("biased", 0.25), ("flat", 0.0)):
            mri._BIAS_AMPLITUDE = amp
            out[name] = mri.synthesize_mri(anat, z, z, np.random.default_rng(1), dawm_mask=dawm, noise=0.01)
    finally:
        mri._BIAS_AMPLITUDE = keep
    return out


def _cv(x: np.ndarray, m: np.ndarray) -> float:
    return float(np.std(x[m]) / np.mean(x[m]))


def test_n4_removes_a_bias_field(phantom: dict) -> None:
    """The white matter's intensity spread on FLAIR: the bias field widens it; N4 brings it most of the way back."""
    b, wm = phantom["brain"], phantom["wm"] & ~phantom["dawm"]
    biased, flat = phantom["biased"]["flair"], phantom["flat"]["flair"]
    corrected = biased / n4_field(biased, b, phantom["spacing"])
    cv_b, cv_c, cv_f = _cv(biased, wm), _cv(corrected, wm), _cv(flat, wm)
    assert cv_b > 1.5 * cv_f, (cv_b, cv_f)  # the field matters at this amplitude
    assert cv_c < cv_f + 0.5 * (cv_b - cv_f), (cv_b, cv_c, cv_f)
    field = n4_field(biased, b, phantom["spacing"])
    assert np.all(field[~b] == 1.0) and np.isfinite(field).all() and field.dtype == np.float32


def test_whitestripe_puts_normal_white_matter_at_zero_whatever_the_scanner_gain(phantom: dict) -> None:
    b, wm = phantom["brain"], phantom["wm"] & ~phantom["dawm"]
    flair, t1 = phantom["flat"]["flair"], phantom["flat"]["t1"]
    stripe = white_stripe(t1, b)
    assert stripe.sum() > 50 and (stripe & wm).sum() > 0.8 * stripe.sum()  # the stripe is white matter
    w = whitestripe(flair, b, stripe)
    assert abs(np.median(w[wm])) < 0.5 and np.all(w[~b] == 0)
    # a scanner's gain and offset change nothing (the stripe is found on a KDE whose bandwidth and grid scale with T1)
    assert np.array_equal(white_stripe(2.5 * t1 + 40.0, b), stripe)
    w2 = whitestripe(2.5 * flair + 40.0, b, stripe)
    np.testing.assert_allclose(w2[b], w[b], atol=1e-3)
    # the DAWM, faintly raised on FLAIR, reads above normal white matter
    assert np.median(w[phantom["dawm"] & b]) > np.median(w[wm]) + 0.5


def test_normalizations_differ_and_an_unknown_one_is_refused(phantom: dict) -> None:
    imgs = {c: phantom["biased"][c] for c in ("t1", "flair")}
    a = preprocess_images(imgs, phantom["brain"], "brain_z", phantom["spacing"])
    n = preprocess_images(imgs, phantom["brain"], "n4_whitestripe", phantom["spacing"])
    assert set(a) == set(n) == {"t1", "flair"}
    assert not np.allclose(a["flair"], n["flair"], atol=0.1)
    again = preprocess_images(imgs, phantom["brain"], "n4_whitestripe", phantom["spacing"])
    assert all(np.array_equal(n[c], again[c]) for c in n)  # deterministic
    with pytest.raises(ValueError, match="normalization must be one of"):
        preprocess_images(imgs, phantom["brain"], "histogram")
