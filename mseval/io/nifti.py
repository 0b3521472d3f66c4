"""NIfTI I/O with the checks a pipeline needs (nibabel underneath).

Loading checks: the file exists and decodes (a truncated .nii.gz is caught), the image is 3D
(a trailing axis of length 1 is dropped), all values are finite, and masks hold only 0 and 1.
`check_same_grid` checks that one patient's files share shape and affine. Saving is atomic and
deterministic: the gzip stream carries no time stamp or file name, so equal data give equal bytes.
"""

from __future__ import annotations

import gzip
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from mseval.errors import InputError
from mseval.io.atomic import write_bytes_atomic

AFFINE_ATOL_MM = 1e-3
"""Two affines agree when every entry differs by at most this (mm)."""


@dataclass(frozen=True)
class Volume:
    """One 3D image. data: (X, Y, Z), float32 for images, uint8 for masks; affine: (4, 4) voxel -> world mm."""

    data: np.ndarray
    affine: np.ndarray
    path: Path

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.data.shape)  # type: ignore[return-value]

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm (column norms of the affine)."""
        return tuple(float(v) for v in np.linalg.norm(self.affine[:3, :3], axis=0))  # type: ignore[return-value]

    @property
    def voxel_volume_mm3(self) -> float:
        return float(abs(np.linalg.det(self.affine[:3, :3])))

    @property
    def orientation(self) -> str:
        """Axis codes such as 'RAS' or 'LPS' (nibabel.aff2axcodes)."""
        return "".join(nib.aff2axcodes(self.affine))


def _read(path: Path, field: str | None) -> tuple[np.ndarray, np.ndarray]:
    if not path.is_file():
        raise InputError(path, "file not found", field=field)
    try:
        img = nib.load(str(path))
        data = np.asanyarray(img.dataobj)
        affine = np.asarray(img.affine, dtype=np.float64)
    except Exception as exc:  # noqa: BLE001 - any decode failure is bad input
        kind = type(exc).__name__
        raise InputError(path, f"cannot read NIfTI (truncated or corrupt? {kind}: {exc})", field=field) from None
    return data, affine


def read_spacing(path: str | Path, *, field: str | None = None) -> tuple[float, float, float]:
    """Voxel size in mm (column norms of the affine, as `Volume.spacing`) from the header alone: the image data is not
    read. InputError naming `field` for a missing or unreadable file or a non-finite affine."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "file not found", field=field)
    try:
        affine = np.asarray(nib.load(str(path)).affine, dtype=np.float64)
    except Exception as exc:  # noqa: BLE001 - any decode failure is bad input
        raise InputError(path, f"cannot read NIfTI header ({type(exc).__name__}: {exc})", field=field) from None
    if not np.isfinite(affine).all():
        raise InputError(path, "affine holds NaN or infinity", field=field)
    return tuple(float(v) for v in np.linalg.norm(affine[:3, :3], axis=0))  # type: ignore[return-value]


def load_volume(path: str | Path, *, mask: bool = False, field: str | None = None) -> Volume:
    """Load one 3D NIfTI. With `mask`, require values in {0, 1} and return uint8; else float32.

    field: the manifest column the file came from, named in errors.
    """
    path = Path(path)
    data, affine = _read(path, field)
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise InputError(path, f"expected a 3D image, got shape {tuple(data.shape)}", field=field)
    if not np.isfinite(affine).all():
        raise InputError(path, "affine holds NaN or infinity", field=field)
    if data.dtype.kind == "f" and not np.isfinite(data).all():
        n = int((~np.isfinite(data)).sum())
        raise InputError(path, f"{n} voxels are NaN or infinite", field=field)
    if mask:
        if data.dtype.kind == "b":
            return Volume(data.astype(np.uint8), affine, path)
        if not np.isin(data, (0, 1)).all():
            values = np.unique(data)
            shown = ", ".join(f"{v:g}" for v in values[:5]) + (", ..." if values.size > 5 else "")
            raise InputError(path, f"mask is not binary (values {shown}); expected only 0 and 1", field=field)
        return Volume(data.astype(np.uint8), affine, path)
    return Volume(np.asarray(data, dtype=np.float32), affine, path)


