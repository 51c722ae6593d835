"""Progress of a training run: step, loss, tokens/s and ETA.

Rank 0 writes them to `train/_progress.json` on the store every `log_every_steps` (the
operator and `kakugo status` can read a running Job's progress there), to the
termination log (so a preempted Pod still reports how far it got), and to a tqdm bar
when stderr is a terminal.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from typing import Any

from kakugo_stages.store import ArtifactStore, StoreError

from .config import PROGRESS_KEY

log = logging.getLogger("kakugo.training")


class Progress:
    """Running totals, independent of the Trainer (unit-testable)."""

    def __init__(self, total_steps: int, start_step: int = 0, start_tokens: int = 0):
        self.total_steps = total_steps
        self.start_step = start_step
        self.started = time.monotonic()
        # Tokens already trained before a resume: they do not count towards tokens/s.
        self.start_tokens = start_tokens
        self.step = start_step
        self.tokens = start_tokens
        self.loss: float | None = None
        self.learning_rate: float | None = None
        self.eval_loss: float | None = None

    def update(
        self, step: int, tokens: int, loss: float | None = None, learning_rate: float | None = None
    ) -> None:
        self.step, self.tokens = step, tokens
        if loss is not None and math.isfinite(loss):
            self.loss = loss
        if learning_rate is not None:
            self.learning_rate = learning_rate

    @property
    def seconds(self) -> float:
        return time.monotonic() - self.started

    @property
    def tokens_per_second(self) -> float:
        # Only what this process trained: a resumed run's earlier steps do not count.
        done = self.tokens - self.start_tokens
        return done / self.seconds if self.seconds > 0 else 0.0

    @property
    def eta_seconds(self) -> float | None:
        done = self.step - self.start_step
        if done <= 0:
            return None
        return (self.total_steps - self.step) * self.seconds / done

    def as_dict(self) -> dict[str, Any]:
        eta = self.eta_seconds
        return {
            "step": self.step,
            "total_steps": self.total_steps,
            "loss": None if self.loss is None else round(self.loss, 6),
            "eval_loss": None if self.eval_loss is None else round(self.eval_loss, 6),
            "learning_rate": self.learning_rate,
            "tokens": self.tokens,
            "tokens_per_s": round(self.tokens_per_second, 2),
            "eta_s": None if eta is None else round(eta, 1),
            "seconds": round(self.seconds, 3),
            "resumed_from_step": self.start_step,
        }


def progress_callback(store: ArtifactStore, show_bar: bool | None = None) -> Any:
    from transformers import TrainerCallback

    from kakugo_stages.stages.base import write_termination_message

    class ProgressCallback(TrainerCallback):
        def __init__(self) -> None:
            self.progress: Progress | None = None
            self.bar: Any = None

        def on_train_begin(self, args, state, control, **kwargs):
            # The Trainer has restored a resumed run's state by now.
            self.progress = Progress(
                state.max_steps, state.global_step, int(state.num_input_tokens_seen or 0)
            )
            bar = sys.stderr.isatty() if show_bar is None else show_bar
            if bar and state.is_world_process_zero:
                from tqdm.auto import tqdm

                self.bar = tqdm(
                    total=state.max_steps,
                    initial=state.global_step,
                    desc="train",
                    unit="step",
                    dynamic_ncols=True,
                )

        def on_step_end(self, args, state, control, **kwargs):
            assert self.progress is not None
            self.progress.update(state.global_step, int(state.num_input_tokens_seen or 0))
            if self.bar is not None:
                p = self.progress
                self.bar.update(state.global_step - self.bar.n)
                self.bar.set_postfix(
                    loss=p.loss, tok_s=f"{p.tokens_per_second:,.0f}", refresh=False
                )

        def on_log(self, args, state, control, logs=None, **kwargs):
            if self.progress is None or not logs:
                return
            if logs.get("eval_loss") is not None:
                self.progress.eval_loss = float(logs["eval_loss"])
            self.progress.update(
                state.global_step,
                int(state.num_input_tokens_seen or 0),
                logs.get("loss"),
                logs.get("learning_rate"),
            )
            if not state.is_world_process_zero or "loss" not in logs:
                return
            snapshot = self.progress.as_dict()
            log.info("train %s", snapshot)
            try:
                store.write_json(PROGRESS_KEY, snapshot)
            except StoreError as exc:  # progress is best effort; the checkpoint is not
                log.warning("cannot write progress: %s", exc)
            write_termination_message({"stage": "train", "state": "running", **snapshot})

        def on_train_end(self, args, state, control, **kwargs):
            if self.bar is not None:
                self.bar.close()

    return ProgressCallback()
