"""Which BIDS entities name which cohort file, shared by the exporter and the importer.

Raw images (BIDS `anat` datatype): `T1w`, `T2w`, `FLAIR`, `PDw`, `T1w` with `ce-gadolinium`, and the
optional `MTRmap`. Masks live in a derivatives pipeline (`derivatives/<pipeline>/`), suffix `mask`,
told apart by `label-` and `desc-` entities (`MaskEntities`, configurable on import). Paths are built
with pybids' own path patterns (`bids.layout.writing.build_path`), never by hand.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache

BIDS_VERSION = "1.9.0"
LABEL_RE = re.compile(r"^[A-Za-z0-9]+$")
"""A BIDS label (sub-, ses-, desc-, ...): letters and digits only."""

SEQUENCES: dict[str, dict[str, str]] = {
    "t1": {"suffix": "T1w"},
    "t2": {"suffix": "T2w"},
    "flair": {"suffix": "FLAIR"},
    "pd": {"suffix": "PDw"},
    "t1gd": {"suffix": "T1w", "ceagent": "gadolinium"},
    "mtr": {"suffix": "MTRmap"},
}
"""Cohort image field -> BIDS entities of its raw file (a field without `ceagent` has none)."""

VISIT_MASKS = ("t2_lesion_mask", "gd_lesion_mask", "net2_mask", "net2_mask_cumulative")
"""The per-session masks of a cohort (visits.csv); `brain_mask` is the baseline's only."""


@dataclass(frozen=True)
class MaskEntities:
    """The `label-`/`desc-` entities of each mask in the derivatives pipeline.

    Defaults: `label-brain_mask`, `label-lesion_desc-T2_mask`, `label-lesion_desc-gd_mask`,
    `label-lesion_desc-net2_mask` (against the previous session) and `label-lesion_desc-net2cumulative_mask`
    (against baseline).
    """

    lesion_label: str = "lesion"
    brain_label: str = "brain"
    desc: dict[str, str] = field(default_factory=lambda: {
        "t2_lesion_mask": "T2", "gd_lesion_mask": "gd", "net2_mask": "net2", "net2_mask_cumulative": "net2cumulative"})

    def entities(self, mask_field: str) -> dict[str, str]:
        """BIDS entities (without subject/session) of the cohort mask `mask_field`."""
        if mask_field == "brain_mask":
            return {"label": self.brain_label, "suffix": "mask"}
        return {"label": self.lesion_label, "desc": self.desc[mask_field], "suffix": "mask"}


@lru_cache(maxsize=2)
def _patterns(config: str) -> tuple[str, ...]:
    from bids.layout.models import Config

    return tuple(Config.load(config).default_path_patterns)


def bids_path(subject: str, session: str, entities: dict[str, str], *, derivative: bool = False) -> str:
    """Relative path of an `anat` NIfTI (`.nii.gz`) of `subject`/`session` with `entities`, by pybids'
    path patterns (those of the `derivatives` config for masks)."""
    from bids.layout.writing import build_path

    ents = {"subject": subject, "session": session, "datatype": "anat", "extension": ".nii.gz", **entities}
    path = build_path(ents, list(_patterns("derivatives" if derivative else "bids")))
    if path is None:  # pragma: no cover - the entities above all have patterns
        raise ValueError(f"no BIDS path pattern for {ents}")
    return path
