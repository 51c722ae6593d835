"""The `kakugo` command line: validate manifests, generate CRDs, look up languages, and
run stages (one stage in a Job, or the whole pipeline on one machine)."""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path
from typing import Any, NoReturn

import click
import yaml

from kakugo_stages import crds as crd_gen
from kakugo_stages import reference as ref_doc
from kakugo_stages.languages import search
from kakugo_stages.manifest import Manifest, ManifestError, fleet_members, load_manifests
from kakugo_stages.resolved import RunSpec, run_spec

#: Entry-point group through which other packages add commands: the operator package adds
#: `kakugo operator`, so that the pipeline never imports the operator.
COMMANDS_GROUP = "kakugo.commands"


class _PluginGroup(click.Group):
    """The `kakugo` group, with the commands of installed packages loaded on demand."""

    def _plugins(self) -> dict[str, Any]:
        from importlib.metadata import entry_points

        return {ep.name: ep for ep in entry_points(group=COMMANDS_GROUP)}

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self._plugins()})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        command = super().get_command(ctx, cmd_name)
        if command is None and cmd_name in (plugins := self._plugins()):
            command = plugins[cmd_name].load()
        return command


@click.group(cls=_PluginGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="kakugo")
def main() -> None:
    """Kakugo: distil a low-resource language into a small instruction-tuned model.

    One manifest names a language; the pipeline generates data with a teacher model,
    fine-tunes a student and evaluates it against the base model.
    """


def _fail(message: str) -> NoReturn:
    click.echo(message, err=True)
    sys.exit(1)


def _resolved_view(manifest: Manifest) -> tuple[dict, list[ManifestError]]:
    if manifest.kind == "LanguageModel":
        return run_spec(manifest).to_manifest(), []
    body: dict[str, Any] = {
        "apiVersion": crd_gen.API_GROUP + "/" + crd_gen.API_VERSION,
        "kind": manifest.kind,
        "metadata": {"name": manifest.name, "namespace": manifest.namespace},
        "spec": manifest.spec.model_dump(mode="json", by_alias=True),
    }
    errors: list[ManifestError] = []
    if manifest.kind == "LanguageFleet":
        members: list[dict[str, Any]] = []
        for member in fleet_members(manifest.spec):
            if member.error is not None:
                errors.append(member.error)
                members.append({"language": member.language, "error": str(member.error)})
            else:
                lang = member.spec.resolved_language  # type: ignore[union-attr]
                members.append(
                    {"language": member.language, "name": member.name, "code": lang.code}
                )
        body["resolved"] = {"members": members}
    return body, errors


@main.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "-o",
    "--output",
    type=click.Choice(["yaml", "json"]),
    default="yaml",
    show_default=True,
    help="Format of the resolved spec.",
)
@click.option("-q", "--quiet", is_flag=True, help="Print nothing on success.")
def validate(file: Path, output: str, quiet: bool) -> None:
    """Validate a manifest and print it resolved, with every default filled in.

    On error, prints each problem with its field path and exits with status 1.
    """
    try:
        manifests = load_manifests(file)
    except ManifestError as exc:
        _fail(f"error: {exc}")
    views, problems = [], []
    for manifest in manifests:
        view, errors = _resolved_view(manifest)
        views.append(view)
        problems.extend(errors)
    if not quiet:
        if output == "json":
            click.echo(
                json.dumps(views if len(views) > 1 else views[0], indent=2, ensure_ascii=False)
            )
        else:
            click.echo(
                yaml.safe_dump_all(views, sort_keys=False, allow_unicode=True, width=100), nl=False
            )
    if problems:
        _fail("error: " + "\n".join(str(p) for p in problems))


@main.command()
@click.option(
    "--write",
    "folders",
    multiple=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Write one file per CRD into this folder (repeatable). Default: print to stdout.",
)
@click.option(
    "--check",
    "check_folders",
    multiple=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Exit 1 if the CRDs in this folder differ from the models (repeatable).",
)
def crds(folders: tuple[Path, ...], check_folders: tuple[Path, ...]) -> None:
    """Generate the CustomResourceDefinitions from the spec models.

    \b
    kakugo crds | kubectl apply -f -
    kakugo crds --write crds --write helm/kakugo/files/crds
    """
    rendered = {name: crd_gen.render(crd) for name, crd in crd_gen.all_crds().items()}
    if check_folders:
        stale = []
        for folder in check_folders:
            for name, text in rendered.items():
                path = folder / name
                if not path.exists() or path.read_text(encoding="utf-8") != text:
                    stale.append(str(path))
        if stale:
            _fail("CRDs out of date (run `make crds`): " + ", ".join(stale))
        click.echo("CRDs up to date.")
        return
    if folders:
        for path in crd_gen.write_crds(*folders):
            click.echo(f"wrote {path}")
        return
    click.echo("---\n".join(rendered.values()), nl=False)


