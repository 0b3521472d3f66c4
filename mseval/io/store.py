"""The forecast store: sampled NET2 masks for every patient x arm, on disk.

Layout of a store folder::

    store.json                      format marker and version
    index.parquet                   one row per (patient, arm) block (schema: forecast_index)
    masks/<patient>/<arm>.nii.gz    4D uint8 (X, Y, Z, S), samples on the 4th axis, patient's affine
    sparse/<patient>/<arm>.npz      foreground voxel indices per sample (see `mseval.io.sparse`)
    _journal/<patient>/<arm>.json   index rows written since the last consolidation

Several forecasters (issue 22): a block's samples may come from K forecasters (e.g. NB2s trained on
bootstrap resamples of the training patients); the index's optional `forecaster` column lists, per
sample, the forecaster that drew it, and store.json's `forecasters` holds each one's provenance
(`record_forecasters`, `store_forecasters`). Stores without the column hold one forecaster.

A block is written in this order, each file atomically: the 4D NIfTI, the sparse companion, then
its journal entry. A block counts as present once its journal entry (or index row) exists, so a
crash leaves either a whole block or none, and a resumed writer skips what is present.
`flush()` folds the journal into `index.parquet`; run it from one process only (rank 0 under
torchrun), since other processes may still be appending journal entries.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import pandas as pd

from mseval.errors import InputError
from mseval.io.atomic import write_json_atomic, write_parquet_atomic
from mseval.io.nifti import load_samples, save_volume
from mseval.io.schemas import validate_frame
from mseval.io.sparse import SparseMasks

STORE_FORMAT = "mseval-forecast-store"
STORE_VERSION = 1
INDEX_COLUMNS = ["patient_id", "arm", "path", "sparse_path", "prob_path", "samples", "seeds", "checkpoint", "sampler"]
FORECASTER_COLUMN = "forecaster"
"""Optional index column: per sample, the forecaster that drew it (absent: one forecaster)."""


@dataclass(frozen=True)
class ForecastBlock:
    """One patient under one arm: S sampled masks and how they were made."""

    root: Path
    patient_id: str
    arm: str
    path: str
    sparse_path: str
    samples: int
    seeds: tuple[int, ...]
    checkpoint: str
    sampler: dict[str, Any] = field(default_factory=dict)
    prob_path: str | None = None
    forecaster: tuple[int, ...] | None = None

    def masks(self) -> tuple[np.ndarray, np.ndarray]:
        """The dense masks (S, X, Y, Z) uint8 and the (4, 4) affine; checks the sample count."""
        return load_samples(self.root / self.path, expected_samples=self.samples)

    def prob(self) -> tuple[np.ndarray, np.ndarray]:
        """The soft probability of each sample (S, X, Y, Z) float32 in [0, 1] and the (4, 4) affine; only for
        blocks sampled with `--prob` (InputError naming the block otherwise)."""
        import nibabel as nib

        if not self.prob_path or not (self.root / self.prob_path).is_file():
            raise InputError(self.root / "index.parquet", f"block {self.patient_id}/{self.arm} holds no probability maps (sample with --prob)",
                             field="prob_path")
        img = nib.load(str(self.root / self.prob_path))
        data = np.asarray(img.dataobj, dtype=np.float32)
        if data.ndim == 3:
            data = data[..., None]
        if data.ndim != 4 or data.shape[3] != self.samples:
            raise InputError(self.root / self.prob_path, f"holds shape {tuple(data.shape)}, expected (X, Y, Z, {self.samples})", field="prob_path")
        return np.ascontiguousarray(np.moveaxis(data, 3, 0)), np.asarray(img.affine, dtype=np.float64)

    def affine(self) -> np.ndarray:
        """The block's (4, 4) affine, from the NIfTI header (no voxel data is read)."""
        import nibabel as nib

        return np.asarray(nib.load(str(self.root / self.path)).affine, dtype=np.float64)

    def sparse(self) -> SparseMasks:
        """The foreground indices of every sample (fast path for counting), with the affine;
        checks the sample count. Rebuilt from the dense block when the companion is missing."""
        if not (self.root / self.sparse_path).is_file() and (self.root / self.path).is_file():
            masks, affine = self.masks()
            return SparseMasks.from_dense(masks, affine)
        sp = SparseMasks.load(self.root / self.sparse_path)
        if sp.affine is None:
            sp = SparseMasks(sp.shape, sp.offsets, sp.indices, self.affine())
        if sp.n_samples != self.samples:
            raise InputError(self.root / self.sparse_path, f"holds {sp.n_samples} samples, the index says {self.samples}", field="samples")
        return sp


