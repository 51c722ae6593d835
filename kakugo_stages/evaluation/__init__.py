"""Evaluation of the base and the tuned student on FLORES-200, SIB-200, Belebele and
Global-MMLU, on lm-evaluation-harness.

- `data`: the four benchmarks' rows, from the hub (production) or a local / s3:// mirror
  (`evaluation.<task>.path`), written to local JSON-lines files so that lm-eval itself
  never touches the hub;
- `taskfiles`: lm-eval task YAMLs generated per run for any language (FLORES-200 and
  SIB-200 are ours; Belebele and Global-MMLU include the harness's own templates);
- `engine`: one `simple_evaluate` per model over the same task files;
- `report`: results.json, the operator's summary and the model card's table.
"""

from kakugo_stages.evaluation.data import TASK_KEYS, EvaluationError, PreparedTask, prepare_tasks
from kakugo_stages.evaluation.engine import ModelRun, evaluate_model, model_args_for
from kakugo_stages.evaluation.report import (
    base_table,
    build_base_results,
    build_results,
    markdown_table,
    summary_line,
    update_model_card,
)

__all__ = [
    "TASK_KEYS",
    "EvaluationError",
    "ModelRun",
    "PreparedTask",
    "base_table",
    "build_base_results",
    "build_results",
    "evaluate_model",
    "markdown_table",
    "model_args_for",
    "prepare_tasks",
    "summary_line",
    "update_model_card",
]
