"""The stage graph is declared once (kakugo_stages/graph.py); every table the pipeline and
the operator use is derived from it. These tests hold the derived graph to the
declarations."""

from __future__ import annotations

from typing import Any

import pytest
from kakugo_operator import builders
from kakugo_operator.reconcile import artifacts
from kakugo_operator.settings import OperatorSettings
from pydantic import BaseModel

from kakugo_stages import graph
from kakugo_stages.manifest import parse_object
from kakugo_stages.resolved import run_spec
from kakugo_stages.runner import selected_stages
from kakugo_stages.spec import LanguageModelSpec, ResourcesSpec
from kakugo_stages.stages import StageFailed, available, get_stage
from kakugo_stages.status import StageStatus
from kakugo_stages.store import open_store


def make_run(tmp_path: Any, **spec: Any) -> Any:
    body = {
        "language": "Yoruba",
        "teacher": {"endpoint": {"url": "http://127.0.0.1:9/v1", "model": "m"}},
        "storage": {"uri": str(tmp_path)},
        **spec,
    }
    return run_spec(
        parse_object(
            {
                "apiVersion": "kakugo.io/v1alpha1",
                "kind": "LanguageModel",
                "metadata": {"name": "yo", "namespace": "t"},
                "spec": body,
            }
        )
    )


def test_declarations_form_a_dag_in_run_order() -> None:
    graph.check()
    assert graph.STAGES == (
        "topics",
        "scenarios",
        "contexts",
        "revise",
        "respond",
        "translate",
        "filter",
        "train",
        "evaluate",
        "review",
        "publish",
    )
    assert set(graph.ready([])) == {"topics", "scenarios", "contexts", "translate"}
    # Review and publish both wait for the evaluation only, so they may run side by side.
    assert list(graph.ready([*graph.STAGES[:-2]])) == ["review", "publish"]
    assert list(graph.ready(["topics", "scenarios", "contexts", "translate"])) == ["revise"]
    assert graph.upstream("filter") == (
        "topics",
        "scenarios",
        "contexts",
        "revise",
        "respond",
        "translate",
    )
    assert graph.downstream("translate") == (
        "filter",
        "train",
        "evaluate",
        "review",
        "publish",
    )


def test_stage_classes_take_their_shape_from_the_declarations(tmp_path) -> None:
    run = make_run(tmp_path, data={"topics": {"shards": 3}})
    store = open_store(run.run_uri)
    assert available() == list(graph.STAGES)
    for d in graph.GRAPH:
        stage = get_stage(d.name)(run, store)
        assert stage.decl is d
        assert stage.inputs == d.inputs
        assert stage.uses_teacher == d.teacher
        assert stage.summary_keys == d.summary
        assert stage.num_shards() == d.num_shards(run.spec_dict())
    assert get_stage("topics")(run, store).num_shards() == 3
    assert tuple(d.name for d in graph.GRAPH if d.teacher) == graph.TEACHER_STAGES


def test_a_stage_cannot_read_an_undeclared_input(tmp_path) -> None:
    run = make_run(tmp_path)
    stage = get_stage("respond")(run, open_store(run.run_uri))
    with pytest.raises(StageFailed, match="not among its declared inputs"):
        stage.input_rows("translate")


def _field_paths(model: type[BaseModel], prefix: str = "") -> set[str]:
    """Every field path of a spec model, camelCase as in the manifest."""
    out = set()
    for name, info in model.model_fields.items():
        path = f"{prefix}{info.alias or name}"
        out.add(path)
        for arg in (info.annotation, *getattr(info.annotation, "__args__", ())):
            if isinstance(arg, type) and issubclass(arg, BaseModel):
                out |= _field_paths(arg, path + ".")
    return out


