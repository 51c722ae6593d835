"""The training worker: `python -m kakugo_stages.training.worker CONFIG.json RESULT.json`.

Started by the train stage, under torchrun when it uses several GPUs; never started by
hand. Rank 0 writes the result JSON; a failing rank writes `error-<rank>.txt` beside it
so the stage can report the cause instead of an exit code.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import traceback
import warnings
from pathlib import Path

from .config import TrainConfig


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print(
            "usage: python -m kakugo_stages.training.worker CONFIG.json RESULT.json",
            file=sys.stderr,
        )
        return 2
    config_path, result_path = Path(args[0]), Path(args[1])
    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(
        level=logging.INFO if rank == 0 else logging.WARNING,
        format=f"%(asctime)s rank{rank} %(name)s %(levelname)s %(message)s",
    )
    # torch.distributed's deprecation notices, repeated by DeepSpeed on every collective.
    warnings.filterwarnings("ignore", category=FutureWarning, message=r".*torch\.distributed")
    try:
        from .trainer import train

        result = train(TrainConfig.from_json(config_path.read_text(encoding="utf-8")))
    except BaseException as exc:
        if isinstance(exc, KeyboardInterrupt):
            raise
        error = result_path.parent / f"error-{rank}.txt"
        error.write_text(
            f"{type(exc).__name__}: {exc}\n\n{traceback.format_exc()}", encoding="utf-8"
        )
        traceback.print_exc()
        return 1
    if rank == 0:
        tmp = result_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(result, ensure_ascii=False, indent=2), encoding="utf-8")
        tmp.replace(result_path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