@main.command()
@click.argument("query", required=False, default="")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option("-n", "--limit", type=int, default=None, help="Show at most N languages.")
def languages(query: str, as_json: bool, limit: int | None) -> None:
    """List the languages Kakugo knows, or search them by name, alias or code.

    Shows each language's FLORES-200 code, ISO 639 codes, FineWeb-2 config and which
    evaluation tasks cover it.
    """
    found = search(query, limit=limit or 10_000)
    if as_json:
        click.echo(json.dumps([_lang_row(x) for x in found], indent=2, ensure_ascii=False))
        return
    if not found:
        _fail(f"no language matches {query!r}")
    header = f"{'CODE':<10} {'NAME':<28} {'ISO1':<4} {'ISO3':<4} {'FINEWEB-2':<10} TASKS"
    click.echo(header)
    for lang in found:
        click.echo(
            f"{lang.code:<10} {lang.name[:28]:<28} {lang.iso639_1 or '-':<4} {lang.iso639_3:<4} "
            f"{lang.fineweb2 or '-':<10} {','.join(lang.tasks) or '-'}"
        )


@main.command()
@click.option(
    "--update",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Rewrite the generated block of this Markdown file (e.g. README.md) in place.",
)
@click.option("--check", is_flag=True, help="With --update: exit 1 if the file is stale.")
def reference(update: Path | None, check: bool) -> None:
    """Print the manifest reference (every field, type, default) as Markdown."""
    if update is None:
        click.echo(ref_doc.markdown(), nl=False)
        return
    old = update.read_text(encoding="utf-8")
    new = ref_doc.replace_in(old)
    if check:
        if new != old:
            _fail(f"{update}: manifest reference is out of date (run `make docs`)")
        click.echo(f"{update}: manifest reference up to date.")
        return
    update.write_text(new, encoding="utf-8")
    click.echo(f"updated {update}")


@main.command()
@click.argument("name")
@click.option(
    "--spec",
    "spec_path",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="The LanguageModel manifest or resolved spec.yaml (in a Job: /etc/kakugo/spec.yaml).",
)
@click.option(
    "--shard",
    type=int,
    default=None,
    envvar="JOB_COMPLETION_INDEX",
    help="Run only this shard (default: $JOB_COMPLETION_INDEX, else every unfinished shard).",
)
@click.option(
    "--shards",
    type=int,
    default=None,
    help="Expected shard count; refuses to run if the spec says otherwise.",
)
@click.option(
    "--storage",
    default=None,
    help="Storage root when the spec has none (default: ./runs).",
)
@click.option("--progress/--no-progress", default=None, help="Progress bar (default: on a TTY).")
@click.option(
    "--progress-every",
    type=click.FloatRange(min=0),
    default=60.0,
    show_default=True,
    envvar="KAKUGO_PROGRESS_EVERY",
    metavar="SECONDS",
    help="Without a progress bar (no TTY, as in a Job's Pod): write a progress line to "
    "stderr this often (requests done/issued, failures, rate, ETA, shards); 0: none.",
)
@click.option(
    "--reset",
    is_flag=True,
    help="Redo the shards this run covers although they are marked complete (the operator "
    "passes it when the stage's inputs changed); cached teacher answers are still replayed.",
)
def stage(
    name: str,
    spec_path: Path,
    shard: int | None,
    shards: int | None,
    storage: str | None,
    progress: bool | None,
    progress_every: float,
    reset: bool,
) -> None:
    """Run one stage of the pipeline, e.g. `kakugo stage topics --spec yoruba.yaml`.

    Completed shards are skipped and cached teacher requests replayed, so rerunning after
    a crash continues where it stopped. Exits 1 when the stage fails.
    """
    from kakugo_stages.resolved import load_run_spec
    from kakugo_stages.stages import StageFailed, get_stage, run_stage
    from kakugo_stages.store import StoreError, open_run_store

    try:
        run = load_run_spec(spec_path, storage)
        impl = get_stage(name)
    except (ManifestError, ValueError, KeyError) as exc:
        _fail(f"error: {exc.args[0] if isinstance(exc, KeyError) else exc}")
    try:
        store = open_run_store(run)  # with the spec's storage.s3 endpoint and region
        runner = impl(run, store)
        if shards is not None and shards != runner.num_shards():
            _fail(
                f"error: --shards {shards} but the spec gives stage {name} "
                f"{runner.num_shards()} shard(s)"
            )
        show = sys.stderr.isatty() if progress is None else progress
        summary = run_stage(
            runner,
            None if shard is None else [shard],
            progress=show,
            reset=reset,
            progress_every=progress_every or None,
        )
    except (StageFailed, StoreError) as exc:
        _fail(f"error: {exc}")
    click.echo(json.dumps(summary.as_dict(), ensure_ascii=False))


