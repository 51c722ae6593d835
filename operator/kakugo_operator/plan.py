"""`kakugo plan`: the cost forecast of every LanguageModel and LanguageFleet of a file,
priced with the operator's settings (a settings file, the chart's values, flags), as the
operator itself forecasts them for `status.forecast`.

A LanguageModel whose `teacher.ref` names a Teacher of the same file is priced with that
Teacher's GPUs; a fleet is forecast member by member (its template and overrides) and in
total. With a calibration run, the run's measured means replace the estimates, and the
run's own spec is forecast beside what it measured, so the error of the estimates shows.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from kakugo_operator.settings import OperatorSettings
from kakugo_stages.contract import (
    Assumptions,
    FleetForecast,
    Forecast,
    ManifestError,
    Pricing,
    calibrate,
    compare,
    comparison_table,
    fleet_forecast,
    fleet_members,
    forecast,
    load_documents,
    read_run,
    table,
    validate_spec,
)
from kakugo_stages.spec import TeacherSpec


@dataclass
class PlanResult:
    models: list[Forecast] = field(default_factory=list)
    fleets: list[FleetForecast] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    #: With a calibration run: (its name, its own forecast against what it measured)
    calibration: tuple[str, list[Any]] | None = None

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "languageModels": [m.model_dump(mode="json") for m in self.models],
            "languageFleets": [f.model_dump(mode="json") for f in self.fleets],
        }
        if self.calibration is not None:
            name, rows = self.calibration
            out["calibration"] = {
                "run": name,
                "stages": [r.model_dump(mode="json") for r in rows],
            }
        return out

    def text(self) -> str:
        parts = [table(m) for m in self.models]
        for fleet in self.fleets:
            parts.append(
                f"LanguageFleet {fleet.name}: {len(fleet.members)} language(s), total "
                f"${fleet.dollars}"
            )
            parts += [table(m) for m in fleet.members]
            parts.append(
                "fleet total: "
                + " + ".join(f"{m.name} ${m.dollars}" for m in fleet.members)
                + f" = ${fleet.dollars}"
            )
        if self.calibration is not None:
            name, rows = self.calibration
            parts.append(
                f"calibration run {name}: the estimates' forecast of its own spec against "
                f"what it measured (ratio = actual / forecast)\n{comparison_table(rows)}"
            )
        return "\n\n".join(parts)


def plan_documents(
    docs: list[Any],
    settings: OperatorSettings,
    source: str,
    *,
    token_price_factor: Decimal = Decimal(1),
    assumptions: Assumptions | None = None,
    default_namespace: str = "default",
) -> PlanResult:
    pricing = Pricing(settings.gpu_price, source, settings.default_gpu_product, token_price_factor)
    out = PlanResult()
    docs = [d for d in docs if isinstance(d, Mapping)]
    teachers: dict[tuple[str, str], TeacherSpec] = {}
    for doc in docs:
        if doc.get("kind") == "Teacher":
            meta = doc.get("metadata") or {}
            ns = meta.get("namespace") or default_namespace
            try:
                teachers[(ns, meta.get("name", ""))] = validate_spec(
                    "Teacher", doc.get("spec") or {}, f"Teacher {ns}/{meta.get('name')}"
                )
            except ManifestError as exc:
                out.errors += [f"{exc.source}: {e}" for e in exc.errors]
    for doc in docs:
        meta = doc.get("metadata") or {}
        name, ns = str(meta.get("name") or ""), str(meta.get("namespace") or default_namespace)
        kind = doc.get("kind")
        if kind == "LanguageModel":
            try:
                spec = validate_spec("LanguageModel", doc.get("spec") or {}, f"{ns}/{name}")
            except ManifestError as exc:
                out.errors += [f"LanguageModel {exc.source}: {e}" for e in exc.errors]
                continue
            ref = spec.teacher.ref.name if spec.teacher.ref else None
            out.models.append(
                forecast(
                    name,
                    spec,
                    pricing,
                    assumptions,
                    teacher=teachers.get((ns, ref)) if ref else None,
                )
            )
        elif kind == "LanguageFleet":
            try:
                fspec = validate_spec("LanguageFleet", doc.get("spec") or {}, f"{ns}/{name}")
            except ManifestError as exc:
                out.errors += [f"LanguageFleet {exc.source}: {e}" for e in exc.errors]
                continue
            members = []
            for member in fleet_members(fspec):
                if member.spec is None or member.name is None:
                    errors = member.error.errors if member.error else []
                    out.errors += [f"LanguageFleet {ns}/{name}: {e}" for e in errors]
                    continue
                ref = member.spec.teacher.ref.name if member.spec.teacher.ref else None
                members.append(
                    forecast(
                        member.name,
                        member.spec,
                        pricing,
                        assumptions,
                        teacher=teachers.get((ns, ref)) if ref else None,
                    )
                )
            out.fleets.append(fleet_forecast(name, members))
    if not out.models and not out.fleets and not out.errors:
        out.errors.append("no LanguageModel or LanguageFleet in the file: nothing to forecast")
    return out


def plan_file(
    path: str | Path,
    settings: OperatorSettings,
    source: str,
    *,
    token_price_factor: Decimal = Decimal(1),
    calibrate_run: str | Path | None = None,
    default_namespace: str = "default",
) -> PlanResult:
    """The forecasts of a file's manifests; with `calibrate_run`, calibrated by that run."""
    assumptions = None
    calibration = None
    if calibrate_run is not None:
        run_name, run_spec, actual = read_run(calibrate_run)
        pricing = Pricing(settings.gpu_price, source, settings.default_gpu_product)
        own = forecast(run_name, run_spec, pricing)
        calibration = (run_name, compare(own, actual))
        assumptions = calibrate(run_spec, actual, str(calibrate_run))
    result = plan_documents(
        load_documents(path),
        settings,
        source,
        token_price_factor=token_price_factor,
        assumptions=assumptions,
        default_namespace=default_namespace,
    )
    result.calibration = calibration
    return result
