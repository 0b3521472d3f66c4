"""A session on another grid is resampled onto the baseline grid; bad BIDS input is one line, exit 2, nothing written."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from mseval.cli import main

# Voxel (i, j, k) of a 2x finer grid over the same field of view: i_coarse = 0.5 i_fine - 0.25.
FINER = np.array([[0.5, 0, 0, -0.25], [0, 0.5, 0, -0.25], [0, 0, 0.5, -0.25], [0, 0, 0, 1.0]])


def _oblique() -> np.ndarray:
    """(4, 4) rotation by 20 degrees about z and 10 about x."""
    a, b = np.deg2rad(20), np.deg2rad(10)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    out = np.eye(4)
    out[:3, :3] = rz @ rx
    return out


def _files(bids: Path, subject: str, session: str | None = None) -> list[Path]:
    ses = f"ses-{session}" if session else "ses-*"
    return sorted([*bids.glob(f"sub-{subject}/{ses}/anat/*.nii.gz"), *bids.glob(f"derivatives/mseval/sub-{subject}/{ses}/anat/*.nii.gz")])


def _rewrite(path: Path, data: np.ndarray, affine: np.ndarray) -> None:
    nib.save(nib.Nifti1Image(data, affine), str(path))  # nibabel only, as another group's pipeline would


def test_a_session_on_a_finer_oblique_grid_is_resampled_and_counts_agree(bids_copy: Path, tmp_path: Path, trial: dict[str, Path], cli) -> None:  # noqa: ANN001
    """sub-P001: every session turned oblique; ses-w24 on a 32^3 grid (2x finer) over the same field of
    view. Import resamples w24 onto the 16^3 baseline grid (nearest for masks, linear for images); the
    lesion counts and volumes of the imported masks equal `mseval lesions` on the native fine masks."""
    rot = _oblique()
    for path in _files(bids_copy, "P001"):
        img = nib.load(str(path))
        data = np.asanyarray(img.dataobj)
        if "ses-w24" in path.name:
            _rewrite(path, data.repeat(2, 0).repeat(2, 1).repeat(2, 2), rot @ img.affine @ FINER)
        else:
            _rewrite(path, data, rot @ img.affine)
    assert main(["import", "bids", str(bids_copy), "--out", str(tmp_path / "c")]) == 0
    report = pd.read_csv(tmp_path / "c" / "import_report.csv")
    resampled = report[report["status"] == "resampled"]
    assert set(resampled["subject"]) == {"P001"} and set(resampled["session"]) == {"w24"} and len(resampled) == 7
    visits = pd.read_csv(trial["cohort"] / "visits.csv").set_index(["patient_id", "visit"])
    for col in ("t2_lesion_mask", "net2_mask", "flair"):
        rel = visits.at[("P001", "w24"), col]
        got, want = nib.load(str(tmp_path / "c" / rel)), nib.load(str(trial["cohort"] / rel))
        np.testing.assert_allclose(got.get_fdata(), want.get_fdata(), rtol=0, atol=1e-4)
        np.testing.assert_allclose(got.affine, rot @ want.affine, atol=1e-6)
    native = [p for p in _files(bids_copy, "P001", "w24") if "_mask" in p.name and "label-lesion" in p.name]
    imported = [tmp_path / "c" / visits.at[("P001", "w24"), c] for c in ("t2_lesion_mask", "gd_lesion_mask", "net2_mask", "net2_mask_cumulative")]  # the order of the sorted BIDS names
    assert cli("lesions", *native, "--out", tmp_path / "native.csv").code == 0
    assert cli("lesions", *imported, "--out", tmp_path / "imported.csv").code == 0
    a, b = pd.read_csv(tmp_path / "native.csv"), pd.read_csv(tmp_path / "imported.csv")
    assert a["count"].sum() > 0
    np.testing.assert_array_equal(a["count"], b["count"])
    np.testing.assert_allclose(a["volume_mm3"], b["volume_mm3"], rtol=1e-9)
    # native_lesions.csv: every lesion mask counted on its own grid, as `mseval lesions` counts the BIDS file
    nat = pd.read_csv(tmp_path / "c" / "native_lesions.csv")
    mine = nat[nat["subject"] == "P001"].reset_index(drop=True)
    assert cli("lesions", *[bids_copy / s for s in mine["source"]], "--out", tmp_path / "all_native.csv").code == 0
    ref = pd.read_csv(tmp_path / "all_native.csv")
    assert len(mine) == 4 * 4 - 2  # 4 sessions x (T2, Gd, NET2, NET2 cumulative), no NET2 at baseline
    for col in ("count", "min_voxels", "orientation", "connectivity"):
        np.testing.assert_array_equal(mine[col], ref[col], err_msg=col)
    np.testing.assert_allclose(mine["volume_mm3"], ref["volume_mm3"], rtol=1e-12)
    assert set(mine.loc[mine["session"] == "w24", "shape"]) == {"40x48x40"} and set(mine.loc[mine["session"] != "w24", "shape"]) == {"20x24x20"}


def test_baseline_volume_and_gd_count_come_from_the_native_masks(bids_copy: Path, tmp_path: Path) -> None:
    """participants.tsv without t2_volume_mm3 and gd_count; sub-P002's baseline masks on a 2x finer grid with one
    extra fine voxel that nearest-neighbour resampling drops: the manifest's values are those of the native files."""
    tab = pd.read_csv(bids_copy / "participants.tsv", sep="\t").drop(columns=["t2_volume_mm3", "gd_count"])
    tab.to_csv(bids_copy / "participants.tsv", sep="\t", index=False, na_rep="n/a")
    for path in _files(bids_copy, "P002", "baseline"):
        if "label-lesion_desc-T2" in path.name or "label-lesion_desc-gd" in path.name:
            img = nib.load(str(path))
            fine = np.asanyarray(img.dataobj).astype(np.uint8).repeat(2, 0).repeat(2, 1).repeat(2, 2)
            fine[1, 1, 1] = 1  # a corner voxel: the coarse grid's nearest neighbour misses it
            _rewrite(path, fine, img.affine @ FINER)
    assert main(["import", "bids", str(bids_copy), "--out", str(tmp_path / "c")]) == 0
    man = pd.read_csv(tmp_path / "c" / "manifest.csv").set_index("patient_id")
    t2 = nib.load(str(next(p for p in _files(bids_copy, "P002", "baseline") if "desc-T2" in p.name)))
    voxels = np.asanyarray(t2.dataobj).sum()
    assert man.at["P002", "t2_volume_mm3"] == pytest.approx(round(float(voxels) * abs(np.linalg.det(t2.affine[:3, :3])), 3))
    coarse = nib.load(str(tmp_path / "c" / "images/P002/t2_lesion_mask.nii.gz"))
    assert np.asanyarray(coarse.dataobj).sum() * 8 != voxels  # the resampled mask lost the extra voxel: the test can tell
    nat = pd.read_csv(tmp_path / "c" / "native_lesions.csv").set_index(["subject", "session", "field"])
    assert man.at["P002", "gd_count"] == nat.at[("P002", "baseline", "gd_lesion_mask"), "count"]


