"""Forecasts of any model, as NIfTI files, into a forecast store (`mseval forecast import`).

Where the files come from (`mseval.io.forecast_sources`): a filename pattern with `{patient}`, `{arm}`
and optionally `{sample}`, a CSV index (file, patient, arm, sample), or a BIDS derivatives folder written
by `mseval forecast export --bids`. With a sample number a file is one 3D map (X, Y, Z); without, one 4D
file (X, Y, Z, S) per patient and arm. The samples of a block are stacked in the order of their numbers.

What the files hold:

- binary masks (default): only 0 and 1;
- probability maps (`probability=True`): floats in [0, 1], no NaN. The store holds binary masks (what
  `count`, `evaluate`, `effects` read) and, beside them, each sample's probability map (`ForecastBlock.prob`):
  the mask is `probability > threshold` (default 0.5, the rule of the project's own sampler), and the
  threshold is recorded in every block's sampler settings and in store.json.

Provenance: `name` is the store's checkpoint; `trained_on` (`mseval.io.forecast_trained_on`) records the
patients the forecaster trained on in provenance.json, so results are labelled in-sample / held-out as
for the project's checkpoints; without it the provenance is "unknown".

Every file is read and checked before the store is written; the store is built in a temporary folder
and renamed into place, so a bad file leaves nothing behind.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mseval.errors import InputError
from mseval.io.atomic import atomic_dir
from mseval.io.forecast_bids import prob_of
from mseval.io.forecast_sources import DEFAULT_PATTERN, Sources, from_index, from_pattern, pattern_regex  # noqa: F401 - re-exported
from mseval.io.nifti import Volume, check_same_grid, load_probabilities, load_samples, load_volume

IMPORTED_MODEL = "imported"
"""The `model` of an imported block's sampler settings (how `mseval.provenance` tells it from a simulated forecaster)."""


@dataclass(frozen=True)
class ImportedForecasts:
    """What `import_forecasts` wrote: blocks (patient, arm) -> samples, into the store at `out`."""

    out: Path
    blocks: dict[tuple[str, str], int]
    probability: bool = False

    def summary(self) -> str:
        patients = {p for p, _ in self.blocks}
        arms = {a for _, a in self.blocks}
        kind = "probability maps" if self.probability else "masks"
        return (f"{len(self.blocks)} blocks ({len(patients)} patients x {len(arms)} arms, {sum(self.blocks.values())} samples) of {kind} "
                f"in {self.out}")


def _binary(path: Path, field: str, four_d: bool) -> tuple[np.ndarray, np.ndarray]:
    """(S, X, Y, Z) uint8 masks and the affine of one binary file; a non-binary file's error says --probability exists."""
    try:
        if four_d:
            return load_samples(path)
        v = load_volume(path, mask=True, field=field)
        return v.data[None], v.affine
    except InputError as exc:
        if "binary" in exc.problem:
            raise InputError(exc.file, f"{exc.problem} (probability maps: pass --probability)", row=exc.row, field=exc.field) from None
        raise


def _sorted(files: list[tuple[int | None, Path, str]]) -> list[tuple[int | None, Path, str]]:
    return sorted(files, key=lambda f: (f[0] is None, f[0] or 0))


def _block(key: tuple[str, str], files: list[tuple[int | None, Path, str]], probability: bool) -> tuple[np.ndarray, np.ndarray]:
    """The samples of one patient and arm, (S, X, Y, Z): uint8 masks, or float32 probabilities in [0, 1]; and the (4, 4) affine."""
    files = _sorted(files)
    if files[0][0] is None:
        if len(files) > 1:
            raise InputError(files[1][1], f"patient {key[0]}, arm {key[1]}: {len(files)} files for one block of a pattern or index "
                                          "without sample numbers (one 4D file per patient and arm)", field="pattern")
        path = files[0][1]
        return load_probabilities(path, field="file") if probability else _binary(path, "path", True)
    numbers = [s for s, _, _ in files]
    if len(set(numbers)) != len(numbers):
        dup = next(s for s in numbers if numbers.count(s) > 1)
        raise InputError(files[0][1].parent, f"patient {key[0]}, arm {key[1]}: sample {dup} appears twice", field="sample")
    loaded = [load_probabilities(p, field="sample") if probability else _binary(p, "sample", False) for _, p, _ in files]
    bad = [p for (_, p, _), (d, _) in zip(files, loaded) if d.shape[0] != 1]
    if bad:
        raise InputError(bad[0], "a file with a sample number must be 3D (one sample)", field="sample")
    check_same_grid([Volume(d[0], a, p) for (_, p, _), (d, a) in zip(files, loaded)])
    return np.concatenate([d for d, _ in loaded]), loaded[0][1]


