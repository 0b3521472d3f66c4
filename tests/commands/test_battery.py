"""The bad-input battery: every case is (command, expected exit code, words of the one stderr line).

A case is clean when the command exits with the expected code, prints exactly one line on stderr
(two for a usage error: the usage line, then the error) that names the option, file or field,
prints no traceback, and leaves every folder it was pointed at as it was. The table only grows:
a case that stops being clean fails here.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mseval.cli import main


# (id, argv with {placeholders}, expected exit, words that must all be in the error line)
CASES: list[tuple[str, list[str], int, list[str]]] = [
    # usage errors: the usage line, then one error line
    ("unknown-command", ["nosuch"], 2, ["No such command", "nosuch"]),
    ("unknown-option", ["count", "{store}", "--out", "o", "--bogus", "1"], 2, ["--bogus"]),
    ("missing-out", ["count", "{store}"], 2, ["--out"]),
    ("samples-not-a-number", ["simulate-forecasts", "{cohort}", "--out", "o", "--samples", "two"], 2, ["--samples"]),
    ("shape-not-a-number", ["simulate", "o", "--shape", "32", "32", "abc"], 2, ["--shape"]),
    ("forecast-missing-argument", ["forecast", "sample"], 2, ["cohort"]),
    # option ranges
    ("lesions-negative-min-volume", ["lesions", "{mask}", "--out", "l.csv", "--min-volume-mm3", "-5"], 2, ["--min-volume-mm3"]),
    ("count-workers-0", ["count", "{store}", "--out", "o", "--workers", "0"], 2, ["--workers"]),
    ("count-negative-min-voxels", ["count", "{store}", "--out", "o", "--min-voxels", "-1"], 2, ["--min-voxels"]),
    ("simulate-workers-0", ["simulate", "o", "--workers", "0"], 2, ["--workers"]),
    ("simulate-forecasts-samples-0", ["simulate-forecasts", "{cohort}", "--out", "o", "--samples", "0"], 2, ["--samples"]),
    ("simulate-forecasts-unknown-kind", ["simulate-forecasts", "{cohort}", "--out", "o", "--kind", "psychic"], 2, ["--kind", "psychic"]),
    ("effects-negative-bootstrap", ["effects", "{cohort}", "{store}", "--out", "o", "--bootstrap", "-1"], 2, ["--bootstrap"]),
    ("evaluate-workers-0", ["evaluate", "{cohort}", "{store}", "--out", "o", "--workers", "0"], 2, ["--workers"]),
    ("report-negative-power-sims", ["report", "{cohort}", "{store}", "--out", "o", "--power-sims", "-1"], 2, ["--power-sims"]),
    ("demo-negative-minutes", ["demo", "--out", "o", "--minutes", "-1"], 2, ["--minutes"]),
    ("demo-zero-minutes", ["demo", "--out", "o", "--minutes", "0"], 2, ["--minutes"]),
    ("plan-unknown-model", ["forecast", "plan", "--config", "tiny", "--model", "transformer"], 2, ["--model", "transformer"]),
    ("demo-missing-config", ["demo", "--out", "o", "--config", "nope"], 2, ["nope", "config"]),
    ("net2-negative-enlarge", ["net2", "{mask}", "{mask}", "--out", "n.nii.gz", "--enlarge-rel", "-1"], 2, ["--enlarge-rel"]),
    # output paths
    ("count-out-is-a-file", ["count", "{store}", "--out", "{afile}"], 2, ["afile", "is a file"]),
    ("count-out-under-a-file", ["count", "{store}", "--out", "{afile}/sub"], 2, ["afile", "is a file"]),
    ("count-out-dot", ["count", "{store}", "--out", "."], 2, ["--out", "current folder"]),
    ("lesions-out-dot", ["lesions", "{mask}", "--out", "."], 2, ["is a folder", "--out"]),
    ("match-out-folder", ["match", "{mask}", "{mask}", "--out", "."], 2, ["is a folder"]),
    ("effects-observed-bootstrap-too-few", ["effects", "{cohort}", "{store}", "--out", "o", "--observed-bootstrap", "20"], 2, ["--observed-bootstrap", "at least 99"]),
    ("effects-out-is-a-file", ["effects", "{cohort}", "{store}", "--out", "{afile}"], 2, ["afile", "is a file"]),
    ("simulate-out-dot", ["simulate", "."], 2, ["current folder"]),
    # formulas, columns and file kinds
    ("nbreg-formula-syntax", ["nbreg", "{csv}", "--out", "o", "--formula", "net2 ~ arm +"], 2, ["formula", "net2 ~ arm +"]),
    ("nbreg-formula-unmatched", ["nbreg", "{csv}", "--out", "o", "--formula", "net2 ~ (arm"], 2, ["formula"]),
    ("nbreg-formula-unknown-column", ["nbreg", "{csv}", "--out", "o", "--formula", "net2 ~ arm + shoe_size"], 2, ["shoe_size"]),
    ("nbreg-arm-column-missing", ["nbreg", "{csv}", "--out", "o", "--arm-column", "treatment"], 2, ["--arm-column", "treatment"]),
    ("nbreg-arm-column-not-in-formula", ["nbreg", "{csv}", "--out", "o", "--arm-column", "site"], 2, ["--arm-column", "site"]),
    ("nbreg-offset-column-missing", ["nbreg", "{csv}", "--out", "o", "--offset-years", "years"], 2, ["--offset-years", "years"]),
    ("nbreg-csv-named-parquet", ["nbreg", "{fake}", "--out", "o"], 2, ["fake.parquet", "not a Parquet"]),
    ("nbreg-table-missing", ["nbreg", "nope.csv", "--out", "o"], 2, ["nope.csv", "not found"]),
    ("effects-counts-is-csv", ["effects", "{cohort}", "--counts", "{csv}", "--out", "o"], 2, ["table.csv", "--counts", "Parquet"]),
    ("effects-formula-syntax", ["effects", "{cohort}", "{store}", "--out", "o", "--formula", "net2 ~ arm +"], 2, ["formula"]),
    ("effects-formula-unknown-column", ["effects", "{cohort}", "{store}", "--out", "o", "--formula", "net2 ~ arm + shoe"], 2, ["shoe"]),
    ("effects-no-forecasts", ["effects", "{cohort}", "--out", "o"], 2, ["--counts"]),
    ("report-formula-syntax", ["report", "{cohort}", "{store}", "--out", "o", "--formula", "net2 ~"], 2, ["formula"]),
    ("report-figure-dpi-too-low", ["report", "{cohort}", "{store}", "--out", "o", "--figure-dpi", "10"], 2, ["--figure-dpi"]),
    ("report-observed-bootstrap-too-few", ["report", "{cohort}", "{store}", "--out", "o", "--observed-bootstrap", "5"], 2, ["--observed-bootstrap"]),
    ("report-figure-format-unknown", ["report", "{cohort}", "{store}", "--out", "o", "--figure-formats", "png,gif"], 2, ["--figure-formats", "gif"]),
    ("evaluate-counts-is-csv", ["evaluate", "{cohort}", "{store}", "--out", "o", "--counts", "{csv}"], 2, ["--counts"]),
    # inputs that only a look inside reveals: still one line, before any progress line
    ("effects-store-missing-arms", ["effects", "{cohort}", "{partial}", "--out", "o"], 2, ["partial", "has no forecasts"]),
    ("report-store-missing-arms", ["report", "{cohort}", "{partial}", "--out", "o"], 2, ["partial"]),
    ("count-not-a-store", ["count", "{cohort}", "--out", "o"], 2, ["cohort", "store"]),
    ("validate-missing", ["validate", "nope"], 2, ["nope", "not found"]),
    # resume only what matches (the store was made with --samples 2 --seed 1 --kind oracle)
    ("resume-other-samples", ["simulate-forecasts", "{cohort}", "--out", "{store}", "--samples", "3", "--seed", "1"], 2, ["--samples", "3"]),
    ("resume-other-seed", ["simulate-forecasts", "{cohort}", "--out", "{store}", "--samples", "2", "--seed", "9"], 2, ["--seed", "9"]),
    ("resume-other-kind", ["simulate-forecasts", "{cohort}", "--out", "{store}", "--samples", "2", "--seed", "1", "--kind", "biased"], 2,
     ["--kind", "biased"]),
    ("count-into-finished", ["count", "{store}", "--out", "{root}/counted"], 2, ["counts.parquet", "exists"]),
]


def _snapshot(*folders: Path) -> dict[str, tuple[int, int]]:
    snap = {}
    for folder in folders:
        for dirpath, dirnames, filenames in os.walk(folder):
            for name in [*dirnames, *filenames]:
                p = Path(dirpath) / name
                st = p.lstat()
                snap[str(p)] = (st.st_size, st.st_mtime_ns if p.is_file() else 0)
    return snap


@pytest.mark.parametrize(("argv", "code", "words"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_clean_line(argv: list[str], code: int, words: list[str], inputs: dict[str, Path], tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    args = [a.format(**{k: str(v) for k, v in inputs.items()}) for a in argv]
    before = _snapshot(tmp_path, inputs["root"])
    got = main(args)
    cap = capsys.readouterr()
    assert got == code, cap.err
    lines = cap.err.strip("\n").split("\n")
    usage = lines[0].startswith("Usage:")
    assert len(lines) == (2 if usage else 1), cap.err
    assert "Traceback" not in cap.err
    line = lines[-1]
    assert line.startswith("mseval"), line
    for w in words:
        assert w in line, (w, line)
    assert _snapshot(tmp_path, inputs["root"]) == before, "the command left something behind or changed its inputs"


def test_battery_covers_every_class_of_the_issue() -> None:
    """At least the issue's cases are in the table (so the count of clean cases only goes up)."""
    ids = {c[0] for c in CASES}
    assert len(CASES) >= 48
    for needed in ("unknown-command", "unknown-option", "missing-out", "samples-not-a-number", "shape-not-a-number", "count-out-is-a-file",
                   "lesions-out-dot", "nbreg-formula-syntax", "effects-counts-is-csv", "lesions-negative-min-volume", "count-workers-0",
                   "nbreg-arm-column-missing", "demo-negative-minutes", "demo-missing-config", "resume-other-samples", "resume-other-seed",
                   "resume-other-kind"):
        assert needed in ids, needed


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root may write anywhere")
def test_unwritable_output_folder(inputs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    locked = tmp_path / "ro"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        assert main(["count", str(inputs["store"]), "--out", str(locked / "o")]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "permission denied" in err
    finally:
        locked.chmod(0o755)