@main.command()
@click.argument("manifest", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--from",
    "from_stage",
    default=None,
    metavar="STAGE",
    help="Start at this stage (earlier stages must be finished).",
)
@click.option("--until", default=None, metavar="STAGE", help="Stop after this stage.")
@click.option(
    "--runs-dir",
    default="./runs",
    show_default=True,
    help="Where local runs live when the spec has no storage: <runs-dir>/<name>.",
)
@click.option(
    "--gpu-price",
    type=str,
    default=None,
    metavar="DOLLARS",
    help="Price of one GPU-hour for the cost estimate, e.g. 2.50.",
)
@click.option("--progress/--no-progress", default=None, help="Progress bars (default: on a TTY).")
@click.option(
    "--force-spec",
    is_flag=True,
    help="Continue a run folder although its spec changed (finished stages stay).",
)
def run(
    manifest: Path,
    from_stage: str | None,
    until: str | None,
    runs_dir: str,
    gpu_price: str | None,
    progress: bool | None,
    force_spec: bool,
) -> None:
    """Run the whole pipeline on this machine, e.g. `kakugo run examples/demo-cpu.yaml`.

    Resumable: run it again and it continues where it stopped, never repeating a finished
    shard or a teacher request. Ends with a report (report.md in the run folder).
    """
    from decimal import Decimal, InvalidOperation

    from kakugo_stages.local_teacher import LocalTeacherError
    from kakugo_stages.report import render
    from kakugo_stages.runner import RunError, RunOptions, local_run, run_pipeline
    from kakugo_stages.store import StoreError, open_run_store

    try:
        price = Decimal(gpu_price) if gpu_price is not None else None
    except InvalidOperation:
        _fail(f"error: --gpu-price {gpu_price!r} is not a number of dollars, e.g. 2.50")
    try:
        lms = [m for m in load_manifests(manifest) if m.kind == "LanguageModel"]
    except ManifestError as exc:
        _fail(f"error: {exc}")
    if len(lms) != 1:
        _fail(f"error: {manifest} must hold exactly one LanguageModel (found {len(lms)})")
    show = sys.stderr.isatty() if progress is None else progress
    options = RunOptions(
        from_stage=from_stage, until=until, runs_dir=runs_dir, progress=show, force_spec=force_spec
    )
    local = local_run(run_spec(lms[0]), runs_dir)
    _forecast_gate(local, price, gpu_price)
    try:
        run_pipeline(local, options, echo=lambda m: click.echo(m, err=True))
    except (RunError, LocalTeacherError, StoreError) as exc:
        # What was made so far is still worth a report, unless the store itself failed
        # (an endpoint that does not answer would make the report wait as long again).
        if not isinstance(exc, StoreError):
            with contextlib.suppress(Exception):
                store = open_run_store(local)
                render(local, store, price)
                click.echo(f"partial report: {store.url('report.md')}", err=True)
        _fail(f"error: {exc}")
    store = open_run_store(local)
    click.echo(render(local, store, price))
    click.echo(f"report: {store.url('report.md')}", err=True)


def _load_run(path: Path, runs_dir: str = "./runs") -> RunSpec:
    """The run of a LanguageModel manifest or of a run's resolved spec.yaml (a local run
    without storage lives in <runs_dir>/<name>)."""
    from kakugo_stages.resolved import load_run_spec
    from kakugo_stages.runner import local_run

    try:
        return local_run(load_run_spec(path), runs_dir)
    except (ManifestError, ValueError) as exc:
        _fail(f"error: {exc}")


