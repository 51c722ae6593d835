"""`kakugo operator`: the operator's command, added to the `kakugo` command line through
the `kakugo.commands` entry point (pyproject.toml), so that the pipeline package never
imports the operator."""

from __future__ import annotations

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
