"""A test-side kubelet: runs the Pods of Jobs as local processes.

It watches Pods labelled `job-name` (the Job controller's label) and, for each new one:

1. binds it to the fake node (`pods/binding`, as a scheduler would);
2. prepares a folder per Pod: every configMap / secret / emptyDir volume becomes a
   directory of files, and the container's `terminationMessagePath` (default
   `/dev/termination-log`) an empty file;
3. runs the container's `command` + `args` as a local process with the Pod's environment
   (`value`, `valueFrom` secretKeyRef / configMapKeyRef / fieldRef, `envFrom`, `$(VAR)`
   expansion) on top of a small host environment (PATH with the project's virtualenv first,
   HOME, TMPDIR, the offline switches for Hugging Face, and `extra_env` from the test).
   **Path rewrite:** there is no mount namespace, so every mountPath and the termination
   message path are mapped to the Pod's folder: any argument, env value or workingDir equal
   to such a path or under it is rewritten (e.g. `--spec /etc/kakugo/spec.yaml` becomes
   `--spec <pod dir>/volumes/spec/spec.yaml`, `KAKUGO_TERMINATION_LOG=/dev/termination-log`
   becomes `<pod dir>/termination-log`). The `command[0]` is looked up on that PATH.
4. writes the Pod status through `pods/status`: Running with a running container state,
   then `Succeeded`/`Failed` from the exit code with `state.terminated` (exitCode, reason,
   message, startedAt, finishedAt). The message is the termination-message file (at most
   4096 bytes, as the kubelet does) or, with `FallbackToLogsOnError` and a failure, the
   last 80 lines (2048 bytes) of the output. The Job controller then completes the Job.

A Pod with a deletionTimestamp (graceful deletion: `kubectl delete pod`, the garbage
collector) gets its process group SIGTERMed, SIGKILLed after min(grace, 5 s), and is then
deleted with grace 0, as the kubelet confirms deletions. Like a vanished node, it writes no
final status for such a Pod. Pods that use a PVC or hostPath fail at once (not supported).
"""

from __future__ import annotations

import base64
import contextlib
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

log = logging.getLogger("e2e.kubelet")

#: This checkout (tests/e2e/kubelet.py is two levels down).
REPO = Path(__file__).resolve().parents[2]
NODE = "kakugo-e2e-node"
DEFAULT_TERMINATION_PATH = "/dev/termination-log"
MESSAGE_LIMIT = 4096
FALLBACK_LINES, FALLBACK_BYTES = 80, 2048


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class PodRun:
    """What the kubelet knows about one Pod it runs."""

    namespace: str
    name: str
    uid: str
    folder: Path
    proc: subprocess.Popen[bytes] | None = None
    started: str | None = None
    deleting: bool = False
    exit_code: int | None = None
    done: threading.Event = field(default_factory=threading.Event)


