#!/usr/bin/env bash
# A real Kubernetes control plane for the end-to-end tests (tests/e2e): kube-apiserver and
# kube-controller-manager 1.20.2 built from Debian's `kubernetes` source package, plus etcd
# from Debian's `etcd-server`. Idempotent: when the binaries are cached it only says so.
#
#   ${KAKUGO_CACHE:-~/.cache/kakugo}/kube-1.20.2/bin/{kube-apiserver,kube-controller-manager,etcd}
#
# Steps (first run ~10 minutes on 2 cores, most of it `make`):
#   1. enable deb-src for bookworm when apt has none (a file in /etc/apt/sources.list.d)
#   2. apt-get install golang-1.19-go rsync etcd-server golang-github-modern-go-reflect2-dev
#      golang-github-json-iterator-go-dev
#   3. apt-get source kubernetes (1.20.2) into the cache
#   4. replace vendor/github.com/modern-go/reflect2 with Debian's reflect2 1.0.2 sources
#      (the vendored 1.0.1 crashes under Go >= 1.18 on the first custom-resource write), and
#      patch vendor/.../validate/type.go (go-openapi's and kube-openapi's fork): it takes any value equal to its
#      type's zero value for null by comparing reflect.Values with DeepEqual, which Go >= 1.19
#      makes true for "" (both point at the runtime's shared zero value), so every empty
#      string in a custom resource fails with `must be of type string: "null"`. The patch
#      keeps only `data == nil`, which is what the check did under the Go of 1.20; and
#      replace vendor/github.com/json-iterator/go (1.1.10) with Debian's 1.1.12, the release
#      made for reflect2 1.0.2 and Go >= 1.18.
#   5. GOPATH=<src>/.go with .go/src/k8s.io/kubernetes linked to the tree, then
#      make WHAT="cmd/kube-apiserver cmd/kube-controller-manager"
#   6. copy the two binaries and /usr/bin/etcd into the cache's bin; drop the source tree
#      and the Go build cache (KAKUGO_KEEP_KUBE_SRC=1 keeps them)
#
# Nothing is written into the repository. Needs root or sudo for apt (steps 1-2 only).
set -euo pipefail

VERSION=1.20.2
# Bumped whenever the recipe changes: a cache built by an older recipe is rebuilt.
RECIPE=5
CACHE="${KAKUGO_CACHE:-$HOME/.cache/kakugo}"
ROOT="$CACHE/kube-$VERSION"
BIN="$ROOT/bin"
SRC="$ROOT/src"
NICE="${KAKUGO_BUILD_NICE:-10}"

say() { echo "build_kube: $*"; }

cached() {
  [ -x "$BIN/kube-apiserver" ] && [ -x "$BIN/kube-controller-manager" ] && [ -x "$BIN/etcd" ] \
    && "$BIN/kube-apiserver" --version >/dev/null 2>&1 \
    && "$BIN/kube-controller-manager" --version >/dev/null 2>&1 \
    && [ "$(cat "$BIN/.recipe" 2>/dev/null)" = "$RECIPE" ]
}

if cached; then
  say "cached in $BIN ($("$BIN/kube-apiserver" --version), etcd $("$BIN/etcd" --version | awk 'NR == 1 {print $3}'))"
  exit 0
fi

SUDO=""
if [ "$(id -u)" != 0 ]; then
  command -v sudo >/dev/null || { say "need root or sudo for apt-get"; exit 1; }
  SUDO="sudo"
fi

# ---------------------------------------------------------------- 1. deb-src
have_deb_src() {
  grep -rqsE '^(deb-src|Types:.*deb-src)' /etc/apt/sources.list /etc/apt/sources.list.d/
}
if ! have_deb_src; then
  say "enabling deb-src for bookworm in /etc/apt/sources.list.d/kakugo-deb-src.sources"
  $SUDO tee /etc/apt/sources.list.d/kakugo-deb-src.sources >/dev/null <<'EOF'
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
fi

# ---------------------------------------------------------------- 2. build dependencies
PKGS="golang-1.19-go rsync etcd-server golang-github-modern-go-reflect2-dev
      golang-github-json-iterator-go-dev dpkg-dev make"
missing=""
for p in $PKGS; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ] || ! apt-cache showsrc kubernetes 2>/dev/null | grep -q '^Package: kubernetes'; then
  say "apt-get update"
  $SUDO apt-get update -qq
fi
if [ -n "$missing" ]; then
  say "apt-get install$missing"
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi
GOROOT_119=/usr/lib/go-1.19
REFLECT2=/usr/share/gocode/src/github.com/modern-go/reflect2
JSONITER=/usr/share/gocode/src/github.com/json-iterator/go
[ -x "$GOROOT_119/bin/go" ] || { say "missing $GOROOT_119/bin/go"; exit 1; }
[ -f "$REFLECT2/reflect2.go" ] || { say "missing Debian's reflect2 sources in $REFLECT2"; exit 1; }