def check_same_grid(volumes: Sequence[Volume], *, atol: float = AFFINE_ATOL_MM) -> None:
    """Raise InputError when any volume's shape or affine differs from the others'.

    The reference is the grid most of the volumes share, so the error names the odd file out.
    """
    if not volumes:
        return
    agree = [
        sum(v.shape == w.shape and np.allclose(v.affine, w.affine, atol=atol, rtol=0) for w in volumes) for v in volumes
    ]
    first = volumes[int(np.argmax(agree))]
    for vol in volumes:
        if vol.shape != first.shape:
            raise InputError(vol.path, f"shape {vol.shape} differs from {first.path.name} {first.shape}")
        if not np.allclose(vol.affine, first.affine, atol=atol, rtol=0):
            diff = float(np.abs(vol.affine - first.affine).max())
            raise InputError(vol.path, f"affine differs from {first.path.name} by up to {diff:.3g} mm (tolerance {atol:g})")


def to_nifti(data: np.ndarray, affine: np.ndarray, *, zooms: Sequence[float] | None = None) -> nib.Nifti1Image:
    """Build a Nifti1Image with sform/qform set (code 1, scanner) and mm units."""
    img = nib.Nifti1Image(data, np.asarray(affine, dtype=np.float64))
    img.header.set_data_dtype(data.dtype)
    img.header.set_xyzt_units("mm", "sec")
    img.set_sform(img.affine, code=1)
    img.set_qform(img.affine, code=1)
    if zooms is not None:
        img.header.set_zooms(tuple(zooms))
    return img


def nifti_bytes(img: nib.Nifti1Image, *, compress: bool = True, compresslevel: int = 6) -> bytes:
    """Serialise; with `compress`, a gzip stream with mtime 0 and no file name (deterministic)."""
    raw = img.to_bytes()
    return gzip.compress(raw, compresslevel=compresslevel, mtime=0) if compress else raw


def save_volume(data: np.ndarray, affine: np.ndarray, path: str | Path, *, compresslevel: int = 6) -> Path:
    """Write `data` (3D or 4D) atomically; `.nii.gz` paths are gzip-compressed deterministically."""
    path = Path(path)
    img = to_nifti(np.ascontiguousarray(data), affine)
    return write_bytes_atomic(nifti_bytes(img, compress=path.name.endswith(".gz"), compresslevel=compresslevel), path)


def load_samples(path: str | Path, *, expected_samples: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Load a 4D forecast block (X, Y, Z, S) and return masks (S, X, Y, Z) uint8 and the affine."""
    path = Path(path)
    data, affine = _read(path, "path")
    if data.ndim == 3:
        data = data[..., None]
    if data.ndim != 4:
        raise InputError(path, f"expected a 4D block (X, Y, Z, samples), got shape {tuple(data.shape)}", field="path")
    if expected_samples is not None and data.shape[3] != expected_samples:
        raise InputError(path, f"holds {data.shape[3]} samples, the index says {expected_samples}", field="samples")
    fractional = data.dtype.kind == "f" and not np.isin(data, (0, 1)).all()
    if fractional or data.min(initial=0) < 0 or data.max(initial=0) > 1:
        raise InputError(path, "forecast masks are not binary; expected only 0 and 1", field="path")
    return np.ascontiguousarray(np.moveaxis(data, 3, 0), dtype=np.uint8), affine


def load_probabilities(path: str | Path, *, field: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Load a probability map, 3D (X, Y, Z) or 4D (X, Y, Z, S), and return it as (S, X, Y, Z) float32 (S = 1 for
    3D) with the (4, 4) affine. Every value must be finite and lie in [0, 1] (InputError naming the file otherwise)."""
    path = Path(path)
    data, affine = _read(path, field)
    if data.ndim == 3:
        data = data[..., None]
    if data.ndim != 4:
        raise InputError(path, f"expected a 3D or 4D probability map, got shape {tuple(data.shape)}", field=field)
    if not np.isfinite(affine).all():
        raise InputError(path, "affine holds NaN or infinity", field=field)
    data = np.asarray(data, dtype=np.float32)
    bad = ~np.isfinite(data)
    if bad.any():
        raise InputError(path, f"{int(bad.sum())} voxels are NaN or infinite; a probability map holds values in [0, 1]", field=field)
    lo, hi = float(data.min(initial=0.0)), float(data.max(initial=0.0))
    if lo < 0 or hi > 1:
        raise InputError(path, f"probability map holds values outside [0, 1] (min {lo:g}, max {hi:g})", field=field)
    return np.ascontiguousarray(np.moveaxis(data, 3, 0)), affine
