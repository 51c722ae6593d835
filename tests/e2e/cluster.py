"""A real Kubernetes control plane on loopback: etcd, kube-apiserver (RBAC on) and
kube-controller-manager (garbage collector, namespace, job and ClusterRole aggregation
controllers).

The binaries come from `scripts/build_kube.sh` (kube 1.20.2 built from Debian's source
package, cached in ${KAKUGO_CACHE:-~/.cache/kakugo}/kube-1.20.2/bin); kubectl and helm from
`scripts/install_test_tools.sh` (${KAKUGO_CACHE}/bin, else PATH).

Authentication: a static token file with one admin token (group `system:masters`); the
apiserver signs and checks ServiceAccount tokens with a key made here, so the TokenRequest
API gives real ServiceAccount tokens (the operator runs with one). There is no scheduler
and no kubelet: the tests' `FakeKubelet` (kubelet.py) runs Pods as local processes.
The `ServiceAccount` admission plugin is off, because without the serviceaccount and token
controllers no namespace has a `default` ServiceAccount with a token Secret.
`OwnerReferencesPermissionEnforcement` is on, as OpenShift has it: an owner reference with
blockOwnerDeletion needs `update` on the owner's finalizers (the chart's RBAC has it).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

KUBE_VERSION = "1.20.2"
CACHE = Path(os.environ.get("KAKUGO_CACHE") or Path.home() / ".cache" / "kakugo")
KUBE_BIN = CACHE / f"kube-{KUBE_VERSION}" / "bin"
TOOLS_BIN = CACHE / "bin"


@dataclass(frozen=True)
class Tools:
    etcd: Path
    apiserver: Path
    controller_manager: Path
    kubectl: Path
    helm: Path


def find_tools() -> tuple[Tools | None, list[str]]:
    """The binaries, or (None, what is missing and how to get it)."""
    found: dict[str, Path] = {}
    missing: list[str] = []
    for key, name, folder, how in (
        ("etcd", "etcd", KUBE_BIN, "scripts/build_kube.sh"),
        ("apiserver", "kube-apiserver", KUBE_BIN, "scripts/build_kube.sh"),
        ("controller_manager", "kube-controller-manager", KUBE_BIN, "scripts/build_kube.sh"),
        ("kubectl", "kubectl", TOOLS_BIN, "scripts/install_test_tools.sh"),
        ("helm", "helm", TOOLS_BIN, "scripts/install_test_tools.sh"),
    ):
        path = folder / name
        if not os.access(path, os.X_OK) and key in ("kubectl", "helm"):
            path = Path(shutil.which(name) or path)
        if os.access(path, os.X_OK):
            found[key] = path
        else:
            missing.append(f"{name} (not in {folder}; run {how})")
    return (Tools(**found) if not missing else None), missing


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(check: Any, timeout: float, what: str, interval: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except Exception as exc:  # not up yet
            last = exc
        if last and not isinstance(last, Exception):
            return last
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}; last: {last!r}")


class Cluster:
    """etcd + kube-apiserver + kube-controller-manager in a temporary folder."""

    def __init__(self, tools: Tools, workdir: Path | None = None) -> None:
        self.tools = tools
        self.dir = Path(workdir or tempfile.mkdtemp(prefix="kakugo-e2e-"))
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.admin_token = secrets.token_hex(16)
        self.port = free_port()
        self.server = f"https://127.0.0.1:{self.port}"
        self.admin_kubeconfig = self.dir / "admin.kubeconfig"

    # ------------------------------------------------------------ lifecycle

    def __enter__(self) -> Cluster:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _spawn(self, name: str, args: list[str]) -> None:
        log = (self.dir / f"{name}.log").open("wb")
        self.procs[name] = subprocess.Popen(
            args,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )

    def _alive(self, name: str) -> None:
        proc = self.procs[name]
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with {proc.returncode}:\n{self.log_tail(name)}")

    def log_tail(self, name: str, chars: int = 3000) -> str:
        path = self.dir / f"{name}.log"
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""

    def start(self) -> None:
        t0 = time.monotonic()
        keys = self.dir / "pki"
        keys.mkdir(parents=True, exist_ok=True)
        sa_key = keys / "sa.key"
        subprocess.run(
            ["openssl", "genrsa", "-out", str(sa_key), "2048"], check=True, capture_output=True
        )
        tokens = self.dir / "tokens.csv"
        tokens.write_text(
            f'{self.admin_token},kakugo-e2e-admin,kakugo-e2e-admin,"system:masters"\n'
        )
        tokens.chmod(0o600)

        etcd_port, peer_port = free_port(), free_port()
        etcd_url = f"http://127.0.0.1:{etcd_port}"
        self._spawn(
            "etcd",
            [
                str(self.tools.etcd),
                "--name",
                "e2e",
                "--data-dir",
                str(self.dir / "etcd"),
                "--listen-client-urls",
                etcd_url,
                "--advertise-client-urls",
                etcd_url,
                "--listen-peer-urls",
                f"http://127.0.0.1:{peer_port}",
                "--initial-advertise-peer-urls",
                f"http://127.0.0.1:{peer_port}",
                "--initial-cluster",
                f"e2e=http://127.0.0.1:{peer_port}",
                "--quota-backend-bytes",
                str(1 << 30),
                "--log-level",
                "warn",
            ],
        )

        def etcd_ok() -> bool:
            self._alive("etcd")
            with urllib.request.urlopen(f"{etcd_url}/health", timeout=2) as r:
                return b"true" in r.read()

        wait_until(etcd_ok, 30, "etcd")

        self._spawn(
            "kube-apiserver",
            [
                str(self.tools.apiserver),
                "--etcd-servers",
                etcd_url,
                "--bind-address",
                "127.0.0.1",
                "--advertise-address",
                "127.0.0.1",
                "--secure-port",
                str(self.port),
                "--insecure-port",
                "0",
                "--cert-dir",
                str(self.dir / "certs"),
                "--token-auth-file",
                str(tokens),
                "--authorization-mode",
                "RBAC",
                "--service-account-key-file",
                str(sa_key),
                "--service-account-signing-key-file",
                str(sa_key),
                "--service-account-issuer",
                "https://kubernetes.default.svc",
                "--api-audiences",
                "https://kubernetes.default.svc",
                "--service-cluster-ip-range",
                "10.96.0.0/24",
                "--disable-admission-plugins",
                "ServiceAccount",
                "--enable-admission-plugins",
                "OwnerReferencesPermissionEnforcement",
                "--allow-privileged=false",
                "--profiling=false",
                "--v",
                "1",
            ],
        )
        self.write_kubeconfig(self.admin_kubeconfig, self.admin_token, "admin")
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE

        def apiserver_ok() -> bool:
            self._alive("kube-apiserver")
            req = urllib.request.Request(
                f"{self.server}/readyz", headers={"Authorization": f"Bearer {self.admin_token}"}
            )
            with urllib.request.urlopen(req, timeout=2, context=ctx) as r:
                return r.status == 200

        wait_until(apiserver_ok, 60, "kube-apiserver /readyz")

        self._spawn(
            "kube-controller-manager",
            [
                str(self.tools.controller_manager),
                "--kubeconfig",
                str(self.admin_kubeconfig),
                "--controllers",
                # clusterrole-aggregation: the chart's aggregate-to-* ClusterRoles reach
                # Kubernetes' admin, edit and view roles.
                "garbagecollector,namespace,job,clusterrole-aggregation",
                "--leader-elect=false",
                "--port",
                "0",
                "--secure-port",
                "0",
                "--use-service-account-credentials=false",
                "--concurrent-gc-syncs",
                "5",
                "--v",
                "1",
            ],
        )
        time.sleep(0.5)
        self._alive("kube-controller-manager")
        self.startup_seconds = time.monotonic() - t0

    def stop(self) -> None:
        for name in reversed(list(self.procs)):
            proc = self.procs[name]
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)

    # ------------------------------------------------------------ clients

    def write_kubeconfig(
        self, path: Path, token: str, user: str, namespace: str | None = None
    ) -> Path:
        ctx: dict[str, Any] = {"cluster": "e2e", "user": user}
        if namespace:
            ctx["namespace"] = namespace
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "current-context": "e2e",
            "clusters": [
                {
                    "name": "e2e",
                    "cluster": {
                        # The apiserver's self-signed serving certificate (--cert-dir).
                        "server": self.server,
                        "insecure-skip-tls-verify": True,
                    },
                }
            ],
            "users": [{"name": user, "user": {"token": token}}],
            "contexts": [{"name": "e2e", "context": ctx}],
        }
        path.write_text(yaml.safe_dump(config))
        path.chmod(0o600)
        return path

    def api_client(self, token: str | None = None) -> Any:
        """A kubernetes.client.ApiClient of its own (never the global configuration)."""
        import kubernetes

        conf = kubernetes.client.Configuration()
        conf.host = self.server
        conf.verify_ssl = False
        conf.api_key = {"authorization": f"Bearer {token or self.admin_token}"}
        with contextlib.suppress(Exception):
            import urllib3

            urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)
        return kubernetes.client.ApiClient(conf)

    def kubectl(
        self,
        *args: str,
        kubeconfig: Path | None = None,
        check: bool = True,
        input: str | None = None,
        timeout: float = 120,
    ) -> subprocess.CompletedProcess[str]:
        cmd = [
            str(self.tools.kubectl),
            "--kubeconfig",
            str(kubeconfig or self.admin_kubeconfig),
            *args,
        ]
        done = subprocess.run(cmd, capture_output=True, text=True, input=input, timeout=timeout)
        if check and done.returncode != 0:
            raise AssertionError(
                f"{' '.join(args)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
            )
        return done
