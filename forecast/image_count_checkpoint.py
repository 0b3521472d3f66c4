"""Checkpoint folder of the image count model (`forecast.image_count.ImageCountNet`), and the checks a cohort must
pass before the model forecasts it.

    image_count.json   what the model is and needs, readable without torch: format, version, a description in words
                       (`forecast.image_count.describe`), the network's
                       constructor arguments, its inputs (channel names, in order), the image normalisation, the
                       arms, the visit schedule it forecasts (names and scheduled weeks), the grid (voxels and their
                       size in mm), the sampler's distance between lesion centres (mm), the fit summary and the provenance (training and validation patients' fingerprints)
    weights.pt         the state dict (the standardisation buffers included)

Both written atomically. `load_image_count` refuses a missing, corrupt or foreign folder, and weights that do not fit
the recorded network, with an InputError naming the file; `check_cohort` refuses a cohort the model cannot forecast
(no visit schedule, a visit or horizon outside the trained schedule, a missing input image, another grid or voxel size,
an arm the model never saw), naming what is missing and what the checkpoint needs, before anything is sampled.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from forecast.image_count import ImageCountFit, ImageCountNet, describe
from mseval.errors import InputError
from mseval.io.atomic import atomic_path

FORMAT = "mseval-image-count-checkpoint"
VERSION = 1
META, WEIGHTS = "image_count.json", "weights.pt"


@dataclass(frozen=True)
class ImageCountMeta:
    """What an image count checkpoint is and needs. net: `ImageCountNet` keyword arguments (in_channels, n_arms,
    n_intervals, hidden, mlp, count_hidden, count_trunk, count_head, centre_trunk); inputs: channel names in the
    model's order (`forecast.image_count_data.load_arrays`); normalization: `forecast.preprocess` method; arms: names in
    the model's order; visits: follow-up visit names in schedule order; weeks: their scheduled weeks (the trained
    horizons); shape: the grid (voxels); fit: `ImageCountFit.to_dict()`; provenance: `mseval.provenance.training_provenance`;
    spacing: the voxel size (x, y, z mm) it was trained on; min_distance_mm: the sampler's smallest distance between a
    member's lesion centres (mm, per axis: `forecast.image_count_sampling.exclusion_radius`). Checkpoints written before
    these were recorded hold None: the 32^3 MNI grid and `MIN_DISTANCE_MM`."""

    net: dict[str, Any]
    inputs: tuple[str, ...]
    normalization: str
    arms: tuple[str, ...]
    visits: tuple[str, ...]
    weeks: tuple[float, ...]
    shape: tuple[int, int, int]
    fit: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    spacing: tuple[float, float, float] | None = None
    min_distance_mm: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "version": VERSION, **asdict(self)}


def weights_digest(state: dict[str, torch.Tensor], meta: dict[str, Any]) -> str:
    """SHA-256 of the recorded network, inputs, schedule and every weight (names, dtypes, shapes, values)."""
    keys = ("net", "inputs", "normalization", "arms", "visits", "weeks", "shape", "spacing", "min_distance_mm")
    h = hashlib.sha256(json.dumps({k: meta[k] for k in keys if meta.get(k) is not None}, sort_keys=True).encode())
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(f"{name}/{t.dtype}/{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def save_image_count(folder: str | Path, net: ImageCountNet, *, inputs: Sequence[str], normalization: str, arms: Sequence[str],
                     visits: Sequence[str], weeks: Sequence[float], shape: Sequence[int], fit: ImageCountFit | None = None,
                     provenance: dict[str, Any] | None = None, spacing: Sequence[float] | None = None,
                     min_distance_mm: float | None = None) -> ImageCountMeta:
    """Write `net` and what it needs into `folder` (created), each file atomically; returns the metadata."""
    if len(visits) != net.n_intervals or len(weeks) != net.n_intervals:
        raise ValueError(f"the model forecasts {net.n_intervals} visits; got {len(visits)} names and {len(weeks)} weeks")
    meta = ImageCountMeta(dict(net.arguments), tuple(inputs), str(normalization), tuple(arms), tuple(visits), tuple(float(w) for w in weeks),
                          tuple(int(s) for s in shape), fit.to_dict() if fit is not None else {}, dict(provenance or {}),
                          None if spacing is None else tuple(float(v) for v in spacing), None if min_distance_mm is None else float(min_distance_mm))
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}
    with atomic_path(folder / WEIGHTS) as tmp:
        torch.save(state, tmp)
    doc = meta.to_dict() | {"description": describe(meta.net), "digest": weights_digest(state, meta.to_dict())}
    with atomic_path(folder / META) as tmp:
        tmp.write_text(json.dumps(doc, indent=1, default=float) + "\n")
    return meta


def load_image_count(folder: str | Path) -> tuple[ImageCountNet, ImageCountMeta, str]:
    """(net in eval mode, its metadata, the content digest) from a folder written by `save_image_count`. InputError
    naming the file for a missing, corrupt or foreign checkpoint, or weights that do not fit the recorded network."""
    folder = Path(folder)
    mp, wp = folder / META, folder / WEIGHTS
    if not mp.is_file():
        raise InputError(mp, "image count checkpoint not found (expected a folder written by save_image_count)")
    try:
        doc = json.loads(mp.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(mp, f"cannot read the checkpoint's metadata ({type(exc).__name__})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise InputError(mp, f"not an image count checkpoint (format {doc.get('format') if isinstance(doc, dict) else None!r})", field="format")
    if int(doc.get("version", -1)) > VERSION:
        raise InputError(mp, f"checkpoint version {doc.get('version')} is newer than this mseval reads ({VERSION})", field="version")
    try:
        meta = ImageCountMeta(dict(doc["net"]), tuple(doc["inputs"]), str(doc["normalization"]), tuple(doc["arms"]), tuple(doc["visits"]),
                              tuple(float(w) for w in doc["weeks"]), tuple(int(s) for s in doc["shape"]), dict(doc.get("fit") or {}),
                              dict(doc.get("provenance") or {}), None if doc.get("spacing") is None else tuple(float(v) for v in doc["spacing"]),
                              None if doc.get("min_distance_mm") is None else float(doc["min_distance_mm"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError(mp, f"the checkpoint's metadata lacks or garbles {exc}", field=str(exc).strip("'")) from None
    try:
        state = torch.load(wp, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any decode failure is bad input
        raise InputError(wp, f"cannot read the weights (missing, truncated or corrupt? {type(exc).__name__})") from None
    try:
        net = ImageCountNet(**meta.net)
        net.load_state_dict(state)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise InputError(wp, f"the weights do not fit the recorded network ({str(exc).splitlines()[0]})") from None
    digest = weights_digest(state, meta.to_dict())
    if doc.get("digest") not in (None, digest):
        raise InputError(wp, "the weights are not the ones the metadata was written with (digest differs)", field="digest")
    return net.eval(), meta, digest


def check_cohort(meta: ImageCountMeta, cohort: Any, patient_ids: Sequence[str] | None = None) -> None:
    """Refuse, before any sampling, a cohort (`mseval.io.cohort.Cohort`) the checkpoint cannot forecast: no visits.csv,
    a follow-up visit outside the trained schedule or at another scheduled week (a horizon outside the trained range),
    an arm the model never saw, a patient without a baseline image the inputs need, or images on another grid (shape, or
    voxel size where the checkpoint records it)."""
    from forecast.image_count_data import baseline_volumes, check_spacing, visit_schedule

    need = f"the checkpoint forecasts visits {', '.join(f'{v} (week {w:g})' for v, w in zip(meta.visits, meta.weeks))}"
    if cohort.visits is None:
        raise InputError(cohort.root / "visits.csv", f"the cohort has no visit schedule; {need}", field="visit")
    for name, wk in zip(*visit_schedule(cohort)):
        if name not in meta.visits:
            raise InputError(cohort.root / "visits.csv", f"visit {name!r} (week {wk:g}) is outside the trained schedule; {need}", field="visit")
        if not np.isclose(float(wk), meta.weeks[meta.visits.index(name)]):
            raise InputError(cohort.root / "visits.csv", f"visit {name!r} is scheduled at week {wk:g}; {need}", field="scheduled_weeks")
    ids = list(cohort.patient_ids if patient_ids is None else patient_ids)
    for pid in ids:
        arm = str(cohort.row(pid)["arm"])
        if arm not in meta.arms:
            raise InputError(cohort.root / "manifest.csv", f"patient {pid!r}: arm {arm!r} was never seen by the checkpoint (arms: {', '.join(meta.arms)})",
                             row=cohort.patient_ids.index(pid) + 1, field="arm")
    for pid in ids:
        vols = baseline_volumes(cohort, pid, ("brain_mask", *meta.inputs))  # InputError naming a missing input
        shape = tuple(vols["brain_mask"].data.shape)
        if shape != tuple(meta.shape):
            raise InputError(cohort.root / "manifest.csv", f"patient {pid!r} has images of shape {list(shape)}, the checkpoint was trained on {list(meta.shape)}",
                             row=cohort.patient_ids.index(pid) + 1, field="brain_mask")
        if meta.spacing is not None:
            check_spacing(cohort, pid, vols["brain_mask"].spacing, meta.spacing, "the checkpoint was trained on")

__all__ = ["ImageCountMeta", "check_cohort", "load_image_count", "save_image_count", "weights_digest"]
