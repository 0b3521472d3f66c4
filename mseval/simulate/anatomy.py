"""Procedural brain phantom: tissue labels on a voxel grid, no template files.

The phantom is defined in "phantom millimetres", a coordinate frame the size of an adult brain in
the 1 mm MNI field of view (182 x 218 x 182 mm), centred on the volume. Axes are RAS voxel axes:
X = left -> right, Y = posterior -> anterior, Z = inferior -> superior. When the field of view of
the requested grid is smaller than the MNI one, the whole phantom is shrunk to fit (factor
``k <= 1``), so the brain never touches the volume border.

Construction (all vectorised):

- an ellipsoidal "radius" ``rho`` (0 at the centre, 1 on the brain surface), egg-shaped in the
  axial plane and flattened at the bottom (superellipse below the equator);
- sulci: radial sheets where a smooth seeded random field, sampled at the surface point above each
  voxel, crosses zero; sulcal CSF within ``~0.8 mm`` of a sheet down to a varying depth, lined with
  grey matter whose thickness is modulated by a second smooth field (gyri / sulci folding);
- a cortical grey-matter shell, a thin CSF layer outside the brain, the interhemispheric fissure
  (CSF lined with cortex) above the corpus callosum, a Sylvian fissure with insular cortex;
- two curved lateral ventricles (frontal horns, bodies, atria, occipital and temporal horns), a
  thin third ventricle, and deep grey matter (caudate, lentiform nucleus, thalamus);
- white matter fills the rest and is kept as one 26-connected region.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

__all__ = [
    "TISSUE_LABELS",
    "Anatomy",
    "default_spacing",
    "make_anatomy",
]

TISSUE_LABELS: dict[str, int] = {
    "background": 0,
    "csf": 1,
    "gm": 2,
    "wm": 3,
    "deep_gm": 4,
    "ventricles": 5,
}

_BG, _CSF, _GM, _WM, _DGM, _VEN = (TISSUE_LABELS[k] for k in TISSUE_LABELS)

#: Field of view (mm) of the 1 mm MNI152 grid 182 x 218 x 182.
MNI_FOV_MM: tuple[float, float, float] = (182.0, 218.0, 182.0)

# --- phantom geometry, phantom mm ------------------------------------------------------------
_A_X = 66.0  # left-right semi-axis (mean; egg-shaped, wider posteriorly)
_A_EGG = 0.07  # relative widening towards the occiput
_B_Y = 85.0  # posterior-anterior semi-axis
_C_SUP = 66.0  # superior semi-axis
_C_INF = 50.0  # inferior semi-axis (flattened bottom)
_P_INF = 2.8  # superellipse exponent below the equator
_CSF_OUT = 1.6  # CSF layer outside the brain
_GM_THICK = 2.9  # mean cortical thickness
_GM_THICK_VAR = 0.6  # +- modulation of cortical thickness by a smooth field
_SULC_HALF = 0.75  # sulcal CSF half-width
_SULC_DEPTH = 14.0  # mean sulcal depth
_SULC_DEPTH_VAR = 6.0  # +- modulation of sulcal depth
_SULC_SIGMA = 3.0  # smoothing (mm) of the sulcal field: sets the gyral spacing (~4.4 sigma)
_THICK_SIGMA = 8.0
_DEPTH_SIGMA = 9.0
_FISSURE_HALF = 0.9  # interhemispheric fissure half-width
_LATTICE_STEP = 3.0  # mm between nodes of the lattice on which the random fields live
_SULC_BEND = 0.35  # 0: radial sulcal sheets; 1: isotropic 3D zero set
_COARSE_CSF = 0.25  # minimum outer CSF layer, in voxels
_COARSE_GM = 0.45  # minimum cortical thickness, in voxels
_COARSE_SULC = 0.3  # minimum sulcal half width, in voxels (up to _SULC_HALF_MAX)
_SULC_HALF_MAX = 1.0
_SHELL_MM = 30.0  # depth below the surface where folding is evaluated

# Corpus callosum: the interhemispheric fissure stops on its top between genu and splenium.
_CC_Y0, _CC_HALF = -4.0, 35.0
_CC_TOP_MID, _CC_TOP_END = 21.0, 17.5

# Lateral ventricle centre line (right side; mirrored for the left), phantom mm:
# x, y, z, rx, ry, rz, tilt (degrees, rotation in the x-z plane; + puts the bottom laterally).
_VENT_MAIN = np.array(
    [
        [6.0, 31.0, -2.0, 3.0, 4.0, 4.5, 20.0],  # frontal horn tip
        [6.6, 24.0, 1.0, 4.8, 5.0, 8.0, 25.0],  # frontal horn
        [6.8, 13.0, 4.0, 5.0, 5.0, 8.0, 25.0],  # frontal horn / foramen of Monro
        [8.0, 1.0, 7.0, 4.0, 5.0, 7.0, 45.0],  # body
        [10.0, -12.0, 8.5, 3.6, 5.0, 7.0, 55.0],  # body
        [13.5, -24.0, 7.5, 4.6, 5.0, 7.0, 45.0],  # body / atrium
        [19.0, -33.0, 3.0, 7.0, 6.5, 8.5, 0.0],  # atrium (trigone)
        [19.5, -44.0, 1.0, 4.4, 5.0, 4.4, 0.0],  # occipital horn
        [16.5, -55.0, 1.0, 2.5, 3.5, 2.5, 0.0],  # occipital horn tip
    ]
)
_VENT_TEMPORAL = np.array(
    [
        [19.0, -33.0, 3.0, 6.0, 6.0, 7.0, 0.0],  # from the atrium
        [25.0, -28.0, -8.0, 4.2, 4.5, 4.5, 0.0],
        [29.0, -16.0, -17.0, 3.0, 4.0, 3.0, 0.0],
        [30.0, -3.0, -21.0, 2.6, 3.5, 2.4, 0.0],
        [29.5, 6.0, -22.0, 1.8, 2.5, 1.8, 0.0],  # temporal horn tip
    ]
)
_VENT_FORCE = (10.0, -12.0, 8.5)  # voxel forced to ventricle at very coarse grids

# Deep grey matter (right side; mirrored), phantom mm: centre x, y, z, radii x, y, z.
_DEEP_GM = (
    (10.5, -15.0, -3.0, 7.5, 12.5, 8.0),  # thalamus
    (24.5, 3.0, -5.0, 5.5, 13.0, 8.0),  # lentiform nucleus (putamen + pallidum)
)
_CAUDATE = (
    (12.5, 17.0, 2.0, 4.6, 8.0, 7.0),  # caudate head, indents the frontal horn
    (15.0, 0.0, 4.5, 3.2, 9.0, 3.5),  # caudate body
)
_DEEP_FORCE = (10.5, -15.0, -3.0)

# Third ventricle: thin midline slit between the thalami.
_V3_Y, _V3_Z, _V3_HALF_X = (-26.0, 6.0), (-14.0, 4.0), 1.0

# Sylvian fissure (right side; mirrored): insular cortex plane at x = _INSULA_X, lateral sulcus
# rising posteriorly.
_INSULA_X, _INSULA_Y0, _INSULA_Z0 = 37.0, 2.0, -6.0  # most lateral point of the insula
_INSULA_RY, _INSULA_RZ = 22.0, 13.0  # extent of the insular cistern
_INSULA_CURV = 0.012  # 1/mm: the insula recedes medially away from its centre
_SYLV_Z0, _SYLV_SLOPE_Y, _SYLV_SLOPE_X = -3.0, 0.3, 0.15


@dataclass(frozen=True)
class Anatomy:
    """A labelled brain phantom.

    labels: (X, Y, Z) uint8 tissue labels, values as in `TISSUE_LABELS`.
    spacing: voxel size in mm along X, Y, Z.
    affine: (4, 4) float64 voxel -> world (RAS mm) matrix; world origin at the volume centre.
    """

    labels: np.ndarray
    spacing: tuple[float, float, float]
    affine: np.ndarray

    @property
    def shape(self) -> tuple[int, int, int]:
        """Grid shape (X, Y, Z)."""
        return tuple(int(n) for n in self.labels.shape)  # type: ignore[return-value]

    @property
    def brain_mask(self) -> np.ndarray:
        """(X, Y, Z) uint8, 1 where labels > 0 (includes sulcal / ventricular / outer CSF)."""
        return (self.labels > 0).astype(np.uint8)

    @property
    def wm_mask(self) -> np.ndarray:
        """(X, Y, Z) uint8, 1 on white matter."""
        return (self.labels == _WM).astype(np.uint8)

    def ventricle_distance_mm(self) -> np.ndarray:
        """(X, Y, Z) float32 Euclidean distance (mm) to the nearest ventricle voxel (0 inside)."""
        ven = self.labels == _VEN
        if not ven.any():
            return np.full(self.labels.shape, np.inf, dtype=np.float32)
        return ndimage.distance_transform_edt(~ven, sampling=self.spacing).astype(np.float32)


def default_spacing(shape: tuple[int, int, int]) -> tuple[float, float, float]:
    """Spacing (mm) that makes a volume of `shape` span the 1 mm MNI field of view 182 x 218 x 182 mm."""
    shape = _check_shape(shape)
    return tuple(float(f / n) for f, n in zip(MNI_FOV_MM, shape))  # type: ignore[return-value]


def centred_affine(
    shape: tuple[int, int, int], spacing: tuple[float, float, float]
) -> np.ndarray:
    """(4, 4) float64 voxel -> world (RAS mm) affine with the volume centre at world (0, 0, 0)."""
    aff = np.eye(4, dtype=np.float64)
    for i in range(3):
        aff[i, i] = spacing[i]
        aff[i, 3] = -spacing[i] * (shape[i] - 1) / 2.0
    return aff


def make_anatomy(
    shape: tuple[int, int, int],
    spacing: tuple[float, float, float] | None = None,
    *,
    ventricle_scale: float = 1.0,
    seed: int = 0,
) -> Anatomy:
    """Procedural brain phantom. ventricle_scale (0.7..1.6) enlarges ventricles (atrophy). seed controls the folding pattern; the same arguments give byte-identical labels.

    shape: (X, Y, Z) voxels, each >= 8 (16^3 .. 182x218x182 intended).
    spacing: voxel size in mm; default `default_spacing(shape)` (the MNI field of view). When the
    field of view is smaller than 182 x 218 x 182 mm the phantom is shrunk to fit.
    ventricle_scale: lateral/third ventricle size factor, accepted range 0.5..2.0; ventricles
    grow outwards (the septum stays in place).
    """
    shape = _check_shape(shape)
    if spacing is None:
        spacing = default_spacing(shape)
    spacing = tuple(float(s) for s in spacing)  # type: ignore[assignment]
    if len(spacing) != 3 or not all(np.isfinite(s) and s > 0 for s in spacing):
        raise ValueError(f"spacing must be three positive numbers, got {spacing!r}")
    vs = float(ventricle_scale)
    if not 0.5 <= vs <= 2.0:
        raise ValueError(f"ventricle_scale must lie in [0.5, 2.0], got {ventricle_scale!r}")

    fov = [n * s for n, s in zip(shape, spacing)]
    k = min(1.0, min(f / m for f, m in zip(fov, MNI_FOV_MM)))  # phantom mm -> world mm
    vox_ph = np.array(spacing) / k  # voxel size in phantom mm
    # 1D phantom coordinates of voxel centres (float64 for exact symmetry, cast when broadcast).
    axes = [((np.arange(n) - (n - 1) / 2.0) * v) for n, v in zip(shape, vox_ph)]
    vmax = float(vox_ph.max())

    labels = np.zeros(shape, dtype=np.uint8)
    seed = int(seed)
    rng = np.random.default_rng(np.random.SeedSequence([abs(seed), int(seed < 0), 0x6D736576]))
    fields = _random_fields(rng)
    jitter = rng.uniform(-1.0, 1.0, size=8)  # small seeded left/right asymmetries

    _cortex_and_white_matter(labels, axes, vox_ph, fields)
    _fissures(labels, axes, vox_ph)
    _deep_structures(labels, axes, vox_ph, vs, jitter)

    # Nothing on the volume border (safety at extreme aspect ratios).
    labels[[0, -1], :, :] = 0
    labels[:, [0, -1], :] = 0
    labels[:, :, [0, -1]] = 0
    _ensure_present(labels, axes, _VEN, [_VENT_FORCE, (-_VENT_FORCE[0],) + _VENT_FORCE[1:]])
    _ensure_present(labels, axes, _DGM, [_DEEP_FORCE, (-_DEEP_FORCE[0],) + _DEEP_FORCE[1:]])
    if not (labels == _CSF).any():  # pragma: no cover - only at degenerate grids
        _ensure_present(labels, axes, _CSF, [(0.0, 0.0, _C_SUP - vmax / 2)])
    _single_white_matter(labels)
    return Anatomy(labels=labels, spacing=spacing, affine=centred_affine(shape, spacing))


# --------------------------------------------------------------------------------------------
def _check_shape(shape) -> tuple[int, int, int]:
    shape = tuple(int(n) for n in shape)
    if len(shape) != 3 or min(shape) < 8:
        raise ValueError(f"shape must be three sizes >= 8, got {shape!r}")
    return shape  # type: ignore[return-value]


def _random_fields(rng: np.random.Generator) -> dict:
    """Smooth seeded fields on a fixed phantom-mm lattice, so that the folding pattern of a seed is
    the same at every grid resolution. The sulcal field is sampled with cubic splines."""
    step = _LATTICE_STEP
    half = np.array([_A_X * (1 + _A_EGG) + 8.0, _B_Y + 8.0, _C_SUP + 8.0])
    n = (2 * np.ceil(half / step) + 1).astype(int)
    origin = -(n - 1) / 2.0 * step

    def smooth(sigma_mm: float) -> np.ndarray:
        noise = rng.standard_normal(tuple(n), dtype=np.float32)
        f = ndimage.gaussian_filter(noise, sigma_mm / step, mode="wrap", truncate=3.5)
        f -= f.mean()
        f /= f.std() + 1e-12
        return f

    g = smooth(_SULC_SIGMA)
    gnorm = np.sqrt(sum(gr * gr for gr in np.gradient(g, step)))
    thick = smooth(_THICK_SIGMA)
    depth = smooth(_DEPTH_SIGMA)
    return {
        "origin": origin,
        "step": step,
        "g_spline": ndimage.spline_filter(g, order=3, mode="nearest"),
        "gnorm": np.maximum(gnorm, 0.1 / _SULC_SIGMA).astype(np.float32),
        "thick": thick,
        "depth": depth,
    }


def _sample(
    field: np.ndarray, pts: np.ndarray, origin: np.ndarray, step: float, order: int = 1
) -> np.ndarray:
    """Field value at points (3, N) in phantom mm; order 3 expects spline coefficients."""
    coords = (pts - origin[:, None].astype(np.float32)) / np.float32(step)
    return ndimage.map_coordinates(field, coords, order=order, mode="nearest", prefilter=False)


def _rho_and_radius(x: np.ndarray, y: np.ndarray, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Brain 'radius' rho (1 on the surface, degree-1 homogeneous) and Euclidean radius (mm)."""
    ax = _A_X * (1.0 - _A_EGG * y / _B_Y)
    xy2 = (x / ax) ** 2 + (y / _B_Y) ** 2
    rho = np.empty(np.broadcast(x, y, z).shape, dtype=np.float32)
    zb = np.broadcast_to(z, rho.shape)
    xyb = np.broadcast_to(xy2, rho.shape)
    up = zb >= 0
    rho[up] = np.sqrt(xyb[up] + (zb[up] / _C_SUP) ** 2)
    lo = ~up
    p = _P_INF
    rho[lo] = (xyb[lo] ** (p / 2) + np.abs(zb[lo] / _C_INF) ** p) ** (1.0 / p)
    r = np.sqrt(x * x + y * y + z * z)
    return rho, np.broadcast_to(r, rho.shape)


