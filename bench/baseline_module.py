"""Load one module of another git revision (a baseline to time against, in the same run)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType


@contextmanager
def module_at(rev: str, path: str, name: str) -> Iterator[ModuleType]:
    """The file `path` of git revision `rev`, imported as module `name` (registered in sys.modules, so worker
    processes unpickle its functions by name; its file in bench/ exists until the block ends)."""
    root = Path(__file__).resolve().parents[1]
    src = subprocess.run(["git", "-C", str(root), "show", f"{rev}:{path}"], capture_output=True, text=True, check=True).stdout
    tmp = root / "bench" / f"{name}.py"
    tmp.write_text(src)
    try:
        spec = importlib.util.spec_from_file_location(name, tmp)
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        spec.loader.exec_module(mod)  # type: ignore[union-attr]
        yield mod
    finally:
        tmp.unlink(missing_ok=True)