@main.command()
@click.argument("manifest", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--base-only",
    is_flag=True,
    help="Score only the base model (student.model), before anything is generated, "
    "trained or paid for. (The tuned model is scored by the evaluate stage.)",
)
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Where to write the scores as JSON (default: ./<name>-base-evaluation.json).",
)
def evaluate(manifest: Path, base_only: bool, output: Path | None) -> None:
    """Score the base model on the manifest's language, e.g.
    `kakugo evaluate --base-only examples/demo-cpu.yaml`.

    The evaluate stage's own code path (its task files, 3 shots, seeds, backend and
    device from spec.evaluation), with only the base model: prints a table and writes the
    scores as JSON (results.json's shape, without tuned scores).
    """
    if not base_only:
        _fail(
            "error: only --base-only is supported here; the tuned model is scored by the "
            "evaluate stage (`kakugo run FILE` or `kakugo stage evaluate --spec FILE`)"
        )
    from kakugo_stages.evaluation import base_table
    from kakugo_stages.stages import StageFailed
    from kakugo_stages.stages.evaluate import EvaluateStage
    from kakugo_stages.store import open_run_store

    run = _load_run(manifest)
    stage_impl = EvaluateStage(run, open_run_store(run))
    try:
        results = stage_impl.base_only()
    except StageFailed as exc:
        _fail(f"error: {exc}")
    target = output or Path(f"{run.name}-base-evaluation.json")
    target.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    click.echo(f"{run.spec.student.model} on {results['language']}:")
    click.echo(base_table(results), nl=False)
    click.echo(f"scores: {target}", err=True)


@main.command()
@click.argument("target", type=click.Path(exists=True, path_type=Path))
@click.option("--base", is_flag=True, help="Talk to the base model (student.model) instead.")
@click.option(
    "--think/--no-think",
    default=True,
    show_default=True,
    help="Start with the thinking system prompt (data.mix.thinkSystemPrompt) or the concise "
    "one (conciseSystemPrompt); /think on|off switches during the chat.",
)
@click.option(
    "--backend",
    type=click.Choice(["auto", "transformers", "vllm"]),
    default="auto",
    show_default=True,
    help="auto: vLLM's offline engine when vLLM is installed and a GPU is there, else "
    "transformers (streamed).",
)
@click.option(
    "--device", default=None, help="transformers device (default: cuda if any, else cpu)."
)
@click.option("--max-new-tokens", type=click.IntRange(min=1), default=512, show_default=True)
@click.option(
    "--temperature",
    type=click.FloatRange(min=0),
    default=0.0,
    show_default=True,
    help="0: greedy (the same answer every time).",
)
@click.option("--top-p", type=click.FloatRange(min=0, max=1, min_open=True), default=1.0)
@click.option(
    "--runs-dir",
    default="./runs",
    show_default=True,
    help="Where local runs live when the manifest has no storage.",
)
@click.option(
    "--cache",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where a model in S3 is downloaded to (default: $KAKUGO_CACHE/chat).",
)
def chat(
    target: Path,
    base: bool,
    think: bool,
    backend: str,
    device: str | None,
    max_new_tokens: int,
    temperature: float,
    top_p: float,
    runs_dir: str,
    cache: Path | None,
) -> None:
    """Chat with a run's tuned model in the terminal: TARGET is the LanguageModel manifest
    or the run's folder (the one holding spec.yaml and model/).

    \b
    kakugo chat examples/demo-cpu.yaml
    kakugo chat runs/demo-yoruba --no-think
    kakugo chat examples/demo-cpu.yaml --base     # the model before training

    Commands: /think on|off, /reset, /exit (or Ctrl-D), /help. The answer streams as it is
    generated; the conversation is kept while it fits the model's context.
    """
    import os

    from kakugo_stages import chat as chat_mod
    from kakugo_stages.store import open_run_store, open_store

    folder = target if target.is_dir() else None
    spec_file = (folder / "spec.yaml") if folder is not None else target
    if folder is not None and not spec_file.is_file():
        _fail(f"error: {folder} holds no spec.yaml: give a run folder or a manifest")
    run = _load_run(spec_file, runs_dir)
    store = open_store(str(folder.resolve())) if folder is not None else open_run_store(run)
    cache_dir = (
        cache or Path(os.environ.get("KAKUGO_CACHE", "~/.cache/kakugo")).expanduser() / "chat"
    )
    sampling = chat_mod.Sampling(max_new_tokens, temperature, top_p)
    try:
        model = (
            chat_mod.base_model(run, cache_dir)
            if base
            else chat_mod.tuned_model(run, store, cache_dir)
        )
        click.echo(f"loading the {model.label} model ...", err=True)
        engine = chat_mod.load_backend(model, sampling, backend, device)
    except chat_mod.ChatError as exc:
        _fail(f"error: {exc}")
    mix = run.spec.data.mix
    session = chat_mod.ChatSession(
        mix.think_system_prompt, mix.concise_system_prompt, thinking=think
    )
    click.echo(
        f"{model.label} on {engine.name}; thinking {'on' if think else 'off'}. "
        "/think on|off, /reset, /exit, /help"
    )
    if not mix.reasoning:
        click.echo("(data.mix.reasoning is false: the model never learnt the thinking prompt)")
    with contextlib.suppress(ImportError):
        import readline  # noqa: F401 - line editing and history for input()

    def write(text: str) -> None:
        sys.stdout.write(text)
        sys.stdout.flush()

    chat_mod.repl(session, engine, sampling, input, write)