class ForecastStore:
    """Read and append blocks of a forecast store. Use `ForecastStore.create` to write, `open` to read."""

    def __init__(
        self, root: Path, entries: dict[tuple[str, str], dict[str, Any]], *, writable: bool, flush_every: int = 64, consolidates: bool = True
    ) -> None:
        self.root = root
        self._consolidates = consolidates
        self._entries = entries
        self._writable = writable
        self._flush_every = flush_every
        self._unflushed = 0

    # -- opening ---------------------------------------------------------------------------
    @classmethod
    def open(cls, root: str | Path) -> ForecastStore:
        """Open an existing store for reading (validates the index and journal)."""
        root = Path(root)
        cls._check_marker(root)
        return cls(root, cls._read_entries(root), writable=False)

    @classmethod
    def create(cls, root: str | Path, *, flush_every: int = 64) -> ForecastStore:
        """Open a store for appending, creating it when missing. Blocks already present are kept (resume)."""
        root = Path(root)
        if root.exists() and not (root / "store.json").exists() and any(root.iterdir()):
            raise InputError(root, "folder exists and is not a forecast store (no store.json); choose an empty or new folder")
        root.mkdir(parents=True, exist_ok=True)
        if not (root / "store.json").exists():
            write_json_atomic({"format": STORE_FORMAT, "version": STORE_VERSION}, root / "store.json")
        cls._check_marker(root)
        return cls(root, cls._read_entries(root), writable=True, flush_every=flush_every)

    @classmethod
    def appender(cls, root: str | Path) -> ForecastStore:
        """A write-only handle on an existing store for a worker process: it appends journal entries
        and never consolidates (the coordinating process calls `flush`)."""
        root = Path(root)
        cls._check_marker(root)
        return cls(root, {}, writable=True, consolidates=False)

    @staticmethod
    def _check_marker(root: Path) -> None:
        marker = root / "store.json"
        if not root.is_dir():
            raise InputError(root, "forecast store folder not found")
        if not marker.is_file():
            raise InputError(root, "not a forecast store (store.json missing)")
        try:
            meta = json.loads(marker.read_text())
        except json.JSONDecodeError as exc:
            raise InputError(marker, f"invalid JSON ({exc})") from None
        if meta.get("format") != STORE_FORMAT:
            raise InputError(marker, f"format is {meta.get('format')!r}, expected {STORE_FORMAT!r}", field="format")
        if int(meta.get("version", -1)) > STORE_VERSION:
            raise InputError(marker, f"store version {meta.get('version')} is newer than this mseval reads ({STORE_VERSION})", field="version")

    @staticmethod
    def _read_entries(root: Path) -> dict[tuple[str, str], dict[str, Any]]:
        entries: dict[tuple[str, str], dict[str, Any]] = {}
        index_path = root / "index.parquet"
        if index_path.exists():
            try:
                df = pd.read_parquet(index_path)
            except Exception as exc:  # noqa: BLE001
                raise InputError(index_path, f"cannot read index ({type(exc).__name__}: {exc})") from None
            df = validate_frame(df, "forecast_index", index_path)
            for rec in df.to_dict("records"):
                entries[(rec["patient_id"], rec["arm"])] = _normalise(rec)
        journal = sorted((root / "_journal").glob("*/*.json")) if (root / "_journal").is_dir() else []
        if journal:
            recs = []
            for jp in journal:
                try:
                    recs.append(json.loads(jp.read_text()))
                except json.JSONDecodeError as exc:
                    raise InputError(jp, f"invalid journal entry ({exc})") from None
            cols = INDEX_COLUMNS + ([FORECASTER_COLUMN] if any(FORECASTER_COLUMN in r for r in recs) else [])
            df = validate_frame(pd.DataFrame(recs, columns=cols), "forecast_index", root / "_journal")
            for rec in df.to_dict("records"):
                entries[(rec["patient_id"], rec["arm"])] = _normalise(rec)
        return entries

    # -- reading ---------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def keys(self) -> list[tuple[str, str]]:
        """(patient_id, arm) of every block, sorted."""
        return sorted(self._entries)

    @property
    def patients(self) -> list[str]:
        return sorted({p for p, _ in self._entries})

    @property
    def arms(self) -> list[str]:
        return sorted({a for _, a in self._entries})

    def index(self) -> pd.DataFrame:
        """The index as a DataFrame (one row per block, sorted by patient and arm)."""
        rows = [self._entries[k] for k in self.keys()]
        several = any(r.get(FORECASTER_COLUMN) is not None for r in rows)
        df = pd.DataFrame(rows, columns=INDEX_COLUMNS + ([FORECASTER_COLUMN] if several else []))
        if several:
            df[FORECASTER_COLUMN] = df[FORECASTER_COLUMN].map(lambda f: [int(v) for v in f] if isinstance(f, (list, tuple)) else None)
        df["sampler"] = df["sampler"].map(lambda d: json.dumps(d, sort_keys=True))
        df["seeds"] = df["seeds"].map(lambda s: [int(v) for v in s])
        df["samples"] = df["samples"].astype("int64")
        return df

    def block(self, patient_id: str, arm: str) -> ForecastBlock:
        try:
            rec = self._entries[(patient_id, arm)]
        except KeyError:
            raise InputError(self.root, f"no block for patient {patient_id!r} under arm {arm!r}") from None
        return ForecastBlock(root=self.root, **rec)

    def blocks(self, patients: Iterable[str] | None = None, arms: Iterable[str] | None = None) -> Iterator[ForecastBlock]:
        """Iterate blocks (sorted), optionally only those patients / arms. Loads nothing until asked."""
        want_p = None if patients is None else set(patients)
        want_a = None if arms is None else set(arms)
        for p, a in self.keys():
            if (want_p is None or p in want_p) and (want_a is None or a in want_a):
                yield self.block(p, a)

    # -- writing ---------------------------------------------------------------------------
    def write_block(
        self,
        patient_id: str,
        arm: str,
        masks: np.ndarray,
        affine: np.ndarray,
        seeds: Sequence[int],
        *,
        checkpoint: str,
        sampler: Mapping[str, Any],
        prob: np.ndarray | None = None,
        forecaster: Sequence[int] | None = None,
    ) -> ForecastBlock:
        """Append one block. masks: (S, X, Y, Z) binary; seeds: S non-negative ints; prob: optional
        (S, X, Y, Z) float soft masks; forecaster: optional S ints, the forecaster of each sample
        (record their provenance with `record_forecasters`). Raises ValueError if the block is already present."""
        if not self._writable:
            raise ValueError("store opened read-only; use ForecastStore.create to append")
        if (patient_id, arm) in self._entries:
            raise ValueError(f"block ({patient_id}, {arm}) already in the store")
        masks = np.asarray(masks)
        if masks.ndim != 4:
            raise ValueError(f"masks must be (S, X, Y, Z), got shape {masks.shape}")
        if masks.dtype != bool:
            fractional = masks.dtype.kind == "f" and not np.isin(masks, (0, 1)).all()
            if masks.min(initial=0) < 0 or masks.max(initial=0) > 1 or fractional:
                raise ValueError("masks must be binary")
        masks = masks.astype(np.uint8, copy=False)
        n = masks.shape[0]
        if len(seeds) != n:
            raise ValueError(f"{len(seeds)} seeds for {n} samples")
        if forecaster is not None and len(forecaster) != n:
            raise ValueError(f"{len(forecaster)} forecaster ids for {n} samples")
        rel = f"{patient_id}/{arm}"
        rec: dict[str, Any] = {
            "patient_id": patient_id,
            "arm": arm,
            "path": f"masks/{rel}.nii.gz",
            "sparse_path": f"sparse/{rel}.npz",
            "prob_path": None,
            "samples": int(n),
            "seeds": [int(s) for s in seeds],
            "checkpoint": str(checkpoint),
            "sampler": json.dumps(dict(sampler), sort_keys=True),
        }
        if forecaster is not None:
            rec[FORECASTER_COLUMN] = [int(k) for k in forecaster]
        validate_frame(pd.DataFrame([rec], columns=list(rec)), "forecast_index", self.root / "_journal" / f"{rel}.json")
        save_volume(np.moveaxis(masks, 0, 3), affine, self.root / rec["path"], compresslevel=1)
        SparseMasks.from_dense(masks, affine).save(self.root / rec["sparse_path"])
        if prob is not None:
            rec["prob_path"] = f"prob/{rel}.nii.gz"
            save_volume(np.moveaxis(np.asarray(prob, dtype=np.float32), 0, 3), affine, self.root / rec["prob_path"], compresslevel=1)
        write_json_atomic(rec, self.root / "_journal" / f"{rel}.json")
        self._entries[(patient_id, arm)] = _normalise(rec)
        self._unflushed += 1
        if self._consolidates and self._unflushed >= self._flush_every:
            self.flush()
        return self.block(patient_id, arm)

    def flush(self) -> None:
        """Fold the journal into index.parquet (atomically), then drop the folded journal entries."""
        if not (self._writable and self._consolidates):
            return
        write_parquet_atomic(self.index(), self.root / "index.parquet", metadata={"mseval_store_version": str(STORE_VERSION)})
        journal = self.root / "_journal"
        if journal.is_dir():
            for jp in journal.glob("*/*.json"):
                if (jp.parent.name, jp.stem) in self._entries:
                    jp.unlink(missing_ok=True)
            for d in sorted(journal.glob("*"), reverse=True):
                if d.is_dir() and not any(d.iterdir()):
                    d.rmdir()
            if not any(journal.iterdir()):
                journal.rmdir()
        self._unflushed = 0

    def close(self) -> None:
        self.flush()

    def __enter__(self) -> ForecastStore:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


