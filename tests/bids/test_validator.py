"""The BIDS fixture passes the BIDS validator, where one is installed; otherwise the filename check.

The validator is never downloaded here: set MSEVAL_BIDS_VALIDATOR to its executable, or put a
`bids-validator` on PATH (e.g. `npm install bids-validator@1.15.0` in a folder outside the repository,
then `export MSEVAL_BIDS_VALIDATOR=$PWD/node_modules/.bin/bids-validator`). Without one, the names of
the raw files are checked with pybids' `bids_validator` filename rules instead (docs/bids.md).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest


def _validator() -> str | None:
    """The full BIDS validator's executable: MSEVAL_BIDS_VALIDATOR, else `bids-validator` on PATH."""
    env = os.environ.get("MSEVAL_BIDS_VALIDATOR")
    if env:
        if not (Path(env).is_file() and os.access(env, os.X_OK)):
            pytest.fail(f"MSEVAL_BIDS_VALIDATOR={env} is not an executable file")
        return env
    return shutil.which("bids-validator")


def _full_validator_errors(exe: str, root: Path) -> list[str]:
    """Error codes the validator reports on `root` ('CODE: file' each), from its --json output (the
    1.x layout `issues.errors`, or the 2.x layout `issues.issues` with severity 'error')."""
    res = subprocess.run([exe, str(root), "--json"], capture_output=True, text=True, timeout=300, check=False)
    start = res.stdout.find("{")
    assert start >= 0, f"no JSON from {exe} (exit {res.returncode}): {res.stderr[-2000:]}"
    issues = json.loads(res.stdout[start:])["issues"]
    if "errors" in issues:
        return [f"{e['key']}: {', '.join(str((f.get('file') or {}).get('relativePath', '')) for f in e.get('files') or [])}"
                for e in issues["errors"]]
    return [f"{i.get('code')}: {i.get('location', '')}" for i in issues.get("issues", []) if i.get("severity") == "error"]


def _filename_errors(root: Path) -> list[str]:
    """Raw files (outside derivatives/, not listed in .bidsignore) whose names pybids' filename validator refuses."""
    from bids_validator import BIDSValidator

    ignored = {x.strip() for x in (root / ".bidsignore").read_text().splitlines()} if (root / ".bidsignore").is_file() else set()
    raw = [p for p in root.rglob("*") if p.is_file() and "derivatives" not in p.parts and p.name not in ignored | {".bidsignore"}]
    assert raw
    return [p.relative_to(root).as_posix() for p in raw if not BIDSValidator().is_bids("/" + p.relative_to(root).as_posix())]


def _errors(root: Path) -> tuple[str, list[str]]:
    exe = _validator()
    return ("bids-validator", _full_validator_errors(exe, root)) if exe else ("filename check", _filename_errors(root))


def test_the_simulated_bids_dataset_has_no_validator_error(trial: dict[str, Path]) -> None:
    used, errors = _errors(trial["bids"])
    assert errors == [], f"{used}: {errors}"


def test_the_check_catches_a_file_bids_does_not_know(bids_copy: Path) -> None:
    """The same check on a damaged copy must fail, or the test above proves nothing."""
    src = next(bids_copy.glob("sub-*/ses-baseline/anat/*_T1w.nii.gz"))
    shutil.copyfile(src, src.with_name(src.name.replace("_T1w", "_T1weighted")))
    used, errors = _errors(bids_copy)
    assert errors, f"{used} found nothing wrong with {src.name.replace('_T1w', '_T1weighted')}"