def import_forecasts(folder: str | Path, out: str | Path, *, pattern: str = DEFAULT_PATTERN, index: str | Path | None = None,
                     bids: bool = False, name: str | None = None, cohort: str | Path | None = None, probability: bool = False,
                     threshold: float = 0.5, trained_on: str | None = None, overwrite: bool = False) -> ImportedForecasts:
    """Read every forecast file of `folder` named by `pattern`, the CSV `index` or (`bids`) the BIDS derivatives
    layout, and write them as one forecaster's store at `out` (checkpoint `name`, default "imported" or the
    exported forecaster's; seeds: the sample numbers, or those recorded by the export). With `cohort`, every
    patient and arm must be the cohort's and each block must lie on its patient's baseline grid. `probability`:
    the files are probability maps, thresholded at `threshold` (mask = p > threshold, 0 < threshold < 1).
    `trained_on`: a CSV of training patients or "none" (`mseval.io.forecast_trained_on`)."""
    from mseval.io.forecast_trained_on import declared_provenance

    folder, out = Path(folder), Path(out)
    if not folder.is_dir():
        raise InputError(folder, "forecast folder not found")
    if out.exists() and not overwrite:
        raise InputError(out, "output folder exists; remove it or pass --overwrite")
    if probability and not 0.0 < threshold < 1.0:
        raise InputError(None, f"--threshold must lie strictly between 0 and 1, got {threshold:g}", field="threshold")
    meta: dict[str, Any] = {}
    if bids:
        from mseval.io.forecast_bids import from_bids

        if probability:
            raise InputError(None, "--bids reads the masks and probability maps the export wrote; drop --probability", field="probability")
        sources, meta = from_bids(folder)
    else:
        sources = from_index(folder, Path(index)) if index is not None else from_pattern(folder, pattern)
    name = name or meta.get("checkpoint") or "imported"
    prov = declared_provenance(trained_on, cohort)
    others: dict[str, Any] = {}
    if prov is None and name == meta.get("checkpoint"):
        prov, others = meta.get("provenance"), dict(meta.get("other_provenance") or {})
    c = None
    if cohort is not None:
        from mseval.io.cohort import read_cohort

        c = read_cohort(cohort)
    blocks = _load_all(sources, probability, threshold, c)
    settings: dict[str, Any] = {"checkpoint": name, "imported_from": str(folder), **sources.described, "probability": probability,
                                "threshold": threshold if probability else None}
    sampler = {"model": IMPORTED_MODEL, **{k: v for k, v in settings.items() if k != "checkpoint"}}
    same = name == meta.get("checkpoint")
    _write(out, blocks, sources, name, settings, sampler, prov, overwrite, store_json=meta.get("store") if same else None, others=others)
    return ImportedForecasts(out, {k: int(v[0].shape[0]) for k, v in blocks.items()}, probability)


def _load_all(sources: Sources, probability: bool, threshold: float, c: Any) -> dict[tuple[str, str], tuple[np.ndarray, np.ndarray | None, np.ndarray]]:
    """Every block read and checked: (patient, arm) -> (masks (S, X, Y, Z) uint8, probabilities or None, affine)."""
    blocks = {}
    for key in sorted(sources.blocks):
        data, affine = _block(key, sources.blocks[key], probability)
        first = sources.blocks[key][0][1]
        if c is not None:
            _check_against(c, key, data.shape[1:], affine, first)
        seeds = sources.seeds.get(key)
        if seeds is not None and len(seeds) != data.shape[0]:
            raise InputError(first, f"patient {key[0]}, arm {key[1]}: {data.shape[0]} samples, {len(seeds)} seeds recorded", field="seeds")
        if probability:
            blocks[key] = ((data > threshold).astype(np.uint8), data, affine)
        else:
            blocks[key] = (data, prob_of(sources, key, data.shape), affine)
    return blocks


def _write(out: Path, blocks: dict, sources: Sources, name: str, settings: dict[str, Any], sampler: dict[str, Any],
           prov: dict[str, Any] | None, overwrite: bool, *, store_json: dict | None = None, others: dict[str, Any] | None = None) -> None:
    """The store at `out`, atomically: settings in store.json (or the exported store's `store_json` as it was), one
    block per key (seeds: recorded ones, else the sample numbers), provenance.json when the training patients are known
    (`others`: further models the exported store recorded beside its checkpoint, {id: record})."""
    from mseval.io.atomic import write_json_atomic
    from mseval.io.store import ForecastStore, record_store_settings
    from mseval.provenance import write_store_provenance

    with atomic_dir(out, overwrite=overwrite) as tmp:
        if store_json:
            write_json_atomic(store_json, tmp / "store.json")
        else:
            record_store_settings(tmp, settings)
        store = ForecastStore.create(tmp)
        for key, (masks, prob, affine) in blocks.items():
            numbers = [s for s, _, _ in _sorted(sources.blocks[key])]
            seeds = sources.seeds.get(key) or (numbers if numbers[0] is not None else list(range(masks.shape[0])))
            store.write_block(*key, masks, affine, seeds, checkpoint=name, sampler=sources.sampler.get(key, sampler), prob=prob,
                              forecaster=sources.forecaster.get(key))
        store.flush()
        if prov is not None:
            write_store_provenance(tmp, name, prov)
            for other, record in (others or {}).items():
                write_store_provenance(tmp, other, record)


def _check_against(c: Any, key: tuple[str, str], shape: tuple[int, ...], affine: np.ndarray, path: Path) -> None:
    pid, arm = key
    if pid not in set(c.patient_ids):
        raise InputError(path, f"patient {pid!r} is not in the cohort's manifest.csv", field="patient")
    if arm not in set(c.arms["arm"]):
        raise InputError(path, f"arm {arm!r} is not in the cohort's arms.csv ({', '.join(c.arms['arm'])})", field="arm")
    ref = load_volume(c.path(pid, "t2_lesion_mask"), mask=True, field="t2_lesion_mask")
    if tuple(shape) != ref.shape or not np.allclose(affine, ref.affine, atol=1e-3, rtol=0):
        raise InputError(path, f"not on patient {pid}'s baseline grid (shape {tuple(shape)} vs {ref.shape}); resample it to the cohort's grid first",
                         field="grid")
