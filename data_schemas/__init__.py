"""JSON Schemas of every mseval file format, shipped in the wheel.

Tables are described one row at a time (a JSON object per row); `x-table` holds table-level rules
(`unique` column sets) that JSON Schema cannot express for a whole table.
"""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources
from typing import Any

SCHEMAS = ("manifest", "arms", "truth", "truth_lesions", "visits", "truth_visits", "oracle_inputs", "forecast_index", "counts", "lesions", "effects_summary", "evaluation_summary", "forecast_config", "report_summary", "visit_counts", "sap")


@lru_cache(maxsize=None)
def load(name: str) -> dict[str, Any]:
    """The schema called `name` (file `data_schemas/<name>.schema.json`) as a dict."""
    text = resources.files(__name__).joinpath(f"{name}.schema.json").read_text()
    return json.loads(text)
