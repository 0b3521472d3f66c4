"""`mseval simulate`'s world options turned into a checked `TrialConfig`: the visit schedule
(`--visits` or `--followup-weeks`), the named knobs, and `--set KNOB=VALUE` for every other one.

Every problem is an `InputError` naming the option, raised before anything is written; a knob out
of range carries `check_config`'s own words.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from mseval.errors import InputError

# Knobs with their own option (TrialConfig field -> option); `--set` names every other scalar knob.
NAMED_KNOBS: dict[str, str] = {
    "dropout_per_year": "--dropout-per-year",
    "dropout_mar": "--dropout-mar",
    "dropout_mnar": "--dropout-mnar",
    "missed_visit": "--missed-visit",
    "prelesion_fraction": "--prelesion-fraction",
    "prelesion_contrast": "--prelesion-contrast",
    "dawm_strength": "--dawm-strength",
    "spatial_strength": "--spatial-strength",
    "mtr": "--mtr",
}
# Fields that other options of `mseval simulate` set (or that are not scalars a user would set).
_OWN_OPTIONS: dict[str, str] = {
    "patients_per_arm": "--patients-per-arm", "shape": "--shape", "spacing": "--spacing", "seed": "--seed",
    "visits": "--visits", "followup_weeks": "--followup-weeks", "arms": "--set ARM.FIELD=VALUE",
}
ARM_FIELDS: tuple[str, ...] = ("rate_ratio", "size_multiplier", "black_hole_multiplier")


def parse_visits(text: str) -> tuple[float, ...]:
    """'24,48,96' -> (24.0, 48.0, 96.0): weeks after baseline (order and range are `check_config`'s)."""
    parts = [p.strip() for p in text.split(",")]
    if not text.strip() or any(p == "" for p in parts):
        raise InputError(None, f"--visits {text!r}: give follow-up weeks separated by commas, e.g. 24,48,96")
    weeks = []
    for p in parts:
        try:
            w = float(p)
        except ValueError:
            raise InputError(None, f"--visits {text!r}: {p!r} is not a number of weeks") from None
        if not math.isfinite(w):
            raise InputError(None, f"--visits {text!r}: {p!r} is not a finite number of weeks")
        weeks.append(w)
    return tuple(weeks)


def _scalar_fields() -> dict[str, type]:
    """TrialConfig's scalar knobs a `--set` may name: field -> its type (float, int or bool)."""
    from mseval.simulate.model import TrialConfig

    out: dict[str, type] = {}
    for f in dataclasses.fields(TrialConfig):
        if f.name in _OWN_OPTIONS or f.name in NAMED_KNOBS:
            continue
        kind = {"float": float, "int": int, "bool": bool, "int | None": int}.get(str(f.type))
        if kind is not None:
            out[f.name] = kind
    return out


def _value(text: str, kind: type, item: str) -> Any:
    """One `--set` value as `kind`."""
    t = text.strip()
    if kind is bool:
        if t.lower() in ("true", "1", "yes"):
            return True
        if t.lower() in ("false", "0", "no"):
            return False
        raise InputError(None, f"--set {item!r}: expected true or false")
    try:
        v = float(t)
    except ValueError:
        raise InputError(None, f"--set {item!r}: {t!r} is not a number") from None
    if kind is int:
        if not v.is_integer():
            raise InputError(None, f"--set {item!r}: expected an integer")
        return int(v)
    return v


def parse_sets(items: list[str]) -> tuple[dict[str, Any], dict[str, dict[str, float]]]:
    """`--set` items -> (TrialConfig field -> value, arm -> {arm field -> value}).

    KNOB=VALUE names a scalar TrialConfig field; ARM.FIELD=VALUE one arm's rate_ratio,
    size_multiplier or black_hole_multiplier. Unknown knobs, knobs with their own option, a knob
    given twice and unreadable values are InputErrors naming the item.
    """
    fields = _scalar_fields()
    knobs: dict[str, Any] = {}
    arms: dict[str, dict[str, float]] = {}
    for item in items:
        name, eq, text = item.partition("=")
        name = name.strip()
        if not eq or not name:
            raise InputError(None, f"--set {item!r}: expected KNOB=VALUE (e.g. base_rate=4.0) or ARM.FIELD=VALUE")
        if "." in name:
            arm, _, fld = name.partition(".")
            if fld not in ARM_FIELDS:
                raise InputError(None, f"--set {item!r}: an arm's knob is one of {', '.join(ARM_FIELDS)}")
            if fld in arms.get(arm, {}):
                raise InputError(None, f"--set {item!r}: {name} is set twice")
            arms.setdefault(arm, {})[fld] = _value(text, float, item)
            continue
        if name in NAMED_KNOBS or name in _OWN_OPTIONS:
            raise InputError(None, f"--set {item!r}: use {NAMED_KNOBS.get(name) or _OWN_OPTIONS[name]} for {name}")
        if name not in fields:
            raise InputError(None, f"--set {item!r}: unknown knob {name!r} (knobs: {', '.join(sorted(fields))})")
        if name in knobs:
            raise InputError(None, f"--set {item!r}: {name} is set twice")
        knobs[name] = _value(text, fields[name], item)
    return knobs, arms


def _option_for(knob: str, schedule_option: str) -> str:
    """The option to name for a `check_config` message about `knob` (schedule messages start 'visits')."""
    if knob in ("visits", "followup_weeks"):
        return schedule_option
    return NAMED_KNOBS.get(knob) or _OWN_OPTIONS.get(knob) or f"--set {knob}"


def build_config(*, patients_per_arm: int, shape: tuple[int, int, int], spacing: tuple[float, float, float] | None, seed: int,
                 visits: str | None, followup_weeks: float | None, named: dict[str, Any], sets: list[str]):  # noqa: ANN201 - TrialConfig (imported lazily)
    """The TrialConfig the options ask for; InputError naming the option for any bad value.

    visits: '24,48,96' (None: the TrialConfig default schedule); followup_weeks: one visit at that
    week (the single-visit form; not with `visits`); named: NAMED_KNOBS field -> value or None (the
    default); sets: the `--set` items.
    """
    from mseval.simulate.model import TrialConfig

    if visits is not None and followup_weeks is not None:
        raise InputError(None, "--visits and --followup-weeks are mutually exclusive: --visits W1,W2,... gives a visit schedule, "
                               "--followup-weeks W a single follow-up visit")
    kw: dict[str, Any] = {"patients_per_arm": patients_per_arm, "shape": tuple(shape), "spacing": spacing, "seed": seed}
    schedule_option = "--followup-weeks" if followup_weeks is not None else "--visits"
    if followup_weeks is not None:
        if not (math.isfinite(followup_weeks) and followup_weeks > 0):
            raise InputError(None, f"--followup-weeks must be positive, got {followup_weeks:g}")
        kw["followup_weeks"] = float(followup_weeks)
    elif visits is not None:
        kw["visits"] = parse_visits(visits)
    kw.update({k: v for k, v in named.items() if v is not None})
    knobs, arm_sets = parse_sets(sets)
    kw.update(knobs)
    if arm_sets:
        specs = {a.arm: a for a in TrialConfig.__dataclass_fields__["arms"].default}
        unknown = sorted(set(arm_sets) - set(specs))
        if unknown:
            raise InputError(None, f"--set: unknown arm {unknown[0]!r} (arms: {', '.join(specs)})")
        ref = next(a.arm for a in specs.values() if a.reference)
        if "rate_ratio" in arm_sets.get(ref, {}):
            raise InputError(None, f"--set {ref}.rate_ratio: {ref} is the reference arm; its rate ratio is 1 by definition")
        kw["arms"] = tuple(dataclasses.replace(a, **arm_sets.get(a.arm, {})) for a in specs.values())
    try:
        return TrialConfig(**kw)
    except ValueError as exc:
        msg = " ".join(str(exc).split())
        knob = msg.split()[0] if msg else ""
        if knob == "arm":
            raise InputError(None, f"--set: {msg}") from None
        raise InputError(None, f"{_option_for(knob, schedule_option)}: {msg}") from None
