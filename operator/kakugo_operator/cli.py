"""`kakugo operator`: the operator's command, added to the `kakugo` command line through
the `kakugo.commands` entry point (pyproject.toml), so that the pipeline package never
imports the operator."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from kakugo_operator import main as operator_main


@click.command("operator")
@click.option(
    "-n",
    "--namespace",
    "namespaces",
    multiple=True,
    help="Watch these namespaces (repeatable; default: all).",
)
@click.option(
    "--peering",
    default=None,
    metavar="NAME",
    help="Kopf peering for several replicas (default: standalone).",
)
@click.option(
    "--liveness",
    default=None,
    metavar="URL",
    help="Liveness endpoint (default http://0.0.0.0:8080/healthz; 'none' disables).",
)
@click.option("--verbose", is_flag=True, help="Verbose Kopf logging.")
@click.option("--debug", is_flag=True, help="Debug Kopf logging.")
@click.option(
    "--log-format",
    type=click.Choice(operator_main.LOG_FORMATS, case_sensitive=False),
    default=None,
    help="Kopf's log format: plain, full (default) or json (one object per line, for log "
    "collectors; the Helm chart's default).",
)
def operator_cmd(
    namespaces: tuple[str, ...],
    peering: str | None,
    liveness: str | None,
    verbose: bool,
    debug: bool,
    log_format: str | None,
) -> None:
    """Run the Kubernetes operator (kopf run with Kakugo's handlers and settings).

    Settings come from the YAML file named by $KAKUGO_OPERATOR_SETTINGS and from
    KAKUGO_* environment variables (images, GPU prices, default storage, retries).
    """
    argv = [a for ns in namespaces for a in ("--namespace", ns)]
    argv += ["--peering", peering] if peering else ["--standalone"]
    if liveness:
        argv += ["--liveness", liveness]
    argv += ["--verbose"] * verbose + ["--debug"] * debug
    if log_format:
        argv.append(f"--log-format={log_format.lower()}")
    operator_main.run_operator(argv)


@click.command("render")
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--settings",
    "settings_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="An operator settings file (what $KAKUGO_OPERATOR_SETTINGS names).",
)
@click.option(
    "--values",
    "values_file",
    type=click.Path(exists=True, path_type=Path),
    help="The Helm chart's values file (or the chart folder), e.g. helm/kakugo: images, "
    "pull policy, stages.serviceAccount, stages.storageUri as the chart gives them; image "
    "tags default to the appVersion of the Chart.yaml beside it.",
)
@click.option(
    "--image",
    "images",
    multiple=True,
    metavar="KIND=IMAGE",
    help="An image per kind (stages, trainer, eval, teacher); repeatable.",
)
@click.option("--service-account", default=None, help="ServiceAccount of the stage Pods.")
@click.option(
    "--storage-uri", default=None, help="Storage for LanguageModels whose spec names none."
)
@click.option(
    "-n",
    "--namespace",
    default="default",
    show_default=True,
    help="Namespace of objects whose manifest names none.",
)
def render_cmd(
    path: Path,
    settings_file: Path | None,
    values_file: Path | None,
    images: tuple[str, ...],
    service_account: str | None,
    storage_uri: str | None,
    namespace: str,
) -> None:
    """Print, as YAML, every object the operator would create for the manifests in PATH:
    each LanguageModel's spec ConfigMap and stage Jobs, the Deployment and Service of each
    Teacher (served or in the file), a LanguageFleet's members. Built by the operator's own
    code, to review, diff and policy-check before applying. Exits 1 when a manifest is
    invalid."""
    from kakugo_operator import render
    from kakugo_operator import settings as settings_mod
    from kakugo_stages.contract import ManifestError

    try:
        env = {settings_mod.SETTINGS_FILE_ENV: str(settings_file)} if settings_file else {}
        settings = settings_mod.load(env)
        if values_file is not None:
            values, app_version = render.chart_values(values_file)
            settings = render.settings_from_values(values, app_version, settings)
        flags: dict[str, object] = {}
        if images:
            pairs = [i.partition("=") for i in images]
            if bad := [k for k, sep, v in pairs if not sep or not v]:
                raise settings_mod.SettingsError(f"--image {bad[0]!r}: expected KIND=IMAGE")
            flags["images"] = {k: v for k, _, v in pairs}
        if service_account:
            flags["serviceAccount"] = service_account
        if storage_uri:
            flags["storageUri"] = storage_uri
        settings = settings_mod.from_mapping(flags, settings, dict.fromkeys(flags, "flag"))
        rendered = render.render_file(path, settings, namespace)
    except (settings_mod.SettingsError, ManifestError, OSError) as exc:
        click.echo(str(exc), err=True)
        sys.exit(1)
    for note in rendered.notes:
        click.echo(f"# note: {note}", err=True)
    if rendered.errors:
        click.echo("\n".join(rendered.errors), err=True)
        sys.exit(1)
    click.echo(render.to_yaml(rendered.objects), nl=False)


def _gpu_price_flags(flags: tuple[str, ...]) -> dict[str, dict[str, str]]:
    """--gpu-price PRODUCT[:CAPACITY]=DOLLARS flags as the settings' gpuPrices mapping."""
    out: dict[str, dict[str, str]] = {}
    for flag in flags:
        key, sep, price = flag.partition("=")
        product, _, capacity = key.partition(":")
        if not sep or not product or not price:
            raise click.BadParameter(
                f"{flag!r}: expected PRODUCT[:CAPACITY]=DOLLARS, e.g. "
                "NVIDIA-H100-80GB-HBM3=4.00 or NVIDIA-H100-80GB-HBM3:spot=2.00",
                param_hint="--gpu-price",
            )
        out.setdefault(product, {})[capacity or "on-demand"] = price
    return out


@click.command("plan")
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--values",
    "values_file",
    type=click.Path(exists=True, path_type=Path),
    help="The Helm chart's values file (or the chart folder), e.g. helm/kakugo: GPU prices "
    "(gpuPrices) as the operator gets them.",
)
@click.option(
    "--settings",
    "settings_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="An operator settings file (what $KAKUGO_OPERATOR_SETTINGS names).",
)
@click.option(
    "--gpu-price",
    "gpu_prices",
    multiple=True,
    metavar="PRODUCT[:CAPACITY]=DOLLARS",
    help="Dollars per GPU-hour of a GPU product (capacity type on-demand unless given); "
    "repeatable, over the values' and settings' prices.",
)
@click.option(
    "--batch-discount",
    type=click.FloatRange(0, 1, max_open=True),
    default=0.0,
    show_default=True,
    help="Share off the teacher endpoint's token prices (a Batch API at half price: 0.5).",
)
@click.option(
    "--calibrate",
    "calibrate_run",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="A finished run folder of `kakugo run` (e.g. runs/demo-yoruba): its measured means "
    "replace the estimates, and its forecast is shown against what it measured.",
)
@click.option(
    "-o",
    "--output",
    type=click.Choice(["table", "json"]),
    default="table",
    show_default=True,
    help="A readable table, or JSON.",
)
def plan_cmd(
    path: Path,
    values_file: Path | None,
    settings_file: Path | None,
    gpu_prices: tuple[str, ...],
    batch_discount: float,
    calibrate_run: Path | None,
    output: str,
) -> None:
    """Forecast what the manifests in PATH will cost before anything runs: per stage the
    teacher requests and tokens, GPU-hours by GPU type, time and dollars, each with the
    assumption it rests on. A LanguageFleet is forecast per language and in total.
    Exits 1 when a manifest is invalid."""
    import json
    from decimal import Decimal

    from kakugo_operator import plan as plan_mod
    from kakugo_operator import render
    from kakugo_operator import settings as settings_mod
    from kakugo_stages.contract import ManifestError

    try:
        env = {settings_mod.SETTINGS_FILE_ENV: str(settings_file)} if settings_file else {}
        settings = settings_mod.load(env)
        source = f"settings file {settings_file}" if settings_file else "the operator's defaults"
        if values_file is not None:
            values, app_version = render.chart_values(values_file)
            settings = render.settings_from_values(values, app_version, settings)
            source = f"chart values {values_file}"
        if gpu_prices:
            flags = {"gpuPrices": _gpu_price_flags(gpu_prices)}
            settings = settings_mod.from_mapping(flags, settings, {"gpuPrices": "--gpu-price"})
            source += " and --gpu-price"
        result = plan_mod.plan_file(
            path,
            settings,
            source,
            token_price_factor=Decimal(1) - Decimal(str(batch_discount)),
            calibrate_run=calibrate_run,
        )
    except (settings_mod.SettingsError, ManifestError, OSError, ValueError) as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    if result.errors:
        click.echo("\n".join(f"error: {e}" for e in result.errors), err=True)
        sys.exit(1)
    if output == "json":
        click.echo(json.dumps(result.as_json(), indent=2))
    else:
        click.echo(result.text())
