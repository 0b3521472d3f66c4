"""`mseval forecast import`: probability maps (--probability, --threshold) and a CSV index (--index)."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from mseval.cli import main
from mseval.io.store import ForecastStore


def _same_counts(tmp_path: Path, ours: Path, theirs: Path) -> None:
    for name, store in (("ours", ours), ("theirs", theirs)):
        assert main(["count", str(store), "--out", str(tmp_path / f"count_{name}")]) == 0
    files = sorted(p.name for p in (tmp_path / "count_ours").glob("*.parquet"))
    assert files
    for f in files:
        a, b = pd.read_parquet(tmp_path / "count_ours" / f), pd.read_parquet(tmp_path / "count_theirs" / f)
        drop = [c for c in a.columns if c == "checkpoint"]
        pd.testing.assert_frame_equal(a.drop(columns=drop), b.drop(columns=drop), obj=f)


def test_probability_maps_listed_in_an_index_give_the_masks_and_keep_the_maps(trial: dict[str, Path], tmp_path: Path, foreign) -> None:  # noqa: ANN001
    written = foreign(trial["store"], tmp_path / "theirs" / "maps", probability=True)
    rows = [{"file": f"maps/{f}", "patient": p, "arm": a, "sample": s} for p, a, s, f in reversed(written)]  # order does not matter
    pd.DataFrame(rows).to_csv(tmp_path / "index.csv", index=False)
    assert main(["forecast", "import", str(tmp_path / "theirs"), "--index", str(tmp_path / "index.csv"), "--probability",
                 "--out", str(tmp_path / "store")]) == 0
    _same_counts(tmp_path, trial["store"], tmp_path / "store")
    ours, theirs = ForecastStore.open(trial["store"]), ForecastStore.open(tmp_path / "store")
    assert theirs.keys() == ours.keys()
    for key in ours.keys():
        m_ours, aff = ours.block(*key).masks()
        m_theirs, aff2 = theirs.block(*key).masks()
        prob, _ = theirs.block(*key).prob()
        np.testing.assert_array_equal(m_ours, m_theirs)
        np.testing.assert_array_equal(aff, aff2)
        np.testing.assert_array_equal(prob, np.where(m_ours > 0, np.float32(0.8), np.float32(0.1)))
    settings = json.loads((tmp_path / "store" / "store.json").read_text())["settings"]
    assert settings["probability"] is True and settings["threshold"] == 0.5 and settings["index"].endswith("index.csv")
    assert theirs.block(*ours.keys()[0]).sampler["threshold"] == 0.5


def test_the_threshold_decides_the_masks(trial: dict[str, Path], tmp_path: Path, foreign) -> None:  # noqa: ANN001
    foreign(trial["store"], tmp_path / "theirs", probability=True)
    assert main(["forecast", "import", str(tmp_path / "theirs"), "--probability", "--threshold", "0.05", "--out", str(tmp_path / "store")]) == 0
    store = ForecastStore.open(tmp_path / "store")
    masks, _ = store.block(*store.keys()[0]).masks()
    assert masks.all()  # every voxel is 0.1 or 0.8 > 0.05
    assert json.loads((tmp_path / "store" / "store.json").read_text())["settings"]["threshold"] == 0.05


@pytest.mark.parametrize("value, words", [(1.5, "outside [0, 1]"), (-0.2, "outside [0, 1]"), (np.nan, "NaN")], ids=["above-1", "negative", "nan"])
def test_a_bad_probability_map_is_refused_naming_the_file(trial: dict[str, Path], tmp_path: Path, cli, foreign, value: float, words: str) -> None:  # noqa: ANN001
    foreign(trial["store"], tmp_path / "theirs", probability=True)
    bad = sorted((tmp_path / "theirs").glob("*.nii.gz"))[5]
    img = nib.load(str(bad))
    data = np.asanyarray(img.dataobj).copy()
    data[1, 2, 3] = value
    nib.save(nib.Nifti1Image(data, img.affine), str(bad))
    res = cli("forecast", "import", tmp_path / "theirs", "--probability", "--out", tmp_path / "store")
    assert res.code == 2 and bad.name in res.err and words in res.err and "Traceback" not in res.err
    assert len(res.err.strip().splitlines()) == 1
    assert not (tmp_path / "store").exists()


def test_a_threshold_outside_0_1_is_refused(tmp_path: Path, cli) -> None:  # noqa: ANN001
    (tmp_path / "f").mkdir()
    res = cli("forecast", "import", tmp_path / "f", "--probability", "--threshold", "1", "--out", tmp_path / "store")
    assert res.code == 2 and "--threshold" in res.err and not (tmp_path / "store").exists()


def test_a_threshold_without_probability_maps_is_refused(tmp_path: Path, cli) -> None:  # noqa: ANN001
    (tmp_path / "f").mkdir()
    res = cli("forecast", "import", tmp_path / "f", "--threshold", "0.3", "--out", tmp_path / "store")
    assert res.code == 2 and "--probability" in res.err and len(res.err.strip().splitlines()) == 1
    assert not (tmp_path / "store").exists()


@pytest.mark.parametrize("damage, row, field, words", [
    (lambda t: t.assign(file=t["file"].where(t.index != 2, "nope.nii.gz")), 3, "file", "not found"),
    (lambda t: t.assign(sample=t["sample"].astype(str).where(t.index != 0, "x")), 1, "sample", "not a non-negative integer"),
    (lambda t: pd.concat([t, t.iloc[[1]]], ignore_index=True), None, "sample", "already listed in row 2"),
    (lambda t: t.assign(arm=t["arm"].where(t.index != 3, "")), 4, "arm", "is not an ID"),
    (lambda t: t.drop(columns="patient"), None, "patient", "missing required column 'patient'"),
], ids=["missing-file", "bad-sample", "duplicate", "empty-arm", "no-patient-column"])
def test_a_bad_index_row_is_named_by_its_row(trial: dict[str, Path], tmp_path: Path, cli, foreign, damage, row, field, words) -> None:  # noqa: ANN001
    written = foreign(trial["store"], tmp_path / "theirs")
    table = damage(pd.DataFrame([{"file": f, "patient": p, "arm": a, "sample": s} for p, a, s, f in written]))
    table.to_csv(tmp_path / "index.csv", index=False)
    res = cli("forecast", "import", tmp_path / "theirs", "--index", tmp_path / "index.csv", "--out", tmp_path / "store")
    assert res.code == 2 and "index.csv" in res.err and f"field '{field}'" in res.err and words in res.err, res.err
    row = row or len(table)
    if "row" in words or field != "patient":
        assert f"row {row}" in res.err and f"line {row + 1} of the file" in res.err
    assert len(res.err.strip().splitlines()) == 1 and not (tmp_path / "store").exists()


def test_an_index_without_sample_column_lists_4d_files(trial: dict[str, Path], tmp_path: Path, foreign) -> None:  # noqa: ANN001
    written = foreign(trial["store"], tmp_path / "theirs", per_sample=False)
    pd.DataFrame([{"patient": p, "arm": a, "file": f} for p, a, _, f in written]).to_csv(tmp_path / "index.csv", index=False)
    assert main(["forecast", "import", str(tmp_path / "theirs"), "--index", str(tmp_path / "index.csv"), "--out", str(tmp_path / "store")]) == 0
    _same_counts(tmp_path, trial["store"], tmp_path / "store")
