"""A per-patient training cache on disk, read memory-mapped, and the loader that feeds each rank.

Layout of a cache folder (one per cohort x inputs x shape x target blur)::

    cache.json               fingerprint, channel order, per-patient arm
    <patient>.images.npy     (n_images, X, Y, Z) float16: images z-scored inside the brain mask
    <patient>.masks.npy      (n_masks, X, Y, Z) uint8: lesion / brain masks among the inputs
    <patient>.target.npy     (X, Y, Z) uint8 NET2 mask, or float16 when `target_blur_sigma > 0`

A 160 x 192 x 160 patient takes 2 x 5 x 4.9 MB + 3 x 4.9 MB + 4.9 MB = 69 MB on disk instead of
157 MB of float32 in every rank's memory; the arrays are memory-mapped, so a rank touches only
the patients its members draw (the page cache is shared between ranks and loader workers).
float16 keeps z-scores to 3 significant digits (relative error <= 2^-11).

`StepBatches` is a `torch.utils.data.Dataset` over optimizer steps: item k holds this rank's
members of step k (all its micro-batches), un-augmented, so a `DataLoader` with workers and pinned
memory prepares step k+1 while step k computes; augmentation runs afterwards on the training
device (`forecast.data.Augment` on device tensors).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from forecast.config import IMAGE_INPUTS, ForecastConfig
from forecast.data import load_patient
from mseval.io.atomic import atomic_path, write_json_atomic
from mseval.io.cohort import Cohort
from mseval.seeding import derive_seed

CACHE_FORMAT = "mseval-forecast-cache"


def cache_fingerprint(cohort: Cohort, cfg: ForecastConfig) -> str:
    """SHA-256 of the manifest bytes and the config fields that shape the cached arrays."""
    h = hashlib.sha256()
    h.update((cohort.root / "manifest.csv").read_bytes())
    h.update(json.dumps({"inputs": list(cfg.inputs), "shape": list(cfg.shape), "blur": cfg.target_blur_sigma}).encode())
    return h.hexdigest()


def _save_npy(arr: np.ndarray, path: Path) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, arr)


def build_cache(cohort: Cohort, ids: Sequence[str], cfg: ForecastConfig, folder: str | Path, *,
                progress: Callable[[int, int], None] | None = None) -> Path:
    """Write (or complete) the cache of patients `ids`. Patients already cached under the same
    fingerprint are kept; a different fingerprint starts the folder afresh. Every patient is loaded
    and checked (InputError naming the manifest row) before its files are written."""
    folder = Path(folder)
    fp = cache_fingerprint(cohort, cfg)
    meta_path = folder / "cache.json"
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else None
    if meta is None or meta.get("fingerprint") != fp or meta.get("format") != CACHE_FORMAT:
        meta = {"format": CACHE_FORMAT, "fingerprint": fp, "inputs": list(cfg.inputs), "arms": {}}
        folder.mkdir(parents=True, exist_ok=True)
        for old in folder.glob("*.npy"):
            old.unlink()
    images = [k for k, n in enumerate(cfg.inputs) if n in IMAGE_INPUTS]
    masks = [k for k, n in enumerate(cfg.inputs) if n not in IMAGE_INPUTS]
    todo = [p for p in ids if p not in meta["arms"]]
    for n, pid in enumerate(todo):
        p = load_patient(cohort, pid, cfg, with_target=True)
        if p.target is None:
            from mseval.errors import InputError

            raise InputError(cohort.root / "manifest.csv", f"patient {pid!r} has no net2_mask; training needs the follow-up NET2 mask",
                             row=cohort.patient_ids.index(pid) + 1, field="net2_mask")
        _save_npy(p.cond[images].astype(np.float16), folder / f"{pid}.images.npy")
        _save_npy(p.cond[masks].round().astype(np.uint8), folder / f"{pid}.masks.npy")
        binary = cfg.target_blur_sigma <= 0
        _save_npy(p.target.round().astype(np.uint8) if binary else p.target.astype(np.float16), folder / f"{pid}.target.npy")
        meta["arms"][pid] = p.arm
        write_json_atomic(meta, meta_path)  # after the arrays: a listed patient is complete
        if progress:
            progress(n + 1, len(todo))
    if not meta_path.is_file():
        write_json_atomic(meta, meta_path)
    return folder


class PatientCache:
    """The cached patients `ids`, memory-mapped; same interface as `forecast.data.TrainingSet`."""

    def __init__(self, folder: str | Path, ids: Sequence[str]) -> None:
        self.folder = Path(folder)
        meta = json.loads((self.folder / "cache.json").read_text())
        self.inputs = list(meta["inputs"])
        self.ids = list(ids)
        self.arms = [meta["arms"][p] for p in self.ids]
        self._images = [k for k, n in enumerate(self.inputs) if n in IMAGE_INPUTS]
        self._masks = [k for k, n in enumerate(self.inputs) if n not in IMAGE_INPUTS]

    def __len__(self) -> int:
        return len(self.ids)

    def item(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """cond (C, X, Y, Z) float32 in the config's channel order; target (1, X, Y, Z) float32 in [0, 1]."""
        pid = self.ids[i]
        img = np.load(self.folder / f"{pid}.images.npy", mmap_mode="r")
        msk = np.load(self.folder / f"{pid}.masks.npy", mmap_mode="r")
        tgt = np.load(self.folder / f"{pid}.target.npy", mmap_mode="r")
        cond = np.empty((len(self.inputs), *tgt.shape), dtype=np.float32)
        cond[self._images] = img
        cond[self._masks] = msk
        return torch.from_numpy(cond), torch.from_numpy(np.asarray(tgt, dtype=np.float32))[None]

    def batch(self, index: Sequence[int], augment: Callable | None, seeds: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
        """(cond, target, arms) for the given patient indices; augmentation seeded per member."""
        conds, targets = [], []
        for i, s in zip(index, seeds):
            c, t = self.item(int(i))
            if augment is not None:
                c, t = augment(c, t, s)
            conds.append(c)
            targets.append(t)
        return torch.stack(conds), torch.stack(targets), [self.arms[int(i)] for i in index]


def step_members(cfg: ForecastConfig, n_patients: int, step: int, rank: int, world: int) -> list[tuple[int, int, int]]:
    """This rank's members of optimizer step `step` (1-based), micro-batch by micro-batch:
    (global member index, patient index, augmentation seed). The patients of a step are drawn from
    (seed, step) alone, so every rank and world size agrees on them."""
    rng = np.random.default_rng(derive_seed(cfg.seed, "batch", step))
    idx = rng.choice(n_patients, size=cfg.batch_size, replace=n_patients < cfg.batch_size)
    local = cfg.batch_size // (world * cfg.grad_accumulation)
    out = []
    for j in range(cfg.grad_accumulation):
        lo = (j * world + rank) * local
        out += [(m, int(idx[m]), derive_seed(cfg.seed, "augment", step, m)) for m in range(lo, lo + local)]
    return out


class StepBatches(torch.utils.data.Dataset):
    """Item i: step first_step + i for one rank: (cond (n, C, X, Y, Z), target (n, 1, X, Y, Z),
    member indices (n,), augmentation seeds (n,), patient indices (n,)), n = members of this rank
    in the step (all micro-batches, in order). Un-augmented; read from the memory-mapped cache."""

    def __init__(self, data: PatientCache, cfg: ForecastConfig, first_step: int, last_step: int, rank: int, world: int) -> None:
        self.data, self.cfg, self.first, self.last, self.rank, self.world = data, cfg, first_step, last_step, rank, world

    def __len__(self) -> int:
        return max(0, self.last - self.first + 1)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        members = step_members(self.cfg, len(self.data), self.first + i, self.rank, self.world)
        items = [self.data.item(p) for _, p, _ in members]
        return (torch.stack([c for c, _ in items]), torch.stack([t for _, t in items]),
                torch.tensor([m for m, _, _ in members]), torch.tensor([s for _, _, s in members], dtype=torch.int64),
                torch.tensor([p for _, p, _ in members]))


def step_loader(data: PatientCache, cfg: ForecastConfig, first_step: int, last_step: int, rank: int, world: int, *,
                workers: int = 0, pin_memory: bool = False) -> torch.utils.data.DataLoader:
    """A DataLoader over `StepBatches` (one item per step, in order) with `workers` processes
    preparing the next steps (2 steps ahead each) and pinned memory for fast copies to the GPU."""
    ds = StepBatches(data, cfg, first_step, last_step, rank, world)
    kw = {"prefetch_factor": 2, "persistent_workers": False} if workers > 0 else {}
    return torch.utils.data.DataLoader(ds, batch_size=None, shuffle=False, num_workers=workers, pin_memory=pin_memory, **kw)


__all__ = ["PatientCache", "StepBatches", "build_cache", "cache_fingerprint", "step_loader", "step_members"]
