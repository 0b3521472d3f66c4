"""Synthetic multi-contrast MRI from a labelled brain phantom (`mseval.simulate.anatomy`).

Per-tissue mean intensities per sequence (arbitrary units, roughly 0..1000) with textbook contrast:

- T1 (MPRAGE-like): WM > deep GM > GM > lesions > CSF; scalp fat bright, skull dark.
- T2: CSF > lesions > GM > deep GM > WM.
- FLAIR: lesions > GM > deep GM > WM > CSF (CSF suppressed).
- PD: lesions > CSF ~ GM > deep GM > WM.
- T1 post-gadolinium: as T1, Gd-enhancing lesions brightest.

The intensity map is smoothed (partial volume, Gaussian sigma max(0.9 mm, 0.4 voxel)), multiplied by a smooth random
bias field, and Gaussian noise (standard deviation ``noise * 1000``) is added inside the head; the
result is clipped at 0 and zero outside the head (brain + skull + scalp ring).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy import ndimage

from mseval.simulate.anatomy import TISSUE_LABELS, Anatomy

__all__ = ["SEQUENCES", "TISSUE_INTENSITY", "head_layers", "synthesize_mri", "render_slices"]

SEQUENCES: tuple[str, ...] = ("t1", "t2", "flair", "pd", "t1gd")

# Classes used by the synthesizer: the anatomy labels plus lesion / enhancing lesion / head ring.
_CLASSES = ("background", "csf", "gm", "wm", "deep_gm", "ventricles", "lesion", "gd", "skull", "scalp")
_CLS = {name: i for i, name in enumerate(_CLASSES)}
assert all(_CLS[k] == v for k, v in TISSUE_LABELS.items())

#: Mean intensity of each class per sequence (arbitrary units, ~0..1000).
TISSUE_INTENSITY: dict[str, dict[str, float]] = {
    #        bg    csf   gm    wm    dgm   vent  lesion gd    skull scalp
    "t1": dict(zip(_CLASSES, (0.0, 160.0, 470.0, 720.0, 540.0, 150.0, 330.0, 420.0, 110.0, 820.0))),
    "t2": dict(zip(_CLASSES, (0.0, 950.0, 520.0, 340.0, 430.0, 960.0, 780.0, 800.0, 90.0, 420.0))),
    "flair": dict(zip(_CLASSES, (0.0, 70.0, 540.0, 400.0, 470.0, 60.0, 930.0, 900.0, 60.0, 380.0))),
    "pd": dict(zip(_CLASSES, (0.0, 760.0, 740.0, 580.0, 680.0, 770.0, 850.0, 860.0, 120.0, 640.0))),
    "t1gd": dict(zip(_CLASSES, (0.0, 170.0, 470.0, 720.0, 540.0, 160.0, 330.0, 950.0, 110.0, 820.0))),
}

_PV_SIGMA_MM = 0.9  # partial-volume smoothing (mm) ...
_PV_SIGMA_VOX = 0.4  # ... and at least this many voxels (coarse grids)
_BIAS_AMPLITUDE = 0.06  # std of each bias-field polynomial coefficient (log scale)
_SKULL_MM = 5.0
_SCALP_MM = 5.0


def head_layers(anatomy: Anatomy) -> np.ndarray:
    """(X, Y, Z) uint8 class map: anatomy labels inside the brain, 8 = skull, 9 = scalp outside it.

    Skull and scalp are shells of ~5 mm each (at least about one voxel) around the brain mask,
    found with a Euclidean distance transform in mm; they stop at the volume border.
    """
    labels = anatomy.labels
    brain = labels > 0
    out = labels.astype(np.uint8).copy()
    if not brain.any():
        return out
    sp = np.asarray(anatomy.spacing, dtype=float)
    skull_mm = max(_SKULL_MM, 1.01 * sp.max())
    scalp_mm = max(_SCALP_MM, 1.01 * sp.max())
    reach = skull_mm + scalp_mm
    # Work in the bounding box of the brain grown by the ring thickness (faster EDT).
    idx = [np.nonzero(brain.any(axis=tuple(j for j in range(3) if j != i)))[0] for i in range(3)]
    pad = [int(np.ceil(reach / s)) + 1 for s in sp]
    sl = tuple(
        slice(max(0, int(ix[0]) - p), min(n, int(ix[-1]) + p + 1))
        for ix, p, n in zip(idx, pad, labels.shape)
    )
    d = ndimage.distance_transform_edt(~brain[sl], sampling=sp)
    box = out[sl]
    ring = ~brain[sl]
    box[ring & (d <= skull_mm)] = _CLS["skull"]
    box[ring & (d > skull_mm) & (d <= reach)] = _CLS["scalp"]
    out[sl] = box
    return out


def _bias_field(shape: tuple[int, int, int], rng: np.random.Generator, amplitude: float) -> np.ndarray:
    """Smooth multiplicative field exp(sum_{i,j,k<=2} c_ijk P_i(x) P_j(y) P_k(z)), float32."""
    coef = rng.normal(0.0, amplitude, size=(3, 3, 3))
    coef[0, 0, 0] = 0.0
    basis = []
    for n in shape:
        u = np.linspace(-1.0, 1.0, n)
        basis.append(np.stack([np.ones_like(u), u, 1.5 * u * u - 0.5], axis=1))  # Legendre 0..2
    t = np.einsum("ijk,xi->xjk", coef, basis[0])
    t = np.einsum("xjk,yj->xyk", t, basis[1])
    t = np.einsum("xyk,zk->xyz", t.astype(np.float32), basis[2].astype(np.float32))
    return np.exp(t).astype(np.float32)


#: Intensity change (a.u.) of diffusely abnormal white matter and of T1 black holes, per sequence.
DAWM_DELTA: dict[str, float] = {"t1": -40.0, "t2": 40.0, "flair": 60.0, "pd": 30.0, "t1gd": -40.0}
BLACK_HOLE_DELTA: dict[str, float] = {"t1": -120.0, "t1gd": -120.0}
#: Sign of the pre-lesional change per sequence (amplitude: contrast x noise SD).
PRELESION_SIGN: dict[str, float] = {"t1": -1.0, "t2": 1.0, "flair": 1.0, "pd": 1.0, "t1gd": -1.0}


def mtr_map(anatomy: Anatomy, lesion_mask: np.ndarray, prelesion_mask: np.ndarray | None, rng: np.random.Generator, *, noise: float = 0.01) -> np.ndarray:
    """Magnetization transfer ratio (percent units) at baseline: WM 41, GM 36, CSF 5, lesions 30, and
    future lesion sites 12.6% below normal-appearing WM (Pike 2000: 33.3 vs 38.1). (X, Y, Z) float32."""
    lab = anatomy.labels
    table = np.array([0.0, 5.0, 36.0, 41.0, 38.0, 5.0, 30.0, 30.0, 0.0, 0.0], dtype=np.float32)
    img = table[np.minimum(lab, 7)]
    img[np.asarray(lesion_mask) > 0] = 30.0
    if prelesion_mask is not None:
        img[np.asarray(prelesion_mask) > 0] *= np.float32(1.0 - 0.126)
    img = ndimage.gaussian_filter(img, [max(_PV_SIGMA_MM / s, _PV_SIGMA_VOX) for s in anatomy.spacing], mode="constant")
    img += rng.standard_normal(img.shape, dtype=np.float32) * np.float32(100.0 * noise)
    img[lab == 0] = 0.0
    return img.astype(np.float32)


def synthesize_mri(
    anatomy: Anatomy,
    lesion_mask: np.ndarray,
    gd_mask: np.ndarray,
    rng: np.random.Generator,
    *,
    noise: float = 0.03,
    sequences: tuple[str, ...] = SEQUENCES,
    dawm_mask: np.ndarray | None = None,
    black_hole_mask: np.ndarray | None = None,
    prelesion_mask: np.ndarray | None = None,
    prelesion_contrast: float = 0.0,
    dawm_contrast: float = 1.0,
    gain: float = 1.0,
    offset: float = 0.0,
    faint_mask: np.ndarray | None = None,
    faint_contrast: float = 1.0,
) -> dict[str, np.ndarray]:
    """Images (X,Y,Z) float32 for each of SEQUENCES, arbitrary units scaled to roughly 0..1000, zero outside the head.
    lesion_mask: T2 lesions (uint8), hyperintense on T2/FLAIR/PD, hypointense on T1; gd_mask: Gd-enhancing lesions, bright on t1gd only.

    Lesion voxels outside the brain mask are ignored. `noise` is the noise standard deviation as a
    fraction of 1000 (0 gives noiseless images; the bias field is still applied). Deterministic
    given the state of `rng` and `sequences` (the subset to make, in SEQUENCES order).
    dawm_mask: diffusely abnormal white matter (`DAWM_DELTA` x `dawm_contrast`); black_hole_mask: T1 black holes
    (`BLACK_HOLE_DELTA`); prelesion_mask: future lesion sites whose pre-lesional change has begun,
    changed by `prelesion_contrast` noise SDs (sign `PRELESION_SIGN`); gain, offset: the site's
    scanner scaling, applied last (image = gain * image + offset inside the head); faint_mask: lesion
    voxels that keep only `faint_contrast` of their contrast against the tissue beneath (small
    lesions at 1.5 T) on every sequence.
    """
    shape = anatomy.labels.shape
    lesion = np.asarray(lesion_mask)
    gd = np.asarray(gd_mask)
    if lesion.shape != shape or gd.shape != shape:
        raise ValueError(
            f"lesion_mask {lesion.shape} and gd_mask {gd.shape} must match the anatomy {shape}"
        )
    if not np.isfinite(noise) or noise < 0:
        raise ValueError(f"noise must be a finite number >= 0, got {noise!r}")
    cls = head_layers(anatomy)
    brain = anatomy.labels > 0
    head = cls > 0
    les = (lesion > 0) & brain
    enh = (gd > 0) & brain
    cls_t2 = cls.copy()
    cls_t2[les] = _CLS["lesion"]
    cls_gd = cls_t2.copy()
    cls_gd[enh] = _CLS["gd"]

    sigma = [max(_PV_SIGMA_MM / s, _PV_SIGMA_VOX) for s in anatomy.spacing]
    # Subtle smooth tissue texture shared by all sequences (+-2 %).
    tex = rng.standard_normal(shape, dtype=np.float32)
    tex = ndimage.gaussian_filter(tex, [2.0 / s for s in anatomy.spacing], mode="nearest")
    tex *= np.float32(0.02 / max(float(tex.std()), 1e-6))
    tex += np.float32(1.0)
    shared_bias = _bias_field(shape, rng, _BIAS_AMPLITUDE)
    faint = (np.asarray(faint_mask) > 0) & (les | enh) if faint_mask is not None and faint_contrast != 1.0 else None
    images: dict[str, np.ndarray] = {}
    extras = []
    if dawm_mask is not None:
        extras.append(({k: v * float(dawm_contrast) for k, v in DAWM_DELTA.items()}, (np.asarray(dawm_mask) > 0) & brain & ~les))
    if black_hole_mask is not None:
        extras.append((BLACK_HOLE_DELTA, (np.asarray(black_hole_mask) > 0) & les))
    if prelesion_mask is not None and prelesion_contrast > 0:
        amp = float(prelesion_contrast) * 1000.0 * max(noise, 0.01)
        extras.append(({k: v * amp for k, v in PRELESION_SIGN.items()}, (np.asarray(prelesion_mask) > 0) & brain & ~les))
    for seq in SEQUENCES:
        if seq not in sequences:
            continue
        table = np.array([TISSUE_INTENSITY[seq][c] for c in _CLASSES], dtype=np.float32)
        img = table[cls_gd if seq == "t1gd" else cls_t2]
        if faint is not None:
            under = table[cls[faint]]
            img[faint] = under + np.float32(faint_contrast) * (img[faint] - under)
        for delta, where in extras:
            if seq in delta:
                img[where] += np.float32(delta[seq])
        img *= tex
        img = ndimage.gaussian_filter(img, sigma, mode="constant", truncate=3.0)
        img *= shared_bias * _bias_field(shape, rng, 0.3 * _BIAS_AMPLITUDE)
        if noise > 0:
            img += rng.standard_normal(shape, dtype=np.float32) * np.float32(1000.0 * noise)
        if gain != 1.0 or offset != 0.0:
            img = img * np.float32(gain) + np.float32(offset)
        np.maximum(img, 0.0, out=img)
        img[~head] = 0.0
        images[seq] = img.astype(np.float32, copy=False)
    return images


def render_slices(
    images: dict[str, np.ndarray],
    out_png: str | Path,
    lesion_mask: np.ndarray | None = None,
    *,
    z_index: int | None = None,
) -> None:
    """Write one axial slice (default: the middle one) per sequence side by side to `out_png`.

    Slices are shown with anterior up and the subject's right on the image right; with
    `lesion_mask`, one more panel shows FLAIR with the lesion outlines in red.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [k for k in SEQUENCES if k in images] + [k for k in images if k not in SEQUENCES]
    if not names:
        raise ValueError("no images to render")
    nz = images[names[0]].shape[2]
    z = nz // 2 if z_index is None else int(z_index)
    panels = [(n, False) for n in names]
    if lesion_mask is not None:
        panels.append(("flair" if "flair" in images else names[0], True))
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.8), squeeze=False)
    for ax, (name, overlay) in zip(axes[0], panels):
        sl = np.asarray(images[name][:, :, z], dtype=np.float32).T
        vmax = float(np.percentile(sl[sl > 0], 99.5)) if (sl > 0).any() else 1.0
        ax.imshow(sl, cmap="gray", origin="lower", vmin=0.0, vmax=vmax, interpolation="nearest")
        title = f"{name.upper()}  z={z}"
        if overlay:
            m = np.asarray(lesion_mask[:, :, z]).T > 0
            if m.any():
                ax.contour(m.astype(float), levels=[0.5], colors="r", linewidths=0.7)
            title = f"{name.upper()} + lesions"
        ax.set_title(title, fontsize=9)
        ax.set_axis_off()
    fig.tight_layout()
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
