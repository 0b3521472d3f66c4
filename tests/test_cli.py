"""The command line: version and help without torch, and bad input as one line with exit code 2
and no output left behind."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from mseval.io.nifti import save_volume


def test_version_and_help_do_not_import_torch() -> None:
    code = (
        "import sys\nfrom mseval.cli import main\n"
        "assert main(['--version']) == 0\nassert main(['--help']) == 0\n"
        "assert main(['simulate', '--help']) == 0\n"
        "assert 'torch' not in sys.modules and 'monai' not in sys.modules, 'torch imported'\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert "mseval 0.1.0" in res.stdout and "simulate-forecasts" in res.stdout


def test_console_script_exit_code_and_single_line(tmp_path: Path) -> None:
    exe = Path(sys.executable).parent / "mseval"
    res = subprocess.run([str(exe), "validate", str(tmp_path / "nope")], capture_output=True, text=True)
    assert res.returncode == 2 and res.stdout == ""
    assert res.stderr.count("\n") == 1 and "nope: cohort folder not found" in res.stderr and "Traceback" not in res.stderr


def _csv_edit(name: str, fn: Callable[[pd.DataFrame], pd.DataFrame]) -> Callable[[Path], None]:
    def edit(root: Path) -> None:
        df = pd.read_csv(root / name, dtype=str, keep_default_na=False)
        fn(df).to_csv(root / name, index=False)

    return edit


def _set(col: str, value: str, row: int = 0) -> Callable[[pd.DataFrame], pd.DataFrame]:
    def f(df: pd.DataFrame) -> pd.DataFrame:
        df.loc[row, col] = value
        return df

    return f


def _image_edit(rel: str, fn: Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]) -> Callable[[Path], None]:
    def edit(root: Path) -> None:
        img = nib.load(str(root / rel))
        data, affine = fn(np.asanyarray(img.dataobj), img.affine.copy())
        save_volume(data, affine, root / rel)

    return edit


def _shifted(d: np.ndarray, a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a[0, 3] += 2.0
    return d, a


def _with_nan(d: np.ndarray, a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    d = d.astype(np.float32).copy()
    d[5, 5, 5] = np.nan
    return d, a


def _truncate(rel: str) -> Callable[[Path], None]:
    def edit(root: Path) -> None:
        raw = (root / rel).read_bytes()
        (root / rel).write_bytes(raw[: len(raw) * 2 // 3])

    return edit


def _delete(rel: str) -> Callable[[Path], None]:
    return lambda root: (root / rel).unlink()


BAD_INPUTS: dict[str, tuple[Callable[[Path], None], str, str]] = {
    # name: (how to break the cohort, file named in the error, words in the error)
    "missing file": (_delete("images/P001/t1.nii.gz"), "manifest.csv", "(row 1, field 't1'): file not found"),
    "unknown column": (_csv_edit("manifest.csv", lambda d: d.assign(colour="red")), "manifest.csv", "unknown column 'colour'"),
    "wrong dtype": (_csv_edit("manifest.csv", _set("age", "old", 2)), "manifest.csv", "(row 3, field 'age'): expected a number, got 'old'"),
    "duplicate patient_id": (_csv_edit("manifest.csv", _set("patient_id", "P001", 1)), "manifest.csv", "(row 2, field 'patient_id'): duplicate"),
    "unknown arm": (_csv_edit("manifest.csv", _set("arm", "aspirin")), "manifest.csv", "(row 1, field 'arm'): arm 'aspirin' is not in the arms table"),
    "two reference arms": (_csv_edit("arms.csv", _set("reference", "true", 3)), "arms.csv", "exactly one arm must have reference=true, found 2"),
    "negative follow-up": (_csv_edit("manifest.csv", _set("followup_weeks", "-4")), "manifest.csv", "(row 1, field 'followup_weeks'): must be > 0"),
    "non-binary mask": (_image_edit("images/P001/t2_lesion_mask.nii.gz", lambda d, a: (d * 2, a)), "t2_lesion_mask.nii.gz", "mask is not binary"),
    "NaN in an image": (_image_edit("images/P001/flair.nii.gz", _with_nan), "flair.nii.gz", "1 voxels are NaN or infinite"),
    "shape mismatch": (_image_edit("images/P001/t1.nii.gz", lambda d, a: (d[:-1], a)), "t1.nii.gz", "shape (31, 32, 32) differs"),
    "affine mismatch": (_image_edit("images/P001/t2_lesion_mask.nii.gz", _shifted), "t2_lesion_mask.nii.gz", "affine differs"),
    "4D image": (_image_edit("images/P001/t1.nii.gz", lambda d, a: (np.stack([d, d], -1), a)), "t1.nii.gz", "expected a 3D image"),
    "truncated gz": (_truncate("images/P001/flair.nii.gz"), "flair.nii.gz", "cannot read NIfTI"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_cohort_is_one_line_exit_2(case: str, cohort_copy: Path, cli, tmp_path: Path) -> None:  # noqa: ANN001
    breaker, file_named, words = BAD_INPUTS[case]
    breaker(cohort_copy)
    res = cli("validate", cohort_copy)
    assert res.code == 2, res.out
    assert res.err.count("\n") == 1 and res.err.startswith("mseval: error: "), res.err
    assert file_named in res.err and words in res.err, res.err
    assert "Traceback" not in res.err
    # a command that would write output leaves nothing behind when its input is bad
    if not case.endswith(("image", "gz")) and case not in {"NaN in an image", "shape mismatch"}:
        out = tmp_path / "forecasts"
        res = cli("simulate-forecasts", cohort_copy, "--out", out, "--samples", "2")
        assert res.code == 2 and file_named in res.err, res.err
        assert not out.exists()


def test_good_cohort_validates(tiny_cohort: Path, cli) -> None:  # noqa: ANN001
    res = cli("validate", tiny_cohort)
    assert res.code == 0 and "OK (12 patients, 6 arms, reference 'placebo', with truth; follow-up visits w48; 0 of 12 missing)" in res.out


def test_simulate_refuses_to_overwrite_and_checks_arguments(tiny_cohort: Path, cli, tmp_path: Path) -> None:  # noqa: ANN001
    res = cli("simulate", tiny_cohort, "--patients-per-arm", "1")
    assert res.code == 2 and "already exists" in res.err
    res = cli("simulate", tmp_path / "c", "--shape", "8", "32", "32")
    assert res.code == 2 and "--shape" in res.err and not (tmp_path / "c").exists()
    res = cli("simulate", tmp_path / "c", "--shape", "16", "16", "16", "--patients-per-arm", "1", "--seed", "1")
    assert res.code == 0 and (tmp_path / "c" / "truth.csv").exists() and "Placebo" in res.out


def test_simulate_forecasts_cli_resumes(tiny_cohort: Path, cli, tmp_path: Path) -> None:  # noqa: ANN001
    out = tmp_path / "fc"
    res = cli("simulate-forecasts", tiny_cohort, "--out", out, "--samples", "3", "--arms", "placebo")
    assert res.code == 0 and "12 blocks (12 patients x 1 arms, 3 samples each)" in res.out
    res = cli("simulate-forecasts", tiny_cohort, "--out", out, "--samples", "3")
    assert res.code == 0 and "72 blocks" in res.out
    res = cli("simulate-forecasts", tiny_cohort, "--out", tmp_path / "fc2", "--kind", "psychic")
    assert res.code == 2 and "--kind 'psychic'" in res.err and not (tmp_path / "fc2").exists()
