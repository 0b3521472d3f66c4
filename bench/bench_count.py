"""`mseval count` throughput on a forecast store of 182 x 218 x 182 masks with 10-40 lesions each.

Baseline, measured in the same run: each mask as its own 3D .nii.gz, loaded with nibabel, then
`scipy.ndimage.label` (26-connectivity) and a size filter. Compared: `count_store` (sparse
companion + run-graph labelling) with 1 and 2 worker processes. The store holds a few distinct
blocks, copied under more patient ids to reach a trial-like number of masks (counting cost does
not depend on which masks they are).
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from bench_store import make_masks
from mseval.io.nifti import save_volume
from mseval.io.store import ForecastStore
from mseval.lesions.ensemble import CountSettings, count_store


def build_store(root: Path, unique_blocks: int, samples: int, copies: int) -> tuple[list[np.ndarray], np.ndarray]:
    blocks, affine = make_masks(unique_blocks, samples, seed=1)
    with ForecastStore.create(root) as store:
        for b, masks in enumerate(blocks):
            store.write_block(f"U{b}", "placebo", masks, affine, list(range(samples)), checkpoint="bench", sampler={})
    index = ForecastStore.open(root).index()
    journal = root / "_journal"
    for c in range(copies):
        for rec in index.to_dict("records"):
            pid = f"C{c:05d}{rec['patient_id']}"
            for key in ("path", "sparse_path"):
                dst = root / rec[key].replace(rec["patient_id"], pid, 1)
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(root / rec[key], dst)
            entry = {**rec, "patient_id": pid, "path": rec["path"].replace(rec["patient_id"], pid, 1),
                     "sparse_path": rec["sparse_path"].replace(rec["patient_id"], pid, 1), "seeds": list(rec["seeds"])}
            (journal / pid).mkdir(parents=True, exist_ok=True)
            (journal / pid / "placebo.json").write_text(json.dumps(entry))
    ForecastStore.create(root).flush()
    return blocks, affine


def run(unique_blocks: int = 3, samples: int = 20, copies: int = 100, baseline_masks: int = 60) -> dict[str, float]:
    tmp = Path(tempfile.mkdtemp(prefix="mseval-bench-count-"))
    try:
        blocks, affine = build_store(tmp / "store", unique_blocks, samples, copies)
        n_masks = len(ForecastStore.open(tmp / "store")) * samples
        singles = []
        for k in range(baseline_masks):
            b, s = divmod(k, samples)
            singles.append(save_volume(blocks[b % len(blocks)][s], affine, tmp / "single" / f"{k}.nii.gz"))
        structure = ndimage.generate_binary_structure(3, 3)
        t = time.perf_counter()
        base_counts = []
        for p in singles:
            img = nib.load(str(p))
            labels, n = ndimage.label(np.asanyarray(img.dataobj), structure=structure)
            sizes = np.bincount(labels.ravel())[1:]
            base_counts.append(int((sizes >= 3).sum()))
        base_rate = len(singles) / (time.perf_counter() - t)
        res: dict[str, float] = {"masks_in_store": n_masks, "baseline_nibabel_scipy_masks_per_s": base_rate}
        for workers in (1, 2):
            out = tmp / f"counts{workers}"
            t = time.perf_counter()
            result = count_store(tmp / "store", out, CountSettings(connectivity=26, min_volume_mm3=3.0), workers=workers, chunk_blocks=16)
            rate = n_masks / (time.perf_counter() - t)
            res[f"count_store_{workers}_workers_masks_per_s"] = rate
            res[f"count_store_{workers}_workers_vs_baseline"] = rate / base_rate
        first = result.counts.iloc[: len(base_counts)]["count"].tolist()
        assert first == base_counts, "count_store disagrees with the scipy baseline"
        res["mean_lesions_per_mask"] = float(result.counts["count"].mean())
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return res


if __name__ == "__main__":
    for k, v in run().items():
        print(f"{k:42s} {v:12.1f}")
