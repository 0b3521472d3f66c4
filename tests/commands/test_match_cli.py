"""`mseval match`: writes the metrics (and per-lesion) CSV for a preset or explicit options, and on
bad input (unknown preset, non-binary mask, shape or affine mismatch, missing file, bad option)
raises `InputError` naming the problem and writes nothing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import typer
from typer.testing import CliRunner

from mseval.commands.match import match
from mseval.errors import InputError
from mseval.io.nifti import save_volume
from mseval.lesions.matching import LESION_MATCH_COLUMNS, MATCH_COLUMNS, match_lesions
from mseval.lesions.presets import PRESETS

AFFINE = np.diag([1.0, 1.0, 2.0, 1.0])


def make_app() -> typer.Typer:
    app = typer.Typer()
    app.command()(match)
    return app


def invoke(*args: str | Path):  # noqa: ANN201
    return CliRunner().invoke(make_app(), [str(a) for a in args])


def masks() -> tuple[np.ndarray, np.ndarray]:
    ref = np.zeros((24, 24, 12), np.uint8)
    ref[2:8, 2:8, 2:5] = 1
    ref[14:20, 14:20, 6:9] = 1
    pred = np.zeros_like(ref)
    pred[3:8, 2:8, 2:5] = 1  # overlaps the first reference lesion
    pred[2:5, 18:22, 8:10] = 1  # a false positive
    return pred, ref


@pytest.fixture()
def pair(tmp_path: Path) -> tuple[Path, Path]:
    pred, ref = masks()
    return save_volume(pred, AFFINE, tmp_path / "pred.nii.gz"), save_volume(ref, AFFINE, tmp_path / "ref.nii.gz")


def test_match_writes_one_row_of_metrics_and_the_lesion_table(pair: tuple[Path, Path], tmp_path: Path) -> None:
    out, les = tmp_path / "out" / "metrics.csv", tmp_path / "out" / "lesions.csv"
    res = invoke(*pair, "--preset", "isles22", "--out", out, "--lesions-out", les)
    assert res.exit_code == 0, res.output
    df = pd.read_csv(out)
    assert list(df.columns) == ["pred_file", "ref_file", *MATCH_COLUMNS] and len(df) == 1
    pred, ref = masks()
    core = match_lesions(pred, ref, AFFINE, PRESETS["isles22"]).to_frame()
    for col in ("tp_ref", "tp_pred", "fp", "fn", "precision", "recall", "f1", "dice", "volume_ref_mm3"):
        assert df.loc[0, col] == pytest.approx(core.loc[0, col])
    assert (df.loc[0, "rule"], df.loc[0, "tp_ref"], df.loc[0, "fp"], df.loc[0, "fn"]) == ("isles22", 1, 1, 1)
    assert df.loc[0, "volume_ref_mm3"] == pytest.approx(ref.sum() * 2.0)
    table = pd.read_csv(les)
    assert list(table.columns) == LESION_MATCH_COLUMNS and len(table) == 4
    assert "TP_ref 1" in res.output and not list(tmp_path.glob("out/.*.tmp*"))


def test_explicit_options_define_the_rule(pair: tuple[Path, Path], tmp_path: Path) -> None:
    out = tmp_path / "m.csv"
    res = invoke(*pair, "--out", out, "--connectivity", "6", "--criterion", "iou", "--threshold", "0.9",
                 "--matching", "greedy", "--min-volume-mm3", "0", "--min-size-side", "ref")
    assert res.exit_code == 0, res.output
    row = pd.read_csv(out).iloc[0]
    assert (row["rule"], row["connectivity"], row["criterion"], row["threshold"], row["matching"]) == ("custom", 6, "iou", 0.9, "greedy")
    assert (row["tp_ref"], row["fp"], row["fn"]) == (0, 2, 2)  # IoU 5/6 < 0.9
    res = invoke(*pair, "--out", out, "--preset", "panoptica", "--threshold", "0.3")
    assert res.exit_code == 0 and pd.read_csv(out).loc[0, "rule"] == "panoptica+threshold=0.3"
    res = invoke(*pair, "--out", out)
    assert res.exit_code == 0 and pd.read_csv(out).loc[0, "rule"] == "default"


def _expect_input_error(args: list[str | Path], message: str, out: Path) -> InputError:
    res = invoke(*args, "--out", out)
    assert res.exit_code != 0
    assert isinstance(res.exception, InputError), res.exception
    assert message in res.exception.message
    assert not out.exists() and not list(out.parent.glob(f".{out.name}*"))
    return res.exception


def test_unknown_preset_names_the_valid_ones(pair: tuple[Path, Path], tmp_path: Path) -> None:
    err = _expect_input_error([*pair, "--preset", "brats"], "unknown preset 'brats'; valid presets: brats2023, isles22, msseg2, panoptica, shifts", tmp_path / "m.csv")
    assert err.field == "preset"


def test_non_binary_mask_is_refused(pair: tuple[Path, Path], tmp_path: Path) -> None:
    pred, _ = masks()
    bad = save_volume((pred * 2).astype(np.uint8), AFFINE, tmp_path / "bad.nii.gz")
    err = _expect_input_error([bad, pair[1]], "mask is not binary", tmp_path / "m.csv")
    assert err.file == str(bad) and err.field == "pred"


def test_shape_mismatch_is_refused(pair: tuple[Path, Path], tmp_path: Path) -> None:
    other = save_volume(np.zeros((24, 24, 13), np.uint8), AFFINE, tmp_path / "other.nii.gz")
    err = _expect_input_error([pair[0], other], "shape (24, 24, 13) differs from pred.nii.gz (24, 24, 12)", tmp_path / "m.csv")
    assert err.file == str(other)


def test_affine_mismatch_is_refused(pair: tuple[Path, Path], tmp_path: Path) -> None:
    _, ref = masks()
    shifted = AFFINE.copy()
    shifted[0, 3] = 1.5
    other = save_volume(ref, shifted, tmp_path / "shifted.nii.gz")
    _expect_input_error([pair[0], other], "affine differs from pred.nii.gz by up to 1.5 mm", tmp_path / "m.csv")


def test_missing_file_is_refused(pair: tuple[Path, Path], tmp_path: Path) -> None:
    err = _expect_input_error([pair[0], tmp_path / "nope.nii.gz"], "file not found", tmp_path / "m.csv")
    assert err.file == str(tmp_path / "nope.nii.gz")


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [("--criterion", "jaccard", "criterion must be one of"), ("--connectivity", "8", "connectivity must be 6, 18 or 26"),
     ("--threshold", "1.5", "threshold must be between 0 and 1"), ("--matching", "optimal", "matching must be one of"),
     ("--min-size-side", "left", "min_size_side must be one of")],
)
def test_bad_rule_options_are_refused(pair: tuple[Path, Path], tmp_path: Path, option: str, value: str, message: str) -> None:
    _expect_input_error([*pair, option, value], message, tmp_path / "m.csv")


def test_the_command_module_imports_nothing_heavy() -> None:
    code = "import sys, mseval.commands.match\nprint(sorted(m for m in ('numpy','pandas','nibabel','scipy','cc3d') if m in sys.modules))"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0 and res.stdout.strip() == "[]", res.stderr
