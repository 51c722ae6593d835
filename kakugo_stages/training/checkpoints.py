"""Trainer checkpoints mirrored to the store, so a preempted Job resumes where it stopped.

Layout under the run::

    train/checkpoints/checkpoint-<step>/...   the Trainer's checkpoint folder (weights,
                                              ZeRO shards, optimizer, scheduler, RNG, state)
    train/checkpoints/_completed/<step>       marker, written after the last file

A checkpoint counts only once its marker exists: a Pod killed mid-upload leaves files
without a marker, which are never resumed from and are deleted by the next upload's
pruning. Works the same for file:// (a local copy) and s3:// stores.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

from kakugo_stages.store import ArtifactStore

from .config import CHECKPOINT_PREFIX

log = logging.getLogger("kakugo.training")


class StoreCheckpoints:
    def __init__(self, store: ArtifactStore, prefix: str = CHECKPOINT_PREFIX, keep: int = 2):
        self.store = store
        self.prefix = prefix.strip("/")
        self.keep = keep

    def folder_key(self, step: int) -> str:
        return f"{self.prefix}/checkpoint-{step}"

    def marker_key(self, step: int) -> str:
        return f"{self.prefix}/_completed/{step}"

    def completed(self) -> list[int]:
        """Steps of the fully uploaded checkpoints, ascending."""
        base = f"{self.prefix}/_completed/"
        return sorted(
            int(k[len(base) :]) for k in self.store.list(base) if k[len(base) :].isdigit()
        )

    def latest(self) -> int | None:
        steps = self.completed()
        return steps[-1] if steps else None

    def upload(self, local: Path, step: int) -> None:
        """Copy a checkpoint folder, then its marker, then prune old ones."""
        key = self.folder_key(step)
        # A half upload of the same step from an earlier attempt: start clean.
        self.store.delete(self.marker_key(step))
        self.store.delete_prefix(key + "/")
        n = self.store.upload_dir(local, key)
        self.store.write_bytes(self.marker_key(step), b"")
        log.info("checkpoint %d: %d files uploaded to %s", step, n, self.store.url(key))
        self.prune()

    def prune(self) -> None:
        """Keep the newest `keep` completed checkpoints; remove older ones and any folder
        without a marker that is older than the newest completed one."""
        steps = self.completed()
        keep = set(steps[-self.keep :])
        for step in steps:
            if step not in keep:
                self.store.delete(self.marker_key(step))  # marker first: never a dangling one
                self.store.delete_prefix(self.folder_key(step) + "/")
        newest = max(keep, default=None)
        base = f"{self.prefix}/checkpoint-"
        orphans = {k[len(base) :].split("/", 1)[0] for k in self.store.list(base)}
        for name in orphans:
            if name.isdigit() and int(name) not in keep and newest and int(name) < newest:
                self.store.delete_prefix(self.folder_key(int(name)) + "/")

    def download(self, step: int, dest_root: Path) -> Path:
        """The checkpoint as a local folder named checkpoint-<step> (what the Trainer's
        resume_from_checkpoint expects). A file:// store is copied too: the Trainer
        rotates checkpoints in its output_dir, which must not be the store."""
        dest = dest_root / f"checkpoint-{step}"
        if dest.exists():
            shutil.rmtree(dest)
        self.store.download_dir(self.folder_key(step), dest)
        return dest


def store_checkpoint_callback(checkpoints: StoreCheckpoints) -> Any:
    """A TrainerCallback that mirrors each saved checkpoint to the store (rank 0 only,
    after every rank has written its ZeRO shards)."""
    from transformers import TrainerCallback

    class StoreCheckpointCallback(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            import torch.distributed as dist

            if dist.is_available() and dist.is_initialized():
                dist.barrier()  # every rank's shards are on disk before the upload
            if state.is_world_process_zero:
                folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
                if folder.is_dir():
                    checkpoints.upload(folder, state.global_step)
                else:  # pragma: no cover - the Trainer always saves there
                    log.warning("no checkpoint folder at %s", folder)
            if dist.is_available() and dist.is_initialized():
                dist.barrier()  # no rank races ahead and gets killed before the marker
            return control

    return StoreCheckpointCallback()
