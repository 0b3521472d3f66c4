"""`mseval lesions` and `mseval net2` on plain files: the public columns, and bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from mseval.io.nifti import load_volume, save_volume


def _mask(path: Path, cubes: list[tuple[int, int, int]], shape: tuple[int, int, int] = (20, 20, 20), size: int = 2, affine: np.ndarray | None = None) -> Path:
    m = np.zeros(shape, np.uint8)
    for x, y, z in cubes:
        m[x : x + size, y : y + size, z : z + size] = 1
    return save_volume(m, np.eye(4) if affine is None else affine, path)


def test_lesions_command(tmp_path: Path, cli) -> None:  # noqa: ANN001
    a = _mask(tmp_path / "a.nii.gz", [(1, 1, 1), (10, 10, 10)])
    b = _mask(tmp_path / "b.nii.gz", [(5, 5, 5)])
    res = cli("lesions", a, b, "--out", tmp_path / "counts.csv", "--lesions-out", tmp_path / "lesions.csv")
    assert res.code == 0, res.err
    counts = pd.read_csv(tmp_path / "counts.csv")
    assert {"path", "count", "volume_mm3"} <= set(counts.columns)
    assert counts["count"].tolist() == [2, 1] and counts["volume_mm3"].tolist() == [16.0, 8.0]
    les = pd.read_csv(tmp_path / "lesions.csv")
    assert len(les) == 3 and {"path", "label", "voxels", "volume_mm3", "centroid_x_mm", "bbox_x0"} <= set(les.columns)
    res = cli("lesions", a, "--out", tmp_path / "c6.csv", "--min-volume-mm3", "9")
    assert pd.read_csv(tmp_path / "c6.csv")["count"].tolist() == [0]


def test_lesions_command_bad_input_writes_nothing(tmp_path: Path, cli) -> None:  # noqa: ANN001
    a = _mask(tmp_path / "a.nii.gz", [(1, 1, 1)])
    bad = save_volume(np.full((4, 4, 4), 3, np.uint8), np.eye(4), tmp_path / "bad.nii.gz")
    res = cli("lesions", a, bad, "--out", tmp_path / "counts.csv")
    assert res.code == 2 and "bad.nii.gz" in res.err and "not binary" in res.err and res.err.count("\n") == 1
    assert not (tmp_path / "counts.csv").exists()


def test_net2_command(tmp_path: Path, cli) -> None:  # noqa: ANN001
    base = _mask(tmp_path / "base.nii.gz", [(2, 2, 2), (10, 10, 10)])
    fu = _mask(tmp_path / "fu.nii.gz", [(2, 2, 2), (10, 10, 10), (15, 2, 2)])
    grown = load_volume(fu, mask=True).data
    grown[2:5, 2:5, 2:5] = 1
    save_volume(grown, np.eye(4), fu)
    res = cli("net2", base, fu, "--out", tmp_path / "net2.nii.gz", "--lesions-out", tmp_path / "net2.csv")
    assert res.code == 0, res.err
    assert "2 NET2 lesions (1 new, 1 enlarging; 1 stable)" in res.out
    table = pd.read_csv(tmp_path / "net2.csv")
    assert sorted(table["class"]) == ["enlarging", "new", "stable"] and (table["enlarge_rel"] == 0.5).all()
    assert load_volume(tmp_path / "net2.nii.gz", mask=True).data.sum() == 27 + 8


def test_net2_command_mismatched_grids(tmp_path: Path, cli) -> None:  # noqa: ANN001
    base = _mask(tmp_path / "base.nii.gz", [(2, 2, 2)])
    other = _mask(tmp_path / "fu.nii.gz", [(2, 2, 2)], shape=(20, 20, 21))
    res = cli("net2", base, other, "--out", tmp_path / "net2.nii.gz")
    assert res.code == 2 and "shape" in res.err and not (tmp_path / "net2.nii.gz").exists()
    shifted = np.eye(4)
    shifted[2, 3] = 1.0
    other = _mask(tmp_path / "fu2.nii.gz", [(2, 2, 2)], affine=shifted)
    res = cli("net2", base, other, "--out", tmp_path / "net2.nii.gz")
    assert res.code == 2 and "affine differs" in res.err and not (tmp_path / "net2.nii.gz").exists()
