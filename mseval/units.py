"""Units shared by every layer (the lowest layer: imports nothing from mseval)."""

from __future__ import annotations

WEEKS_PER_YEAR = 52.1775
"""Mean Gregorian year in weeks (365.2425 / 7): follow-up in weeks -> patient-years."""