def _cortex_and_white_matter(labels, axes, vox_ph, fields) -> None:
    x = axes[0].astype(np.float32)[:, None, None]
    y = axes[1].astype(np.float32)[None, :, None]
    z = axes[2].astype(np.float32)[None, None, :]
    rho, r = _rho_and_radius(x, y, z)
    rho_safe = np.maximum(rho, 1e-3)
    # Depth below (positive) / height above (negative) the surface along the ray from the centre.
    depth = (1.0 - rho) * r / rho_safe
    vmin, vmax = float(vox_ph.min()), float(vox_ph.max())
    # At coarse grids keep the layers from vanishing: outer CSF >= _COARSE_CSF voxel, cortex
    # >= _COARSE_GM voxel (sulci are unresolved there and stay thin).
    csf_out = max(_CSF_OUT, _COARSE_CSF * vmax)
    inside = depth >= 0
    labels[(depth < 0) & (depth > -csf_out)] = _CSF
    labels[inside] = _WM

    shell = inside & (depth < _SHELL_MM)
    idx = np.nonzero(shell)
    d = depth[idx]
    rh = rho_safe[idx]
    px = axes[0].astype(np.float32)[idx[0]]
    py = axes[1].astype(np.float32)[idx[1]]
    pz = axes[2].astype(np.float32)[idx[2]]
    # Sample the folding fields at a point between the voxel and the surface point above it
    # (mostly the surface point: sulci are near-radial sheets that bend and branch with depth).
    lift = 1.0 + (1.0 - _SULC_BEND) * (1.0 / rh - 1.0)
    q = np.stack([px * lift, py * lift, pz * lift])
    o, st = fields["origin"], fields["step"]
    g = _sample(fields["g_spline"], q, o, st, order=3)
    sd = np.abs(g) / _sample(fields["gnorm"], q, o, st) * rh  # ~distance to the sulcal sheet (mm)
    thick = np.clip(_GM_THICK + _GM_THICK_VAR * _sample(fields["thick"], q, o, st), 1.6, 4.5)
    shell_thick = np.maximum(thick, _COARSE_GM * vmin)  # outer cortex at least ~half a voxel
    sdepth = np.clip(_SULC_DEPTH + _SULC_DEPTH_VAR * _sample(fields["depth"], q, o, st), 5.0, 22.0)
    sulc_half = max(_SULC_HALF, min(_COARSE_SULC * vmin, _SULC_HALF_MAX))
    gm = (d < shell_thick) | ((sd < sulc_half + thick) & (d < sdepth + thick))
    csf = (sd < sulc_half) & (d < sdepth)
    lab = np.where(csf, _CSF, np.where(gm, _GM, _WM)).astype(np.uint8)
    labels[idx] = lab


