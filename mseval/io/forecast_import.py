"""Forecasts of any model, as NIfTI files in a folder, into a forecast store (`mseval forecast import`).

Files are mapped to patients, arms and samples by a filename pattern with the placeholders
`{patient}`, `{arm}` and optionally `{sample}` (docs/bids.md):

- with `{sample}` (default `{patient}_{arm}_{sample}.nii.gz`): one 3D binary mask (X, Y, Z) per sample;
  the samples of a patient and arm are stacked in the order of their sample numbers;
- without it (e.g. `{patient}_{arm}.nii.gz`): one 4D file (X, Y, Z, S) per patient and arm.

Placeholders match non-greedily (`{patient}` the shortest that lets the rest match, `{sample}` digits),
so IDs that contain the pattern's separator are read as the shortest possible patient ID: choose a
separator the IDs do not use. Masks hold only 0 and 1 (probability maps are not imported yet).
Every file is read and checked before the store is written; the store is built in a temporary folder
and renamed into place, so a bad file leaves nothing behind.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mseval.errors import InputError
from mseval.io.atomic import atomic_dir
from mseval.io.nifti import check_same_grid, load_samples, load_volume

DEFAULT_PATTERN = "{patient}_{arm}_{sample}.nii.gz"
_FIELDS = {"patient": r"(?P<patient>[A-Za-z0-9][A-Za-z0-9._-]*?)", "arm": r"(?P<arm>[A-Za-z0-9][A-Za-z0-9._-]*?)", "sample": r"(?P<sample>\d+)"}


def pattern_regex(pattern: str) -> re.Pattern[str]:
    """The regular expression of a filename pattern (InputError when a placeholder is missing or unknown)."""
    names = re.findall(r"\{([^{}]*)\}", pattern)
    unknown = [n for n in names if n not in _FIELDS]
    if unknown or "patient" not in names or "arm" not in names or len(names) != len(set(names)):
        raise InputError(None, f"--pattern {pattern!r}: use {{patient}} and {{arm}} once each, and optionally {{sample}} (no other placeholders)",
                         field="pattern")
    parts = re.split(r"(\{[^{}]*\})", pattern)
    return re.compile("^" + "".join(_FIELDS[p[1:-1]] if p.startswith("{") else re.escape(p) for p in parts) + "$")


@dataclass(frozen=True)
class ImportedForecasts:
    """What `import_forecasts` wrote: blocks (patient, arm) -> samples, into the store at `out`."""

    out: Path
    blocks: dict[tuple[str, str], int]

    def summary(self) -> str:
        patients = {p for p, _ in self.blocks}
        arms = {a for _, a in self.blocks}
        return f"{len(self.blocks)} blocks ({len(patients)} patients x {len(arms)} arms, {sum(self.blocks.values())} samples) in {self.out}"


def _collect(folder: Path, regex: re.Pattern[str], pattern: str) -> dict[tuple[str, str], list[tuple[int, Path]]]:
    found: dict[tuple[str, str], list[tuple[int, Path]]] = defaultdict(list)
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        m = regex.match(path.relative_to(folder).as_posix())
        if m:
            found[(m["patient"], m["arm"])].append((int(m.groupdict().get("sample") or 0), path))
    if not found:
        raise InputError(folder, f"no file matches --pattern {pattern!r}", field="pattern")
    return found


def _block(key: tuple[str, str], files: list[tuple[int, Path]], per_sample: bool) -> tuple[np.ndarray, np.ndarray]:
    """(S, X, Y, Z) uint8 masks and the affine of one patient and arm."""
    if not per_sample:
        if len(files) > 1:
            raise InputError(files[1][1], f"patient {key[0]}, arm {key[1]}: {len(files)} files match a pattern without {{sample}}", field="pattern")
        return load_samples(files[0][1])
    files = sorted(files)
    numbers = [s for s, _ in files]
    if len(set(numbers)) != len(numbers):
        dup = next(s for s in numbers if numbers.count(s) > 1)
        raise InputError(files[0][1].parent, f"patient {key[0]}, arm {key[1]}: sample {dup} appears twice", field="sample")
    vols = [load_volume(p, mask=True, field="sample") for _, p in files]
    check_same_grid(vols)
    return np.stack([v.data for v in vols]), vols[0].affine


def import_forecasts(folder: str | Path, out: str | Path, *, pattern: str = DEFAULT_PATTERN, name: str = "imported", cohort: str | Path | None = None,
                     overwrite: bool = False) -> ImportedForecasts:
    """Read every forecast file of `folder` that matches `pattern` and write them as one forecaster's store at
    `out` (checkpoint `name`; seeds: the sample numbers). With `cohort`, every patient and arm must be the
    cohort's and each block must lie on its patient's baseline grid."""
    from mseval.io.store import ForecastStore, record_store_settings

    folder, out = Path(folder), Path(out)
    if not folder.is_dir():
        raise InputError(folder, "forecast folder not found")
    if out.exists() and not overwrite:
        raise InputError(out, "output folder exists; remove it or pass --overwrite")
    regex = pattern_regex(pattern)
    found = _collect(folder, regex, pattern)
    c = None
    if cohort is not None:
        from mseval.io.cohort import read_cohort

        c = read_cohort(cohort)
    blocks = {}
    for key in sorted(found):
        masks, affine = _block(key, found[key], "{sample}" in pattern)
        if c is not None:
            _check_against(c, key, masks.shape[1:], affine, found[key][0][1])
        blocks[key] = (masks, affine)
    with atomic_dir(out, overwrite=overwrite) as tmp:
        record_store_settings(tmp, {"checkpoint": name, "imported_from": str(folder), "pattern": pattern})
        store = ForecastStore.create(tmp)
        for (pid, arm), (masks, affine) in blocks.items():
            store.write_block(pid, arm, masks, affine, list(range(masks.shape[0])), checkpoint=name,
                              sampler={"imported_from": str(folder), "pattern": pattern})
        store.flush()
    return ImportedForecasts(out, {k: int(v[0].shape[0]) for k, v in blocks.items()})


def _check_against(c, key: tuple[str, str], shape: tuple[int, ...], affine: np.ndarray, path: Path) -> None:  # noqa: ANN001
    pid, arm = key
    if pid not in set(c.patient_ids):
        raise InputError(path, f"patient {pid!r} is not in the cohort's manifest.csv", field="patient")
    if arm not in set(c.arms["arm"]):
        raise InputError(path, f"arm {arm!r} is not in the cohort's arms.csv ({', '.join(c.arms['arm'])})", field="arm")
    ref = load_volume(c.path(pid, "t2_lesion_mask"), mask=True, field="t2_lesion_mask")
    if tuple(shape) != ref.shape or not np.allclose(affine, ref.affine, atol=1e-3, rtol=0):
        raise InputError(path, f"not on patient {pid}'s baseline grid (shape {tuple(shape)} vs {ref.shape}); resample it to the cohort's grid first",
                         field="grid")
