"""A forecast store as BIDS derivatives (`mseval forecast export STORE --bids OUT`), and back (`forecast import --bids`).

Layout written under `OUT/derivatives/<pipeline>/` (OUT may be the trial's own BIDS dataset; only the
pipeline folder is created, atomically)::

    dataset_description.json     DatasetType "derivative", GeneratedBy mseval (version, the forecaster)
    forecasts.json               the store: checkpoint, settings, provenance, arms {desc label: arm},
                                 blocks {patient: {arm: {seeds, sampler}}}
    sub-<pid>/ses-<session>/anat/sub-<pid>_ses-<session>_label-NET2_desc-<arm>sample<k>_mask.nii.gz     3D uint8
    sub-<pid>/ses-<session>/anat/sub-<pid>_ses-<session>_label-NET2_desc-<arm>sample<k>_probseg.nii.gz  3D float32
                                 (only for blocks that hold probability maps)

One file per patient, arm and sample k (0, 1, ... in the store's order). BIDS labels are letters and
digits only: `<arm>` is the arm ID without other characters (`ifnb1a_im` -> `ifnb1aim`; forecasts.json maps
it back; two arms that become one label are refused), and patient IDs must be labels already. The
session is `--session` (default `forecast`: the store does not record which visit it forecasts). Paths
are built and read with pybids (derivatives path patterns; `BIDSLayout(..., is_derivative=True)`).
Images are written with the project's NIfTI writer (deterministic gzip), so data and affines are kept
exactly; `forecast import --bids` rebuilds the same store (blocks, masks, probabilities, seeds, sampler,
checkpoint, provenance).
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from mseval import __version__
from mseval.bids.entities import BIDS_VERSION, LABEL_RE, bids_path
from mseval.errors import InputError
from mseval.io.atomic import atomic_dir
from mseval.io.forecast_sources import Sources
from mseval.io.nifti import save_volume

LABEL = "NET2"
META_FILE = "forecasts.json"
_DESC = re.compile(r"^(?P<arm>[A-Za-z0-9]+)sample(?P<sample>\d+)$")


def _arm_labels(arms: list[str], index: Path) -> dict[str, str]:
    """{BIDS label: arm ID}; InputError when two arms give one label."""
    labels: dict[str, str] = {}
    for arm in arms:
        label = re.sub(r"[^A-Za-z0-9]", "", arm)
        if not label or label in labels:
            raise InputError(index, f"arm {arm!r} gives the BIDS label {label!r}" + (f", as arm {labels[label]!r} does" if label in labels else ""),
                             field="arm")
        labels[label] = arm
    return labels


def export_forecasts_bids(store_dir: str | Path, out: str | Path, *, pipeline: str | None = None, session: str = "forecast",
                          overwrite: bool = False) -> Path:
    """Write the store at `store_dir` as BIDS derivatives `OUT/derivatives/<pipeline>` (module docstring); pipeline:
    default the store's checkpoint name without non-alphanumerics. Returns the pipeline folder."""
    from mseval.io.store import ForecastStore
    from mseval.provenance import PROVENANCE_FILE

    store = ForecastStore.open(store_dir)
    root = Path(store_dir)
    index = store.index()
    checkpoints = sorted(set(index["checkpoint"].astype(str)))
    pipeline = pipeline or re.sub(r"[^A-Za-z0-9]", "", checkpoints[0] if len(checkpoints) == 1 else "forecasts") or "forecasts"
    for what, value in (("--pipeline", pipeline), ("--session", session)):
        if not LABEL_RE.match(value):
            raise InputError(None, f"{what} {value!r}: letters and digits only", field=what.lstrip("-"))
    for row, pid in enumerate(index["patient_id"], start=1):
        if not LABEL_RE.match(str(pid)):
            raise InputError(root / "index.parquet", f"patient {pid!r} is not a BIDS label (letters and digits only)", row=row, field="patient_id")
    labels = _arm_labels(store.arms, root / "index.parquet")
    label_of = {arm: label for label, arm in labels.items()}
    target = Path(out) / "derivatives" / pipeline
    if target.exists() and not overwrite:
        raise InputError(target, "folder exists; remove it or pass --overwrite")
    store_json = json.loads((root / "store.json").read_text())
    prov = json.loads((root / PROVENANCE_FILE).read_text()).get("checkpoints", {}) if (root / PROVENANCE_FILE).is_file() else {}
    blocks: dict[str, dict[str, Any]] = defaultdict(dict)
    with atomic_dir(target, overwrite=overwrite) as tmp:
        for b in store.blocks():
            masks, affine = b.masks()
            prob = b.prob()[0] if b.prob_path else None
            for k in range(b.samples):
                ents = {"label": LABEL, "desc": f"{label_of[b.arm]}sample{k}"}
                save_volume(masks[k], affine, tmp / bids_path(b.patient_id, session, {**ents, "suffix": "mask"}, derivative=True))
                if prob is not None:
                    save_volume(prob[k], affine, tmp / bids_path(b.patient_id, session, {**ents, "suffix": "probseg"}, derivative=True))
            blocks[b.patient_id][b.arm] = {"seeds": list(b.seeds), "sampler": b.sampler, "checkpoint": b.checkpoint,
                                           **({"forecaster": list(b.forecaster)} if b.forecaster is not None else {})}
        meta = {"format": "mseval-forecasts-bids", "session": session, "label": LABEL, "arms": labels, "store": store_json,
                "provenance": prov, "blocks": blocks}
        _json(meta, tmp / META_FILE)
        _json({"Name": f"forecasts of {', '.join(checkpoints)}", "BIDSVersion": BIDS_VERSION, "DatasetType": "derivative",
               "GeneratedBy": [{"Name": "mseval", "Version": __version__,
                                "Description": f"mseval forecast export of the forecast store {root.name} (forecaster {', '.join(checkpoints)})"}]},
              tmp / "dataset_description.json")
    return target


