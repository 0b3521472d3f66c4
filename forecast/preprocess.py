"""Intensity preprocessing of the baseline images before a forecaster reads them.

Two normalisations of an image inside the brain mask (both give float32, 0 outside the brain):

- ``brain_z``: z-score over every brain voxel (`forecast.data.normalize_image`). Removes the scanner's gain
  and offset, not its bias field, and its scale mixes white matter, grey matter and CSF, so a faint white-matter
  change (diffusely abnormal white matter, DAWM) sits at a different z in every patient.
- ``n4_whitestripe``: the MS imaging pipeline of Shinohara et al. 2014 (NeuroImage: Clinical 6:9-19):
  N4 bias-field correction of each sequence (Tustison et al. 2010; SimpleITK's `N4BiasFieldCorrectionImageFilter`,
  brain mask) and then WhiteStripe: the normal-appearing white-matter stripe found on the T1-weighted image
  (`intensity_normalization.WhiteStripeNormalizer`, the brightest tissue mode) and every sequence standardised by
  its own mean and SD over that stripe's voxels (the T1-derived stripe applied to the co-registered sequences, as
  the WhiteStripe R package's `whitestripe_norm(img, indices)`; on T2/FLAIR the "largest mode" can be grey matter
  at coarse grids). After it, 0 is the patient's own normal white matter on every sequence and a unit is its SD,
  so "mildly raised in white matter" means the same number for every patient and scanner.

Deterministic on any machine: the same images give the same output. N4 runs `N4_THREADS` threads, for the filter and
for the ITK stages it runs inside, which otherwise follow the machine's core count: until 2026-12-07 the field differed
in the 6th-7th digit between a 1- and a 2-core run. At 32^3 N4 costs about 1.5 s a patient in one process and 1.3 s a
patient with `load_arrays(workers=2)` on two cores (`bench/bench_read_arrays.py`; one thread each: 2.5 and 1.2 s).
"""

from __future__ import annotations

import numpy as np

from forecast.data import normalize_image

NORMALIZATIONS = ("brain_z", "n4_whitestripe")

N4_THREADS = 2
"""Threads of every N4 fit, on any machine (ITK's reductions are split by thread, so the field's last digits depend on
the count; 2 is what the shipped image forecaster's training arrays were read with, on a 2-core machine)."""

def n4_field(img: np.ndarray, brain: np.ndarray, spacing: tuple[float, float, float] = (1.0, 1.0, 1.0), *,
             iterations: int = 50, levels: int = 3) -> np.ndarray:
    """(X, Y, Z) float32 multiplicative bias field of `img` inside `brain` estimated by N4 (SimpleITK; `levels`
    fitting levels of `iterations` each; spacing in mm); 1 outside the brain. Divide an image by it to correct it."""
    import SimpleITK as sitk

    x = np.asarray(img, dtype=np.float32)
    inside = np.asarray(brain) > 0
    if inside.sum() < 8:
        return np.ones(x.shape, np.float32)
    shift = max(0.0, -float(x[inside].min())) + 1.0  # N4 works on positive intensities
    im = sitk.GetImageFromArray(np.transpose(x + shift, (2, 1, 0)))
    im.SetSpacing(tuple(float(s) for s in spacing))
    mk = sitk.GetImageFromArray(np.transpose(inside.astype(np.uint8), (2, 1, 0)))
    mk.CopyInformation(im)
    # A fixed thread count for the filter *and* the ITK stages it creates inside (B-spline fitting), which otherwise follow
    # the global default (the machine's cores) whatever the filter is told: the field then depends on no machine.
    threads = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(N4_THREADS)
    try:
        f = sitk.N4BiasFieldCorrectionImageFilter()
        f.SetNumberOfThreads(N4_THREADS)
        f.SetMaximumNumberOfIterations([iterations] * levels)
        f.Execute(im, mk)
        log_field = np.transpose(sitk.GetArrayFromImage(f.GetLogBiasFieldAsImage(im)), (2, 1, 0)).astype(np.float32)
    finally:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)
    return np.where(inside, np.exp(log_field), np.float32(1.0)).astype(np.float32)


def white_stripe(t1: np.ndarray, brain: np.ndarray, *, width: float = 0.05) -> np.ndarray:
    """(X, Y, Z) bool: the normal-appearing white-matter stripe of a T1-weighted image (WhiteStripe,
    `intensity_normalization.WhiteStripeNormalizer`: the voxels within +-`width` in quantile of the brightest
    tissue mode of the brain's T1 histogram)."""
    from intensity_normalization import WhiteStripeNormalizer, create_image
    from intensity_normalization.domain.models import Modality

    ws = WhiteStripeNormalizer(width=width, modality=Modality.T1)
    ws.fit(create_image(np.asarray(t1, np.float64)), create_image((np.asarray(brain) > 0).astype(np.float64)))
    return np.asarray(ws.whitestripe_mask, bool) & (np.asarray(brain) > 0)


def whitestripe(img: np.ndarray, brain: np.ndarray, stripe: np.ndarray) -> np.ndarray:
    """(X, Y, Z) float32: `img` minus its mean over the white stripe `stripe` (`white_stripe`), over its SD there;
    0 outside the brain. Units: SDs of the patient's normal white matter on this sequence."""
    inside = np.asarray(brain) > 0
    x = np.asarray(img, dtype=np.float64)
    v = x[np.asarray(stripe, bool)]
    out = np.zeros(x.shape, dtype=np.float32)
    if v.size < 2 or not v.std() > 0:
        return out
    out[inside] = ((x[inside] - v.mean()) / v.std()).astype(np.float32)
    return out


def preprocess_images(images: dict[str, np.ndarray], brain: np.ndarray, normalization: str = "brain_z",
                      spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)) -> dict[str, np.ndarray]:
    """A patient's baseline images (channel name -> (X, Y, Z)) as the forecaster reads them, by `normalization`
    (one of `NORMALIZATIONS`; module docstring). For ``n4_whitestripe`` each sequence gets its own N4 field, as in
    the method (a field estimated once on T1 and divided out of every sequence made the DAWM less legible on DEV
    trial 7160: bench/RESULTS_forecast.md, r11); about 0.3 s per image at 32^3 on one core."""
    if normalization == "brain_z":
        return {c: normalize_image(x, brain) for c, x in images.items()}
    if normalization == "n4_whitestripe":
        flat = {c: np.asarray(x, np.float32) / n4_field(x, brain, spacing) for c, x in images.items()}
        stripe = white_stripe(flat["t1"] if "t1" in flat else next(iter(flat.values())), brain)
        return {c: whitestripe(x, brain, stripe) for c, x in flat.items()}
    raise ValueError(f"normalization must be one of {', '.join(NORMALIZATIONS)}, got {normalization!r}")


__all__ = ["NORMALIZATIONS", "n4_field", "preprocess_images", "white_stripe", "whitestripe"]
