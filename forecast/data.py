"""Load a cohort into model tensors, split patients, augment with MONAI transforms.

Images are z-scored inside the brain mask (0 outside); masks enter as 0/1. Every check that can
fail on bad input runs before anything is written, and names the manifest row and field.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from forecast.config import IMAGE_INPUTS, ForecastConfig
from mseval.errors import InputError
from mseval.io.cohort import Cohort
from mseval.seeding import derive_seed


def normalize_image(img: np.ndarray, brain: np.ndarray) -> np.ndarray:
    """z-score inside the brain mask, 0 outside; float32. A flat or empty brain gives zeros."""
    inside = brain > 0
    out = np.zeros(img.shape, dtype=np.float32)
    if inside.sum() < 2:
        return out
    vals = img[inside].astype(np.float64)
    sd = vals.std()
    if sd > 0:
        out[inside] = ((vals - vals.mean()) / sd).astype(np.float32)
    return out


@dataclass(frozen=True)
class PatientData:
    """One patient ready for the network. cond: (C, X, Y, Z) float32; target: (X, Y, Z) float32 soft
    NET2 mask in [0, 1] or None when the cohort has no follow-up; affine: (4, 4)."""

    patient_id: str
    arm: str
    cond: np.ndarray
    target: np.ndarray | None
    affine: np.ndarray


def check_patient_grid(cohort: Cohort, patient_id: str, cfg: ForecastConfig, shape: tuple[int, ...]) -> None:
    if tuple(shape) != tuple(cfg.shape):
        row = cohort.patient_ids.index(patient_id) + 1
        raise InputError(
            cohort.root / "manifest.csv",
            f"patient {patient_id!r} has images of shape {list(shape)}, the model (config {cfg.name!r}) expects {list(cfg.shape)}",
            row=row, field=cfg.inputs[0] if cfg.inputs else "t1",
        )


def load_patient(cohort: Cohort, patient_id: str, cfg: ForecastConfig, *, with_target: bool = True) -> PatientData:
    """Load, check and normalize one patient's conditioning channels (and NET2 target)."""
    fields = tuple(dict.fromkeys(["brain_mask", *cfg.inputs] + (["net2_mask"] if with_target else [])))
    vols = cohort.load_patient(patient_id, fields)
    brain = vols["brain_mask"]
    check_patient_grid(cohort, patient_id, cfg, brain.shape)
    chans = []
    for name in cfg.inputs:
        v = vols[name].data
        chans.append(normalize_image(v, brain.data) if name in IMAGE_INPUTS else v.astype(np.float32))
    cond = np.stack(chans) if chans else np.zeros((0, *brain.shape), np.float32)
    target = None
    if with_target and "net2_mask" in vols:
        target = vols["net2_mask"].data.astype(np.float32)
        if cfg.target_blur_sigma > 0:
            from scipy.ndimage import gaussian_filter

            target = np.clip(gaussian_filter(target, cfg.target_blur_sigma), 0, 1).astype(np.float32)
    arm = str(cohort.row(patient_id)["arm"])
    return PatientData(patient_id, arm, cond, target, brain.affine)


def split_patients(patient_ids: Sequence[str], arms: Sequence[str], val_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Patient-level train/validation split, stratified by allocated arm, seeded.

    Each arm gives round(val_fraction x its patients) to validation (at least one patient stays in
    training). Returns (train, validation), each in cohort order.
    """
    by_arm: dict[str, list[str]] = {}
    for pid, arm in zip(patient_ids, arms):
        by_arm.setdefault(arm, []).append(pid)
    val: set[str] = set()
    for arm, pids in sorted(by_arm.items()):
        rng = np.random.default_rng(derive_seed(seed, "split", arm))
        k = min(int(round(val_fraction * len(pids))), len(pids) - 1)
        val.update(rng.permutation(pids)[:k].tolist())
    train = [p for p in patient_ids if p not in val]
    return train, [p for p in patient_ids if p in val]


class Augment:
    """Random flips on the configured axes (`flip_axes`) and a small affine (MONAI), applied to condition and target
    together; `__call__(cond, target, seed)` is a pure function of its seed."""

    def __init__(self, cfg: ForecastConfig) -> None:
        from monai.transforms import Compose, RandAffined, RandFlipd

        keys = ["cond", "target"]
        rot = np.deg2rad(cfg.rotate_deg)
        self.tf = Compose([
            *(RandFlipd(keys, prob=cfg.flip_prob, spatial_axis=a) for a in cfg.flip_axes),
            RandAffined(keys, prob=cfg.affine_prob, rotate_range=(rot, rot, rot), scale_range=(cfg.scale,) * 3,
                        mode=("bilinear", "bilinear"), padding_mode="zeros"),
        ])

    def __call__(self, cond: torch.Tensor, target: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """cond: (C, X, Y, Z); target: (1, X, Y, Z) in [0, 1]."""
        self.tf.set_random_state(seed=seed % (2**32))
        out = self.tf({"cond": cond, "target": target})
        c, t = out["cond"], out["target"]
        c = c.as_tensor() if hasattr(c, "as_tensor") else c
        t = t.as_tensor() if hasattr(t, "as_tensor") else t
        return c.contiguous().float(), t.clamp(0, 1).contiguous().float()


class TrainingSet:
    """Patients held in memory as tensors. cond: (N, C, X, Y, Z); target: (N, 1, X, Y, Z) in [0, 1]."""

    def __init__(self, patients: Sequence[PatientData]) -> None:
        missing = [p.patient_id for p in patients if p.target is None]
        if missing:
            raise InputError(None, f"patient {missing[0]!r} has no net2_mask; training needs the follow-up NET2 mask", field="net2_mask")
        self.ids = [p.patient_id for p in patients]
        self.arms = [p.arm for p in patients]
        self.cond = torch.from_numpy(np.stack([p.cond for p in patients]))
        self.target = torch.from_numpy(np.stack([p.target for p in patients]))[:, None]  # type: ignore[misc]

    def __len__(self) -> int:
        return len(self.ids)

    def batch(self, index: Sequence[int], augment: Callable | None, seeds: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
        """(cond, target, arms) for the given patient indices; augmentation seeded per member."""
        conds, targets = [], []
        for i, s in zip(index, seeds):
            c, t = self.cond[i], self.target[i]
            if augment is not None:
                c, t = augment(c, t, s)
            conds.append(c)
            targets.append(t)
        return torch.stack(conds), torch.stack(targets), [self.arms[i] for i in index]


def load_patients(cohort: Cohort, ids: Sequence[str], cfg: ForecastConfig, *, with_target: bool = True,
                  progress: Callable[[int, int], None] | None = None) -> list[PatientData]:
    out = []
    for k, pid in enumerate(ids):
        out.append(load_patient(cohort, pid, cfg, with_target=with_target))
        if progress:
            progress(k + 1, len(ids))
    return out
