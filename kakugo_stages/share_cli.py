"""`kakugo publish` and `kakugo review`: share a finished run (the Hub) and have native
speakers rate it (a blinded page, then their result files merged)."""

from __future__ import annotations

import dataclasses
import os
import sys
import tempfile
from pathlib import Path

import click

from kakugo_stages.manifest import ManifestError, load_manifests
from kakugo_stages.resolved import RunSpec, load_run_spec, run_spec

SPEC_FILE = "spec.yaml"


def _fail(message: str) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(1)


def load_run(target: str, runs_dir: str) -> RunSpec:
    """The run of TARGET: a LanguageModel manifest (its run under --runs-dir unless the
    spec names storage), or a run folder / s3:// run URI holding the run's spec.yaml."""
    from kakugo_stages.runner import local_run
    from kakugo_stages.store import ArtifactNotFound, StoreError, open_store

    path = Path(target)
    if not target.startswith("s3://") and not path.exists():
        _fail(f"{target}: no such file or folder; name a LanguageModel manifest or a run folder")
    try:
        if target.startswith("s3://") or path.is_dir():
            uri = target if target.startswith("s3://") else str(path.resolve())
            store = open_store(uri)
            with tempfile.TemporaryDirectory(prefix="kakugo-spec-") as tmp:
                spec = Path(tmp) / SPEC_FILE
                spec.write_bytes(store.read_bytes(SPEC_FILE))
                run = load_run_spec(spec)
            # The folder is the run, wherever it was made or moved to.
            return dataclasses.replace(run, uri=uri)
        lms = [m for m in load_manifests(path) if m.kind == "LanguageModel"]
    except ArtifactNotFound:
        _fail(f"{target} holds no {SPEC_FILE}: name a run folder or a LanguageModel manifest")
    except (ManifestError, StoreError, ValueError) as exc:
        _fail(str(exc))
    if len(lms) != 1:
        _fail(f"{target} must hold exactly one LanguageModel (found {len(lms)})")
    return local_run(run_spec(lms[0]), runs_dir)


def _token(token_file: Path | None) -> str | None:
    if token_file is not None:
        token = token_file.read_text(encoding="utf-8").strip()
        if not token:
            _fail(f"--token-file {token_file} is empty")
        return token
    return os.environ.get("HF_TOKEN") or None


RUNS_DIR = click.option(
    "--runs-dir",
    default="./runs",
    show_default=True,
    help="Where local runs live when the manifest has no storage: <runs-dir>/<name>.",
)


@click.command()
@click.argument("target", metavar="FILE|RUN")
@click.option(
    "--token-file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="A file holding the Hub token (default: $HF_TOKEN).",
)
@click.option("--dataset-repo", default=None, metavar="OWNER/NAME", help="Overrides the spec's.")
@click.option("--model-repo", default=None, metavar="OWNER/NAME", help="Overrides the spec's.")
@click.option("--endpoint", default=None, help="Hub endpoint (default: the spec's, or the Hub).")
@RUNS_DIR
def publish(
    target: str,
    token_file: Path | None,
    dataset_repo: str | None,
    model_repo: str | None,
    endpoint: str | None,
    runs_dir: str,
) -> None:
    """Publish a finished run to the Hugging Face Hub, as `spec.publish.huggingFace` says.

    The dataset (parquet splits and card) and the model (safetensors, tokenizer, chat
    template, card with the evaluation as model-index) go in one commit per repository.
    Files already on the Hub are not sent again; a failed upload leaves no commit.

    \b
    HF_TOKEN=hf_... kakugo publish yoruba.yaml
    kakugo publish runs/demo-yoruba --model-repo me/granite-yoruba --token-file ~/.hf-token
    """
    from pydantic import ValidationError

    from kakugo_stages.publish.hub import PublishError, publish_run
    from kakugo_stages.spec import PublishSpec
    from kakugo_stages.store import open_run_store

    run = load_run(target, runs_dir)
    if dataset_repo or model_repo:
        hub = run.spec.publish.hugging_face.model_dump() if run.spec.publish else {}
        hub.update(
            {k: v for k, v in (("dataset_repo", dataset_repo), ("model_repo", model_repo)) if v}
        )
        try:
            section = PublishSpec.model_validate({"huggingFace": hub})
        except ValidationError as exc:
            _fail(f"--dataset-repo/--model-repo: {exc.errors()[0]['msg']}")
        run = dataclasses.replace(run, spec=run.spec.model_copy(update={"publish": section}))
    if run.spec.publish is None:
        _fail(
            "nothing to publish to: add publish.huggingFace.datasetRepo and/or modelRepo to "
            "the manifest, or pass --dataset-repo/--model-repo"
        )
    try:
        out = publish_run(run, open_run_store(run), token=_token(token_file), endpoint=endpoint)
    except PublishError as exc:
        _fail(str(exc))
    for kind, repo in out["repos"].items():
        state = "committed" if repo["committed"] else "unchanged"
        click.echo(
            f"{kind}: {repo['url']} @ {repo['revision']} ({state}, commit {repo['commit'][:12]})"
        )