class FakeKubelet:
    """Run with `with FakeKubelet(api_client, folder) as kubelet: ...`."""

    def __init__(
        self,
        api_client: Any,
        folder: Path,
        *,
        extra_env: dict[str, str] | None = None,
        namespaces: tuple[str, ...] = (),
    ) -> None:
        import kubernetes

        self.core = kubernetes.client.CoreV1Api(api_client)
        self.folder = folder
        self.extra_env = dict(extra_env or {})
        self.namespaces = namespaces
        self.runs: dict[str, PodRun] = {}  # by Pod uid
        self.history: list[dict[str, Any]] = []  # every finished or killed run
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="fake-kubelet", daemon=True)
        self.errors: list[str] = []

    def __enter__(self) -> FakeKubelet:
        self.folder.mkdir(parents=True, exist_ok=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        with self._lock:
            runs = list(self.runs.values())
        for run in runs:
            self._kill(run, grace=2)
        self._thread.join(10)

    # ------------------------------------------------------------ host environment

    def host_env(self) -> dict[str, str]:
        venv_bin = str(Path(sys.executable).parent)
        env = {
            "PATH": f"{venv_bin}:/usr/local/bin:/usr/bin:/bin",
            "HOME": os.environ.get("HOME", "/root"),
            "LANG": "C.UTF-8",
            "PYTHONUNBUFFERED": "1",
            "HF_HUB_OFFLINE": "1",
            "HF_DATASETS_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false",
            # This checkout's code, as for the operator (e2e_support.OperatorProcess): in a
            # git worktree sharing another checkout's virtualenv, the `kakugo` script of the
            # stage Pods would otherwise run the other checkout's pipeline.
            "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "operator")]),
        }
        for key in ("TMPDIR", "KAKUGO_CACHE", "HF_HOME"):
            if key in os.environ:
                env[key] = os.environ[key]
        env.update(self.extra_env)
        return env

    # ------------------------------------------------------------ watch loop

    def _loop(self) -> None:
        import kubernetes

        rv: str | None = None
        while not self._stop.is_set():
            try:
                if rv is None:
                    pods = self.core.list_pod_for_all_namespaces(label_selector="job-name")
                    rv = pods.metadata.resource_version
                    for pod in pods.items:
                        self._handle(self.core.api_client.sanitize_for_serialization(pod))
                stream = kubernetes.watch.Watch().stream(
                    self.core.list_pod_for_all_namespaces,
                    label_selector="job-name",
                    resource_version=rv,
                    timeout_seconds=30,
                    _request_timeout=40,
                )
                for event in stream:
                    if self._stop.is_set():
                        return
                    obj = event["object"]
                    if event["type"] == "ERROR":
                        rv = None
                        break
                    pod = self.core.api_client.sanitize_for_serialization(obj)
                    rv = pod["metadata"].get("resourceVersion") or rv
                    if event["type"] != "DELETED":
                        self._handle(pod)
                    else:
                        self._forget(pod)
            except Exception as exc:  # a broken watch: list again
                if self._stop.is_set():
                    return
                if getattr(exc, "status", None) != 410:
                    log.warning("kubelet watch: %r", exc)
                rv = None
                time.sleep(0.5)

    def _handle(self, pod: dict[str, Any]) -> None:
        meta = pod["metadata"]
        if self.namespaces and meta["namespace"] not in self.namespaces:
            return
        uid = meta["uid"]
        with self._lock:
            run = self.runs.get(uid)
        if meta.get("deletionTimestamp"):
            if run is not None and not run.deleting:
                run.deleting = True
                grace = int(meta.get("deletionGracePeriodSeconds") or 0)
                threading.Thread(target=self._delete, args=(run, grace), daemon=True).start()
            elif run is None and (pod.get("spec") or {}).get("nodeName") == NODE:
                self._confirm_delete(meta["namespace"], meta["name"], uid)
            return
        if run is not None:
            return
        phase = (pod.get("status") or {}).get("phase")
        if phase in ("Succeeded", "Failed"):
            return
        folder = self.folder / f"{meta['namespace']}_{meta['name']}_{uid[:8]}"
        run = PodRun(meta["namespace"], meta["name"], uid, folder)
        with self._lock:
            self.runs[uid] = run
        threading.Thread(
            target=self._run, args=(pod, run), name=f"pod-{meta['name']}", daemon=True
        ).start()

    def _forget(self, pod: dict[str, Any]) -> None:
        with self._lock:
            run = self.runs.get(pod["metadata"]["uid"])
        if run is not None and run.proc is not None and run.proc.poll() is None:
            self._kill(run, grace=0)

    # ------------------------------------------------------------ one Pod

    def _run(self, pod: dict[str, Any], run: PodRun) -> None:
        try:
            self._run_pod(pod, run)
        except Exception as exc:
            self.errors.append(f"{run.namespace}/{run.name}: {exc!r}")
            log.exception("kubelet: pod %s/%s", run.namespace, run.name)
        finally:
            run.done.set()

    def _bind(self, run: PodRun) -> None:
        body = {
            "apiVersion": "v1",
            "kind": "Binding",
            "metadata": {"name": run.name, "namespace": run.namespace},
            "target": {"apiVersion": "v1", "kind": "Node", "name": NODE},
        }
        # Undecoded: the client cannot deserialize the Status that a binding returns.
        self.core.create_namespaced_binding(run.namespace, body, _preload_content=False)

    def _status(self, run: PodRun, status: dict[str, Any]) -> None:
        self.core.patch_namespaced_pod_status(run.name, run.namespace, {"status": status})

    def _run_pod(self, pod: dict[str, Any], run: PodRun) -> None:
        spec = pod["spec"]
        if not spec.get("nodeName"):
            self._bind(run)
        if run.deleting:
            return
        run.folder.mkdir(parents=True, exist_ok=True)
        (container,) = spec["containers"][:1]
        paths = self._volumes(pod, run)
        term_path = container.get("terminationMessagePath") or DEFAULT_TERMINATION_PATH
        term_file = run.folder / "termination-log"
        term_file.write_text("")
        paths[term_path] = str(term_file)
        env = self._env(pod, container)
        rewrite = _rewriter(paths)
        env = {k: rewrite(v) for k, v in env.items()}
        argv = [_expand(a, env) for a in (container.get("command") or [])]
        argv += [_expand(a, env) for a in (container.get("args") or [])]
        argv = [rewrite(a) for a in argv]
        full_env = {**self.host_env(), **env}
        if not argv:
            raise RuntimeError("a container without a command (there is no image entrypoint)")
        exe = shutil.which(argv[0], path=full_env["PATH"]) or argv[0]
        cwd = rewrite(container["workingDir"]) if container.get("workingDir") else run.folder
        output = (run.folder / "output.log").open("wb")
        run.started = now()
        container_id = f"fake://{run.uid}"
        run.proc = subprocess.Popen(
            [exe, *argv[1:]],
            env=full_env,
            cwd=cwd,
            stdout=output,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        ready = [
            {"type": t, "status": "True", "lastTransitionTime": run.started}
            for t in ("Initialized", "Ready", "ContainersReady", "PodScheduled")
        ]
        with contextlib.suppress(Exception):  # a Pod deleted at once is no failure
            self._status(
                run,
                {
                    "phase": "Running",
                    "startTime": run.started,
                    "hostIP": "127.0.0.1",
                    "podIP": "127.0.0.1",
                    "conditions": ready,
                    "containerStatuses": [
                        {
                            "name": container["name"],
                            "image": container.get("image", ""),
                            "imageID": "",
                            "containerID": container_id,
                            "ready": True,
                            "started": True,
                            "restartCount": 0,
                            "state": {"running": {"startedAt": run.started}},
                        }
                    ],
                },
            )
        code = run.proc.wait()
        output.close()
        run.exit_code = code
        finished = now()
        self.history.append(
            {
                "namespace": run.namespace,
                "pod": run.name,
                "uid": run.uid,
                "argv": argv,
                "exitCode": code,
                "deleted": run.deleting,
                "started": run.started,
                "finished": finished,
                "folder": str(run.folder),
            }
        )
        if run.deleting or self._stop.is_set():
            return
        message = term_file.read_bytes()[:MESSAGE_LIMIT].decode("utf-8", errors="replace")
        if (
            not message.strip()
            and code != 0
            and container.get("terminationMessagePolicy") == "FallbackToLogsOnError"
        ):
            lines = (run.folder / "output.log").read_bytes().splitlines()[-FALLBACK_LINES:]
            message = b"\n".join(lines)[-FALLBACK_BYTES:].decode("utf-8", errors="replace")
        reason = "Completed" if code == 0 else "Error"
        not_ready = [
            {
                "type": t,
                "status": "False" if t in ("Ready", "ContainersReady") else "True",
                "lastTransitionTime": finished,
            }
            for t in ("Initialized", "Ready", "ContainersReady", "PodScheduled")
        ]
        self._status(
            run,
            {
                "phase": "Succeeded" if code == 0 else "Failed",
                "conditions": not_ready,
                "containerStatuses": [
                    {
                        "name": container["name"],
                        "image": container.get("image", ""),
                        "imageID": "",
                        "containerID": container_id,
                        "ready": False,
                        "started": False,
                        "restartCount": 0,
                        "state": {
                            "terminated": {
                                "exitCode": code if code >= 0 else 128 - code,
                                "reason": reason,
                                "message": message,
                                "startedAt": run.started,
                                "finishedAt": finished,
                                "containerID": container_id,
                            }
                        },
                    }
                ],
            },
        )

    def _volumes(self, pod: dict[str, Any], run: PodRun) -> dict[str, str]:
        """Container path -> host path, for every mount of the first container."""
        ns = run.namespace
        host: dict[str, Path] = {}
        for vol in pod["spec"].get("volumes") or []:
            target = run.folder / "volumes" / vol["name"]
            target.mkdir(parents=True, exist_ok=True)
            if "configMap" in vol or "secret" in vol:
                if "configMap" in vol:
                    src = vol["configMap"]
                    cm = self.core.read_namespaced_config_map(src["name"], ns)
                    data = {k: v.encode() for k, v in (cm.data or {}).items()}
                else:
                    src = vol["secret"]
                    sec = self.core.read_namespaced_secret(src["secretName"], ns)
                    data = {k: base64.b64decode(v) for k, v in (sec.data or {}).items()}
                items = src.get("items") or [{"key": k, "path": k} for k in data]
                for item in items:
                    out = target / item["path"]
                    out.parent.mkdir(parents=True, exist_ok=True)
                    out.write_bytes(data[item["key"]])
            elif "emptyDir" in vol:
                pass
            else:
                raise RuntimeError(
                    f"volume {vol['name']}: only configMap, secret and emptyDir "
                    "volumes are supported by the fake kubelet"
                )
            host[vol["name"]] = target
        paths: dict[str, str] = {}
        for mount in pod["spec"]["containers"][0].get("volumeMounts") or []:
            base = host[mount["name"]]
            if mount.get("subPath"):
                base = base / mount["subPath"]
                base.mkdir(parents=True, exist_ok=True)  # as the kubelet makes it
            paths[mount["mountPath"].rstrip("/")] = str(base)
        return paths

    def _env(self, pod: dict[str, Any], container: dict[str, Any]) -> dict[str, str]:
        ns = pod["metadata"]["namespace"]
        env: dict[str, str] = {}
        for src in container.get("envFrom") or []:
            prefix = src.get("prefix", "")
            if "configMapRef" in src:
                ref = src["configMapRef"]
                try:
                    cm = self.core.read_namespaced_config_map(ref["name"], ns)
                except Exception:
                    if ref.get("optional"):
                        continue
                    raise
                env.update({prefix + k: v for k, v in (cm.data or {}).items()})
            if "secretRef" in src:
                ref = src["secretRef"]
                try:
                    sec = self.core.read_namespaced_secret(ref["name"], ns)
                except Exception:
                    if ref.get("optional"):
                        continue
                    raise
                env.update(
                    {prefix + k: base64.b64decode(v).decode() for k, v in (sec.data or {}).items()}
                )
        # Indexed Jobs (1.21+): the completion index, as the kubelet's downward API gives it.
        index = (pod["metadata"].get("annotations") or {}).get(
            "batch.kubernetes.io/job-completion-index"
        )
        if index is not None:
            env["JOB_COMPLETION_INDEX"] = index
        for var in container.get("env") or []:
            if "valueFrom" not in var:
                env[var["name"]] = _expand(var.get("value", ""), env)
                continue
            src = var["valueFrom"]
            if "secretKeyRef" in src:
                ref = src["secretKeyRef"]
                sec = self.core.read_namespaced_secret(ref["name"], ns)
                env[var["name"]] = base64.b64decode((sec.data or {})[ref["key"]]).decode()
            elif "configMapKeyRef" in src:
                ref = src["configMapKeyRef"]
                cm = self.core.read_namespaced_config_map(ref["name"], ns)
                env[var["name"]] = (cm.data or {})[ref["key"]]
            elif "fieldRef" in src:
                env[var["name"]] = _field(pod, src["fieldRef"]["fieldPath"])
            else:
                raise RuntimeError(f"env {var['name']}: unsupported valueFrom {src}")
        return env

    # ------------------------------------------------------------ deletion

    def _kill(self, run: PodRun, grace: float) -> None:
        proc = run.proc
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(max(grace, 0.1))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)

    def _delete(self, run: PodRun, grace: int) -> None:
        self._kill(run, grace=min(grace, 5))
        run.done.wait(10)
        self._confirm_delete(run.namespace, run.name, run.uid)

    def _confirm_delete(self, namespace: str, name: str, uid: str) -> None:
        import kubernetes

        body = kubernetes.client.V1DeleteOptions(
            grace_period_seconds=0, preconditions=kubernetes.client.V1Preconditions(uid=uid)
        )
        with contextlib.suppress(kubernetes.client.ApiException):
            self.core.delete_namespaced_pod(name, namespace, body=body)


def _rewriter(paths: dict[str, str]) -> Any:
    ordered = sorted(paths.items(), key=lambda kv: -len(kv[0]))

    def rewrite(value: str) -> str:
        for inside, outside in ordered:
            if value == inside or value.startswith(inside + "/"):
                return outside + value[len(inside) :]
        return value

    return rewrite


_VAR = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


def _expand(value: str, env: dict[str, str]) -> str:
    """The kubelet's $(VAR) expansion ($$ escapes; unknown references stay as they are)."""
    out = _VAR.sub(lambda m: env.get(m.group(1), m.group(0)), value.replace("$$", "\0"))
    return out.replace("\0", "$")


def _field(pod: dict[str, Any], path: str) -> str:
    meta = pod["metadata"]
    simple = {
        "metadata.name": meta["name"],
        "metadata.namespace": meta["namespace"],
        "metadata.uid": meta["uid"],
        "spec.nodeName": NODE,
        "spec.serviceAccountName": pod["spec"].get("serviceAccountName", ""),
        "status.hostIP": "127.0.0.1",
        "status.podIP": "127.0.0.1",
    }
    if path in simple:
        return simple[path]
    m = re.fullmatch(r"metadata\.(labels|annotations)\['(.+)'\]", path)
    if m:
        return (meta.get(m.group(1)) or {}).get(m.group(2), "")
    raise RuntimeError(f"unsupported fieldRef {path}")
