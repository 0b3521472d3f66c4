"""Simulated forecasters: draw forecast masks from the simulator's own (true or distorted) law.

`oracle` draws each sample's NET2 count from the patient's true law under the arm,
Poisson(expected_count), and places the lesions the way the simulator does (new lesions in white
matter with a periventricular preference, enlarging ones grown from baseline lesions). It is the
best any forecaster can do, and the reference a model's skill is measured against.
Deliberately miscalibrated variants, for checking that calibration metrics flag them:
- `overdispersed`: count ~ Poisson(expected_count * G), G ~ Gamma(1/k, k), k = `extra_dispersion`
  (right mean, too wide: a hump-shaped PIT histogram);
- `biased`: count ~ Poisson(`bias` * expected_count) (systematic over-forecast).
Every sample's seed derives from (seed, kind, patient, arm, sample), so results do not depend on
worker count or order, and a rerun resumes where the store stops.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from mseval.errors import InputError, SimulationError
from mseval.io.cohort import Cohort, read_cohort
from mseval.io.nifti import check_same_grid, load_volume
from mseval.io.store import ForecastStore
from mseval.seeding import derive_seed
from mseval.simulate.lesions import LesionField, add_net2_lesions, field_from_masks, periventricular_weights
from mseval.parallel import run_jobs

KINDS = ("oracle", "overdispersed", "biased")
WM_LABEL = 3
VENTRICLE_LABEL = 5


@dataclass(frozen=True)
class ForecasterSpec:
    kind: str = "oracle"
    samples: int = 20
    seed: int = 0
    extra_dispersion: float = 1.0
    bias: float = 2.0

    def draw_count(self, expected: float, rng: np.random.Generator) -> int:
        if self.kind == "oracle":
            return int(rng.poisson(expected))
        if self.kind == "overdispersed":
            k = self.extra_dispersion
            return int(rng.poisson(expected * rng.gamma(1.0 / k, k)))
        if self.kind == "biased":
            return int(rng.poisson(self.bias * expected))
        raise ValueError(f"unknown forecaster kind {self.kind!r}; choose one of {', '.join(KINDS)}")


def _simulation_params(cohort: Cohort) -> dict:
    sim = cohort.root / "simulation.json"
    if cohort.truth is None or not sim.is_file():
        raise InputError(cohort.root, "not a simulated cohort (truth.csv and simulation.json are needed for simulated forecasters)")
    try:
        return json.loads(sim.read_text())
    except json.JSONDecodeError as exc:
        raise InputError(sim, f"invalid JSON ({exc})") from None


def _baseline_paths(cohort: Cohort, sim: dict, patient_id: str) -> tuple[Path, Path]:
    """(tissue labels, baseline T2 lesion mask) of a simulated patient: the files `_baseline_field` reads."""
    return cohort.root / sim["truth_files"]["tissues"].format(patient_id=patient_id), cohort.path(patient_id, "t2_lesion_mask")  # type: ignore[return-value]


def _placement(sim: dict) -> dict:
    """The simulator's lesion placement settings that forecast samples are drawn with."""
    cfg = sim["config"]
    return {"p_enlarging": cfg["p_enlarging"], "new_radius_mm": cfg["new_radius_mm"], "min_voxels": cfg["min_lesion_voxels"]}


def _baseline_field(paths: tuple[Path, Path]) -> tuple[LesionField, list[int], np.ndarray]:
    """The baseline lesion field of a patient from the files `_baseline_paths` names. A patient job gets
    these paths (read once from the cohort by the caller) rather than reading the whole cohort again."""
    tissues_path, baseline_path = paths
    tissues = load_volume(tissues_path, field="tissues")
    baseline = load_volume(baseline_path, mask=True, field="t2_lesion_mask")
    check_same_grid([baseline, tissues])
    labels = tissues.data.astype(np.int64)
    spacing = baseline.spacing
    from scipy import ndimage

    dist = ndimage.distance_transform_edt(labels != VENTRICLE_LABEL, sampling=spacing)
    lf = field_from_masks(labels == WM_LABEL, periventricular_weights(dist), spacing, baseline.data)
    return lf, sorted(lf.boxes), baseline.affine


def _forecast_patient(args: tuple) -> int:
    out, spec, patient_id, expected, placement, paths = args
    base, base_ids, affine = _baseline_field(paths)
    store = ForecastStore.appender(out)
    written = 0
    for arm, mu in expected.items():
        seeds = [derive_seed(spec.seed, spec.kind, patient_id, arm, s) for s in range(spec.samples)]
        masks = np.zeros((spec.samples, *base.labels.shape), dtype=np.uint8)
        for s, seed in enumerate(seeds):
            rng = np.random.default_rng(seed)
            n = spec.draw_count(mu, rng)
            lf = base.copy()
            try:
                added = add_net2_lesions(lf, n, rng, baseline_ids=base_ids, **placement)
            except RuntimeError as exc:
                raise SimulationError(None, f"patient {patient_id}, arm {arm}, sample {s}: {exc}; the volume is too small for this forecast") from None
            masks[s] = lf.mask([lid for lid, _ in added])
        sampler = {"forecaster": spec.kind, **{k: v for k, v in asdict(spec).items() if k != "kind"}}
        store.write_block(patient_id, arm, masks, affine, seeds, checkpoint=f"simulated-{spec.kind}", sampler=sampler)
        written += 1
    return written


def simulate_forecasts(
    cohort_dir: str | Path,
    out: str | Path,
    spec: ForecasterSpec,
    *,
    arms: Sequence[str] | None = None,
    workers: int = 1,
    progress: Callable[[int, int], None] | None = None,
) -> ForecastStore:
    """Write a forecast store for every patient x arm of a simulated cohort; skips blocks already there."""
    if spec.kind not in KINDS:
        raise InputError(None, f"unknown forecaster kind {spec.kind!r}; choose one of {', '.join(KINDS)}", field="kind")
    if spec.samples < 1:
        raise InputError(None, "--samples must be at least 1", field="samples")
    cohort = read_cohort(cohort_dir)
    all_arms = list(cohort.arms["arm"])
    arms = list(arms) if arms else all_arms
    unknown = [a for a in arms if a not in all_arms]
    if unknown:
        raise InputError(Path(cohort_dir) / "arms.csv", f"unknown arm {unknown[0]!r} (arms: {', '.join(all_arms)})", field="arm")
    sim = _simulation_params(cohort)
    for pid in cohort.patient_ids:  # check every input before writing anything
        tissues_path, baseline_path = _baseline_paths(cohort, sim, pid)
        tissues = load_volume(tissues_path, field="tissues")
        check_same_grid([load_volume(baseline_path, mask=True, field="t2_lesion_mask"), tissues])
    store = ForecastStore.create(out)
    truth = cohort.truth.set_index(["patient_id", "arm"])["expected_count"]  # type: ignore[union-attr]
    todo = []
    for pid in cohort.patient_ids:
        missing = [a for a in arms if (pid, a) not in store]
        if missing:
            todo.append((str(out), spec, pid, {a: float(truth[(pid, a)]) for a in missing}, _placement(sim), _baseline_paths(cohort, sim, pid)))
    try:
        run_jobs(_forecast_patient, todo, workers, progress)
    finally:
        ForecastStore.create(out).flush()
    return ForecastStore.open(out)
