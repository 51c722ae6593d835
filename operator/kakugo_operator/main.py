"""`kakugo operator`: `kopf run` with Kakugo's handlers and settings.

The image, the Helm chart and the tests share this one entry point.
"""

from __future__ import annotations

from collections.abc import Sequence

HANDLERS_MODULE = "kakugo_operator.handlers"
#: Kopf's log formats (`kopf run --log-format`).
LOG_FORMATS = ("plain", "full", "json")


def kopf_args(argv: Sequence[str] = ()) -> list[str]:
    """The `kopf run` arguments for our options.

    Options: `--namespace NS` (repeatable; default: all namespaces, `-A`), `--standalone`
    (no peering; the default when there is no `--peering`), `--peering NAME`,
    `--liveness URL` (default from settings: http://0.0.0.0:8080/healthz; `none` turns it
    off), `--verbose`/`--debug`/`--quiet`, `--log-format plain|full|json` (Kopf's: json
    writes one JSON object per line, with the object's namespace and name; the chart's
    default). Anything after `--` goes to kopf as is.
    """
    from kakugo_operator import settings as settings_mod

    try:
        settings = settings_mod.load()
    except settings_mod.SettingsError as exc:  # before Kopf starts: say which key is wrong
        raise SystemExit(f"kakugo operator: {exc}") from None
    args = list(argv)
    passthrough: list[str] = []
    if "--" in args:
        cut = args.index("--")
        args, passthrough = args[:cut], args[cut + 1 :]
    namespaces: list[str] = list(settings.namespaces)
    peering: str | None = None
    liveness: str | None = settings.liveness_endpoint
    flags: list[str] = []
    it = iter(args)
    for arg in it:
        if arg in ("-n", "--namespace"):
            namespaces.append(next(it))
        elif arg.startswith("--namespace="):
            namespaces.append(arg.split("=", 1)[1])
        elif arg in ("-A", "--all-namespaces"):
            namespaces = []
        elif arg == "--standalone":
            peering = None
        elif arg == "--peering":
            peering = next(it)
        elif arg == "--liveness":
            liveness = next(it)
        elif arg in ("--verbose", "--debug", "--quiet"):
            flags.append(arg)
        elif arg == "--log-format" or arg.startswith("--log-format="):
            value = arg.split("=", 1)[1] if "=" in arg else next(it, "")
            if value.lower() not in LOG_FORMATS:
                raise SystemExit(
                    f"kakugo operator: --log-format {value!r}: one of {', '.join(LOG_FORMATS)}"
                )
            flags.append(f"--log-format={value.lower()}")
        else:
            raise SystemExit(f"kakugo operator: unknown option {arg!r}")
    out = ["run", "--module", HANDLERS_MODULE, *flags]
    out += [f"--namespace={ns}" for ns in namespaces] if namespaces else ["--all-namespaces"]
    out += [f"--peering={peering}"] if peering else ["--standalone"]
    if liveness and liveness.lower() != "none":
        out.append(f"--liveness={liveness}")
    return out + passthrough


def run_operator(argv: Sequence[str] = ()) -> None:
    """Run the operator in the foreground until it is stopped (SIGTERM, Ctrl-C)."""
    import kopf.cli

    kopf.cli.main(args=kopf_args(argv), prog_name="kakugo operator", standalone_mode=True)


if __name__ == "__main__":  # python -m kakugo_operator.main
    import sys

    run_operator(sys.argv[1:])
