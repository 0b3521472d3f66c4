"""report.html (Jinja2 template `templates/report.html.j2`) and report.md from the context that
`reports.context.build_context` makes: no computation, no number formatting here."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from reports.sap_section import sap_md

def _env():  # noqa: ANN202
    from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

    return Environment(loader=FileSystemLoader(str(Path(__file__).with_name("templates"))), autoescape=select_autoescape(["html", "j2"]),
                       undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)


def render_html(ctx: dict[str, Any]) -> str:
    return _env().get_template("report.html.j2").render(**ctx)


def _md_table(tab: dict[str, Any]) -> str:
    def esc(s: str) -> str:
        return str(s).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(esc(c) for c in tab["columns"]) + " |", "|" + "---|" * len(tab["columns"])]
    lines += ["| " + " | ".join(esc(v) for v in r) + " |" for r in tab["rows"]]
    return "\n".join(lines)


def render_md(ctx: dict[str, Any]) -> str:
    figs = ctx["figures"]
    out = [f"# {ctx['title']}", "", f"{ctx['n_patients']} patients randomized to {ctx['n_arms']} arms (reference: {ctx['ref_label']})"
           + ("; a simulated trial with known truth." if ctx["simulated"] else "."), ""]
    out += [f"> **Where the forecasts come from ({ctx['provenance']['status']}):** {ctx['provenance']['sentence']}", ""]
    if ctx["degenerate"]:
        out += [f"> **{ctx['degenerate']}**", ""]
    out += [f"- {h}" for h in ctx["headline"]] + [""]

    def fig(name: str) -> list[str]:
        if name not in figs:
            return []
        e = figs[name]
        return [f"![Figure {e['number']}](figures/{name}.png)", "", f"*Figure {e['number']}.* {e['caption']}", ""]

    out += sap_md(ctx.get("sap"), _md_table)
    out += ["## Primary endpoint: NET2 lesion rate ratios", "", _md_table(ctx["primary"]), "",
            "Randomized: patients allocated to the arm; analysed: those with an observed follow-up NET2 count. Rate per patient-year (crude): "
            "NET2 lesions / patient-years. Model rate per year: from the observed NB2 model ("
            + (f"adjusted for {', '.join(ctx['covariates'])}" if ctx["covariates"] else "arm only, not covariate-adjusted") + f"). Observed RR CI and p (two-sided): {ctx['observed_ci']}. "
            + ctx["multiplicity"], ""]
    out += ["## Arms", "", _md_table({"columns": ["Arm", "Identifier", "Efficacy group", "Reference", "Patients", "Colour"], "rows": ctx["arms_rows"]}), ""]
    out += ["## Table 1. Baseline characteristics by arm", "", _md_table(ctx["table1"]), "", ctx["table1_note"], ""]
    out += [f"## {ctx['projections_title']}", "", _md_table(ctx["projections"]), "", ctx["projections_note"], ""] + fig("forest_plot")
    out += ["### Estimands of the forecast-derived numbers", "", _md_table(ctx["estimands"]), ""]
    out += ["## Proportion free of NET2 lesions", "", _md_table(ctx["lesion_free"]), ""] + fig("lesion_free")
    out += ["## Activity classification", "", _md_table(ctx["activity"]), "", "All patients: value (95% CI); arms: value among patients randomized to the arm.", ""] + fig("activity_roc")
    out += ["## Calibration", "", _md_table(ctx["calibration"]), ""] + ([ctx["calibration"]["withheld"], ""] if ctx["calibration"]["withheld"] else []) + fig("reliability") + fig("pit_histogram") + fig("coverage") + fig("count_scatter")
    out += ["## Detection against the observed NET2 masks", "", _md_table(ctx["detection"]), ""] + fig("detection")
    out += ["## Counterfactual effects", "", _md_table(ctx["counterfactual"]), ""] + fig("effect_distribution")
    if ctx["heterogeneity"]:
        out += ["### Heterogeneity of the effect: the interaction test (primary)", "",
                "NB2 arm x predicted-benefit interaction among patients randomized to the arm or the reference (observed outcomes).", "",
                _md_table(ctx["heterogeneity"]), ""]
    out += ["### Effects in predicted-responder strata (exploratory)", "", _md_table(ctx["responders"]), "", ctx["responders"]["note"], ""] + fig("responders") + fig("qini")
    out += ["## Prognostic adjustment", "", _md_table(ctx["prognostic"]), "",
            f"Qini coefficient normalisation: {ctx['qini_normalisation'] or 'Radcliffe (2007)'}.", ""] + fig("prognostic")
    out += ["## Power and sample size", "", _md_table(ctx["power"]), "",
            "The design rate ratio is the forecast ratio of means, an assumption (conditional on the forecaster)"
            + (f"; outcome law: {ctx['outcome_law']}." if ctx["outcome_law"] else "."), ""] + fig("power")
    out += ["## Example slices", ""] + fig("example_slices")
    out += ["## Abbreviations", ""] + [f"- **{k}**: {v}" for k, v in ctx["abbreviations"].items()] + [""]
    out += ["## Settings", "", _md_table(ctx["settings_table"]), "", "The full settings record is in summary.json (`settings`).", ""]
    if ctx["flags"]:
        out += ["## Flags", ""] + [f"- {f}" for f in ctx["flags"]] + [""]
    return "\n".join(out).rstrip() + "\n"
