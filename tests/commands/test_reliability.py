"""Reliability as users meet it: real processes, real signals, concurrent runs, repeated runs.

Each test runs `python -m mseval.cli` in a subprocess (the console script's code path) except
where the in-process entry point proves the same thing faster.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from mseval.cli import INTERRUPTED, main
from mseval.io.lock import lock_path, output_lock

ROOT = Path(__file__).resolve().parents[2]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}


def _sigint_as_in_a_terminal() -> None:
    """In the child before exec: SIGINT at its default disposition, as a terminal starts a command. A shell
    without job control starts background jobs (`pytest ... &`) with SIGINT ignored, the ignored disposition
    survives exec, and Python then installs no KeyboardInterrupt handler: Ctrl-C would never arrive."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _start(args: list[str], cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "mseval.cli", *args], cwd=cwd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True, preexec_fn=_sigint_as_in_a_terminal)


def _wait_for_workers(proc: subprocess.Popen, n: int, timeout: float = 120.0) -> list[psutil.Process]:
    """The worker processes of `proc`, once `n` of them run (the long stage has started)."""
    parent = psutil.Process(proc.pid)
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        kids = parent.children(recursive=True)
        if len(kids) >= n:
            return kids
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.2)
    raise AssertionError("the workers never started")


def _gone(procs: list[psutil.Process], timeout: float = 15.0) -> bool:
    _, alive = psutil.wait_procs(procs, timeout=timeout)
    return not alive


def test_usage_error_is_usage_plus_one_line_exit_2(tmp_path: Path) -> None:
    res = subprocess.run([sys.executable, "-m", "mseval.cli", "simulate", "o", "--shape", "32", "32", "abc"], cwd=tmp_path, env=_env(),
                         capture_output=True, text=True)
    assert res.returncode == 2 and res.stdout == ""
    lines = res.stderr.splitlines()
    assert len(lines) == 2 and lines[0].startswith("Usage: mseval simulate") and "--shape" in lines[1], res.stderr
    assert not any(tmp_path.iterdir())


def test_input_error_is_one_line_exit_2(tmp_path: Path) -> None:
    res = subprocess.run([sys.executable, "-m", "mseval.cli", "count", "nostore", "--out", "o", "--workers", "0"], cwd=tmp_path, env=_env(),
                         capture_output=True, text=True)
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and "--workers" in res.stderr and "Traceback" not in res.stderr


def test_ctrl_c_is_one_line_exit_130_and_no_worker_survives(tmp_path: Path) -> None:
    """SIGINT to the whole process group, as a terminal's Ctrl-C sends it, during a long stage with 2 workers."""
    proc = _start(["simulate", "cohort", "--patients-per-arm", "40", "--shape", "24", "24", "24", "--workers", "2"], tmp_path)
    workers = _wait_for_workers(proc, 2)
    time.sleep(1.0)
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    lines = err.strip().splitlines()
    assert lines[-1] == f"mseval: {INTERRUPTED}", err
    assert "Traceback" not in err and all("simulating patients" in ln for ln in lines[:-1]), err
    assert _gone(workers), "worker processes outlived the interrupted command"
    assert sorted(p.name for p in tmp_path.iterdir()) == [], "an interrupted simulate leaves no partial cohort and no temporaries"


def test_kill_9_workers_die_with_parent_and_rerun_removes_temporaries(tmp_path: Path) -> None:
    proc = _start(["simulate", "cohort", "--patients-per-arm", "40", "--shape", "24", "24", "24", "--workers", "2"], tmp_path)
    workers = _wait_for_workers(proc, 2)
    time.sleep(1.0)
    proc.kill()
    proc.communicate(timeout=60)
    assert _gone(workers), "worker processes outlived their parent's kill -9"
    litter = [p.name for p in tmp_path.iterdir()]
    assert litter and all(n.startswith(".cohort.") for n in litter), litter  # the killed run's temporary folder
    res = subprocess.run([sys.executable, "-m", "mseval.cli", "simulate", "cohort", "--patients-per-arm", "1", "--shape", "20", "24", "20"],
                         cwd=tmp_path, env=_env(), capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cohort"], "the rerun removes the killed run's temporaries"


def test_two_concurrent_counts_one_succeeds_the_other_exits_2(inputs: dict[str, Path], tmp_path: Path) -> None:
    procs = [_start(["count", str(inputs["store"]), "--out", "counts", "--workers", "1"], tmp_path) for _ in range(2)]
    results = [(p.wait(timeout=300), *p.communicate()) for p in procs]
    codes = sorted(r[0] for r in results)
    assert codes == [0, 2], results
    err = next(r[2] for r in results if r[0] == 2)
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "another mseval run is writing here" in err or "exists already" in err, err
    import pandas as pd

    assert len(pd.read_parquet(tmp_path / "counts" / "counts.parquet")) == 12 * 6 * 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["counts"]


def test_second_writer_names_the_holder_or_waits(inputs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "counts"
    with output_lock(out):
        assert main(["count", str(inputs["store"]), "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"pid {os.getpid()}" in err and "--wait" in err
        assert not out.exists()
    held = threading.Event()

    def hold() -> None:
        with output_lock(out):
            held.set()
            time.sleep(1.5)

    t = threading.Thread(target=hold)
    t.start()
    held.wait(10)
    t0 = time.monotonic()
    assert main(["count", str(inputs["store"]), "--out", str(out), "--wait"]) == 0
    assert time.monotonic() - t0 >= 1.0  # it waited for the holder
    t.join()
    assert (out / "counts.parquet").is_file() and not lock_path(out).exists()


def test_report_twice_gives_identical_bytes(inputs: dict[str, Path], tmp_path: Path, recwarn: pytest.WarningsRecorder,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    """Same inputs, same --out: every file of the report, results/ included, byte for byte. The
    expected numerical warnings of model fits on this small cohort are one line, not a flood."""
    out = tmp_path / "report"
    args = ["report", str(inputs["cohort"]), str(inputs["store"]), "--out", str(out), "--power-sims", "2", "--n-boot", "50", "--figure-formats", "png",
            "--figure-dpi", "72", "--observed-bootstrap", "199"]
    assert main(args) == 0
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)], "a numerical warning escaped"
    err = capsys.readouterr().err
    assert all(line.startswith("...") or line.startswith("report") for line in err.splitlines()), err
    first = {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
    out.rename(tmp_path / "first")
    assert main(args) == 0
    second = {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
    assert any(k.startswith("results/") for k in first)
    assert first.keys() == second.keys()
    differ = [k for k in first if first[k] != second[k]]
    assert not differ, differ
    assert b".tmp" not in first["results/effects/effects.json"] and b".tmp" not in first["results/evaluation/summary.json"]


def test_interrupted_count_resumes_only_with_the_same_settings(inputs: dict[str, Path], tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    import pandas as pd

    from mseval.lesions.ensemble import count_store

    out = tmp_path / "counts"
    calls = []

    def stop_after_first_chunk(done: int, total: int) -> None:
        calls.append(done)
        if len(calls) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        count_store(inputs["store"], out, progress=stop_after_first_chunk)
    assert sorted(p.name for p in (out / "_parts").iterdir()) == ["counts-000000.parquet", "lesions-000000.parquet", "settings.json"]
    assert main(["count", str(inputs["store"]), "--out", str(out), "--connectivity", "6"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "connectivity = 26" in err and "6" in err
    assert main(["count", str(inputs["store"]), "--out", str(out)]) == 0
    got = pd.read_parquet(out / "counts.parquet")
    pd.testing.assert_frame_equal(got, pd.read_parquet(inputs["counts"]))
    assert not (out / "_parts").exists()
