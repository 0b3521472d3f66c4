"""NIfTI loading checks and deterministic atomic saving."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from mseval.errors import InputError
from mseval.io.nifti import check_same_grid, load_samples, load_volume, read_spacing, save_volume


def _affine(spacing: float = 2.0) -> np.ndarray:
    a = np.diag([spacing, spacing, spacing, 1.0])
    a[:3, 3] = -10.0
    return a


def test_round_trip_mask_and_image(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    mask = (rng.random((8, 9, 10)) > 0.8).astype(np.uint8)
    img = rng.normal(size=(8, 9, 10)).astype(np.float32)
    save_volume(mask, _affine(), tmp_path / "m.nii.gz")
    save_volume(img, _affine(), tmp_path / "i.nii.gz")
    m = load_volume(tmp_path / "m.nii.gz", mask=True)
    i = load_volume(tmp_path / "i.nii.gz")
    assert m.data.dtype == np.uint8 and np.array_equal(m.data, mask)
    assert i.data.dtype == np.float32 and np.array_equal(i.data, img)
    assert m.spacing == (2.0, 2.0, 2.0) and m.orientation == "RAS" and m.voxel_volume_mm3 == pytest.approx(8.0)


def test_save_is_deterministic_and_leaves_no_temp_files(tmp_path: Path) -> None:
    data = np.arange(60, dtype=np.float32).reshape(3, 4, 5)
    save_volume(data, _affine(), tmp_path / "a.nii.gz")
    save_volume(data, _affine(), tmp_path / "b.nii.gz")
    assert (tmp_path / "a.nii.gz").read_bytes() == (tmp_path / "b.nii.gz").read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.nii.gz", "b.nii.gz"]


def test_failed_save_keeps_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "x.nii.gz"
    save_volume(np.zeros((2, 2, 2), np.uint8), _affine(), target)
    before = target.read_bytes()
    import mseval.io.nifti as nifti

    def boom(*a, **k):  # noqa: ANN002, ANN003, ANN202
        raise RuntimeError("disk full")

    monkeypatch.setattr(nifti, "nifti_bytes", boom)
    with pytest.raises(RuntimeError):
        save_volume(np.ones((2, 2, 2), np.uint8), _affine(), target)
    assert target.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["x.nii.gz"]


def test_bad_files(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="file not found"):
        load_volume(tmp_path / "nope.nii.gz")
    save_volume(np.full((4, 4, 4), 2, np.uint8), _affine(), tmp_path / "two.nii.gz")
    with pytest.raises(InputError, match="not binary"):
        load_volume(tmp_path / "two.nii.gz", mask=True, field="net2_mask")
    nan = np.zeros((4, 4, 4), np.float32)
    nan[1, 2, 3] = np.nan
    save_volume(nan, _affine(), tmp_path / "nan.nii.gz")
    with pytest.raises(InputError, match="1 voxels are NaN"):
        load_volume(tmp_path / "nan.nii.gz")
    save_volume(np.zeros((4, 4, 4, 3), np.float32), _affine(), tmp_path / "4d.nii.gz")
    with pytest.raises(InputError, match="expected a 3D image"):
        load_volume(tmp_path / "4d.nii.gz")
    save_volume(np.zeros((4, 4, 4, 1), np.float32), _affine(), tmp_path / "4d1.nii.gz")
    assert load_volume(tmp_path / "4d1.nii.gz").shape == (4, 4, 4)
    rng = np.random.default_rng(1)
    save_volume(rng.normal(size=(16, 16, 16)).astype(np.float32), _affine(), tmp_path / "big.nii.gz")
    raw = (tmp_path / "big.nii.gz").read_bytes()
    (tmp_path / "trunc.nii.gz").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(InputError, match="cannot read NIfTI") as err:
        load_volume(tmp_path / "trunc.nii.gz", field="t1")
    assert "trunc.nii.gz" in str(err.value) and "\n" not in str(err.value)


def test_read_spacing_is_the_volumes_spacing_from_the_header_alone(tmp_path: Path) -> None:
    """The voxel size without the data: the same as a loaded Volume's (also for an oblique affine), and read from a
    file whose data is truncated (the header is whole); a missing file or a non-finite affine is one line naming it."""
    a = _affine()
    a[:3, :3] = a[:3, :3] @ np.array([[0.8, -0.6, 0.0], [0.6, 0.8, 0.0], [0.0, 0.0, 1.0]]) @ np.diag([1.0, 1.5, 0.5])
    rng = np.random.default_rng(2)
    save_volume(rng.normal(size=(16, 16, 16)).astype(np.float32), a, tmp_path / "oblique.nii.gz")
    assert read_spacing(tmp_path / "oblique.nii.gz") == pytest.approx(load_volume(tmp_path / "oblique.nii.gz").spacing, abs=1e-6)
    assert read_spacing(tmp_path / "oblique.nii.gz") == pytest.approx((2.0, 3.0, 1.0), abs=1e-5)
    raw = (tmp_path / "oblique.nii.gz").read_bytes()
    (tmp_path / "trunc.nii.gz").write_bytes(raw[: len(raw) // 2])
    assert read_spacing(tmp_path / "trunc.nii.gz") == pytest.approx((2.0, 3.0, 1.0), abs=1e-5)
    with pytest.raises(InputError, match="file not found"):
        read_spacing(tmp_path / "nope.nii.gz", field="brain_mask")
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.float32), a), tmp_path / "nan_affine.nii")
    raw = bytearray((tmp_path / "nan_affine.nii").read_bytes())
    raw[280:284] = np.float32(np.nan).tobytes()  # srow_x[0] of the NIfTI-1 header (the sform nibabel reads)
    (tmp_path / "nan_affine.nii").write_bytes(bytes(raw))
    with pytest.raises(InputError, match="NaN"):
        read_spacing(tmp_path / "nan_affine.nii")


def test_grid_checks(tmp_path: Path) -> None:
    a = load_volume(save_volume(np.zeros((4, 4, 4), np.float32), _affine(), tmp_path / "a.nii.gz"))
    b = load_volume(save_volume(np.zeros((4, 4, 5), np.float32), _affine(), tmp_path / "b.nii.gz"))
    shifted = _affine()
    shifted[0, 3] += 0.5
    c = load_volume(save_volume(np.zeros((4, 4, 4), np.float32), shifted, tmp_path / "c.nii.gz"))
    tiny = _affine()
    tiny[0, 3] += 1e-5
    d = load_volume(save_volume(np.zeros((4, 4, 4), np.float32), tiny, tmp_path / "d.nii.gz"))
    check_same_grid([a, d])
    with pytest.raises(InputError, match="shape"):
        check_same_grid([a, b])
    with pytest.raises(InputError, match="affine differs"):
        check_same_grid([a, c])


def test_orientation_reported_for_lps(tmp_path: Path) -> None:
    aff = np.diag([-1.0, -1.0, 1.0, 1.0])
    v = load_volume(save_volume(np.zeros((3, 3, 3), np.float32), aff, tmp_path / "lps.nii.gz"))
    assert v.orientation == "LPS"
    assert nib.load(str(tmp_path / "lps.nii.gz")).header.get_sform(coded=True)[1] == 1


def test_load_samples_checks_count(tmp_path: Path) -> None:
    masks = np.zeros((5, 4, 4, 3), np.uint8)
    save_volume(masks, _affine(), tmp_path / "s.nii.gz")
    arr, _ = load_samples(tmp_path / "s.nii.gz", expected_samples=3)
    assert arr.shape == (3, 5, 4, 4)
    with pytest.raises(InputError, match="holds 3 samples, the index says 4"):
        load_samples(tmp_path / "s.nii.gz", expected_samples=4)
