"""Who an imported forecaster trained on (`mseval forecast import --trained-on CSV|none`), as store provenance.

The project's own checkpoints record the manifest fingerprint of every training patient
(`mseval.provenance`); `count`/`evaluate`/`effects`/`report` compare those with the cohort evaluated
and label results in-sample, held-out or mixed. An imported forecaster gets the same record from a
declaration:

- `none`: it trained on none of the patients it is evaluated on (another trial, or no training):
  every evaluated patient is held out;
- a CSV with column `patient_id` and optionally `cohort` (a cohort folder, absolute or relative to the
  CSV's folder; empty: the import's `--cohort`): the patients it trained on. A patient is identified by
  (cohort, participant): its fingerprint is taken from that cohort's manifest.csv, so a patient of another
  trial with the same ID is not counted as seen. A listed patient missing from its cohort is refused;
- not given: the provenance is unknown, and the reports say so.

Rows are counted as everywhere in mseval: data rows from 1, header excluded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mseval.errors import InputError, row_hint
from mseval.io.forecast_sources import read_text_table


def _cohort_fingerprints(folder: Path, cache: dict[Path, tuple[dict[str, str], str, str]]) -> tuple[dict[str, str], str, str]:
    """({patient: fingerprint}, cohort fingerprint, cohort name) of the cohort at `folder`, read once."""
    from mseval.io.cohort import read_cohort
    from mseval.provenance import cohort_fingerprint, patient_fingerprints

    key = folder.resolve()
    if key not in cache:
        c = read_cohort(folder)
        cache[key] = (patient_fingerprints(c.manifest), cohort_fingerprint(c.manifest), Path(str(c.root)).name)
    return cache[key]


def declared_provenance(trained_on: str | None, cohort: str | Path | None) -> dict[str, Any] | None:
    """The provenance record (as `mseval.provenance.training_provenance` writes it: `train` {patient:
    fingerprint}, `validation`, `cohort_fingerprint`, `cohort_name`) of `--trained-on` (module docstring);
    None when not declared. Raises InputError naming the file, row and field of a bad row."""
    if trained_on is None:
        return None
    if trained_on.strip().lower() == "none":
        return {"declared": "none", "train": {}, "validation": {}, "cohort_fingerprint": None, "cohort_name": None}
    csv = Path(trained_on)
    table = read_text_table(csv, "trained_on", ("patient_id",), "a CSV of patient_id, optionally cohort; or --trained-on none")
    cache: dict[Path, tuple[dict[str, str], str, str]] = {}
    train: dict[str, str] = {}
    cohorts: set[tuple[str, str]] = set()
    for i, rec in enumerate(table.to_dict("records"), start=1):
        pid = rec["patient_id"].strip()
        where = row_hint(csv, i)
        if not pid:
            raise InputError(csv, f"patient_id is empty{where}", row=i, field="patient_id")
        named = rec.get("cohort", "").strip()
        folder = (Path(named) if Path(named).is_absolute() else csv.parent / named) if named else (Path(cohort) if cohort is not None else None)
        if folder is None:
            raise InputError(csv, f"patient {pid!r}: name its cohort (a 'cohort' column or --cohort); IDs alone repeat across trials{where}",
                             row=i, field="cohort")
        if not (folder / "manifest.csv").is_file():
            raise InputError(csv, f"cohort folder {str(folder)!r} has no manifest.csv{where}", row=i, field="cohort")
        prints, cfp, cname = _cohort_fingerprints(folder, cache)
        if pid not in prints:
            raise InputError(csv, f"patient {pid!r} is not in the manifest.csv of cohort {str(folder)!r}{where}", row=i, field="patient_id")
        if pid in train:
            raise InputError(csv, f"patient {pid!r} is listed twice (one training patient per ID){where}", row=i, field="patient_id")
        train[pid] = prints[pid]
        cohorts.add((cfp, cname))
    if not train:
        raise InputError(csv, "no rows: list the training patients, or pass --trained-on none", field="trained_on")
    one = next(iter(cohorts)) if len(cohorts) == 1 else (None, None)
    return {"declared": str(csv), "train": train, "validation": {}, "cohort_fingerprint": one[0], "cohort_name": one[1]}
