"""Option types the commands share, and the contexts they run in: a forecast store that resumes only
what matches, and model-fit warnings collected into one line."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated

import typer

from mseval.errors import InputError


Connectivity = Annotated[int, typer.Option(help="Lesion connectivity: 6, 18 or 26.")]


MinVolume = Annotated[float, typer.Option(help="Drop components under this volume (mm^3, inclusive bound).")]


Wait = Annotated[bool, typer.Option("--wait", help="If another mseval run is writing the same output folder, wait for it instead of stopping.")]


@contextlib.contextmanager
def store_run(out: Path, settings: dict, option_names: dict[str, str], *, overwrite: bool = False) -> Iterator[None]:
    """Create a forecast store recording `settings`, or resume one made with the same settings
    (InputError naming the first difference, unless `overwrite` replaces the store). A store
    created here is removed again when the run fails on bad input (a Ctrl-C keeps its whole blocks)."""
    import shutil

    from mseval.io.store import check_store_settings, record_store_settings

    if overwrite and (out / "store.json").is_file():
        shutil.rmtree(out)
    existed = check_store_settings(out, settings, option_names=option_names)
    if not existed:
        if out.exists() and any(out.iterdir()):
            raise InputError(out, "folder exists and is not a forecast store (no store.json); choose an empty or new folder")
        record_store_settings(out, settings)
    try:
        yield
    except InputError:
        if not existed:
            shutil.rmtree(out, ignore_errors=True)
        raise


@contextlib.contextmanager
def quiet_numerics(say: Callable[[str], None] | None = None) -> Iterator[list]:
    """Collect the numerical warnings that model fits on small cohorts raise (overflow in exp,
    non-convergence of a bootstrap or power replicate, ...) instead of printing each one; at the
    end, one line says how many there were and of which kinds. (Where they matter the statistics
    record them in their own tables: failed fits, converged flags, estimability notes.)"""
    import warnings

    with warnings.catch_warnings(record=True) as recorded:
        warnings.simplefilter("always")
        yield recorded
    caught = [w for w in recorded if issubclass(w.category, RuntimeWarning) or w.category.__module__.startswith(("statsmodels", "scipy"))]
    for w in recorded:  # anything else is not expected: show it as Python would
        if w not in caught:
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)
    if caught and say is not None:
        kinds: dict[str, int] = {}
        for w in caught:
            key = f"{w.category.__name__}: {' '.join(str(w.message).split())[:60]}"
            kinds[key] = kinds.get(key, 0) + 1
        top = ", ".join(f"{n} x {k}" for k, n in sorted(kinds.items(), key=lambda kv: -kv[1])[:2])
        say(f"{len(caught)} numerical warnings in model fits (expected on small cohorts; failed fits are counted in the tables): {top}")
