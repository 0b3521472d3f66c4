"""Sparse companion of a forecast block: each sample's foreground voxels as flat indices.

A NET2 mask holds a few thousand foreground voxels out of millions; counting lesions from the
foreground alone avoids decompressing and scanning the dense volume. On disk: an uncompressed
.npz (`shape` (3,), `offsets` (S + 1,), `indices` (N,)), written deterministically.
"""

from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mseval.errors import InputError
from mseval.io.atomic import atomic_path

_ZIP_DATE = (1980, 1, 1, 0, 0, 0)


@dataclass(frozen=True)
class SparseMasks:
    """S binary masks on one (X, Y, Z) grid. Sample s's foreground is `indices[offsets[s]:offsets[s+1]]`,
    sorted flat C-order indices (int64)."""

    shape: tuple[int, int, int]
    offsets: np.ndarray
    indices: np.ndarray
    affine: np.ndarray | None = None

    @property
    def n_samples(self) -> int:
        return int(self.offsets.size - 1)

    def sample(self, s: int) -> np.ndarray:
        """Flat indices of sample s's foreground voxels."""
        return self.indices[self.offsets[s] : self.offsets[s + 1]]

    def coords(self, s: int) -> np.ndarray:
        """(N, 3) voxel coordinates of sample s's foreground."""
        return np.stack(np.unravel_index(self.sample(s), self.shape), axis=1)

    def dense(self, s: int) -> np.ndarray:
        """Sample s as an (X, Y, Z) uint8 mask."""
        out = np.zeros(int(np.prod(self.shape)), dtype=np.uint8)
        out[self.sample(s)] = 1
        return out.reshape(self.shape)

    @classmethod
    def from_dense(cls, masks: np.ndarray, affine: np.ndarray | None = None) -> SparseMasks:
        """masks: (S, X, Y, Z) binary; affine: (4, 4) voxel -> world mm of the grid, kept alongside."""
        flat = masks.reshape(masks.shape[0], -1)
        parts = [np.flatnonzero(m) for m in flat]
        offsets = np.zeros(len(parts) + 1, dtype=np.int64)
        offsets[1:] = np.cumsum([p.size for p in parts])
        indices = np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)
        aff = None if affine is None else np.asarray(affine, dtype=np.float64)
        return cls(tuple(int(v) for v in masks.shape[1:]), offsets, indices, aff)  # type: ignore[arg-type]

    def save(self, path: str | Path) -> Path:
        """Write atomically; fixed zip time stamps, so equal masks give equal bytes."""
        dtype = np.int32 if int(np.prod(self.shape)) < 2**31 else np.int64
        arrays = {
            "shape": np.asarray(self.shape, dtype=np.int64),
            "offsets": self.offsets.astype(np.int64),
            "indices": self.indices.astype(dtype),
        }
        if self.affine is not None:
            arrays["affine"] = np.asarray(self.affine, dtype=np.float64)
        with atomic_path(path) as tmp:
            with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as zf:
                for name, arr in arrays.items():
                    buf = io.BytesIO()
                    np.lib.format.write_array(buf, arr, allow_pickle=False)
                    zf.writestr(zipfile.ZipInfo(f"{name}.npy", date_time=_ZIP_DATE), buf.getvalue())
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> SparseMasks:
        path = Path(path)
        if not path.is_file():
            raise InputError(path, "file not found", field="sparse_path")
        try:
            with np.load(path, allow_pickle=False) as z:
                shape = tuple(int(v) for v in z["shape"])
                offsets = z["offsets"].astype(np.int64)
                indices = z["indices"].astype(np.int64)
                affine = z["affine"] if "affine" in z.files else None
        except Exception as exc:  # noqa: BLE001
            raise InputError(path, f"cannot read sparse block ({type(exc).__name__}: {exc})", field="sparse_path") from None
        if len(shape) != 3 or offsets.ndim != 1 or offsets[0] != 0 or offsets[-1] != indices.size or np.any(np.diff(offsets) < 0):
            raise InputError(path, "sparse block is inconsistent (shape/offsets/indices)", field="sparse_path")
        return cls(shape, offsets, indices, affine)  # type: ignore[arg-type]
