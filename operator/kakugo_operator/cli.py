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
