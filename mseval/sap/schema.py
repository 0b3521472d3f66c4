"""Read and check a statistical analysis plan (SAP) file.

One loader: YAML 1.2 through `ruamel.yaml`'s safe loader (a JSON file is valid YAML, so a SAP written
as JSON loads too). The document is validated against `data_schemas/sap.schema.json` (unknown fields,
unknown procedures and transforms are refused), then checked against the trial before any work
(`check_against`): every covariate names a column of the data, the reference arm and the
fixed-sequence order name arms of the arms table. Every problem is an `InputError` naming the SAP
file and the field (dotted path, e.g. `multiplicity.procedure`), one line, exit code 2.

`Sap` keeps the plan as parsed (`doc`), with the defaults of the schema filled in (`resolved`), the
file's bytes and their SHA-256 (recorded in the provenance of what it produced).
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mseval.errors import InputError

SMALL_SAMPLE_TESTS_AVAILABLE = ("wald", "t", "lrt", "permutation", "auto")
"""Small-sample tests this build runs (`mseval.sap.runner.PRIMARY_TESTS`; auto: permutation below
`below_n_per_arm`); a plan naming one that is not available here is refused (`small_sample_test.test`)."""

DEFAULTS: dict[str, Any] = {
    "seed": 0,
    "primary": {"offset": "log_followup_years", "cov": "expected", "covariates": [], "dispersion": "common"},
    "multiplicity": {"alpha": 0.05},
    "small_sample_test": {"test": "auto", "below_n_per_arm": 1000, "n_permutations": 999},
    "missing_data": {"strategy": "exposure", "intercurrent_events": "treatment_policy"},
    "sensitivity": [],
    "secondary": [],
}


@dataclass(frozen=True)
class Sap:
    """A checked analysis plan. `doc`: the document as written; `resolved`: with defaults filled in
    (what the runner executes); `source`: the file (or "built-in default"); `sha256`: of its bytes."""

    doc: dict[str, Any]
    source: str
    text: bytes
    sha256: str
    resolved: dict[str, Any] = field(default_factory=dict)

    @property
    def primary(self) -> dict[str, Any]:
        return self.resolved["primary"]

    @property
    def multiplicity(self) -> dict[str, Any]:
        return self.resolved["multiplicity"]

    def record(self) -> dict[str, Any]:
        """What the provenance records: source, hash, title and the plan as executed."""
        return {"source": self.source, "sha256": self.sha256, "title": self.doc.get("title"), "plan": self.resolved}


def _resolve(doc: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(doc)
    for key, default in DEFAULTS.items():
        if isinstance(default, dict):
            out[key] = {**default, **out.get(key, {})}
        else:
            out.setdefault(key, copy.deepcopy(default))
    for sec in out["secondary"]:
        sec.setdefault("covariates", "primary")
        if sec["endpoint"] == "net2_gee":
            sec.setdefault("corr", "exchangeable")
        if sec["endpoint"] in ("net2_cumulative", "net2_gee"):  # the plan's small-sample rule, as for the primary (rules R6, R9)
            sec.setdefault("ci", "small_sample")
    return out


def _field(path: Iterable[Any]) -> str:
    parts = [f"[{p}]" if isinstance(p, int) else str(p) for p in path]
    return ".".join(parts).replace(".[", "[")


def _schema_error(doc: Any, source: str) -> InputError | None:
    import jsonschema
    from jsonschema.exceptions import best_match

    import data_schemas

    schema = data_schemas.load("sap")
    errors = list(jsonschema.Draft202012Validator(schema).iter_errors(doc))
    if not errors:
        return None
    err = best_match(errors)
    path = list(err.absolute_path)
    if err.validator == "additionalProperties" and isinstance(err.instance, dict):
        allowed = set(err.schema.get("properties", {}))
        extra = sorted(k for k in err.instance if k not in allowed)
        where = _field([*path, extra[0]]) if extra else _field(path)
        return InputError(source, f"unknown field {where!r} (allowed here: {', '.join(sorted(allowed))})", field=where)
    if err.validator == "enum":
        where = _field(path)
        return InputError(source, f"{where}: {err.instance!r} is not one of {', '.join(map(str, err.validator_value))}", field=where)
    if err.validator == "required":
        missing = err.message.split("'")[1] if "'" in err.message else err.message
        where = _field([*path, missing])
        return InputError(source, f"missing field {where!r}", field=where)
    where = _field(path) or "(document)"
    return InputError(source, f"{where}: {err.message}", field=where)


def parse_sap(text: bytes, source: str) -> Sap:
    """Parse and validate SAP `text` (YAML or JSON bytes); `source` names it in errors."""
    from ruamel.yaml import YAML
    from ruamel.yaml.error import YAMLError

    try:
        doc = YAML(typ="safe", pure=True).load(text.decode("utf-8"))
    except (YAMLError, UnicodeDecodeError) as exc:
        first = " ".join(str(exc).split())
        raise InputError(source, f"not a readable YAML/JSON analysis plan: {first[:200]}") from None
    if not isinstance(doc, dict):
        raise InputError(source, "an analysis plan is a mapping of fields (sap_version, title, primary, multiplicity, ...)")
    bad = _schema_error(doc, source)
    if bad is not None:
        raise bad
    sst = (doc.get("small_sample_test") or {}).get("test", "auto")
    if sst not in SMALL_SAMPLE_TESTS_AVAILABLE:
        raise InputError(source, f"small_sample_test.test: {sst!r} is planned but not available in this build "
                                 f"(available: {', '.join(SMALL_SAMPLE_TESTS_AVAILABLE)})", field="small_sample_test.test")
    order = (doc.get("multiplicity") or {}).get("order")
    if order is not None and len(set(order)) != len(order):
        raise InputError(source, "multiplicity.order names an arm twice", field="multiplicity.order")
    if order is not None and doc["multiplicity"]["procedure"] != "fixed_sequence":
        raise InputError(source, "multiplicity.order is only used by procedure fixed_sequence", field="multiplicity.order")
    for i, s in enumerate(doc.get("sensitivity", [])):
        mnar = s.get("kind") == "mnar_tipping_point"
        wrong = [k for k in (("covariates", "offset", "cov", "dispersion") if mnar else ("deltas", "imputations", "delta_arms")) if k in s]
        if wrong:
            where = f"sensitivity[{i}].{wrong[0]}"
            raise InputError(source, f"{where}: not a field of a {'mnar_tipping_point' if mnar else 'model_variation'} sensitivity analysis", field=where)
    for i, s in enumerate(doc.get("secondary", [])):
        for key, endpoints in (("corr", ("net2_gee",)), ("ci_reference", ("net2_gee",)), ("dispersion", ("net2_cumulative",)), ("ci", ("net2_cumulative", "net2_gee")),
                               ("single_visit", ("net2_cumulative", "net2_gee", "gd_per_scan"))):
            if key in s and s["endpoint"] not in endpoints:
                raise InputError(source, f"secondary[{i}].{key}: only for endpoint {' or '.join(endpoints)}", field=f"secondary[{i}].{key}")
    for key in ("sensitivity", "secondary"):
        names = [s["name"] for s in doc.get(key, [])]
        if len(set(names)) != len(names):
            raise InputError(source, f"{key}: two analyses share a name", field=key)
    return Sap(doc, source, text, hashlib.sha256(text).hexdigest(), _resolve(doc))


def load_sap(path: str | Path) -> Sap:
    """Read and validate the SAP file at `path` ("default": the built-in default plan, `mseval.sap.default`)."""
    if str(path) == "default":
        from mseval.sap.default import default_sap

        return default_sap()
    p = Path(path)
    if not p.is_file():
        raise InputError(p, "analysis plan file not found", field="sap")
    return parse_sap(p.read_bytes(), str(p))


def _covariate_fields(sap: Sap) -> list[tuple[str, str]]:
    """(field path, column) of every covariate the plan names."""
    out = [(f"primary.covariates[{k}].column", c["column"]) for k, c in enumerate(sap.primary.get("covariates", []))]
    for key in ("sensitivity", "secondary"):
        for i, s in enumerate(sap.resolved[key]):
            covs = s.get("covariates")
            if isinstance(covs, list):
                out += [(f"{key}[{i}].covariates[{k}].column", c["column"]) for k, c in enumerate(covs)]
    return out


def check_against(sap: Sap, columns: Sequence[str], arms: Sequence[str], reference: str | None, *, has_visits: bool | None = None) -> str:
    """Check the plan against the trial before any work; return the reference arm the plan uses.

    columns: the analysis table's columns; arms: the arms table's arms; reference: its reference arm;
    has_visits: whether the cohort has several visits (visits.csv; None: not checked here): a
    multi-visit endpoint the plan does not mark `single_visit: skip` is refused on a single-visit cohort."""
    if has_visits is not None:
        from mseval.sap.secondary import check_visits

        check_visits(sap.resolved, has_visits, sap.source)
    cols = set(map(str, columns))
    for where, col in _covariate_fields(sap):
        if col not in cols:
            from mseval.io.arm_names import closest

            near = closest(col, sorted(cols))
            raise InputError(sap.source, f"{where}: covariate {col!r} is not a column of the data" + (f"; did you mean {near!r}?" if near else "")
                             + f" (columns: {', '.join(sorted(cols))})", field=where)
    ref = sap.resolved.get("reference_arm") or reference
    if ref not in arms:
        raise InputError(sap.source, f"reference_arm: {ref!r} is not in the arms table (arms: {', '.join(arms)})", field="reference_arm")
    order = sap.multiplicity.get("order")
    if order is not None:
        compared = [a for a in arms if a != ref]
        unknown = [a for a in order if a not in arms]
        if unknown:
            raise InputError(sap.source, f"multiplicity.order: {unknown[0]!r} is not in the arms table (arms: {', '.join(arms)})", field="multiplicity.order")
        if ref in order:
            raise InputError(sap.source, f"multiplicity.order: the reference arm {ref!r} is not a comparison", field="multiplicity.order")
        if sorted(order) != sorted(compared):
            missing = [a for a in compared if a not in order]
            raise InputError(sap.source, f"multiplicity.order must name every compared arm once; missing: {', '.join(missing)}", field="multiplicity.order")
    return str(ref)
