"""Run one model over the generated task files with lm-evaluation-harness.

`evaluate_model` is called once for the base and once for the tuned model with the same
task folder, the same seeds and the same generation settings, so both see identical
prompts (results.json records whether the logged prompts really matched).

The model is either an lm-eval model name with its arguments (`hf` on CPU or GPU, `vllm`
on GPUs: `model_args_for`) or an `lm_eval.api.model.LM` instance; tests inject scripted
ones to check that scoring is wired right.
"""

from __future__ import annotations

import gc
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kakugo_stages.evaluation.data import EvaluationError, PreparedTask
from kakugo_stages.spec import EvaluationSpec

log = logging.getLogger("kakugo.evaluation")

#: Seeds of simple_evaluate; the fewshot seed fixes which shots each item gets.
SEED = 1234
VLLM_GPU_MEMORY_UTILIZATION = 0.85


@dataclass
class ModelRun:
    """One model's scores: per task key, the score in points (0-100), items scored and,
    if logged, one record per item (prompt, target, answer)."""

    model: str
    scores: dict[str, float] = field(default_factory=dict)
    n: dict[str, int] = field(default_factory=dict)
    samples: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    seconds: float = 0.0


def model_args_for(
    evaluation: EvaluationSpec,
    pretrained: str,
    *,
    revision: str | None = None,
    tokenizer: str | None = None,
    gpus: int = 1,
) -> tuple[str, dict[str, Any]]:
    """lm-eval model name and arguments for the spec's backend."""
    if evaluation.backend == "vllm":
        args: dict[str, Any] = {
            "pretrained": pretrained,
            "tensor_parallel_size": max(gpus, 1),
            "gpu_memory_utilization": VLLM_GPU_MEMORY_UTILIZATION,
            "dtype": "auto",
            "seed": SEED,
        }
    else:
        # float32 on CPU: bf16 is slow there and makes greedy decoding less stable.
        args = {
            "pretrained": pretrained,
            "dtype": "float32" if evaluation.device == "cpu" else "auto",
        }
    if revision:
        args["revision"] = revision
    if tokenizer:
        args["tokenizer"] = tokenizer
    return evaluation.backend, args


def _score(task: PreparedTask, task_results: dict[str, Any]) -> float:
    value = task_results.get(f"{task.metric},none")
    if value is None:
        value = next((v for k, v in task_results.items() if k.split(",")[0] == task.metric), None)
    if not isinstance(value, int | float) or math.isnan(value):
        raise EvaluationError(f"{task.key}: lm-eval returned no {task.metric} ({task_results})")
    # acc is a fraction; chrF++ is already in points. Report both in points (0-100).
    return float(value) * 100.0 if task.metric == "acc" else float(value)


def _sample_record(task: PreparedTask, sample: dict[str, Any]) -> dict[str, Any]:
    args = sample.get("arguments") or []
    first = args[0] if args else ()
    prompt = first[0] if first else None
    record: dict[str, Any] = {
        "doc_id": sample.get("doc_id"),
        "prompt": prompt,
        "target": sample.get("target"),
    }
    if task.metric == "chrf++":
        resp = sample.get("filtered_resps") or [None]
        record["answer"] = resp[0] if not isinstance(resp[0], list) else resp[0][0]
    else:
        record["choices"] = [a[1] for a in args]
        record["loglikelihoods"] = [
            r[0] if isinstance(r, list | tuple) else r for r in sample.get("filtered_resps", [])
        ]
        record["acc"] = sample.get("acc")
    return record


def evaluate_model(
    model: Any,
    model_args: dict[str, Any] | None,
    tasks: list[PreparedTask],
    task_dir: Path,
    *,
    label: str,
    device: str | None = None,
    batch_size: int = 1,
    log_samples: bool = True,
    isolate: bool = False,
) -> ModelRun:
    """Score one model on the prepared tasks whose YAMLs are in `task_dir`.

    `isolate=True` runs it in a fresh (spawned) process: vLLM does not hand its GPU
    memory back inside one process, so the second model of a base-vs-tuned pair would
    find the GPU still full. The stage isolates every vLLM run.
    """
    if isolate:
        if not isinstance(model, str):
            raise EvaluationError("only a named lm-eval model can run in its own process")
        import concurrent.futures
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=ctx) as pool:
            future = pool.submit(
                evaluate_model,
                model,
                model_args,
                tasks,
                task_dir,
                label=label,
                device=device,
                batch_size=batch_size,
                log_samples=log_samples,
            )
            try:
                return future.result()
            except concurrent.futures.process.BrokenProcessPool as exc:
                raise EvaluationError(
                    f"the evaluation process of the {label} model died (out of memory?)"
                ) from exc
    import time

    try:
        from lm_eval import simple_evaluate
        from lm_eval.tasks import TaskManager
    except ImportError as exc:
        raise EvaluationError(
            "lm-evaluation-harness is not installed: pip install 'kakugo[eval]'"
        ) from exc
    if not tasks:
        return ModelRun(model=label)
    started = time.monotonic()
    # include_defaults=False: index only our folder (the harness's 10k+ task files would
    # cost seconds and could shadow our names).
    manager = TaskManager(include_path=str(task_dir), include_defaults=False)
    by_name = {t.task_name: t for t in tasks}
    try:
        out = simple_evaluate(
            model=model,
            model_args=model_args if isinstance(model, str) else None,
            tasks=list(by_name),
            task_manager=manager,
            batch_size=batch_size if isinstance(model, str) else None,
            device=device if isinstance(model, str) else None,
            log_samples=log_samples,
            apply_chat_template=False,
            bootstrap_iters=0,
            random_seed=SEED,
            numpy_random_seed=SEED,
            torch_random_seed=SEED,
            fewshot_random_seed=SEED,
        )
    except EvaluationError:
        raise
    except Exception as exc:  # lm-eval, datasets, transformers and vLLM raise anything
        raise EvaluationError(
            f"lm-eval failed on the {label} model: {type(exc).__name__}: {exc}"
        ) from exc
    finally:
        _release_memory()
    if not out or "results" not in out:
        raise EvaluationError(f"lm-eval returned no results for the {label} model")
    run = ModelRun(model=label)
    for name, task in by_name.items():
        if name not in out["results"]:
            raise EvaluationError(f"lm-eval returned no results for {task.key} ({name})")
        run.scores[task.key] = _score(task, out["results"][name])
        n_samples = out.get("n-samples", {}).get(name, {})
        run.n[task.key] = int(n_samples.get("effective", task.n))
        if log_samples:
            run.samples[task.key] = [
                _sample_record(task, s) for s in out.get("samples", {}).get(name, [])
            ]
    run.seconds = time.monotonic() - started
    return run


def _release_memory() -> None:
    # The base and tuned models run one after the other in one process: free the first
    # one's weights (and, on GPUs, its cached blocks) before loading the second.
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:  # pragma: no cover
        pass
