"""One grid per patient: the co-registration check across sessions and resampling with nibabel.

Rule (docs/bids.md): a patient's reference grid is its baseline session's grid (that of its first
baseline image, in the order T1w, T2w, FLAIR, PDw, T1w-Gd). A file on the same grid (shape equal,
affine within `AFFINE_ATOL_MM`) is kept as it is. A file on another grid that covers the same field
of view (the world-space corners of its outer voxel faces within `tol_mm` of the reference's) is
resampled onto the reference grid (`nibabel.processing.resample_from_to`: linear for images, nearest
neighbour for masks, so a mask stays binary). Anything else is not co-registered: an `InputError`
naming the subject, session and field (register the session to baseline first).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from mseval.errors import InputError
from mseval.io.nifti import AFFINE_ATOL_MM

DEFAULT_COREG_TOL_MM = 1.0
"""Largest shift (mm) of a field-of-view corner still counted as the same field of view."""


@dataclass(frozen=True)
class Grid:
    """A voxel grid: shape (X, Y, Z) and affine (4, 4), voxel indices -> world mm."""

    shape: tuple[int, int, int]
    affine: np.ndarray

    @classmethod
    def of_file(cls, path: str | Path) -> Grid:
        """The grid of a NIfTI file, read from its header only (the data are not loaded)."""
        img = nib.load(str(path))
        return cls(tuple(int(s) for s in img.shape[:3]), np.asarray(img.affine, dtype=np.float64))  # type: ignore[arg-type]

    def same_as(self, other: Grid) -> bool:
        return self.shape == other.shape and bool(np.allclose(self.affine, other.affine, atol=AFFINE_ATOL_MM, rtol=0))

    def corners_mm(self) -> np.ndarray:
        """(8, 3) world coordinates (mm) of the outer corners of the field of view (voxel faces, not centres)."""
        ijk = np.array(list(itertools.product(*[(-0.5, s - 0.5) for s in self.shape])), dtype=np.float64)
        return ijk @ self.affine[:3, :3].T + self.affine[:3, 3]


def fov_shift_mm(grid: Grid, ref: Grid) -> float:
    """Largest distance (mm) between corresponding field-of-view corners of `grid` and `ref`."""
    return float(np.linalg.norm(grid.corners_mm() - ref.corners_mm(), axis=1).max())


def check_coregistered(grid: Grid, ref: Grid, *, where: str, field: str, tol_mm: float = DEFAULT_COREG_TOL_MM) -> bool:
    """True when `grid` is the reference grid, False when it covers the same field of view (resample it);
    raises InputError(where, ..., field) when it is off by more than `tol_mm`."""
    if grid.same_as(ref):
        return True
    shift = fov_shift_mm(grid, ref)
    if shift > tol_mm:
        raise InputError(where, f"not co-registered with the baseline session: its field of view is {shift:.3g} mm off (tolerance "
                                f"{tol_mm:g} mm); register it to baseline first", field=field)
    return False


def resample_to(path: str | Path, ref: Grid, *, mask: bool) -> np.ndarray:
    """The NIfTI at `path` resampled onto `ref`: (X, Y, Z) float32 (linear) for an image, uint8 (nearest) for a mask."""
    from nibabel.processing import resample_from_to

    img = nib.load(str(path))
    out = resample_from_to(img, (ref.shape, ref.affine), order=0 if mask else 1, mode="constant", cval=0.0)
    data = np.asanyarray(out.dataobj)
    return data.astype(np.uint8) if mask else data.astype(np.float32)
