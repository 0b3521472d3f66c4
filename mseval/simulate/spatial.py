"""Where lesions arise: the spatial law of lesion centres, and diffusely abnormal white matter (DAWM).

Per patient, a smooth Gaussian field Z (standardised over white matter, correlation length
`spatial_smooth_mm`) marks the lesion-prone regions of that patient. Lesion centres (baseline and
new alike, so new lesions follow the patient's own regional lesion load; WORLD_FACTS 3) are drawn
from the intensity

    lambda(x) ∝ WM(x) * (0.2 + exp(-d_vent(x) / 12 mm)) * exp(spatial_strength * Z(x)) * (1 + dawm_preference * DAWM(x))

(periventricular preference as before; DAWM preferred); new lesions' intensity is further multiplied by
(1 + load_preference * L(x)), L the patient's baseline lesion load smoothed over `load_smooth_mm` and
scaled to at most 1 (WORLD_FACTS 3: new lesions scale with the regional baseline load). DAWM is the share `dawm_fraction` of white
matter where Z plus a periventricular score is highest. The normalised intensity over white matter
is the patient's true centre intensity (saved per patient; the same shape for every interval, scaled
by the interval's expected count). `spatial_strength` 0 and `dawm_preference` 0 give the uniform
periventricular law of earlier versions.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from mseval.simulate.lesions import periventricular_weights


def patient_field(wm: np.ndarray, spacing: tuple[float, float, float], smooth_mm: float, rng: np.random.Generator) -> np.ndarray:
    """(X, Y, Z) float64 smooth Gaussian field with mean 0 and SD 1 over white matter (0 elsewhere)."""
    z = rng.standard_normal(wm.shape)
    z = ndimage.gaussian_filter(z, [smooth_mm / s / 2.0 for s in spacing], mode="reflect")
    sel = wm > 0
    if sel.sum() > 1:
        z = (z - z[sel].mean()) / max(float(z[sel].std()), 1e-12)
    return np.where(sel, z, 0.0)


def dawm_mask(field: np.ndarray, wm: np.ndarray, ventricle_distance_mm: np.ndarray, fraction: float) -> np.ndarray:
    """(X, Y, Z) bool: the `fraction` of white-matter voxels with the highest field + periventricular score."""
    sel = wm > 0
    n = int(round(fraction * sel.sum()))
    out = np.zeros(wm.shape, dtype=bool)
    if n <= 0:
        return out
    score = field + 1.5 * np.exp(-np.asarray(ventricle_distance_mm, dtype=float) / 10.0)
    idx = np.flatnonzero(sel)
    top = idx[np.argsort(-score.ravel()[idx], kind="stable")[:n]]
    out.ravel()[top] = True
    return out


def centre_intensity(wm: np.ndarray, ventricle_distance_mm: np.ndarray, field: np.ndarray, dawm: np.ndarray,
                     *, spatial_strength: float, dawm_preference: float) -> np.ndarray:
    """(X, Y, Z) float64 lesion-centre density over white matter, summing to 1 (0 outside WM)."""
    w = periventricular_weights(ventricle_distance_mm) * np.exp(spatial_strength * field) * (1.0 + dawm_preference * dawm)
    w = np.where(wm > 0, w, 0.0)
    return w / max(float(w.sum()), 1e-300)


def regional_load(lesion_mask: np.ndarray, spacing: tuple[float, float, float], smooth_mm: float, where: np.ndarray) -> np.ndarray:
    """(X, Y, Z) float64 in [0, 1]: the lesion mask smoothed by a Gaussian of SD smooth_mm / 2 (mm),
    scaled so that its maximum over `where` (bool) is 1 (all 0 without lesions)."""
    load = ndimage.gaussian_filter((np.asarray(lesion_mask) > 0).astype(float), [smooth_mm / s / 2.0 for s in spacing], mode="constant")
    top = float(load[where].max()) if np.any(where) else 0.0
    return load / top if top > 0 else np.zeros_like(load)


def proximity_prior(wm: np.ndarray, ventricle_distance_mm: np.ndarray, lesion_mask: np.ndarray, spacing: tuple[float, float, float],
                    *, smooth_mm: float = 20.0, weight: float = 4.0) -> np.ndarray:
    """The simple reference a user would try: periventricular weights x (1 + weight x the patient's
    baseline lesion load smoothed with a Gaussian of FWHM-like width `smooth_mm` and scaled to at most
    1), normalised over the white matter that the baseline lesions (dilated by one voxel) leave free:
    a new lesion is new tissue. (smooth_mm and weight were chosen among 10/20/30 mm x 2/4/8 on a
    tuning trial, seed 1300, never on the trials the world bench reports.)"""
    lesions = np.asarray(lesion_mask) > 0
    sel = (wm > 0) & ~ndimage.binary_dilation(lesions, structure=np.ones((3, 3, 3), bool))
    w = periventricular_weights(ventricle_distance_mm) * (1.0 + weight * regional_load(lesions, spacing, smooth_mm, sel))
    w = np.where(sel, w, 0.0)
    return w / max(float(w.sum()), 1e-300)


def uniform_white_matter(wm: np.ndarray) -> np.ndarray:
    """The uniform-white-matter map, normalised."""
    w = (wm > 0).astype(float)
    return w / max(float(w.sum()), 1e-300)
