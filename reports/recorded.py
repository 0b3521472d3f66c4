"""The settings an `mseval evaluate` / `mseval effects` folder recorded, reused by `mseval report`
for what it computes itself, so one report never mixes two seeds or two power-simulation counts
without saying so.

`resolve_run_settings(seed, power_sims, n_boot, evaluation_dir, effects_dir)`: each value the user
gave wins when it agrees with what a given folder recorded (a disagreement is an InputError);
a value not given is taken from the folders (effects first for the seed and power simulations,
the evaluation for the bootstrap), else the documented default. Returns the values and one line
per value saying where it came from.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mseval.errors import InputError

DEFAULTS = {"seed": 0, "power_sims": 50, "n_boot": 1000}
OPTIONS = {"seed": "--seed", "power_sims": "--power-sims", "n_boot": "--n-boot"}


def recorded(folder: Path | None, name: str) -> dict[str, Any]:
    """The `settings` record of FOLDER/NAME (effects.json or summary.json); {} when absent or unreadable."""
    if folder is None:
        return {}
    path = Path(folder) / name
    if not path.is_file():
        return {}
    try:
        doc = json.loads(path.read_text())
    except ValueError as exc:
        raise InputError(path, f"cannot read ({exc})") from None
    s = doc.get("settings") if isinstance(doc, dict) else None
    return s if isinstance(s, dict) else {}


def resolve_run_settings(seed: int | None, power_sims: int | None, n_boot: int | None, evaluation_dir: Path | None,
                         effects_dir: Path | None) -> tuple[dict[str, int], list[str]]:
    """({"seed", "power_sims", "n_boot"}, lines saying where each came from); see the module docstring."""
    ef, ev = recorded(effects_dir, "effects.json"), recorded(evaluation_dir, "summary.json")
    sources = {"seed": [("effects", effects_dir, ef), ("evaluation", evaluation_dir, ev)],
               "power_sims": [("effects", effects_dir, ef)],
               "n_boot": [("evaluation", evaluation_dir, ev)]}
    given = {"seed": seed, "power_sims": power_sims, "n_boot": n_boot}
    out, lines = {}, []
    for key, srcs in sources.items():
        found = [(what, folder, int(rec[key])) for what, folder, rec in srcs if isinstance(rec.get(key), (int, float))]
        values = sorted({v for _, _, v in found})
        if given[key] is not None:
            clash = [(what, folder, v) for what, folder, v in found if v != given[key]]
            if clash:
                what, folder, v = clash[0]
                raise InputError(folder, f"{OPTIONS[key]} {given[key]} differs from the {key} {v} recorded by `mseval {what}` in this folder; "
                                         f"drop {OPTIONS[key]} to reuse {v}, or recompute the {what} folder")
            out[key], why = int(given[key]), f"given ({OPTIONS[key]})"
        elif found:
            out[key] = found[0][2]
            why = f"reused from the {found[0][0]} folder" + (f" (the folders disagree: {values})" if len(values) > 1 else "")
        else:
            out[key], why = DEFAULTS[key], "default"
        lines.append(f"{key} {out[key]}: {why}")
    return out, lines
