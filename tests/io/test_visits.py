"""The multi-visit tables (visits.csv, truth_visits.csv, truth_lesions.csv, oracle_inputs.csv): what the
simulator writes validates, each kind of breakage is one line naming file, row and field with exit 2,
and a single-visit cohort written before visits existed still validates and reads."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

import data_schemas
from mseval.io.cohort import IMAGE_FIELDS, read_cohort
from mseval.io.nifti import save_volume
from mseval.simulate.model import TrialConfig

OLD = Path(__file__).parent / "data" / "single_visit_v0"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 16^3 three-visit cohort with dropout and missed visits (2 patients per arm)."""
    from mseval.simulate.trial import simulate_trial

    out = tmp_path_factory.mktemp("visits") / "world"
    simulate_trial(out, TrialConfig(patients_per_arm=2, shape=(16, 16, 16), seed=1, dropout_per_year=0.3, missed_visit=0.2))
    return out


def _visits(root: Path) -> pd.DataFrame:
    return pd.read_csv(root / "visits.csv", dtype=str, keep_default_na=False)


def _observed_pair(v: pd.DataFrame) -> tuple[int, int]:
    """Rows (0-based) of a patient's w24 and w48 visits, both observed."""
    obs = v[v["missing"] == ""]
    for pid, rows in obs.groupby("patient_id"):
        if {"w24", "w48"} <= set(rows["visit"]):
            return int(rows.index[rows["visit"] == "w24"][0]), int(rows.index[rows["visit"] == "w48"][0])
    raise AssertionError("no patient with w24 and w48 observed")


def test_simulated_tables_validate_and_are_read(world: Path) -> None:
    c = read_cohort(world)
    assert c.visits is not None and c.truth_visits is not None and c.oracle_inputs is not None
    assert len(c.visits) == 12 * 4 and set(c.visits["missing"].dropna()) <= {"dropout", "missed"}
    assert c.visits["missing"].notna().any(), "seed 1 at 0.3 dropout a year and 20% missed visits has absent visits"
    # absent visits are absent: no weeks, no files, and no realized count in truth_visits (never zero)
    gone = c.visits[c.visits["missing"].notna()]
    assert gone["weeks"].isna().all() and gone["flair"].isna().all()
    tv = c.truth_visits[c.truth_visits["allocated"].astype(bool)].set_index(["patient_id", "visit"])
    assert tv.loc[list(zip(gone["patient_id"], gone["visit"])), "realized_count"].isna().all()
    # every visit's images load on the baseline grid
    pid = c.patient_ids[0]
    for visit in c.visit_rows(pid)["visit"]:
        vols = c.load_visit(pid, visit)
        assert all(v.shape == (16, 16, 16) for v in vols.values())


def test_every_simulated_table_matches_its_schema_columns(world: Path) -> None:
    """Each table the simulator writes uses only its schema's columns and holds every required one."""
    for name in ("manifest", "visits", "truth", "truth_visits", "truth_lesions", "oracle_inputs"):
        cols = list(pd.read_csv(world / f"{name}.csv", nrows=0).columns)
        spec = data_schemas.load(name)
        assert set(cols) <= set(spec["properties"]), (name, set(cols) - set(spec["properties"]))
        assert set(spec["required"]) <= set(cols), name


def _edit(fn: Callable[[pd.DataFrame], pd.DataFrame], name: str = "visits.csv") -> Callable[[Path], None]:
    def edit(root: Path) -> None:
        df = pd.read_csv(root / name, dtype=str, keep_default_na=False)
        fn(df).to_csv(root / name, index=False)

    return edit


def _set_cell(col: str, value: str, pick: Callable[[pd.DataFrame], int]) -> Callable[[pd.DataFrame], pd.DataFrame]:
    def f(df: pd.DataFrame) -> pd.DataFrame:
        df.loc[pick(df), col] = value
        return df

    return f


def _first_missing(df: pd.DataFrame) -> int:
    return int(np.flatnonzero(df["missing"] != "")[0])


def _w48_before_w24(df: pd.DataFrame) -> pd.DataFrame:
    a, b = _observed_pair(df)
    df.loc[b, "weeks"] = str(float(df.loc[a, "weeks"]) - 1.0)
    return df


def _delete_w24_flair(root: Path) -> None:
    a, _ = _observed_pair(_visits(root))
    (root / _visits(root).loc[a, "flair"]).unlink()