def test_every_declared_spec_path_and_shard_count_exists() -> None:
    fields = _field_paths(LanguageModelSpec)
    for d in graph.GRAPH:
        for path in d.fingerprint_paths:
            assert path in fields, f"{d.name} reads spec.{path}, which does not exist"
        if d.shards:
            assert d.shards in fields, d.shards
    # Every stage has a resources entry (the operator sizes its Pods from it), except review
    # (evaluate's) and publish (default's): each entry costs ~8 KiB of the largest spec.
    assert set(graph.STAGES) - {"review", "publish"} <= set(ResourcesSpec.model_fields)
    resources = ResourcesSpec.model_validate({"evaluate": {"gpus": 2}, "default": {"cpu": "3"}})
    assert resources.for_stage("review").gpus == 2 and resources.for_stage("review").cpu == "3"
    assert resources.for_stage("publish").gpus == 0 and resources.for_stage("publish").cpu == "3"


def test_fingerprints_move_for_what_a_stage_reads_and_everything_downstream(tmp_path) -> None:
    base = make_run(tmp_path).spec_dict()
    fps = graph.fingerprints(base)
    for d in graph.GRAPH:
        for path in d.reads:
            changed = _changed(base, path)
            moved = {s for s, fp in graph.fingerprints(changed).items() if fps[s] != fp}
            readers = {
                x.name for x in graph.GRAPH if any(_overlap(path, p) for p in x.fingerprint_paths)
            }
            expected = readers | {s for r in readers for s in graph.downstream(r)}
            assert moved == expected, (path, moved, expected)
    # Scheduling, money and the teacher's location change no output.
    for path, value in (
        ("resources.maxConcurrentStages", 1),
        ("suspend", True),
        ("budget.maxDollars", "5"),
    ):
        assert graph.fingerprints(_set(base, path, value)) == fps, path
    # The filter counts rows against the training cutoff: a new cutoff reruns it.
    moved = graph.fingerprints(_set(base, "training.cutoffLen", 4000))
    assert {s for s in moved if moved[s] != fps[s]} == {
        "filter",
        "train",
        "evaluate",
        "review",
        "publish",
    }


def _overlap(a: str, b: str) -> bool:
    """One path holds the other (data.mix and data.mix.sources)."""
    return a == b or a.startswith(b + ".") or b.startswith(a + ".")


def _set(spec: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    import copy

    out = copy.deepcopy(spec)
    node = out
    *parents, leaf = path.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = value
    return out


def _changed(spec: dict[str, Any], path: str) -> dict[str, Any]:
    old = graph.spec_value(spec, path)
    value = (
        {"changed": True}
        if isinstance(old, dict) or old is None
        else ([*old, "x"] if isinstance(old, list) else f"{old}-changed")
    )
    return _set(spec, path, value)


def test_executors_and_operator_derive_from_the_declarations(tmp_path) -> None:
    assert selected_stages(None, None) == list(graph.STAGES)
    assert selected_stages("revise", "filter") == ["revise", "respond", "translate", "filter"]
    run = make_run(tmp_path, data={"respond": {"shards": 4}})
    settings = OperatorSettings()
    for d in graph.GRAPH:
        job = builders.job(run, d.name, 1, settings, builders.TeacherEnv())
        assert job["spec"]["completions"] == d.num_shards(run.spec_dict())
        assert job["spec"]["completionMode"] == ("Indexed" if d.sharded else "NonIndexed")
        image = job["spec"]["template"]["spec"]["containers"][0]["image"]
        assert image == settings.images[d.image]
    assert (
        builders.job(run, "respond", 1, settings, builders.TeacherEnv())["spec"]["completions"] == 4
    )
    done = {s: StageStatus(name=s, state="Succeeded") for s in graph.STAGES}
    produced = artifacts(run, done)
    for d in graph.GRAPH:
        for key, path in d.produces.items():
            assert produced[key] == f"{run.run_uri}/{path}"
    running = StageStatus(name="train", state="Running")
    assert "model" not in artifacts(run, {**done, "train": running})
