"""Forecast store read throughput at the 1 mm MNI grid (182 x 218 x 182), masks of 10-40 lesions.

Baseline, measured in the same run: each sample as its own 3D .nii.gz, loaded with nibabel.
Compared: the store's dense 4D block (`ForecastBlock.masks`) and its sparse companion
(`ForecastBlock.sparse`). Prints masks/s and the ratio to the baseline.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np

from mseval.io.nifti import save_volume
from mseval.io.store import ForecastStore
from mseval.simulate.anatomy import make_anatomy
from mseval.simulate.lesions import LesionField, periventricular_weights

SHAPE = (182, 218, 182)


def make_masks(n_blocks: int, samples: int, seed: int = 0) -> tuple[list[np.ndarray], np.ndarray]:
    anat = make_anatomy(SHAPE, (1.0, 1.0, 1.0), seed=seed)
    w = periventricular_weights(anat.ventricle_distance_mm())
    rng = np.random.default_rng(seed)
    blocks = []
    for _ in range(n_blocks):
        masks = np.zeros((samples, *SHAPE), np.uint8)
        for s in range(samples):
            lf = LesionField(anat.wm_mask.astype(bool), w, (1.0, 1.0, 1.0))
            for _ in range(int(rng.integers(10, 41))):
                lf.place_new(rng, median_radius_mm=2.5, min_voxels=4)
            masks[s] = lf.mask()
        blocks.append(masks)
    return blocks, anat.affine


def run(n_blocks: int = 3, samples: int = 10, repeats: int = 2) -> dict[str, float]:
    blocks, affine = make_masks(n_blocks, samples)
    tmp = Path(tempfile.mkdtemp(prefix="mseval-bench-"))
    try:
        t0 = time.perf_counter()
        with ForecastStore.create(tmp / "store") as store:
            for b, masks in enumerate(blocks):
                store.write_block(f"P{b}", "placebo", masks, affine, list(range(samples)), checkpoint="bench", sampler={})
        write_s = time.perf_counter() - t0
        singles = []
        for b, masks in enumerate(blocks):
            for s in range(samples):
                singles.append(save_volume(masks[s], affine, tmp / "single" / f"P{b}_{s}.nii.gz"))
        n = n_blocks * samples
        store = ForecastStore.open(tmp / "store")

        def best(fn) -> float:  # noqa: ANN001
            times = []
            for _ in range(repeats):
                t = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t)
            return min(times)

        base = best(lambda: [np.asanyarray(nib.load(str(p)).dataobj) for p in singles])
        dense = best(lambda: [b.masks() for b in store.blocks()])
        sparse = best(lambda: [b.sparse() for b in store.blocks()])
        fg = np.mean([m.sum() for blk in blocks for m in blk])
        res = {
            "masks": n,
            "mean_foreground_voxels": float(fg),
            "baseline_nibabel_3d_masks_per_s": n / base,
            "store_dense_4d_masks_per_s": n / dense,
            "store_sparse_masks_per_s": n / sparse,
            "dense_vs_baseline": base / dense,
            "sparse_vs_baseline": base / sparse,
            "store_write_masks_per_s": n / write_s,
        }
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return res


if __name__ == "__main__":
    for k, v in run().items():
        print(f"{k:36s} {v:12.1f}")