def _normalise(rec: Mapping[str, Any]) -> dict[str, Any]:
    sampler = rec["sampler"]
    prob = rec.get("prob_path")
    fc = rec.get(FORECASTER_COLUMN)
    fc = None if fc is None or (isinstance(fc, float) and np.isnan(fc)) else tuple(int(k) for k in fc)
    return {
        "patient_id": str(rec["patient_id"]),
        "arm": str(rec["arm"]),
        "path": str(rec["path"]),
        "sparse_path": str(rec["sparse_path"]),
        "prob_path": None if prob is None or (isinstance(prob, float) and np.isnan(prob)) else str(prob),
        "samples": int(rec["samples"]),
        "seeds": tuple(int(s) for s in rec["seeds"]),
        "checkpoint": str(rec["checkpoint"]),
        "sampler": json.loads(sampler) if isinstance(sampler, str) else dict(sampler),
        **({FORECASTER_COLUMN: fc} if fc is not None else {}),
    }


def _first_difference(old: Mapping[str, Any], new: Mapping[str, Any]) -> str | None:
    for key in [*new, *[k for k in old if k not in new]]:
        if json.dumps(old.get(key), sort_keys=True) != json.dumps(new.get(key), sort_keys=True):
            return key
    return None


def check_store_settings(root: str | Path, settings: Mapping[str, Any], *, option_names: Mapping[str, str] | None = None) -> bool:
    """Check that resuming the store at `root` with `settings` adds to it, never mixes it.

    settings: what defines every block of the store (e.g. forecaster or checkpoint id, samples per
    block, seed, sampler), JSON-able. A store records them in store.json when it is made; a rerun with
    different ones raises `InputError` naming the first difference (as the option `option_names` maps
    it to). A store made before settings were recorded is checked block by block: one forecaster
    (checkpoint) and one sample count. Returns whether the store already exists (False: new).
    """
    root = Path(root)
    if not (root / "store.json").is_file():
        return False
    ForecastStore._check_marker(root)
    meta = json.loads((root / "store.json").read_text())
    names = dict(option_names or {})
    recorded = meta.get("settings")
    if recorded is None:
        entries = ForecastStore._read_entries(root)
        for e in entries.values():
            for key, rec_key in (("checkpoint", "checkpoint"), ("samples", "samples")):
                if key in settings and str(e[rec_key]) != str(settings[key]):
                    raise InputError(root, f"holds forecasts with {names.get(key, key)} {e[rec_key]}, not {settings[key]}: one store holds one "
                                           "forecaster's samples; choose another --out or pass --overwrite", field=names.get(key, key))
        return True
    key = _first_difference(recorded, settings)
    if key is not None:
        raise InputError(root / "store.json", f"the store was made with {names.get(key, key)} {json.dumps(recorded.get(key))}, this run asks for "
                                              f"{json.dumps(settings.get(key))}; choose another --out or pass --overwrite", field=names.get(key, key))
    return True