@click.group()
def review() -> None:
    """Have native speakers compare the tuned and the base model, blinded.

    \b
    kakugo review build runs/demo-yoruba --device cpu   # writes review/index.html
    kakugo review import review-*.json --run runs/demo-yoruba
    """


@review.command("build")
@click.argument("target", metavar="FILE|RUN")
@click.option("--prompts", type=click.IntRange(min=1), default=None, help="How many prompts.")
@click.option(
    "--seed", type=click.IntRange(min=0), default=None, help="Seed of choice, order, sides."
)
@click.option("--max-new-tokens", type=click.IntRange(min=1), default=None, help="Longest answer.")
@click.option(
    "--device", type=click.Choice(["cuda", "cpu"]), default=None, help="Where to generate."
)
@RUNS_DIR
def review_build(
    target: str,
    prompts: int | None,
    seed: int | None,
    max_new_tokens: int | None,
    device: str | None,
    runs_dir: str,
) -> None:
    """Write the blinded review page of a finished run (what the review stage makes).

    Settings come from `spec.review` (its defaults when the spec has none); the options
    override them. Prints where the page is: open it in any browser, or send it to raters.
    """
    from pydantic import ValidationError

    from kakugo_stages.review.build import build_review
    from kakugo_stages.review.prompts import ReviewError
    from kakugo_stages.spec import ReviewSpec
    from kakugo_stages.store import open_run_store

    run = load_run(target, runs_dir)
    overrides = {
        k: v
        for k, v in {
            "prompts": prompts,
            "seed": seed,
            "max_new_tokens": max_new_tokens,
            "device": device,
        }.items()
        if v is not None
    }
    if run.spec.review is None and device is None:
        import torch

        # No review section: generate where this machine can.
        overrides["device"] = "cuda" if torch.cuda.is_available() else "cpu"
    base = (run.spec.review or ReviewSpec()).model_dump()
    try:
        settings = ReviewSpec.model_validate({**base, **overrides})
    except ValidationError as exc:
        error = exc.errors()[0]
        _fail(f"--{str(error['loc'][0]).replace('_', '-')}: {error['msg']}")
    try:
        out = build_review(run, open_run_store(run), settings)
    except ReviewError as exc:
        _fail(str(exc))
    note = (
        f" ({out['dropped_as_trained']} left out: also in the train split)"
        if out["dropped_as_trained"]
        else ""
    )
    click.echo(f"{out['prompts']} prompts{note}")
    click.echo(f"page: {out['page']}")


@review.command("import")
@click.argument(
    "files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path)
)
@click.option(
    "--run",
    "target",
    default=None,
    metavar="FILE|RUN",
    help="The run the page was built from (default: the run named in the files).",
)
@RUNS_DIR
def review_import(files: tuple[Path, ...], target: str | None, runs_dir: str) -> None:
    """Merge raters' saved files into evaluation/review.json and the model card.

    Prints the tuned model's win rate over the base model (ties count half) with its 95%
    Wilson interval, per rater and overall, and the raters' agreement (kappa).
    """
    from kakugo_stages.review.build import RESULTS, import_reviews
    from kakugo_stages.review.prompts import ReviewError
    from kakugo_stages.review.results import read_rater_file
    from kakugo_stages.store import StoreError, open_run_store, open_store

    try:
        if target is None:
            runs = {str(read_rater_file(f).get("run") or "") for f in files}
            if len(runs) != 1 or not next(iter(runs)):
                _fail("the files name different runs, or none: say which with --run")
            store = open_store(runs.pop())
        else:
            store = open_run_store(load_run(target, runs_dir))
        review = import_reviews(store, list(files))
    except (ReviewError, StoreError) as exc:
        _fail(str(exc))
    for name, s in [*review["per_rater"].items(), ("all raters", review["overall"])]:
        low, high = s["ci95"]
        click.echo(
            f"{name}: tuned {s['tuned']}, base {s['base']}, tie {s['tie']}: win rate "
            f"{100 * s['win_rate']:.1f}% (95% CI {100 * low:.1f}-{100 * high:.1f}%)"
        )
    for pair in review["agreement"]["pairs"]:
        kappa = pair["cohen_kappa"]
        shown = "undefined" if kappa is None else f"{kappa:.2f}"
        click.echo(f"agreement {pair['raters'][0]} / {pair['raters'][1]}: Cohen's kappa {shown}")
    if review["agreement"].get("fleiss_kappa") is not None:
        click.echo(
            f"agreement of all raters: Fleiss' kappa {review['agreement']['fleiss_kappa']:.2f}"
        )
    click.echo(f"written: {store.url(RESULTS)}")
