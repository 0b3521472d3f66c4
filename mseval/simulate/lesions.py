"""Lesion placement with guaranteed separation, so that a mask's component count is the truth.

Every lesion is 6-connected and lies inside the allowed region (white matter); any two lesions
keep a gap of at least one voxel at 26-connectivity. A mask built from them therefore has exactly
one connected component per lesion at connectivity 6, 18 and 26. New lesions are ellipsoids
(log-normal radii in mm, random orientation) clipped to the free space; an enlarging lesion is a
baseline lesion grown by a rim, away from its neighbours.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

_CONN6 = ndimage.generate_binary_structure(3, 1)
_CONN26 = np.ones((3, 3, 3), dtype=bool)


def _box(lo: np.ndarray, hi: np.ndarray, shape: tuple[int, ...]) -> tuple[slice, slice, slice]:
    lo = np.maximum(lo, 0)
    hi = np.minimum(hi, np.asarray(shape) - 1)
    return tuple(slice(int(a), int(b) + 1) for a, b in zip(lo, hi))  # type: ignore[return-value]


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    return q * np.sign(np.diag(r))


@dataclass
class LesionField:
    """Lesions on one (X, Y, Z) grid. `labels` holds lesion ids (0 = none); `free` marks allowed
    voxels at least two voxels (26-neighbourhood) away from every lesion, where a new lesion may go.

    allowed: (X, Y, Z) bool region lesions must lie in; weights: (X, Y, Z) non-negative sampling
    weights for lesion centres (e.g. periventricular preference); spacing: voxel size in mm.
    """

    allowed: np.ndarray
    weights: np.ndarray
    spacing: tuple[float, float, float]
    labels: np.ndarray = field(init=False)
    free: np.ndarray = field(init=False)
    boxes: dict[int, tuple[slice, slice, slice]] = field(init=False, default_factory=dict)
    seeds: dict[int, tuple[int, int, int]] = field(init=False, default_factory=dict)
    """lesion id -> the centre voxel drawn from `weights` by `place_new` (the point law of its site)."""

    def __post_init__(self) -> None:
        self.allowed = self.allowed.astype(bool)
        self.labels = np.zeros(self.allowed.shape, dtype=np.int32)
        self.free = self.allowed.copy()
        self._weights_flat = np.asarray(self.weights, dtype=np.float64).ravel()

    def reweight(self, weights: np.ndarray) -> None:
        """Draw later lesion centres from `weights` (X, Y, Z) non-negative instead."""
        self.weights = weights
        self._weights_flat = np.asarray(weights, dtype=np.float64).ravel()

    @property
    def next_id(self) -> int:
        return max(self.boxes, default=0) + 1

    def copy(self) -> LesionField:
        new = LesionField.__new__(LesionField)
        new.allowed, new.weights, new.spacing = self.allowed, self.weights, self.spacing
        new._weights_flat = self._weights_flat
        new.labels, new.free, new.boxes = self.labels.copy(), self.free.copy(), dict(self.boxes)
        new.seeds = dict(self.seeds)
        return new

    def mask(self, ids: list[int] | None = None) -> np.ndarray:
        """uint8 mask of the given lesion ids (all lesions when None)."""
        if ids is None:
            return (self.labels > 0).astype(np.uint8)
        return np.isin(self.labels, np.asarray(ids, dtype=np.int32)).astype(np.uint8)

    def voxels(self, lesion_id: int) -> int:
        return int((self.labels[self.boxes[lesion_id]] == lesion_id).sum())

    def centroid(self, lesion_id: int) -> np.ndarray:
        box = self.boxes[lesion_id]
        idx = np.argwhere(self.labels[box] == lesion_id)
        return idx.mean(axis=0) + np.array([s.start for s in box])

    # -- bookkeeping ---------------------------------------------------------------------------
    def _commit(self, lesion_id: int, box: tuple[slice, slice, slice], local: np.ndarray) -> None:
        """Write `local` (bool, box-shaped) as lesion `lesion_id` and shrink the free space around it."""
        self.labels[box][local] = lesion_id
        idx = np.argwhere(self.labels[box] == lesion_id) + np.array([s.start for s in box])
        tight = _box(idx.min(axis=0), idx.max(axis=0), self.labels.shape)
        self.boxes[lesion_id] = tight
        pad = _box(idx.min(axis=0) - 2, idx.max(axis=0) + 2, self.labels.shape)
        near = ndimage.binary_dilation(self.labels[pad] == lesion_id, structure=_CONN26)
        self.free[pad] &= ~near

    # -- new lesions ---------------------------------------------------------------------------
    def place_new(
        self,
        rng: np.random.Generator,
        *,
        median_radius_mm: float,
        sigma: float = 0.35,
        min_voxels: int = 4,
        max_tries: int = 200,
    ) -> int | None:
        """Place one ellipsoidal lesion in free space; return its id, or None when no room is left.

        The centre is drawn from `weights` over free voxels; a centre where no lesion of `min_voxels`
        fits is struck off (weight 0) for the next tries, so a crowded hot spot does not exhaust the
        tries: the law is the weights over the free voxels where a lesion fits."""
        mm_to_vox = 1.0 / np.asarray(self.spacing)
        voxel_volume = float(np.prod(self.spacing))
        free_idx = np.flatnonzero(self.free)
        if free_idx.size == 0:
            return None
        w = self._weights_flat[free_idx].copy()
        for _ in range(max_tries):
            cdf = np.cumsum(w)
            if not cdf[-1] > 0:
                return None
            j = min(int(np.searchsorted(cdf, rng.random() * cdf[-1], side="right")), free_idx.size - 1)
            centre_flat = free_idx[j]
            centre = np.array(np.unravel_index(centre_flat, self.free.shape))
            radii_mm = median_radius_mm * np.exp(sigma * rng.normal()) * rng.uniform(0.7, 1.3, size=3)
            # Below a few voxels an ellipsoid is all discretisation: grow it to hold min_voxels.
            vol_vox = 4.0 / 3.0 * np.pi * np.prod(radii_mm) / voxel_volume
            if vol_vox < 1.5 * min_voxels:
                radii_mm = radii_mm * (1.5 * min_voxels / vol_vox) ** (1.0 / 3.0)
            rot = _random_rotation(rng)
            reach = int(np.ceil(np.max(radii_mm * mm_to_vox.max()))) + 1
            box = _box(centre - reach, centre + reach, self.free.shape)
            grid = np.stack(np.meshgrid(*[np.arange(s.start, s.stop) for s in box], indexing="ij"), axis=-1)
            offs_mm = (grid - centre) * np.asarray(self.spacing)
            d2 = (((offs_mm @ rot) / radii_mm) ** 2).sum(axis=-1)
            cand = (d2 <= 1.0) & self.free[box]
            lab, _ = ndimage.label(cand, structure=_CONN6)
            c_local = tuple(int(c - s.start) for c, s in zip(centre, box))
            if lab[c_local] == 0:
                w[j] = 0.0
                continue
            lesion = lab == lab[c_local]
            if int(lesion.sum()) < min_voxels:
                w[j] = 0.0
                continue
            lesion_id = self.next_id
            self._commit(lesion_id, box, lesion)
            self.seeds[lesion_id] = (int(centre[0]), int(centre[1]), int(centre[2]))
            return lesion_id
        return None

    # -- enlarging lesions ---------------------------------------------------------------------
    def grow(
        self,
        lesion_id: int,
        rng: np.random.Generator,
        *,
        rim_mm: float = 1.5,
        keep: float = 0.8,
        min_fraction: float = 0.5,
        min_voxels: int = 3,
    ) -> bool:
        """Grow lesion `lesion_id` by a rim of about `rim_mm` inside the allowed region, keeping the gap
        to every other lesion. Each rim step keeps a random `keep` share of the candidate voxels (an
        irregular, still 6-connected rim). Succeeds (True) when the lesion grows by at least
        `min_fraction` of its volume and `min_voxels` voxels; otherwise changes nothing."""
        steps = max(1, int(round(rim_mm / min(self.spacing))))
        tight = self.boxes[lesion_id]
        lo = np.array([s.start for s in tight]) - (steps + 2)
        hi = np.array([s.stop - 1 for s in tight]) + (steps + 2)
        box = _box(lo, hi, self.labels.shape)
        local = self.labels[box]
        own = local == lesion_id
        others = (local > 0) & ~own
        room = self.allowed[box] & ~ndimage.binary_dilation(others, structure=_CONN26)
        grown = own.copy()
        for _ in range(steps):
            ring = ndimage.binary_dilation(grown, structure=_CONN6) & room & ~grown
            ring &= rng.random(ring.shape) < keep
            grown |= ring
        added = int(grown.sum() - own.sum())
        if added < max(min_voxels, min_fraction * own.sum()):
            return False
        self._commit(lesion_id, box, grown)
        return True


def periventricular_weights(ventricle_distance_mm: np.ndarray, *, scale_mm: float = 12.0, floor: float = 0.2) -> np.ndarray:
    """Lesion-centre sampling weights: `floor + exp(-d / scale_mm)` (MS lesions favour the ventricles)."""
    return (floor + np.exp(-np.asarray(ventricle_distance_mm, dtype=np.float64) / scale_mm)).astype(np.float64)


def field_from_masks(
    allowed: np.ndarray, weights: np.ndarray, spacing: tuple[float, float, float], lesion_mask: np.ndarray
) -> LesionField:
    """A LesionField holding the components of `lesion_mask` (26-connectivity) as lesions 1..K."""
    import cc3d

    lf = LesionField(allowed=allowed, weights=weights, spacing=spacing)
    labels = cc3d.connected_components(np.ascontiguousarray(lesion_mask, dtype=np.uint8), connectivity=26)
    for k, sl in enumerate(ndimage.find_objects(labels), start=1):
        if sl is not None:
            lf._commit(k, sl, labels[sl] == k)
    return lf


def grow_one(lf: LesionField, candidates: list[int], rng: np.random.Generator) -> int | None:
    """Pop lesion ids off the end of `candidates` until one grows (`LesionField.grow`); its id, or None when the list ran
    out. The popped ids are used up either way."""
    while candidates:
        lid = candidates.pop()
        if lf.grow(lid, rng):
            return lid
    return None


def add_net2_lesions(
    lf: LesionField,
    n: int,
    rng: np.random.Generator,
    *,
    baseline_ids: list[int],
    p_enlarging: float,
    new_radius_mm: float,
    min_voxels: int,
) -> list[tuple[int, str]]:
    """Add `n` NET2 lesions: each enlarges an unused baseline lesion with probability `p_enlarging`
    (falling back to a new lesion when none can grow), else is new (falling back to enlarging an unused baseline lesion
    when no new one fits). Returns (lesion id, kind) pairs. Raises RuntimeError when neither can hold one."""
    candidates = [int(i) for i in rng.permutation(np.asarray(baseline_ids, dtype=np.int64))]
    out: list[tuple[int, str]] = []
    for k in range(n):
        if candidates and rng.random() < p_enlarging:
            grown = grow_one(lf, candidates, rng)
            if grown is not None:
                out.append((grown, "enlarging"))
                continue
        lid_new = lf.place_new(rng, median_radius_mm=new_radius_mm, min_voxels=min_voxels)
        if lid_new is not None:
            out.append((lid_new, "new"))
            continue
        # No room for a separate lesion: confluent with an unused baseline lesion, read as its enlargement (as the
        # simulator's world does, `mseval.simulate.trial`); only when none can grow is the forecast not drawable.
        lid_new = grow_one(lf, candidates, rng)
        if lid_new is None:
            raise RuntimeError(f"no room for NET2 lesion {k + 1} of {n}")
        out.append((lid_new, "enlarging"))
    return out