def record_store_settings(root: str | Path, settings: Mapping[str, Any]) -> None:
    """Write the store marker with `settings` (a new store, before its first block)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    write_json_atomic({"format": STORE_FORMAT, "version": STORE_VERSION, "settings": dict(settings)}, root / "store.json")


def record_forecasters(root: str | Path, provenance: Mapping[int, Mapping[str, Any]]) -> None:
    """Record in store.json the provenance of each forecaster whose samples the store holds
    ({forecaster id: {trained_on, resample, ...}}), merged with what is recorded."""
    root = Path(root)
    ForecastStore._check_marker(root)
    meta = json.loads((root / "store.json").read_text())
    known = {str(k): v for k, v in (meta.get("forecasters") or {}).items()}
    known.update({str(int(k)): dict(v) for k, v in provenance.items()})
    meta["forecasters"] = {k: known[k] for k in sorted(known, key=int)}
    write_json_atomic(meta, root / "store.json")


@dataclass(frozen=True)
class StoreForecasters:
    """The forecasters of a store: samples (patient_id, arm, sample, forecaster), one row per sample
    of every block; provenance {forecaster id: record} from store.json (empty for a one-forecaster
    store without records); ids: the forecasters, sorted."""

    samples: pd.DataFrame
    provenance: dict[int, dict[str, Any]]
    ids: list[int]

    @property
    def count(self) -> int:
        return len(self.ids)


def store_forecasters(root: str | Path) -> StoreForecasters:
    """Which forecaster drew each sample of the store at `root`, checked: every block lists one id per
    sample or none (a store mixing blocks with and without ids mixes forecasters without saying
    which), several forecasters each have a provenance record in store.json, and every forecaster has
    the same number of samples in every block. Raises InputError naming the store otherwise."""
    root = Path(root)
    store = ForecastStore.open(root)
    meta = json.loads((root / "store.json").read_text())
    prov = {int(k): dict(v) for k, v in (meta.get("forecasters") or {}).items()}
    rows, with_ids, without = [], 0, 0
    for b in store.blocks():
        ids = b.forecaster
        if ids is None:
            without += 1
            ids = (0,) * b.samples
        else:
            with_ids += 1
        rows.append(pd.DataFrame({"patient_id": b.patient_id, "arm": b.arm, "sample": np.arange(b.samples, dtype=np.int64),
                                  "forecaster": np.asarray(ids, dtype=np.int64)}))
    samples = pd.concat(rows, ignore_index=True) if rows else pd.DataFrame(columns=["patient_id", "arm", "sample", "forecaster"])
    if with_ids and without:
        raise InputError(root / "index.parquet", f"{with_ids} blocks name the forecaster of each sample and {without} do not: the store mixes "
                                                 "forecasters without provenance", field=FORECASTER_COLUMN)
    ids = sorted(int(k) for k in samples["forecaster"].unique())
    if len(ids) > 1:
        missing = [k for k in ids if k not in prov]
        if missing:
            raise InputError(root / "store.json", f"the store mixes {len(ids)} forecasters and records no provenance for forecaster {missing[0]} "
                                                  f"({len(missing)} without): where each came from (training data, resample) is needed to combine them",
                             field="forecasters")
        per = samples.groupby(["patient_id", "arm", "forecaster"]).size().unstack("forecaster")
        if per.isna().any().any() or len(np.unique(per.to_numpy())) > 1:
            raise InputError(root / "index.parquet", "every forecaster must draw the same number of samples in every block "
                                                     f"(found {sorted(set(per.fillna(0).astype(int).to_numpy().ravel()))})", field=FORECASTER_COLUMN)
    return StoreForecasters(samples, prov, ids)