def test_the_arm_column_is_named_by_an_option(bids_copy: Path, tmp_path: Path, trial: dict[str, Path]) -> None:
    tab = pd.read_csv(bids_copy / "participants.tsv", sep="\t").rename(columns={"arm": "randomized"})
    tab.to_csv(bids_copy / "participants.tsv", sep="\t", index=False)
    assert main(["import", "bids", str(bids_copy), "--out", str(tmp_path / "c"), "--arm-column", "randomized"]) == 0
    assert (tmp_path / "c" / "manifest.csv").read_bytes() == (trial["cohort"] / "manifest.csv").read_bytes()


def _refused(cli, bids: Path, out: Path, *needles: str) -> None:  # noqa: ANN001
    res = cli("import", "bids", bids, "--out", out)
    assert res.code == 2, res.err
    line = res.err.strip()
    assert "\n" not in line and "Traceback" not in line and line.startswith("mseval: error: "), line
    for n in needles:
        assert n in line, (n, line)
    assert not out.exists() and not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]


def test_missing_flair_in_one_session_is_refused(bids_copy: Path, tmp_path: Path, cli) -> None:  # noqa: ANN001
    (bids_copy / "sub-P002/ses-w48/anat/sub-P002_ses-w48_FLAIR.nii.gz").unlink()
    _refused(cli, bids_copy, tmp_path / "out", "sub-P002/ses-w48", "field 'flair'", "no FLAIR image found")


def test_two_files_for_one_field_are_refused_and_named(bids_copy: Path, tmp_path: Path, cli) -> None:  # noqa: ANN001
    """Two T1w images of one session (one with acq-, the contrast-enhanced one has ce- and is another field)."""
    import shutil

    t1 = bids_copy / "sub-P002/ses-w48/anat/sub-P002_ses-w48_T1w.nii.gz"
    shutil.copy(t1, t1.with_name("sub-P002_ses-w48_acq-b_T1w.nii.gz"))
    _refused(cli, bids_copy, tmp_path / "out", "sub-P002/ses-w48", "field 't1'",
             "2 files match (sub-P002_ses-w48_acq-b_T1w.nii.gz, sub-P002_ses-w48_T1w.nii.gz)")


def test_a_participant_without_arm_is_refused(bids_copy: Path, tmp_path: Path, cli) -> None:  # noqa: ANN001
    tab = pd.read_csv(bids_copy / "participants.tsv", sep="\t", dtype=str)
    tab.loc[tab["participant_id"] == "sub-P004", "arm"] = "n/a"
    tab.to_csv(bids_copy / "participants.tsv", sep="\t", index=False)
    _refused(cli, bids_copy, tmp_path / "out", "participants.tsv", "row 4", "field 'arm'", "participant sub-P004 has no arm")


def test_a_session_5mm_off_is_refused_as_not_coregistered(bids_copy: Path, tmp_path: Path, cli) -> None:  # noqa: ANN001
    for path in _files(bids_copy, "P003", "w96"):
        img = nib.load(str(path))
        shifted = img.affine.copy()
        shifted[0, 3] += 5.0
        _rewrite(path, np.asanyarray(img.dataobj), shifted)
    _refused(cli, bids_copy, tmp_path / "out", "sub-P003/ses-w96", "not co-registered", "5 mm off")