def _shrink_w24_flair(root: Path) -> None:
    a, _ = _observed_pair(_visits(root))
    p = root / _visits(root).loc[a, "flair"]
    img = nib.load(str(p))
    save_volume(np.asanyarray(img.dataobj)[:-1], img.affine, p)


# name: (how to break the cohort, file named, row as numbered in the file (data rows from 1) or None, field, words)
BAD: dict[str, tuple[Callable[[Path], None], str, Callable[[Path], int | None], str, str]] = {
    "unknown patient": (_edit(_set_cell("patient_id", "P999", lambda d: 2)), "visits.csv", lambda r: 3, "patient_id",
                        "patient 'P999' is not in manifest.csv"),
    "weeks not increasing": (_edit(_w48_before_w24), "visits.csv", lambda r: _observed_pair(_visits(r))[1] + 1, "weeks",
                             "visit weeks must increase within a patient"),
    "visit file absent": (_delete_w24_flair, "visits.csv", lambda r: _observed_pair(_visits(r))[0] + 1, "flair", "file not found"),
    "missing visit names a file": (_edit(_set_cell("flair", "images/P001/flair.nii.gz", _first_missing)), "visits.csv",
                                   lambda r: _first_missing(_visits(r)) + 1, "flair", "a visit that did not take place has no weeks and no files"),
    "schedule not increasing": (_edit(_set_cell("scheduled_weeks", "10", lambda d: 2)), "visits.csv", lambda r: 3, "scheduled_weeks",
                                "visits must increase with visit_index"),
    "no baseline row": (_edit(lambda d: d.drop(index=0)), "visits.csv", lambda r: None, "patient_id", "'P001' of manifest.csv (row 1) has no baseline row"),
    "baseline not at week 0": (_edit(_set_cell("weeks", "3", lambda d: 0)), "visits.csv", lambda r: 1, "weeks", "week 0"),
    "wrong previous visit": (_edit(_set_cell("previous_visit", "w96", lambda d: _observed_pair(d)[1])), "visits.csv",
                             lambda r: _observed_pair(_visits(r))[1] + 1, "previous_visit", "previous visit that took place is 'w24'"),
    "bad missing reason": (_edit(_set_cell("missing", "Lost To Follow-up", _first_missing)), "visits.csv",
                           lambda r: _first_missing(_visits(r)) + 1, "missing", "does not match"),
    "duplicate visit": (_edit(_set_cell("visit", "w24", lambda d: 2)), "visits.csv", lambda r: 3, "patient_id+visit", "duplicate"),
    "negative weeks": (_edit(_set_cell("weeks", "-2", lambda d: 1)), "visits.csv", lambda r: 2, "weeks", "must be >= 0"),
    "visit image off grid": (_shrink_w24_flair, "flair.nii.gz", lambda r: None, "", "shape (15, 16, 16) differs"),
    "truth_visits unknown patient": (_edit(_set_cell("patient_id", "P999", lambda d: 4), "truth_visits.csv"), "truth_visits.csv",
                                     lambda r: 5, "patient_id", "not in manifest.csv"),
    "truth_visits unscheduled visit": (_edit(_set_cell("visit", "w12", lambda d: 0), "truth_visits.csv"), "truth_visits.csv",
                                       lambda r: 1, "visit", "is not a follow-up visit of visits.csv"),
    "oracle_inputs patient absent": (_edit(lambda d: d.drop(index=3), "oracle_inputs.csv"), "oracle_inputs.csv", lambda r: None, "patient_id",
                                     "no row for patient 'P004'"),
    "oracle_inputs negative": (_edit(_set_cell("dawm_fraction", "-0.1", lambda d: 1), "oracle_inputs.csv"), "oracle_inputs.csv",
                               lambda r: 2, "dawm_fraction", "must be >= 0"),
    "truth_lesions unknown patient": (_edit(_set_cell("patient_id", "P999", lambda d: 0), "truth_lesions.csv"), "truth_lesions.csv",
                                      lambda r: 1, "patient_id", "not in manifest.csv"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_broken_visit_tables_are_one_line_exit_2(case: str, world: Path, cli, tmp_path: Path) -> None:  # noqa: ANN001
    breaker, file_named, row_of, field, words = BAD[case]
    world_copy = shutil.copytree(world, tmp_path / "cohort")
    row = row_of(world_copy)  # located on the unbroken table
    breaker(world_copy)
    res = cli("validate", world_copy)
    assert res.code == 2, res.out
    assert res.err.count("\n") == 1 and res.err.startswith("mseval: error: ") and "Traceback" not in res.err, res.err
    assert file_named in res.err and words in res.err, res.err
    where = [f"row {row}"] if row is not None else []
    where += [f"field '{field}'"] if field else []
    if where:
        assert f"{file_named} ({', '.join(where)})" in res.err, res.err
    # a command that writes output stops before writing any (images are read later, by the sampler)
    if case != "visit image off grid":
        out = tmp_path / "forecasts"
        res = cli("simulate-forecasts", world_copy, "--out", out, "--samples", "2")
        assert res.code == 2 and file_named in res.err and not out.exists(), res.err


def _old_cohort(dst: Path) -> Path:
    """The single-visit cohort of the previous version: its tables as written then, with small
    stand-in images at the paths its manifest names."""
    shutil.copytree(OLD, dst)
    (dst / "README.md").unlink()
    from mseval.simulate.anatomy import make_anatomy

    spacing = json.loads((dst / "simulation.json").read_text())["spacing_mm"]
    anat = make_anatomy((16, 16, 16), tuple(spacing), ventricle_scale=1.0, seed=0)
    affine = anat.affine
    rng = np.random.default_rng(0)
    manifest = pd.read_csv(dst / "manifest.csv")
    for pid in manifest["patient_id"]:  # the simulator's truth image the oracle forecaster reads
        save_volume(anat.labels.astype(np.uint8), affine, dst / "images" / pid / "tissues.nii.gz")
    for col in manifest.columns:
        if not manifest[col].astype(str).str.endswith(".nii.gz").all():
            continue
        for rel in manifest[col]:
            data = rng.normal(100, 10, (16, 16, 16)).astype(np.float32) if col in IMAGE_FIELDS else (rng.random((16, 16, 16)) < 0.05).astype(np.uint8)
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            save_volume(data, affine, dst / rel)
    return dst


def test_single_visit_cohort_of_the_previous_version_validates_and_reads(tmp_path: Path, cli) -> None:  # noqa: ANN001
    old = _old_cohort(tmp_path / "old")
    assert not (old / "visits.csv").exists() and "birth_weeks" not in (old / "truth_lesions.csv").read_text()
    res = cli("validate", old)
    assert res.code == 0 and "OK (6 patients, 6 arms, reference 'placebo', with truth; no visits.csv" in res.out, res.err
    c = read_cohort(old)
    assert c.visits is None and c.truth_visits is None and c.oracle_inputs is None and c.visit_rows("P001").empty
    assert c.manifest["followup_weeks"].between(46, 50).all() and c.truth is not None
    cfg = TrialConfig.from_dict(json.loads((old / "simulation.json").read_text())["config"])
    assert cfg.schedule == (48.0,)
    res = cli("simulate-forecasts", old, "--out", tmp_path / "fc", "--samples", "2")
    assert res.code == 0, res.err
    res = cli("count", tmp_path / "fc", "--out", tmp_path / "cnt")
    assert res.code == 0 and (tmp_path / "cnt" / "counts.parquet").is_file(), res.err


def test_cohort_format_doc_names_every_file_and_column(world: Path) -> None:
    """docs/cohort_format.md names every file, every column the simulator writes and every column of the
    cohort schemas, and every key of simulation.json, each in backticks."""
    doc = (Path(__file__).parents[2] / "docs" / "cohort_format.md").read_text()
    named = set(re.findall(r"`([^`\s]+)`", doc))
    top = {p.name for p in world.iterdir()} - {"images"}
    assert all(name in doc for name in top), top - {n for n in top if n in doc}
    for table in sorted(world.glob("*.csv")):
        cols = set(pd.read_csv(table, nrows=0).columns)
        assert cols <= named, (table.name, sorted(cols - named))
    for schema in ("manifest", "arms", "visits", "truth", "truth_visits", "truth_lesions", "oracle_inputs"):
        assert f"schema `{schema}`" in doc and set(data_schemas.load(schema)["properties"]) <= named, schema
    sim = json.loads((world / "simulation.json").read_text())
    assert set(sim) | set(sim["latent"]["P001"]) | {"schedule"} <= named
    images = {p.name.removesuffix(".nii.gz") for p in (world / "images" / "P001").rglob("*.nii.gz")}
    assert images <= named, sorted(images - named)
