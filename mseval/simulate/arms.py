"""The six default arms of the synthetic trial and their true NET2 rate ratios vs placebo.

Rate ratios follow published phase III MRI outcomes (new or enlarging T2 lesions):
- laquinimod 0.6 mg: ALLEGRO, Comi et al., N Engl J Med 2012;366:1000-9 (about 30% fewer) -> 0.70.
- interferon beta-1a 30 ug IM weekly: BRAVO, Vollmer et al., J Neurol 2014;261:773-83, and the
  MSCRG trial, Jacobs et al., Ann Neurol 1996 (about a third fewer) -> 0.65.
- interferon beta-1a 44 ug SC three times weekly: PRISMS, Lancet 1998;352:1498-504 (about 65-75%
  fewer T2 active lesions) -> 0.33.
- dimethyl fumarate 240 mg BID: DEFINE, Gold et al., N Engl J Med 2012;367:1098-107 (85% fewer
  new/enlarging T2 lesions) -> 0.15.
- ocrelizumab 600 mg: OPERA I/II, Hauser et al., N Engl J Med 2017;376:221-34 (77-83% fewer than
  interferon beta-1a SC), chained with PRISMS: 0.33 x 0.2 -> 0.07.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd


@dataclass(frozen=True)
class ArmSpec:
    """One arm: `rate_ratio` is the true NET2 rate ratio vs the reference for a patient of age 37 with
    the median treatment response; `efficacy` is the trial grouping (none / moderate / high).
    `size_multiplier` scales the volume of the new lesions that arise on the arm and
    `black_hole_multiplier` their chance of becoming T1 black holes: hypotheses (WORLD_FACTS 6: no
    published per-lesion volume effect is known), 1.0 by default, set away from 1 where a test or a
    what-if needs it."""

    arm: str
    label: str
    efficacy: str
    rate_ratio: float
    reference: bool = False
    size_multiplier: float = 1.0
    black_hole_multiplier: float = 1.0


DEFAULT_ARMS: tuple[ArmSpec, ...] = (
    ArmSpec("placebo", "Placebo", "none", 1.0, reference=True),
    ArmSpec("laquinimod", "Laquinimod 0.6 mg", "none", 0.70),
    ArmSpec("ifnb1a_im", "Interferon beta-1a IM", "moderate", 0.65),
    ArmSpec("ifnb1a_sc", "Interferon beta-1a SC", "moderate", 0.33),
    ArmSpec("dmf", "Dimethyl fumarate", "moderate", 0.15),
    ArmSpec("ocrelizumab", "Ocrelizumab", "high", 0.07),
)


def arms_frame(arms: tuple[ArmSpec, ...] = DEFAULT_ARMS) -> pd.DataFrame:
    """The arms table as written to arms.csv (schema `arms`)."""
    return pd.DataFrame(
        {
            "arm": [a.arm for a in arms],
            "label": [a.label for a in arms],
            "efficacy": [a.efficacy for a in arms],
            "reference": [a.reference for a in arms],
        }
    )