def _fissures(labels, axes, vox_ph) -> None:
    """Interhemispheric fissure (above the corpus callosum) and Sylvian fissures, with cortex."""
    x, y, z = axes
    sx = float(vox_ph[0])
    thick = max(_GM_THICK, _COARSE_GM * float(vox_ph.min()))
    # Interhemispheric: x-distance to the midline sheet (one voxel column at coarse grids).
    if sx >= 2 * _FISSURE_HALF:
        x0 = x[len(x) // 2]
        half = 0.5 * sx * 0.999
    else:
        x0, half = 0.0, _FISSURE_HALF
    dx = np.abs(x - x0)
    t = (y - _CC_Y0) / _CC_HALF
    zbot = np.where(
        np.abs(t) < 1.0,
        _CC_TOP_END + (_CC_TOP_MID - _CC_TOP_END) * np.cos(0.5 * np.pi * np.clip(t, -1, 1)),
        -1e9,
    )
    above = z[None, :] > zbot[:, None]  # (Y, Z)
    cols_csf = dx < half
    cols_gm = dx < half + thick
    sub = labels[cols_gm]  # (nx_sel, Y, Z) copy
    inb = sub > 0
    is_csf_col = cols_csf[cols_gm][:, None, None]
    # GM lining just above the callosum too (cingulate gyri), limited to the fissure depth.
    sub = np.where(inb & above[None] & ~is_csf_col & (sub == _WM), _GM, sub)
    sub = np.where(inb & above[None] & is_csf_col, _CSF, sub)
    labels[cols_gm] = sub

    # Sylvian fissures: curved insular cistern and the lateral sulcus opening to the surface.
    if float(vox_ph.max()) > 6.0:
        return
    xin = _INSULA_X - thick - 4.0
    ix = np.nonzero(np.abs(x) > xin)[0]
    iy = np.nonzero(np.abs(y - _INSULA_Y0) < _INSULA_RY + thick)[0]
    iz = np.nonzero((z > _INSULA_Z0 - _INSULA_RZ - thick) & (z < _INSULA_Z0 + 3 * _INSULA_RZ))[0]
    if len(ix) == 0 or len(iy) == 0 or len(iz) == 0:
        return
    X = np.abs(x[ix])[:, None, None]
    Y = y[iy][None, :, None]
    Z = z[iz][None, None, :]
    box = labels[np.ix_(ix, iy, iz)]
    inb = box > 0
    half = max(_SULC_HALF, min(_COARSE_SULC * float(vox_ph.min()), _SULC_HALF_MAX))
    ey = (Y - _INSULA_Y0) / _INSULA_RY
    ez = (Z - _INSULA_Z0) / _INSULA_RZ
    in_yz = ey**2 + ez**2 < 1.0
    xins = _INSULA_X - _INSULA_CURV * ((Y - _INSULA_Y0) ** 2 + 1.5 * (Z - _INSULA_Z0) ** 2)
    dins = X - xins
    cistern = in_yz & (np.abs(dins) < half)
    insula_gm = in_yz & (np.abs(dins) < half + thick)
    # Lateral sulcus: from the cistern to the surface, rising posteriorly and laterally.
    zs = _SYLV_Z0 - _SYLV_SLOPE_Y * (Y - _INSULA_Y0) + _SYLV_SLOPE_X * (X - _INSULA_X)
    ylat = np.abs(ey) < 0.8
    lat = ylat & (dins > 0) & (np.abs(Z - zs) < half)
    lat_gm = ylat & (dins > 0) & (np.abs(Z - zs) < half + thick)
    gm = (insula_gm | lat_gm) & inb & (box == _WM)
    box = np.where(gm, _GM, box)
    box = np.where((cistern | lat) & inb, _CSF, box)
    labels[np.ix_(ix, iy, iz)] = box


def _catmull_rom(ctrl: np.ndarray, step: float) -> np.ndarray:
    """Densely resample control rows (first 3 columns positions) along a Catmull-Rom spline."""
    p = np.vstack([2 * ctrl[0] - ctrl[1], ctrl, 2 * ctrl[-1] - ctrl[-2]])
    out = []
    for i in range(1, len(p) - 2):
        seg = float(np.linalg.norm(p[i + 1, :3] - p[i, :3]))
        m = max(2, int(np.ceil(seg / step)))
        t = (np.arange(m) / m)[:, None]
        p0, p1, p2, p3 = p[i - 1], p[i], p[i + 1], p[i + 2]
        out.append(
            0.5
            * (
                2 * p1
                + (-p0 + p2) * t
                + (2 * p0 - 5 * p1 + 4 * p2 - p3) * t**2
                + (-p0 + 3 * p1 - 3 * p2 + p3) * t**3
            )
        )
    out.append(ctrl[-1:])
    return np.vstack(out)


def _paint_ellipsoid(mask, axes, c, rad, tilt_deg: float = 0.0) -> None:
    """OR an (optionally x-z tilted) ellipsoid, phantom mm, into boolean `mask` in place."""
    x, y, z = axes
    rmax = float(max(rad))
    sl = []
    for a, ci, ri in zip(axes, c, (rmax, rad[1], rmax)):
        i0 = int(np.searchsorted(a, ci - ri, side="left"))
        i1 = int(np.searchsorted(a, ci + ri, side="right"))
        if i1 <= i0:
            return
        sl.append(slice(i0, i1))
    dx = (x[sl[0]] - c[0])[:, None, None]
    dy = (y[sl[1]] - c[1])[None, :, None]
    dz = (z[sl[2]] - c[2])[None, None, :]
    th = np.deg2rad(tilt_deg)
    u = np.cos(th) * dx - np.sin(th) * dz  # short (lateral) axis
    w = np.sin(th) * dx + np.cos(th) * dz  # long (vertical) axis
    inside = (u / rad[0]) ** 2 + (dy / rad[1]) ** 2 + (w / rad[2]) ** 2 <= 1.0
    mask[tuple(sl)] |= inside


def _deep_structures(labels, axes, vox_ph, vs: float, jitter: np.ndarray) -> None:
    shape = labels.shape
    brain = labels > 0
    vmin = float(vox_ph.min())
    step = max(0.5, 0.5 * vmin)
    ven = np.zeros(shape, dtype=bool)
    deep = np.zeros(shape, dtype=bool)
    caud = np.zeros(shape, dtype=bool)
    # Ventricles grow outwards: radii scale, centres move so that the medial wall stays put.
    for side, sgn in enumerate((1.0, -1.0)):
        js = 1.0 + 0.04 * jitter[side]  # seeded +-4 % asymmetry
        for ctrl in (_VENT_MAIN, _VENT_TEMPORAL):
            pts = _catmull_rom(ctrl, step)
            for x0, y0, z0, rx, ry, rz, tilt in pts:
                srx, sry, srz = rx * vs * js, ry * vs**0.5 * js, rz * vs**0.75 * js
                cx = sgn * (x0 + (srx - rx))
                _paint_ellipsoid(ven, axes, (cx, y0, z0 + 0.3 * (srz - rz)), (srx, sry, srz), sgn * tilt)
        for i, (cx, cy, cz, rx, ry, rz) in enumerate(_DEEP_GM):
            jj = 1.0 + 0.03 * jitter[2 + 2 * i + side]
            _paint_ellipsoid(deep, axes, (sgn * cx, cy, cz), (rx * jj, ry * jj, rz * jj))
        for cx, cy, cz, rx, ry, rz in _CAUDATE:
            _paint_ellipsoid(caud, axes, (sgn * (cx + 0.8 * (vs - 1) * 4.6), cy, cz), (rx, ry, rz))
    # Third ventricle: midline slit between the thalami.
    x, y, z = axes
    half3 = _V3_HALF_X * vs
    if vox_ph[0] <= 2.0 * half3 + 1e-9 or vox_ph[0] < 2.5:
        sx = np.abs(x) < max(half3, 0.5 * vox_ph[0] + 1e-6)
        sy = (y > _V3_Y[0]) & (y < _V3_Y[1])
        sz = (z > _V3_Z[0]) & (z < _V3_Z[1])
        ven |= sx[:, None, None] & sy[None, :, None] & sz[None, None, :]
    labels[deep & brain & (labels != _CSF)] = _DGM
    labels[ven & brain] = _VEN
    labels[caud & brain & (labels != _CSF)] = _DGM


def _ensure_present(labels, axes, value: int, centres) -> None:
    """At very coarse grids force the voxel nearest each centre (phantom mm) to `value` when the
    hemisphere of that centre has none."""
    x = axes[0]
    for c in centres:
        half = x > 0 if c[0] > 0 else (x < 0 if c[0] < 0 else np.ones_like(x, dtype=bool))
        if (labels[half] == value).any():
            continue
        ijk = tuple(int(np.argmin(np.abs(a - ci))) for a, ci in zip(axes, c))
        labels[ijk] = value


def _single_white_matter(labels) -> None:
    """Keep only the largest 26-connected white-matter component; others become grey matter."""
    wm = labels == _WM
    if not wm.any():
        return
    nz = np.nonzero(wm.any(axis=(1, 2)))[0], np.nonzero(wm.any(axis=(0, 2)))[0], np.nonzero(
        wm.any(axis=(0, 1))
    )[0]
    sl = tuple(slice(int(a[0]), int(a[-1]) + 1) for a in nz)
    sub = wm[sl]
    lab, n = ndimage.label(sub, structure=np.ones((3, 3, 3), dtype=bool))
    if n <= 1:
        return
    counts = np.bincount(lab.ravel())
    counts[0] = 0
    keep = int(np.argmax(counts))
    stray = (lab > 0) & (lab != keep)
    box = labels[sl]
    box[stray] = _GM
    labels[sl] = box