# ---------------------------------------------------------------- 3. sources
mkdir -p "$SRC" "$BIN"
TREE="$(find "$SRC" -maxdepth 1 -type d -name 'kubernetes-*' | sed -n 1p)"
if [ -z "$TREE" ] || [ ! -f "$TREE/Makefile" ]; then
  say "apt-get source kubernetes into $SRC"
  (cd "$SRC" && apt-get source -qq kubernetes >/dev/null)
  TREE="$(find "$SRC" -maxdepth 1 -type d -name 'kubernetes-*' | sed -n 1p)"
fi
[ -n "$TREE" ] || { say "apt-get source kubernetes gave no tree"; exit 1; }
grep -q "gitVersion.*v$VERSION\|$VERSION" "$TREE/debian/changelog" 2>/dev/null \
  || say "warning: $TREE does not look like $VERSION: $(head -1 "$TREE/debian/changelog")"
say "source tree $TREE ($(head -1 "$TREE/debian/changelog" | sed 's/).*/)/'))"

# ---------------------------------------------------------------- 4. reflect2 1.0.2, go-openapi zero values
V="$TREE/vendor/github.com/modern-go/reflect2"
if ! cmp -s "$REFLECT2/reflect2.go" "$V/reflect2.go"; then
  say "replacing $V with Debian's reflect2 ($REFLECT2)"
  rsync -a --delete --exclude '*_test.go' "$REFLECT2/" "$V/"
fi
# go-openapi/validate and its fork in kube-openapi (the one the CRD validation uses).
ZERO_CHECK='if data == nil || reflect.DeepEqual(reflect.Zero(reflect.TypeOf(data)), reflect.ValueOf(data)) {'
for TYPE_GO in $(grep -rlF "$ZERO_CHECK" "$TREE/vendor" "$TREE/staging" || true); do
  say "patching $TYPE_GO: only nil is null (\"\" is not, under Go >= 1.19)"
  sed -i 's/if data == nil || reflect.DeepEqual(reflect.Zero(reflect.TypeOf(data)), reflect.ValueOf(data)) {/if data == nil {/' "$TYPE_GO"
done
if grep -rlF "$ZERO_CHECK" "$TREE/vendor" "$TREE/staging"; then say "patching failed"; exit 1; fi
V="$TREE/vendor/github.com/json-iterator/go"
if ! cmp -s "$JSONITER/reflect.go" "$V/reflect.go"; then
  say "replacing $V with Debian's json-iterator ($JSONITER)"
  rsync -a --delete --exclude '*_test.go' "$JSONITER/" "$V/"
fi

# ---------------------------------------------------------------- 5. make
GOPATH_DIR="$TREE/.go"
mkdir -p "$GOPATH_DIR/src/k8s.io"
ln -sfn "$TREE" "$GOPATH_DIR/src/k8s.io/kubernetes"
export GOPATH="$GOPATH_DIR"
export GOCACHE="$ROOT/go-build"
export GO111MODULE=on
export PATH="$GOROOT_119/bin:$PATH"
export KUBE_GIT_VERSION="v$VERSION" KUBE_GIT_TREE_STATE=clean
# Without git metadata the version scripts fall back to the values above.
say "make WHAT=\"cmd/kube-apiserver cmd/kube-controller-manager\" (go $(go version | awk '{print $3}'), nice $NICE; ~10 min on 2 cores)"
start=$(date +%s)
(cd "$GOPATH_DIR/src/k8s.io/kubernetes" && nice -n "$NICE" make WHAT="cmd/kube-apiserver cmd/kube-controller-manager")
say "make took $(( $(date +%s) - start )) s"

# ---------------------------------------------------------------- 6. install into the cache
OUTBIN="$TREE/_output/bin"
[ -x "$OUTBIN/kube-apiserver" ] || OUTBIN="$TREE/_output/local/bin/linux/amd64"
for b in kube-apiserver kube-controller-manager; do
  install -m 0755 "$OUTBIN/$b" "$BIN/$b.tmp" && mv "$BIN/$b.tmp" "$BIN/$b"
done
install -m 0755 /usr/bin/etcd "$BIN/etcd.tmp" && mv "$BIN/etcd.tmp" "$BIN/etcd"
echo "$RECIPE" > "$BIN/.recipe"
if [ -z "${KAKUGO_KEEP_KUBE_SRC:-}" ]; then
  say "removing the source tree and the Go build cache (KAKUGO_KEEP_KUBE_SRC=1 keeps them)"
  chmod -R u+w "$SRC" "$GOCACHE" 2>/dev/null || true
  rm -rf "$SRC" "$GOCACHE"
fi
cached || { say "the built binaries do not run"; exit 1; }
say "done: $("$BIN/kube-apiserver" --version) in $BIN"
