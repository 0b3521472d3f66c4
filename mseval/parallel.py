"""Local worker processes that never outlive the command that started them.

`process_pool(workers)` is a `concurrent.futures.ProcessPoolExecutor` whose workers
- ignore SIGINT: Ctrl-C in a terminal reaches the whole process group, and only the parent decides
  what to keep (finished blocks) and prints the one "interrupted" line;
- die with their parent: on Linux the kernel sends them SIGKILL when the parent dies (even by
  `kill -9`), elsewhere a watchdog thread exits when the parent process is gone;
and which, when the `with` block is left by an exception (Ctrl-C included), are cancelled and
terminated at once instead of finishing the queued work.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any


def _die_with_parent(parent_pid: int) -> None:
    """Worker initializer: ignore SIGINT and end when the parent process ends."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            PR_SET_PDEATHSIG = 1
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        except (OSError, AttributeError):  # pragma: no cover - no prctl: the watchdog below still runs
            pass
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)

    def watchdog() -> None:
        while os.getppid() == parent_pid:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watchdog, name="mseval-parent-watchdog", daemon=True).start()


@contextlib.contextmanager
def process_pool(workers: int) -> Iterator[cf.ProcessPoolExecutor]:
    """A process pool of `workers` processes (>= 1) that die with this process (see the module doc)."""
    pool = cf.ProcessPoolExecutor(max_workers=workers, initializer=_die_with_parent, initargs=(os.getpid(),))
    try:
        yield pool
    except BaseException:
        processes = list((getattr(pool, "_processes", None) or {}).values())
        pool.shutdown(wait=False, cancel_futures=True)
        for proc in processes:  # do not let them finish queued work after an error or Ctrl-C
            with contextlib.suppress(Exception):
                proc.terminate()
        for proc in processes:
            with contextlib.suppress(Exception):
                proc.join(timeout=5)
        raise
    else:
        pool.shutdown(wait=True)


def run_jobs(fn: Callable[[Any], Any], jobs: Sequence[Any], workers: int,
             progress: Callable[[int, int], None] | None = None) -> list[Any]:
    """fn(job) for every job, in order, in this process (workers <= 1) or in `process_pool(workers)`;
    progress(done, total) after each. Returns the results in job order."""
    out: list[Any] = []
    with process_pool(workers) if workers > 1 else contextlib.nullcontext() as pool:
        for r in (pool.map(fn, jobs, chunksize=1) if pool is not None else map(fn, jobs)):
            out.append(r)
            if progress:
                progress(len(out), len(jobs))
    return out
