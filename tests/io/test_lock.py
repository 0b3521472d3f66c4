"""One writer per output folder; a killed run's temporaries go, nothing else does; recorded paths are final."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mseval.errors import InputError
from mseval.io.atomic import atomic_dir, atomic_path, final_path, recorded_path
from mseval.io.lock import lock_path, output_lock, remove_stale_temporaries


def test_second_holder_is_refused_with_the_first_named(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with output_lock(out):
        assert lock_path(out).is_file() and f"pid {os.getpid()}" in lock_path(out).read_text()
        with pytest.raises(InputError, match=f"another mseval run is writing here \\(pid {os.getpid()}"):
            with output_lock(out):
                pass
    assert not lock_path(out).exists() and not out.exists()
    with output_lock(out):  # free again
        pass


def test_stale_temporaries_go_and_nothing_else(tmp_path: Path) -> None:
    out = tmp_path / "rep"
    (out / "tables").mkdir(parents=True)
    keep = [out / "tables" / "a.csv", out / ".hidden_note", tmp_path / ".rep_notes.txt", tmp_path / "other.abcdefgh.tmp"]
    for p in keep:
        p.write_text("x")
    stale = [tmp_path / ".rep.k3j_9x2a.tmp", out / "tables" / ".a.csv.q1w2e3r4.tmp.csv", tmp_path / ".rep.zz11zz11.old"]
    stale[0].mkdir()
    (stale[0] / "report.html").write_text("half")
    stale[1].write_text("half")
    stale[2].mkdir()
    removed = remove_stale_temporaries(out)
    assert sorted(removed) == sorted(stale)
    assert all(p.exists() for p in keep) and not any(p.exists() for p in stale)


def test_final_path_maps_nested_temporary_folders(tmp_path: Path) -> None:
    with atomic_dir(tmp_path / "report") as rep:
        inner_file = rep / "results" / "counts" / "counts.parquet"
        with atomic_dir(rep / "results" / "effects") as eff:
            assert final_path(inner_file) == str(tmp_path / "report" / "results" / "counts" / "counts.parquet")
            assert final_path(eff / "effects.json") == str(tmp_path / "report" / "results" / "effects" / "effects.json")
        with atomic_path(rep / "x.csv") as tmp:
            tmp.write_text("x")
    assert final_path(tmp_path / "elsewhere.csv") == str(tmp_path / "elsewhere.csv")
    assert (tmp_path / "report" / "x.csv").is_file()


def test_recorded_path_is_relative_to_the_output_for_this_runs_files_and_as_given_otherwise(tmp_path: Path) -> None:
    """An input the same run writes (a report's own counts) is recorded relative to the output that
    names it, so two report folders record the same text; any other input is recorded as given."""
    for name in ("a", "b/deeper"):
        with atomic_dir(tmp_path / name / "report") as rep:
            with atomic_dir(rep / "results" / "effects") as eff:
                assert recorded_path(rep / "results" / "counts" / "counts.parquet", rep / "results" / "effects") == "../counts/counts.parquet"
                assert recorded_path(eff / "x.parquet", rep / "results" / "effects") == "x.parquet"
    assert recorded_path("rel/counts.parquet", tmp_path / "out") == "rel/counts.parquet"
    assert recorded_path(tmp_path / "counts.parquet", tmp_path / "out") == str(tmp_path / "counts.parquet")