def _json(obj: dict, path: Path) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def from_bids(folder: Path) -> tuple[Sources, dict[str, Any]]:
    """The files of a derivatives folder written by `export_forecasts_bids`, found with pybids, and what its
    forecasts.json records: (Sources with seeds, samplers and probability files; {"checkpoint", "provenance",
    "other_provenance": the other models the store recorded, {id: record}, "store": the store.json})."""
    from bids import BIDSLayout

    meta_path = folder / META_FILE
    if not meta_path.is_file() or not (folder / "dataset_description.json").is_file():
        raise InputError(folder, f"not a forecast export (needs {META_FILE} and dataset_description.json; write it with "
                                 "`mseval forecast export STORE --bids OUT`)", field="bids")
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as exc:
        raise InputError(meta_path, f"invalid JSON ({exc})") from None
    labels, session = meta.get("arms", {}), meta.get("session")
    layout = BIDSLayout(str(folder), is_derivative=True, validate=False)
    found: dict[str, dict[tuple[str, str], list[tuple[int | None, Path, str]]]] = {"mask": defaultdict(list), "probseg": defaultdict(list)}
    for f in layout.get(label=meta.get("label", LABEL), suffix=["mask", "probseg"], extension=".nii.gz", session=session):
        m = _DESC.match(str(f.entities.get("desc", "")))
        if m is None or m["arm"] not in labels:
            raise InputError(f.path, f"desc-{f.entities.get('desc')} is not <arm>sample<k> with an arm of {META_FILE}", field="desc")
        found[f.entities["suffix"]][(str(f.entities["subject"]), labels[m["arm"]])].append((int(m["sample"]), Path(f.path), ""))
    if not found["mask"]:
        raise InputError(folder, f"no label-{LABEL} mask files for session {session!r}", field="bids")
    blocks = meta.get("blocks", {})
    rec = {key: blocks.get(key[0], {}).get(key[1], {}) for key in found["mask"]}
    sources = Sources(dict(found["mask"]), {"bids": str(folder)}, seeds={k: list(r["seeds"]) for k, r in rec.items() if "seeds" in r},
                      sampler={k: r["sampler"] for k, r in rec.items() if "sampler" in r}, prob=dict(found["probseg"]),
                      forecaster={k: list(r["forecaster"]) for k, r in rec.items() if "forecaster" in r})
    store = meta.get("store", {})
    checkpoints = {r.get("checkpoint") for r in rec.values()}
    checkpoint = checkpoints.pop() if len(checkpoints) == 1 else None
    recorded = meta.get("provenance") or {}
    provenance = recorded.get(checkpoint) if checkpoint else None
    # the other models the store recorded beside the blocks' checkpoint (rendered trajectories: the image forecaster)
    others = {k: v for k, v in recorded.items() if k != checkpoint} if checkpoint else {}
    return sources, {"checkpoint": checkpoint, "provenance": provenance, "other_provenance": others, "store": store}


def prob_of(sources: Sources, key: tuple[str, str], shape: tuple[int, ...]) -> np.ndarray | None:
    """The probability maps (S, X, Y, Z) float32 recorded beside a block's masks (BIDS export), or None."""
    from mseval.io.nifti import load_probabilities

    files = sorted(sources.prob.get(key, []))
    if not files:
        return None
    prob = np.concatenate([load_probabilities(p, field="probseg")[0] for _, p, _ in files])
    if prob.shape != shape:
        raise InputError(files[0][1], f"probability maps of shape {prob.shape} beside masks of shape {shape}", field="probseg")
    return prob
