"""One writer at a time per output folder, and no litter from a killed run.

`output_lock(out)` takes an exclusive lock on the hidden file `.NAME.lock` beside the folder
`out` (beside, not inside, because a folder may be created or swapped in whole by `atomic_dir`).
A second run on the same `out` exits with an `InputError` naming the holder (pid, host, start time,
command), or waits for it with `wait=True`. The kernel drops the lock when its holder dies, even by
`kill -9`, so a stale lock never blocks; the lock file is removed on release.

While the lock is held, the temporaries a killed run left behind (`atomic_path`/`atomic_dir` names:
`.NAME.XXXXXXXX.tmp...`/`.old` beside `out`, and inside `out`) are removed: nobody else can be
writing them.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from mseval.errors import InputError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no advisory locks; runs are not serialised
    fcntl = None  # type: ignore[assignment]

# tempfile.mkstemp/mkdtemp names as atomic_path/atomic_dir make them: ".{name}.{8 random chars}.tmp{suffixes}" or ".old"
_TEMP = re.compile(r"^\..+\.[a-z0-9_]{8}\.(tmp|old)(\.[A-Za-z0-9.]*)?$")


def lock_path(out: str | Path) -> Path:
    out = Path(out).absolute()
    return out.parent / f".{out.name}.lock"


def _holder(path: Path) -> str:
    try:
        text = path.read_text().strip()
    except OSError:
        text = ""
    return text or "another mseval run"


def remove_stale_temporaries(out: str | Path) -> list[Path]:
    """Remove the temporary files and folders of killed runs beside and inside `out` (call with the lock held)."""
    out = Path(out).absolute()
    removed: list[Path] = []
    candidates: list[Path] = []
    if out.parent.is_dir():
        candidates += [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.") and _TEMP.match(p.name)]
    if out.is_dir():
        for root, dirs, files in os.walk(out):
            for name in [*dirs, *files]:
                if _TEMP.match(name):
                    candidates.append(Path(root) / name)
            dirs[:] = [d for d in dirs if not _TEMP.match(d)]
    for p in candidates:
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
        removed.append(p)
    return removed


@contextlib.contextmanager
def output_lock(out: str | Path, *, wait: bool = False, poll_s: float = 0.5) -> Iterator[Path]:
    """Hold the exclusive lock of the output folder `out` for the `with` block (see the module doc).

    wait: block until the other run finishes instead of raising `InputError`.
    """
    out = Path(out)
    path = lock_path(out)
    if fcntl is None:  # pragma: no cover
        yield path
        return
    if not path.parent.is_dir():
        raise InputError(out, f"the parent folder {path.parent} does not exist", field="out")
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise InputError(out, f"cannot create a lock file in {path.parent} ({exc.strerror})", field="out") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            if not wait:
                raise InputError(out, f"another mseval run is writing here ({_holder(path)}); wait for it to finish, or pass --wait",
                                 field="out") from None
            time.sleep(poll_s)
            continue
        try:  # the holder before us may have removed the file it locked: then lock the new one
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        info = f"pid {os.getpid()} on {socket.gethostname()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}: {' '.join(['mseval', *sys.argv[1:]])}"
        os.ftruncate(fd, 0)
        os.write(fd, info.encode())
        remove_stale_temporaries(out)
        yield path
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)
        os.close(fd)