@main.command("fetch-model")
@click.argument("source")
@click.argument("dest", type=click.Path(file_okay=False, path_type=Path))
def fetch_model(source: str, dest: Path) -> None:
    """Copy a model folder from storage to a local folder, e.g. the tuned model of a run
    into a serving Pod: `kakugo fetch-model s3://bucket/runs/ns/yoruba/model /scratch/model`.

    SOURCE is an s3:// URI (the endpoint from AWS_ENDPOINT_URL_S3, credentials from the
    environment) or a local path / file:// URI (a mounted PVC). Fails unless the folder
    holds a model (config.json).
    """
    from kakugo_stages.store import ArtifactNotFound, StoreError, open_store

    try:
        store = open_store(source)
        if not store.exists("config.json"):
            _fail(
                f"error: no model at {store.url()} (config.json missing): the train stage "
                "must finish first"
            )
        store.download_dir("", dest)
    except (ArtifactNotFound, StoreError, ValueError) as exc:
        _fail(f"error: {exc}")
    files = sum(1 for p in dest.rglob("*") if p.is_file())
    click.echo(f"copied {files} file(s) from {store.url()} to {dest}")


def _forecast_gate(local: Any, price: Any, gpu_price: str | None) -> None:
    """Print the forecast before a run starts, and refuse a fresh run whose forecast is
    over spec.budget.maxDollars (unless spec.budget.onForecastOverBudget is Proceed), as
    the operator stalls it."""
    from kakugo_stages import forecast as fc_mod
    from kakugo_stages.store import open_run_store

    pricing = fc_mod.flat_pricing(price, f"--gpu-price {gpu_price}" if gpu_price else "")
    fc = fc_mod.forecast(local.name, local.spec, pricing)
    brief = fc_mod.table(fc).split("\nassumptions:")[0]
    click.echo(
        "forecast, from the recipe's per-request means (an upper bound for a small teacher, "
        "which writes far less; `kakugo plan` shows what it rests on, `--calibrate RUN` "
        f"uses a finished run's own means):\n{brief}",
        err=True,
    )
    if not fc.over_budget or local.spec.budget.on_forecast_over_budget == "Proceed":
        return
    if open_run_store(local).exists("spec.yaml"):
        return  # already under way: spending is held by maxDollars itself
    _fail(
        f"error: ForecastOverBudget: the cost forecast is ${fc.dollars}, over "
        f"spec.budget.maxDollars ${fc.budget}; nothing was started. Raise "
        "spec.budget.maxDollars, lower the counts in spec.data, or set "
        "spec.budget.onForecastOverBudget: Proceed"
    )


def _share_commands() -> None:
    from kakugo_stages.share_cli import publish, review

    main.add_command(publish)
    main.add_command(review)


_share_commands()


def _lang_row(lang) -> dict:
    return {
        "code": lang.code,
        "name": lang.name,
        "aliases": list(lang.aliases),
        "iso639_1": lang.iso639_1,
        "iso639_3": lang.iso639_3,
        "script": lang.script,
        "fineweb2": lang.fineweb2,
        "tasks": list(lang.tasks),
    }


if __name__ == "__main__":  # pragma: no cover
    main()
