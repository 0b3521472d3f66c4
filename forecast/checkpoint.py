"""Checkpoint folder I/O. A checkpoint is a folder::

    config.json       the ForecastConfig (arms filled in), readable without torch
    checkpoint.pt     weights, EMA weights, optimizer, step, patient split, loss log (torch.save)
    train_log.csv     step, loss (rank 0), seconds

Written atomically (temporary name, then rename), so an interrupt never leaves half a file.
Loading checks everything and raises InputError naming the file for a corrupt or foreign file.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from forecast.config import ForecastConfig
from mseval.errors import InputError
from mseval.io.atomic import atomic_path

FORMAT = "mseval-forecast-checkpoint"
VERSION = 1
WEIGHTS = "checkpoint.pt"


@dataclass
class Checkpoint:
    """Everything needed to sample from, evaluate or resume a model."""

    config: ForecastConfig
    model: dict[str, torch.Tensor]
    ema: dict[str, torch.Tensor]
    optimizer: dict[str, Any] | None
    step: int
    train_ids: list[str]
    val_ids: list[str]
    log: list[dict[str, float]] = field(default_factory=list)
    provenance: dict[str, Any] = field(default_factory=dict)
    """What it learned from: {"cohort_fingerprint", "train": {patient: fingerprint}, "validation": {...}}
    (`mseval.provenance.training_provenance`); empty for checkpoints written before it was recorded."""
    path: Path | None = None
    digest: str = ""
    runtime: dict[str, Any] = field(default_factory=dict)  # device, dtype, deterministic settings (forecast.runtime)

    @property
    def id(self) -> str:
        """Short id for the forecast store: config name, step and the first 12 hex of the content digest
        (weights, EMA weights, config, step and patient split; not the training log's wall-clock seconds)."""
        return f"{self.config.name}@{self.step}:{self.digest[:12]}"

    def to_payload(self) -> dict[str, Any]:
        return {
            "format": FORMAT, "version": VERSION, "config": self.config.to_dict(), "model": self.model, "ema": self.ema,
            "optimizer": self.optimizer, "step": int(self.step), "train_ids": list(self.train_ids), "val_ids": list(self.val_ids),
            "log": list(self.log), "runtime": dict(self.runtime), "provenance": dict(self.provenance),
        }


def weights_path(path: str | Path) -> Path:
    p = Path(path)
    return p / WEIGHTS if p.is_dir() or p.suffix != ".pt" else p


def save_checkpoint(ckpt: Checkpoint, folder: str | Path) -> Path:
    """Write config.json, checkpoint.pt and train_log.csv into `folder`, each atomically."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(folder / WEIGHTS) as tmp:
        torch.save(ckpt.to_payload(), tmp)
    ckpt.config.save(folder / "config.json")
    lines = ["step,loss,seconds"] + [f"{int(r['step'])},{r['loss']:.6g},{r.get('seconds', 0.0):.3f}" for r in ckpt.log]
    with atomic_path(folder / "train_log.csv") as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    ckpt.path = folder
    ckpt.digest = content_digest(ckpt.to_payload())
    return folder


def content_digest(payload: dict[str, Any]) -> str:
    """SHA-256 of what defines a model's forecasts: its weights (model and EMA, names, dtypes, shapes,
    values), config, step and patient split. Equal for a checkpoint and its resumed copy, whatever
    the wall-clock times in its training log."""
    import json

    h = hashlib.sha256()
    h.update(json.dumps({k: payload.get(k) for k in ("config", "step", "train_ids", "val_ids")}, sort_keys=True, default=str).encode())
    for part in ("model", "ema"):
        for name in sorted(payload.get(part) or {}):
            t = payload[part][name]
            h.update(f"{part}/{name}/{t.dtype}/{tuple(t.shape)}".encode())
            h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def load_checkpoint(path: str | Path, *, map_location: str | torch.device = "cpu") -> Checkpoint:
    """Read a checkpoint folder (or its checkpoint.pt). Corrupt, truncated or foreign files raise InputError."""
    wp = weights_path(path)
    if not wp.is_file():
        raise InputError(wp, "checkpoint not found (expected a folder written by `mseval forecast train`)")
    try:
        payload = torch.load(wp, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any decode failure is bad input
        raise InputError(wp, f"cannot read checkpoint (truncated or corrupt? {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise InputError(wp, f"not an mseval forecast checkpoint (format {payload.get('format') if isinstance(payload, dict) else type(payload).__name__!r})", field="format")
    if int(payload.get("version", -1)) > VERSION:
        raise InputError(wp, f"checkpoint version {payload.get('version')} is newer than this mseval reads ({VERSION})", field="version")
    for key in ("config", "model", "ema", "step", "train_ids", "val_ids"):
        if key not in payload:
            raise InputError(wp, f"checkpoint lacks {key!r}", field=key)
    cfg = ForecastConfig.from_dict(payload["config"], source=wp)
    if cfg.arms is None:
        raise InputError(wp, "checkpoint config has no arms", field="arms")
    ckpt = Checkpoint(
        config=cfg, model=payload["model"], ema=payload["ema"], optimizer=payload.get("optimizer"), step=int(payload["step"]),
        train_ids=list(payload["train_ids"]), val_ids=list(payload["val_ids"]), log=list(payload.get("log", [])),
        provenance=dict(payload.get("provenance") or {}), path=wp.parent, digest=content_digest(payload),
        runtime=dict(payload.get("runtime") or {}),
    )
    return ckpt


def build_model(ckpt: Checkpoint, *, ema: bool = True, device: str | torch.device = "cpu") -> torch.nn.Module:
    """The denoiser with the checkpoint's (EMA by default) weights, in eval mode. A state that does
    not fit the config raises InputError."""
    from forecast.model import NET2Denoiser

    model = NET2Denoiser(ckpt.config)
    try:
        model.load_state_dict(ckpt.ema if ema else ckpt.model)
    except RuntimeError as exc:
        raise InputError(weights_path(ckpt.path or "."), f"weights do not fit the config ({str(exc).splitlines()[0]})") from None
    return model.to(device).eval()


def export_checkpoint(ckpt: Checkpoint, folder: str | Path, *, config: ForecastConfig | None = None,
                      provenance: dict[str, Any] | None = None) -> Checkpoint:
    """Write a release copy of `ckpt` into `folder`: the EMA weights only (as both `model` and `ema`,
    stored once), no optimizer state (it cannot be resumed), the training log, split and provenance
    (plus `exported_from`: the source checkpoint's id), and optionally a config with other sampling
    defaults (e.g. the guidance chosen on validation data). Sampling with `ema=True` gives the same
    numbers as the source checkpoint at the same settings. Returns the written checkpoint."""
    cfg = config or ckpt.config
    if config is not None:
        fixed = ("channels", "attention_levels", "num_res_blocks", "inputs", "shape", "arms", "count_head", "prediction", "objective")
        changed = [k for k in fixed if getattr(config, k) != getattr(ckpt.config, k)]
        if changed:
            raise InputError(None, f"an exported config may change sampling defaults only, not {changed[0]!r}", field=changed[0])
    ema = {k: v.detach().cpu().clone() for k, v in ckpt.ema.items()}
    prov = {**dict(ckpt.provenance), **(provenance or {}), "exported_from": ckpt.id}
    out = Checkpoint(config=cfg, model=ema, ema=ema, optimizer=None, step=ckpt.step, train_ids=list(ckpt.train_ids),
                     val_ids=list(ckpt.val_ids), log=list(ckpt.log), provenance=prov, runtime=dict(ckpt.runtime))
    save_checkpoint(out, folder)
    return load_checkpoint(folder)
