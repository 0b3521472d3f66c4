"""Count the lesions of every sample of a forecast store (`mseval count`).

Each block's sparse companion is labelled in one call (`label_sparse`), blocks are grouped in
fixed chunks (sorted by patient and arm), and chunks run on local processes (`workers`) or a Dask
cluster (`dask_scheduler`). Finished chunks are kept under `OUT/_parts/`, so a rerun resumes; the
final tables are the chunks concatenated in key order, hence identical for any worker count.
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import shutil
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from mseval import __version__
from mseval.errors import InputError
from mseval.io.atomic import write_json_atomic, write_parquet_atomic
from mseval.io.store import ForecastBlock, ForecastStore
from mseval.lesions.components import check_connectivity, min_voxels_for, voxel_volume
from mseval.lesions.sparse_label import label_sparse
from mseval.parallel import process_pool

COUNT_COLUMNS = ["patient_id", "arm", "sample", "count", "volume_mm3"]
ENSEMBLE_LESION_COLUMNS = [
    "patient_id", "arm", "sample", "label", "voxels", "volume_mm3",
    "centroid_x", "centroid_y", "centroid_z", "centroid_x_mm", "centroid_y_mm", "centroid_z_mm",
    "bbox_x0", "bbox_y0", "bbox_z0", "bbox_x1", "bbox_y1", "bbox_z1",
]


@dataclass(frozen=True)
class CountSettings:
    """How lesions are counted. The size filter keeps components of at least `min_volume_mm3`
    (inclusive), or of at least `min_voxels` voxels when that is given."""

    connectivity: int = 26
    min_volume_mm3: float = 3.0
    min_voxels: int | None = None

    def min_voxels_on(self, affine: np.ndarray) -> int:
        if self.min_voxels is not None:
            return int(self.min_voxels)
        return min_voxels_for(self.min_volume_mm3, voxel_volume(affine))


def count_block(block: ForecastBlock, settings: CountSettings) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Counts (one row per sample) and lesions (one row per lesion per sample) of one block."""
    sp = block.sparse()
    affine = sp.affine if sp.affine is not None else block.affine()
    mv = settings.min_voxels_on(affine)
    lab = label_sparse(sp.indices, sp.offsets, sp.shape, connectivity=settings.connectivity, min_voxels=mv)
    vv = voxel_volume(affine)
    S = sp.n_samples
    counts = pd.DataFrame(
        {
            "patient_id": block.patient_id,
            "arm": block.arm,
            "sample": np.arange(S, dtype=np.int64),
            "count": lab.counts,
            "volume_mm3": lab.voxels * vv,
        }
    )
    world = lab.lesion_centroid @ affine[:3, :3].T + affine[:3, 3] if lab.lesion_label.size else np.zeros((0, 3))
    b = lab.lesion_bbox
    lesions = pd.DataFrame(
        {
            "patient_id": block.patient_id,
            "arm": block.arm,
            "sample": lab.lesion_sample,
            "label": lab.lesion_label,
            "voxels": lab.lesion_voxels,
            "volume_mm3": lab.lesion_voxels * vv,
            "centroid_x": lab.lesion_centroid[:, 0], "centroid_y": lab.lesion_centroid[:, 1], "centroid_z": lab.lesion_centroid[:, 2],
            "centroid_x_mm": world[:, 0], "centroid_y_mm": world[:, 1], "centroid_z_mm": world[:, 2],
            "bbox_x0": b[:, 0], "bbox_y0": b[:, 1], "bbox_z0": b[:, 2], "bbox_x1": b[:, 3], "bbox_y1": b[:, 4], "bbox_z1": b[:, 5],
        },
        columns=ENSEMBLE_LESION_COLUMNS,
    )
    return counts, lesions


def count_chunk(blocks: Sequence[ForecastBlock], settings: CountSettings) -> tuple[pd.DataFrame, pd.DataFrame]:
    """count_block over several blocks, concatenated (the unit of work for a process or a Dask task)."""
    parts = [count_block(b, settings) for b in blocks]
    return (
        pd.concat([p[0] for p in parts], ignore_index=True),
        pd.concat([p[1] for p in parts], ignore_index=True),
    )


@dataclass(frozen=True)
class CountResult:
    """The counts (one row per patient, arm, sample) and lesions (one row per lesion) of a store."""

    counts: pd.DataFrame
    lesions: pd.DataFrame
    settings: dict

    def to_frame(self) -> pd.DataFrame:
        return self.counts

    def summary(self) -> str:
        by_arm = self.counts.groupby("arm")["count"].mean()
        lines = [f"{len(self.counts)} masks, {len(self.lesions)} lesions ({self.settings['connectivity']}-connectivity, >= {self.settings['min_volume_mm3']} mm^3)"]
        lines += [f"  {arm}: mean {m:.2f} lesions per sample" for arm, m in by_arm.items()]
        return "\n".join(lines)


