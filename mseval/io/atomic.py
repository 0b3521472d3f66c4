"""Atomic writes: write to a temporary name in the target folder, then rename.

A crash or an error never leaves a half-written file or folder under the final name.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd


@contextlib.contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `target`; rename it onto `target` when the block succeeds.

    The temporary name keeps the target's suffixes (so `.nii.gz` writers still compress).
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp" + "".join(target.suffixes), dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, target)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


# Temporary folders of the atomic_dir blocks now running -> the folder each becomes (see final_path).
_ACTIVE_DIRS: dict[Path, Path] = {}


def final_path(path: str | Path) -> str:
    """The path `path` will have once every enclosing `atomic_dir` block has renamed its temporary
    folder: what to record in a settings file, so no temporary name that is gone by then is kept."""
    p = Path(path)
    for _ in range(len(_ACTIVE_DIRS) + 1):
        resolved = p.absolute()
        for tmp, target in sorted(_ACTIVE_DIRS.items(), key=lambda kv: -len(str(kv[0]))):
            if resolved == tmp or tmp in resolved.parents:
                p = target / resolved.relative_to(tmp)
                break
        else:
            break
    return str(p)


def recorded_path(path: str | Path, out: str | Path) -> str:
    """How an output folder `out` records the input `path` in its settings files.

    An input this same run is writing (it lies in the temporary folder of an enclosing `atomic_dir`
    block, e.g. the counts a report computes into its own `results/`) is recorded relative to `out`
    (POSIX separators, e.g. `../counts/counts.parquet`); any other input as given. So the same inputs
    give the same bytes whatever folder the output is written into, and no temporary name is kept.
    """
    final = final_path(path)
    if final == str(Path(path)):  # not inside a temporary folder of this run: as given
        return str(path)
    return Path(os.path.relpath(os.path.abspath(final), os.path.abspath(final_path(out)))).as_posix()


@contextlib.contextmanager
def atomic_dir(target: str | Path, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside `target`; rename it to `target` when the block succeeds.

    With `overwrite`, an existing `target` is replaced only after the new folder is complete.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    _ACTIVE_DIRS[tmp.absolute()] = target
    try:
        yield tmp
        if target.exists() and overwrite:
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=target.parent))
            os.replace(target, old / target.name)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        _ACTIVE_DIRS.pop(tmp.absolute(), None)


def write_bytes_atomic(data: bytes, target: str | Path) -> Path:
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)
    return Path(target)


def write_json_atomic(obj: Any, target: str | Path) -> Path:
    """JSON with sorted keys and a trailing newline, so the same object gives the same bytes.

    NaN and +-Infinity become null (strict JSON); say why in a nearby `note`.
    """
    text = json.dumps(json_safe(obj), indent=2, sort_keys=True, default=_json_default, allow_nan=False) + "\n"
    return write_bytes_atomic(text.encode(), target)


def write_csv_atomic(df: pd.DataFrame, target: str | Path) -> Path:
    with atomic_path(target) as tmp:
        df.to_csv(tmp, index=False, lineterminator="\n")
    return Path(target)


def write_parquet_atomic(df: pd.DataFrame, target: str | Path, *, metadata: dict[str, str] | None = None) -> Path:
    """Parquet via pyarrow; `metadata` (str -> str) goes into the file's key-value metadata."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(df, preserve_index=False)
    if metadata:
        merged = dict(table.schema.metadata or {})
        merged.update({k.encode(): v.encode() for k, v in metadata.items()})
        table = table.replace_schema_metadata(merged)
    with atomic_path(target) as tmp:
        pq.write_table(table, tmp)
    return Path(target)


def _json_default(obj: Any) -> Any:
    import numpy as np

    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def json_safe(obj: Any) -> Any:
    """Recursively replace NaN and +-Infinity by None (JSON null), so strict parsers accept the file."""
    import math

    import numpy as np

    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return json_safe(obj.tolist())
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(float(obj)) else None
    return obj
