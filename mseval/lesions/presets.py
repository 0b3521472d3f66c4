"""Named lesion detection rules: how two masks' lesions are defined, matched and counted.

Published evaluations disagree on what a detected lesion is (connectivity, minimum size, overlap
criterion, one-to-one or per-side counting, what an empty case scores), so each is a
`DetectionRule` in `PRESETS`, written from the evaluation's public code. `rule_from_options`
builds a rule from a preset name and/or explicit options (what `mseval match` takes), and
`presets_markdown` renders the table pasted into docs/lesions.md.

Presets (details and sources in each rule's `source`):
- `msseg2`: ANIMA animaSegPerfAnalyzer defaults as used by MSSEG-2 -- 6-conn., > 3 mm^3 on both sides,
  each side's lesion detected when > 10% of it is covered by the other side, with ANIMA's
  outside-share test (beta 0.7, gamma 0.65); empty case not scored.
- `shifts`: Shifts 2.0 lesion F1 -- 6-conn., no size filter, best IoU >= 0.25 per side; empty 1.0.
- `brats2023`: BraTS 2023 lesion-wise -- 26-conn., reference dilated 3x (18-neighbourhood) to merge
  nearby lesions and to look for predictions, reference lesions <= 50 mm^3 left out; empty 1.0.
- `isles22`: ISLES'22 lesion F1 -- 26-conn., any overlap, per side; empty 1.0.
- `panoptica`: panoptica 2.1.7 defaults -- 26-conn., one-to-one, IoU >= 0.5; empty not scored.

Words used below: a *side* is the prediction (`pred`) or the reference (`ref`); *one-to-one*
matching pairs each lesion with at most one on the other side; *per-side* (`many`) counting scores
each lesion against all lesions of the other side, so one prediction may detect two references.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

CRITERIA = ("overlap", "iou", "dsc", "ref_coverage")
MATCHINGS = ("hungarian", "greedy", "many")
SIZE_SIDES = ("both", "ref", "pred")
SMALL_LESION_MODES = ("remove", "exclude")
F1_MODES = ("harmonic", "ref", "pred")


@dataclass(frozen=True)
class DetectionRule:
    """One lesion-wise detection rule.

    name: recorded in every result. connectivity: 6, 18 or 26 (lesions are connected components).
    min_volume_mm3 / strict: a lesion counts when its volume is >= min_volume_mm3 (> with
    `strict`), on `min_size_side` ('both', 'ref' or 'pred'). small_lesions: 'remove' erases smaller
    components before matching (ANIMA); 'exclude' keeps them in matching but leaves them out of
    every count, and so is a lesion detected only by such small lesions: a prediction touching
    only a small reference lesion is neither a TP nor a FP (BraTS 2023).
    criterion: pairwise score of a pred lesion P and a ref lesion R, from voxel counts:
    'overlap' (1 when they share a voxel), 'iou' |P&R|/|P|R|, 'dsc' 2|P&R|/(|P|+|R|),
    'ref_coverage' |P&R|/|R|. A pair passes when score >= threshold (> with `threshold_strict`);
    'overlap' passes on any shared voxel.
    matching: 'hungarian' (one-to-one, most pairs, then largest summed score), 'greedy'
    (one-to-one, best score first), 'many' (per side: a lesion is detected when its score against
    the other side passes; for 'iou'/'dsc' the best pair, for 'ref_coverage' the share of the
    lesion covered by all lesions of the other side, for 'overlap' any shared voxel).
    max_outside_share / outside_check_share: ANIMA's beta and gamma (only with 'many' and
    'ref_coverage'): the other-side lesions that make up the first `outside_check_share` of a
    lesion's overlap (largest first) must each lie at most `max_outside_share` outside the first
    side's lesions; None disables the check.
    ref_dilation: BraTS 2023: reference lesions whose dilation (this many iterations of the 3x3x3
    18-neighbourhood) touch are merged into one lesion, and a prediction detects a reference
    lesion when it touches the dilated lesion (only with 'overlap'); 0 disables it.
    f1: 'harmonic' 2PR/(P+R) of lesion precision P = tp_pred/count_pred and recall
    R = tp_ref/count_ref; 'ref' tp_ref/(tp_ref+(fp+fn)/2); 'pred' tp_pred/(tp_pred+(fp+fn)/2).
    The three agree under one-to-one matching. empty_value: precision, recall, F1 and voxel Dice
    of a case with no lesion on either side (NaN: the case is not scored). source: where the
    definition comes from.
    """

    name: str
    connectivity: int = 26
    min_volume_mm3: float = 3.0
    strict: bool = False
    min_size_side: str = "both"
    small_lesions: str = "remove"
    criterion: str = "overlap"
    threshold: float = 0.0
    threshold_strict: bool = False
    matching: str = "hungarian"
    max_outside_share: float | None = None
    outside_check_share: float = 1.0
    ref_dilation: int = 0
    f1: str = "harmonic"
    empty_value: float = math.nan
    source: str = ""

    def __post_init__(self) -> None:
        checks = [
            (self.connectivity in (6, 18, 26), f"connectivity must be 6, 18 or 26, got {self.connectivity}"),
            (self.min_volume_mm3 >= 0, f"min_volume_mm3 must be >= 0, got {self.min_volume_mm3}"),
            (self.min_size_side in SIZE_SIDES, f"min_size_side must be one of {', '.join(SIZE_SIDES)}, got {self.min_size_side!r}"),
            (self.small_lesions in SMALL_LESION_MODES, f"small_lesions must be 'remove' or 'exclude', got {self.small_lesions!r}"),
            (self.criterion in CRITERIA, f"criterion must be one of {', '.join(CRITERIA)}, got {self.criterion!r}"),
            (self.matching in MATCHINGS, f"matching must be one of {', '.join(MATCHINGS)}, got {self.matching!r}"),
            (0.0 <= self.threshold <= 1.0, f"threshold must be between 0 and 1, got {self.threshold}"),
            (self.f1 in F1_MODES, f"f1 must be one of {', '.join(F1_MODES)}, got {self.f1!r}"),
            (self.ref_dilation >= 0, f"ref_dilation must be >= 0, got {self.ref_dilation}"),
            (self.ref_dilation == 0 or self.criterion == "overlap", "ref_dilation needs criterion 'overlap'"),
            (
                self.max_outside_share is None or (self.matching == "many" and self.criterion == "ref_coverage"),
                "max_outside_share (ANIMA's beta) needs matching 'many' and criterion 'ref_coverage'",
            ),
            (0.0 < self.outside_check_share <= 1.0, f"outside_check_share must be in (0, 1], got {self.outside_check_share}"),
        ]
        for ok, problem in checks:
            if not ok:
                raise ValueError(problem)

    @property
    def size_sides(self) -> tuple[str, ...]:
        """The sides the minimum size applies to."""
        return ("pred", "ref") if self.min_size_side == "both" else (self.min_size_side,)

    def settings(self) -> dict[str, Any]:
        """The rule as a flat dict (every field but `source`)."""
        d = asdict(self)
        d.pop("source")
        return d

    def describe(self) -> str:
        """One line for a person, e.g. '26-conn., >= 3 mm^3 (both), iou >= 0.5, greedy'."""
        size = (
            f"{'>' if self.strict else '>='} {self.min_volume_mm3:g} mm^3 ({self.min_size_side}, {self.small_lesions})"
            if self.min_volume_mm3 > 0
            else "no size filter"
        )
        if self.criterion == "overlap":
            crit = "any overlap"
        else:
            crit = f"{self.criterion} {'>' if self.threshold_strict else '>='} {self.threshold:g}"
        extra = ""
        if self.max_outside_share is not None:
            extra += f", outside share <= {self.max_outside_share:g} over the first {self.outside_check_share:g} of the overlap"
        if self.ref_dilation:
            extra += f", reference dilated {self.ref_dilation}x (18-neighbourhood)"
        return f"{self.connectivity}-conn., {size}, {crit}, {self.matching}{extra}"


PRESETS: dict[str, DetectionRule] = {
    "msseg2": DetectionRule(
        name="msseg2",
        connectivity=6,
        min_volume_mm3=3.0,
        strict=True,
        min_size_side="both",
        small_lesions="remove",
        criterion="ref_coverage",
        threshold=0.1,
        threshold_strict=True,
        matching="many",
        max_outside_share=0.7,
        outside_check_share=0.65,
        f1="harmonic",
        empty_value=math.nan,
        source=(
            "MSSEG-2 (MICCAI 2021) scored with ANIMA's animaSegPerfAnalyzer (Commowick et al., Sci. Rep. 2018, "
            "section 11; Anima-Public SegPerfApp/SegPerfCAnalyzer defaults). Lesions: ITK connected components "
            "(face connectivity = 6), components of volume <= 3 mm^3 removed on both sides. A reference lesion is "
            "detected when > 10% (alpha) of it is covered by predicted lesions and the predicted lesions making up "
            "the first 65% (gamma) of that overlap each lie at most 70% (beta) outside the reference; a predicted "
            "lesion is a true positive by the same test with the sides swapped. F1 = 2 PPVL SensL / (PPVL + SensL). "
            "Cases without reference lesions are scored apart (count and volume of false detections): empty value NaN."
        ),
    ),
    "shifts": DetectionRule(
        name="shifts",
        connectivity=6,
        min_volume_mm3=0.0,
        criterion="iou",
        threshold=0.25,
        threshold_strict=False,
        matching="many",
        f1="pred",
        empty_value=1.0,
        source=(
            "Shifts 2.0 MS lesion segmentation (Malinin et al., 2022), lesion F1 of Shifts-Project/shifts "
            "mswml/metrics.py lesion_f1_score: scipy.ndimage.label with its default structure (6-connectivity), "
            "no size filter in the metric; a predicted lesion is a TP when its best IoU with a reference lesion is "
            ">= 0.25, else a FP; a reference lesion is a FN when its best IoU is < 0.25. "
            "F1 = TP / (TP + (FP + FN) / 2), 1.0 when both masks are empty."
        ),
    ),
    "brats2023": DetectionRule(
        name="brats2023",
        connectivity=26,
        min_volume_mm3=50.0,
        strict=True,
        min_size_side="ref",
        small_lesions="exclude",
        criterion="overlap",
        matching="many",
        ref_dilation=3,
        f1="ref",
        empty_value=1.0,
        source=(
            "BraTS 2023 lesion-wise evaluation, BraTS-GLI/SSA/PED parameters (rachitsaluja/BraTS-2023-Metrics, "
            "brats_metrics.py): cc3d 26-connectivity on both sides; reference components whose dilation "
            "(scipy binary_dilation, 18-neighbourhood structure, 3 iterations) connect form one lesion; a reference "
            "lesion is a TP when any predicted component touches its dilation; a predicted component touching no "
            "dilated reference lesion is a FP; reference lesions of volume <= 50 mm^3 are left out of TP and FN "
            "but still absorb the predictions touching them. An empty case scores lesion-wise Dice 1.0."
        ),
    ),
    "isles22": DetectionRule(
        name="isles22",
        connectivity=26,
        min_volume_mm3=0.0,
        criterion="overlap",
        matching="many",
        f1="ref",
        empty_value=1.0,
        source=(
            "ISLES'22 (Hernandez Petzsche et al., Sci. Data 2022), ezequieldlrosa/isles22 utils/eval_utils.py "
            "compute_lesion_f1_score: cc3d 26-connectivity, no size filter; a reference component overlapping the "
            "prediction by at least one voxel is a TP, else a FN; a predicted component overlapping no reference "
            "voxel is a FP (per side, not one-to-one). F1 = TP / (TP + (FP + FN) / 2), empty_value 1.0."
        ),
    ),
    "panoptica": DetectionRule(
        name="panoptica",
        connectivity=26,
        min_volume_mm3=0.0,
        criterion="iou",
        threshold=0.5,
        threshold_strict=False,
        matching="greedy",
        f1="harmonic",
        empty_value=math.nan,
        source=(
            "panoptica 2.1.7 (Kofler, Moeller et al., BrainLesion/panoptica) defaults: "
            "ConnectedComponentsInstanceApproximator (cc3d, 26-connectivity), NaiveThresholdMatching(matching_metric="
            "IOU, matching_threshold=0.5, allow_many_to_one=False, strict_threshold=False): one-to-one, pairs taken "
            "by decreasing IoU while IoU >= 0.5. RQ (= lesion F1) is NaN when neither side has an instance."
        ),
    ),
}
"""The named rules, each reproducing its evaluation's public code (see each rule's `source`)."""

_OPTION_FIELDS = ("connectivity", "min_volume_mm3", "min_size_side", "criterion", "threshold", "matching", "strict", "threshold_strict")

DEFAULT_RULE = DetectionRule(
    name="default",
    connectivity=26,
    min_volume_mm3=3.0,
    strict=False,
    min_size_side="both",
    criterion="overlap",
    threshold=0.0,
    matching="hungarian",
    empty_value=math.nan,
    source="mseval conventions (DESIGN.md): 26-connectivity, >= 3 mm^3 on both sides, any overlap, optimal one-to-one.",
)
"""The rule used when neither a preset nor explicit options are given."""


def get_preset(name: str) -> DetectionRule:
    """The preset called `name`; KeyError naming the valid ones otherwise."""
    try:
        return PRESETS[name]
    except KeyError:
        raise KeyError(f"unknown preset {name!r}; valid presets: {', '.join(sorted(PRESETS))}") from None


def rule_from_options(preset: str | None = None, **options: Any) -> DetectionRule:
    """A rule from a preset (or `DEFAULT_RULE`) with explicit `options` (None = not given) on top.

    options: any of connectivity, min_volume_mm3, min_size_side, criterion, threshold, matching,
    strict, threshold_strict. With a preset and options, the name records them, e.g.
    'panoptica+threshold=0.3'; with options only, the name is 'custom'.
    Raises KeyError for an unknown preset or option, ValueError for a bad value.
    """
    unknown = sorted(set(options) - set(_OPTION_FIELDS))
    if unknown:
        raise KeyError(f"unknown rule option(s): {', '.join(unknown)}")
    given = {k: v for k, v in options.items() if v is not None}
    base = get_preset(preset) if preset is not None else DEFAULT_RULE
    if not given:
        return base
    changed = {k: v for k, v in given.items() if getattr(base, k) != v}
    if preset is None:
        name = "custom"
    elif changed:
        name = preset + "+" + ",".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in sorted(changed.items()))
    else:
        name = preset
    if given.get("criterion", base.criterion) != "overlap" and base.ref_dilation:
        given["ref_dilation"] = 0  # the dilated-reference test is defined for 'overlap' only
    if given.get("matching", base.matching) != "many" or given.get("criterion", base.criterion) != "ref_coverage":
        given["max_outside_share"] = None
    return replace(base, name=name, **given)


_SHORT_SOURCES = {
    "msseg2": "MSSEG-2 / ANIMA `animaSegPerfAnalyzer` defaults (Commowick et al., Sci. Rep. 2018)",
    "shifts": "Shifts 2.0 `mswml/metrics.py` `lesion_f1_score` (Malinin et al., 2022)",
    "brats2023": "BraTS 2023 lesion-wise metrics, GLI/SSA/PED parameters (`rachitsaluja/BraTS-2023-Metrics`)",
    "isles22": "ISLES'22 `compute_lesion_f1_score` (`ezequieldlrosa/isles22`)",
    "panoptica": "panoptica 2.1.7 defaults (`NaiveThresholdMatching`, CC instance approximation)",
}


def presets_markdown() -> str:
    """A markdown table of `PRESETS` (lesions, detection, counting, F1, empty case, source) for docs/lesions.md."""
    rows = [
        "| preset | lesions | detected when | counting | F1 | both empty | source |",
        "|---|---|---|---|---|---|---|",
    ]
    for rule in PRESETS.values():
        if rule.min_volume_mm3 > 0:
            where = "both sides" if rule.min_size_side == "both" else f"{rule.min_size_side} side"
            how = ", smaller ones left out of the counts" if rule.small_lesions == "exclude" else ", smaller ones removed"
            size = f"{rule.connectivity}-conn.; {'>' if rule.strict else '≥'} {rule.min_volume_mm3:g} mm³ on {where}{how}"
        else:
            size = f"{rule.connectivity}-conn.; no size filter"
        op = ">" if rule.threshold_strict else "≥"
        if rule.criterion == "overlap":
            det = "any shared voxel"
        elif rule.matching == "many" and rule.criterion == "ref_coverage":
            det = f"share of the lesion covered by the other side {op} {rule.threshold:g}"
        elif rule.matching == "many":
            det = f"best {rule.criterion.upper()} with the other side {op} {rule.threshold:g}"
        else:
            det = f"{rule.criterion.upper()} {op} {rule.threshold:g}"
        if rule.max_outside_share is not None:
            det += (f", and the other-side lesions making up the first {rule.outside_check_share:.0%} of the overlap each lie "
                    f"≤ {rule.max_outside_share:.0%} outside (ANIMA β, γ)")
        if rule.ref_dilation:
            det += f" with the reference dilated {rule.ref_dilation}× (18-neighbourhood; lesions whose dilations touch merge)"
        counting = {"many": "per side", "hungarian": "one-to-one, optimal", "greedy": "one-to-one, greedy by score"}[rule.matching]
        f1 = {"harmonic": "2PR/(P+R)", "ref": "TP_ref/(TP_ref+(FP+FN)/2)", "pred": "TP_pred/(TP_pred+(FP+FN)/2)"}[rule.f1]
        empty = "not scored (NaN)" if math.isnan(rule.empty_value) else f"{rule.empty_value:g}"
        src = _SHORT_SOURCES.get(rule.name, rule.source)
        rows.append(f"| `{rule.name}` | {size} | {det} | {counting} | {f1} | {empty} | {src} |")
    return "\n".join(rows) + "\n"


def rule_fields() -> tuple[str, ...]:
    """Names of the `DetectionRule` fields, in order."""
    return tuple(f.name for f in fields(DetectionRule))