def _run_chunks(
    chunks: list[tuple[int, list[ForecastBlock]]],
    settings: CountSettings,
    workers: int,
    dask_scheduler: str | None,
) -> Iterator[tuple[int, tuple[pd.DataFrame, pd.DataFrame]]]:
    if dask_scheduler:
        try:
            from distributed import Client
        except ImportError:  # pragma: no cover - the dask extra is installed by make
            raise InputError(None, "--dask-scheduler needs the dask extra: pip install 'mseval[dask]'", field="dask_scheduler") from None
        try:
            client = Client(dask_scheduler, timeout="10s", set_as_default=False)
        except (OSError, TimeoutError) as exc:
            raise InputError(None, f"cannot reach the Dask scheduler at {dask_scheduler} ({exc})", field="dask_scheduler") from None
        try:
            futures = [(k, client.submit(count_chunk, blocks, settings, pure=False)) for k, blocks in chunks]
            for k, fut in futures:  # in submission order; the cluster runs them all meanwhile
                yield k, fut.result()
        finally:
            client.close()
    elif workers > 1:
        with process_pool(workers) as pool:
            futures = {pool.submit(count_chunk, blocks, settings): k for k, blocks in chunks}
            for fut in cf.as_completed(futures):
                yield futures[fut], fut.result()
    else:
        for k, blocks in chunks:
            yield k, count_chunk(blocks, settings)


def count_store(
    store_dir: str | Path,
    out: str | Path,
    settings: CountSettings = CountSettings(),
    *,
    workers: int = 1,
    dask_scheduler: str | None = None,
    chunk_blocks: int = 32,
    progress: Callable[[int, int], None] | None = None,
) -> CountResult:
    """Count every sample of the store at `store_dir`; write `out/counts.parquet` and
    `out/lesions.parquet` (settings in the Parquet metadata under `mseval`). Resumes from
    `out/_parts/` when a previous run with the same settings stopped."""
    check_connectivity(settings.connectivity)
    if settings.min_volume_mm3 < 0 or (settings.min_voxels is not None and settings.min_voxels < 0):
        raise InputError(None, "the minimum lesion size must not be negative", field="min_volume_mm3")
    store = ForecastStore.open(store_dir)
    out = Path(out)
    if (out / "counts.parquet").exists():
        raise InputError(out / "counts.parquet", "exists already; remove it or choose another --out")
    meta = {
        "mseval_version": __version__,
        "store": str(Path(store_dir)),
        **asdict(settings),
        "blocks": len(store),
        "chunk_blocks": chunk_blocks,
    }
    parts = out / "_parts"
    if parts.is_dir() and (parts / "settings.json").is_file():
        previous = json.loads((parts / "settings.json").read_text())
        if {k: v for k, v in previous.items() if k != "store"} != {k: v for k, v in meta.items() if k != "store"}:
            raise InputError(parts / "settings.json", "partial results were made with other settings or another store; remove the folder to start again")
    blocks = list(store.blocks())
    chunks = [(k, blocks[i : i + chunk_blocks]) for k, i in enumerate(range(0, len(blocks), chunk_blocks))]
    todo = [(k, c) for k, c in chunks if not (parts / f"counts-{k:06d}.parquet").exists()]
    write_json_atomic(meta, parts / "settings.json")
    done = len(chunks) - len(todo)
    if progress:
        progress(done * chunk_blocks, len(blocks))
    fresh = done == 0
    try:
        for k, (counts, lesions) in _run_chunks(todo, settings, workers, dask_scheduler):
            write_parquet_atomic(lesions, parts / f"lesions-{k:06d}.parquet")
            write_parquet_atomic(counts, parts / f"counts-{k:06d}.parquet")  # written last: marks the chunk done
            done += 1
            if progress:
                progress(min(done * chunk_blocks, len(blocks)), len(blocks))
    except InputError:
        if fresh:  # bad input: leave nothing behind (a resumed run keeps its earlier, valid chunks)
            shutil.rmtree(parts, ignore_errors=True)
            if out.is_dir() and not any(out.iterdir()):
                out.rmdir()
        raise
    counts = pd.concat([pd.read_parquet(parts / f"counts-{k:06d}.parquet") for k, _ in chunks], ignore_index=True) if chunks else pd.DataFrame(columns=COUNT_COLUMNS)
    lesions = pd.concat([pd.read_parquet(parts / f"lesions-{k:06d}.parquet") for k, _ in chunks], ignore_index=True) if chunks else pd.DataFrame(columns=ENSEMBLE_LESION_COLUMNS)
    metadata = {"mseval": json.dumps(meta, sort_keys=True)}
    write_parquet_atomic(lesions, out / "lesions.parquet", metadata=metadata)
    write_parquet_atomic(counts, out / "counts.parquet", metadata=metadata)
    shutil.rmtree(parts, ignore_errors=True)
    return CountResult(counts, lesions, meta)


def read_count_settings(path: str | Path) -> dict:
    """The settings recorded in a counts.parquet or lesions.parquet written by `count_store`."""
    import pyarrow.parquet as pq

    md = pq.read_schema(path).metadata or {}
    raw = md.get(b"mseval")
    if raw is None:
        raise InputError(path, "no mseval settings in the file metadata (not written by mseval count?)")
    return json.loads(raw)
