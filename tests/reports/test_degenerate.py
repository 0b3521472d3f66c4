"""A report from a degenerate forecaster (every sample an empty mask) prints no absurd number:
every rate or odds ratio shown lies in [1e-3, 1e3] with a CI spanning at most a factor 1e3, every
shown interval is at most 1e3 wide, the rest reads "not estimable (reason)"; the report flags the
forecaster as degenerate and, since the model 'trained' on these very patients, as in-sample."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from reports.builder import ReportSettings, build_report

FAST = ReportSettings(n_boot=20, observed_bootstrap=199, power_sims=2, figure_dpi=40, html_dpi=30, figure_formats=("png",))
RATIO_HEADER = re.compile(r"\bRR\b|\bOR\b|[Rr]atio")
CI = re.compile(r"(-?\d+(?:\.\d+)?(?:e[-+]?\d+)?) \((-?\d+(?:\.\d+)?(?:e[-+]?\d+)?) to (-?\d+(?:\.\d+)?(?:e[-+]?\d+)?)\)")
NUM = re.compile(r"^-?\d+(?:\.\d+)?(?:e[-+]?\d+)?$")


def _empty_store(cohort: Path, out: Path, samples: int = 2) -> None:
    from mseval.io.cohort import read_cohort
    from mseval.io.store import ForecastStore
    from mseval.provenance import training_provenance, write_store_provenance

    c = read_cohort(cohort)
    store = ForecastStore.create(out)
    for pid in c.patient_ids:
        vol = c.load_patient(pid, ("flair",))["flair"]
        for a in c.arms["arm"]:
            store.write_block(pid, a, np.zeros((samples, *vol.data.shape), np.uint8), vol.affine, list(range(samples)),
                              checkpoint="empty@1:000000000000", sampler={"model": "forecast", "sampler": "ddim"})
    store.flush()
    write_store_provenance(out, "empty@1:000000000000", training_provenance(c, c.patient_ids, []))


def _md_tables(md: str) -> list[tuple[list[str], list[list[str]]]]:
    out, lines = [], md.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("| ") and i + 1 < len(lines) and lines[i + 1].startswith("|---"):
            head = [c.strip() for c in line.strip("|").split(" | ")]
            rows, j = [], i + 2
            while j < len(lines) and lines[j].startswith("| "):
                rows.append([c.strip() for c in lines[j].strip("|").split(" | ")])
                j += 1
            out.append((head, rows))
    return out


@pytest.fixture(scope="module")
def degenerate(tmp_path_factory: pytest.TempPathFactory):
    from mseval.simulate.model import TrialConfig
    from mseval.simulate.trial import simulate_trial

    root = tmp_path_factory.mktemp("degenerate")
    simulate_trial(root / "cohort", TrialConfig(patients_per_arm=3, shape=(32, 38, 32), seed=5, followup_weeks=48))
    _empty_store(root / "cohort", root / "fc")
    return build_report(root / "cohort", root / "fc", root / "report", settings=FAST)


def test_no_absurd_number_is_shown(degenerate):
    md = (degenerate.out / "report.md").read_text()
    checked = ne = 0
    for head, rows in _md_tables(md):
        for row in rows:
            for col, cell in zip(head, row):
                if cell.startswith("not estimable"):
                    ne += 1
                    continue
                m = CI.search(cell)
                if m:
                    est, lo, hi = (float(x) for x in m.groups())
                    assert hi - lo <= 1e3, (col, cell)
                    if RATIO_HEADER.search(col):
                        assert 1e-3 <= est <= 1e3 and lo > 0 and hi / lo <= 1e3, (col, cell)
                    checked += 1
                elif RATIO_HEADER.search(col) and NUM.match(cell):
                    assert 1e-3 <= float(cell) <= 1e3, (col, cell)
                    checked += 1
    assert ne > 0  # the forecast-based ratios of an all-empty forecaster are not estimable
    assert checked > 0  # and the observed ones are still shown
    # nothing absurd hides in the headline either
    for est, lo, hi in CI.findall(md.split("## Abbreviations")[0]):
        assert float(hi) - float(lo) <= 1e3


def test_degenerate_forecaster_and_in_sample_are_flagged(degenerate):
    md = (degenerate.out / "report.md").read_text()
    html = degenerate.html.read_text()
    n = int(degenerate.summary["forecast_load"]["samples"])
    assert f"hold 0 lesions in {n} samples" in md and "DEGENERATE FORECASTER" in html
    assert degenerate.summary["provenance"]["status"] == "in-sample"
    assert "IN-SAMPLE" in md.split("## Primary endpoint")[0] and 'class="banner bad"' in html
    assert "95% prediction intervals cover" not in md  # no coverage headline from 2 samples per patient
    head, primary = next((head, rows) for head, rows in _md_tables(md) if head[:2] == ["Arm", "Randomized / analysed, n"])
    assert not any("Forecast" in h or "Counterfactual" in h for h in head)  # observed effects only (issue 22)
    from reports import projections as P

    head, proj = next((head, rows) for head, rows in _md_tables(md) if head[:2] == ["Arm", P.OBSERVED_THIS])
    assert len(proj) == len(primary) - 1 and all("not estimable" in r[3] for r in proj)  # forecast RR of every non-reference arm
    # trained on these very patients: the training trial is this cohort, found by its fingerprint, its RR beside the projection
    assert all(r[2] == r[1] for r in proj), proj
    caption = next(line for line in md.splitlines() if line.startswith("*Figure 1.*"))
    assert "forecast RR not estimable (degenerate forecaster" in caption  # and the forest plot leaves them out


E_NOTATION = re.compile(r"(?<![\w.#-])-?\d+(?:\.\d+)?[eE][-+]?\d+(?![\w.])")
LONG_NUMBER = re.compile(r"(?<![\w.#:@-])-?\d{7,}(?:\.\d+)?(?![\w])|(?<![\w#-])\d{1,3}(?:,\d{3}){2,}(?![\w])")


def _printed_text(rep) -> dict[str, str]:  # noqa: ANN001
    """What a person reads: report.md, and report.html without the inlined images, style and script."""
    html = rep.html.read_text()
    html = re.sub(r'src="data:image/png;base64,[^"]*"', 'src=""', html)
    html = re.sub(r"<style>.*?</style>|<script>.*?</script>", "", html, flags=re.S)
    return {"report.md": (rep.out / "report.md").read_text(), "report.html": html}


def test_no_number_in_e_notation_or_with_seven_digits(degenerate):
    """The report built from empty forecasts prints every number in plain notation, none with 7+ digits, and p-values as 'p < 0.001'."""
    for name, text in _printed_text(degenerate).items():
        assert E_NOTATION.findall(text) == [], (name, E_NOTATION.findall(text)[:5])
        assert LONG_NUMBER.findall(text) == [], (name, LONG_NUMBER.findall(text)[:5])
        assert "<0.001" not in text.replace("&lt;", "<"), name  # journal style: 'p < 0.001' (spaced)
    md = (degenerate.out / "report.md").read_text()
    p_cells = [row[j] for head, rows in _md_tables(md) for j, h in enumerate(head) if re.match(r"^p\b", h) or h.endswith("p-value")
               for row in rows]
    assert p_cells and all(c in ("", "< 0.001", "not estimable") or (re.fullmatch(r"[01]\.\d{3}", c) and float(c) >= 0.001) for c in p_cells), p_cells


def test_the_number_checks_catch_what_they_forbid():
    assert E_NOTATION.findall("slope 2.2e-16 and 1.4E-17, not #0072B2 or P06e1") == ["2.2e-16", "1.4E-17"]
    assert LONG_NUMBER.findall("n 1234567 and 1,234,567 but not fingerprint a1234567b, checkpoint ck@1:000000000000 or 12345") == ["1234567", "1,234,567"]


def test_ensemble_figures_and_calibration_are_withheld_below_the_monte_carlo_minimum(degenerate):
    """2 samples per patient and 3 patients per arm: the PIT and coverage figures and the per-arm
    calibration columns are withheld with the reason, not drawn from Monte Carlo noise."""
    from reports.metric_cells import MIN_PATIENTS_PER_ARM, MIN_SAMPLES

    assert degenerate.summary["forecast_load"]["samples_per_patient"] < MIN_SAMPLES
    assert not any(f.startswith(("figures/pit_histogram", "figures/coverage")) for f in degenerate.files)
    md = (degenerate.out / "report.md").read_text()
    cal = md.split("## Calibration")[1].split("\n## ")[0]
    head = cal.strip().splitlines()[0]
    assert head == "| Metric | All patients |"  # no arm column: each has 3 < MIN_PATIENTS_PER_ARM patients
    assert f"at least {MIN_PATIENTS_PER_ARM} patients" in cal and "figures withheld: 2 samples per patient" in cal
    assert "| Coverage of the 95% prediction interval | withheld (2 samples per patient < 10) |" in cal
