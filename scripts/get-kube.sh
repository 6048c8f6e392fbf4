#!/usr/bin/env bash
# get-kube.sh — print the paths of a working `kube-apiserver` (Kubernetes
# v1.20.2) and `etcd` (3.4) binary, for the end-to-end webhook test.
#
# stdout: exactly two lines, shell-assignable:
#     KUBE_APISERVER_BIN=/abs/path/kube-apiserver
#     ETCD_BIN=/abs/path/etcd
# Everything else goes to stderr. `eval "$(bash scripts/get-kube.sh)"` sets both.
#
# Lookup order, for each binary on its own:
#   1. $KUBE_APISERVER_BIN / $ETCD_BIN, if set and executable;
#   2. `kube-apiserver` / `etcd` on PATH, if `--version` works;
#   3. the cached copy in ${SIDECAR_CACHE_DIR:-$HOME/.cache/sidecar}/bin/;
#   4. otherwise (unless --cached-only) get it offline from Debian bookworm and
#      cache it, with a private apt configuration (own sources, lists, cache and
#      an empty dpkg status; nothing is installed on the machine), on the same
#      mirror as the machine's own apt sources:
#      - etcd: unpack /usr/bin/etcd from the `etcd-server` deb (seconds);
#      - kube-apiserver: build it from the `kubernetes` source package
#        (`apt-get source --download-only`; it ships vendor/) with Go 1.19 from
#        the golang-1.19-go/-src debs (unpacked, not installed), after replacing
#        vendor/github.com/modern-go/reflect2 (1.0.1 crashes on Go >= 1.18) with
#        Debian's 1.0.2, by `make WHAT=cmd/kube-apiserver` (plain `go build`
#        fails: only `make` generates the OpenAPI code). About 7 CPU-minutes:
#        5.3 min on an idle 2-core machine, 9.7 min with the CPUs shared.
#
# Options: --cached-only   never download or build; exit 1 if a binary is missing.
#
# Knobs (all optional): KUBE_APISERVER_BIN, ETCD_BIN, SIDECAR_CACHE_DIR,
# KUBE_DEBIAN_MIRROR (override the mirror read from /etc/apt), TMPDIR (where the
# ~2 GB build tree goes; default /dev/shm if it has 4 GiB free, else /tmp).
set -euo pipefail

KUBE_UPSTREAM_VERSION=1.20.2
SUITE=bookworm
GO_PKG=golang-1.19-go
GO_SRC_PKG=golang-1.19-src
GO_DIR=usr/lib/go-1.19
REFLECT2_PKG=golang-github-modern-go-reflect2-dev
ETCD_PKG=etcd-server
KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg

CACHED_ONLY=0
for arg in "$@"; do
    case $arg in
        --cached-only) CACHED_ONLY=1 ;;
        -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 0 ;;
        *) printf 'get-kube: unknown argument %s (try --help)\n' "$arg" >&2; exit 2 ;;
    esac
done

CACHE=${SIDECAR_CACHE_DIR:-${HOME:?HOME is not set; set SIDECAR_CACHE_DIR}/.cache/sidecar}
APISERVER_DEST=$CACHE/bin/kube-apiserver
ETCD_DEST=$CACHE/bin/etcd

log() { printf 'get-kube [%3ds]: %s\n' "$SECONDS" "$*" >&2; }
die() { log "error: $*"; exit 1; }

abspath() {
    case $1 in
        /*) printf '%s\n' "$1" ;;
        *) printf '%s/%s\n' "$PWD" "$1" ;;
    esac
}

# `kube-apiserver --version` prints "Kubernetes v1.20.2"; `etcd --version` "etcd Version: 3.4.23".
# The output is captured before matching: `cmd | grep -q` under pipefail fails when grep exits first (SIGPIPE).
version_of() { [ -f "$1" ] && [ -x "$1" ] && "$1" --version 2>/dev/null; }
apiserver_works() { local out; out=$(version_of "$1") && [[ $out == Kubernetes\ v* ]]; }
etcd_works() { local out; out=$(version_of "$1") && [[ $out == "etcd Version:"* ]]; }

# find_bin VAR NAME CHECK CACHED → prints the path, or returns 1.
find_bin() {
    local var=$1 name=$2 check=$3 cached=$4 value p
    value=${!var:-}
    if [ -n "$value" ]; then
        if [ -f "$value" ] && [ -x "$value" ]; then
            abspath "$value"
            return 0
        fi
        log "$var=$value is not an executable file; ignoring it"
    fi
    if p=$(command -v "$name" 2>/dev/null) && "$check" "$p"; then
        abspath "$p"
        return 0
    fi
    if "$check" "$cached"; then
        printf '%s\n' "$cached"
        return 0
    fi
    return 1
}

resolve() {
    APISERVER=$(find_bin KUBE_APISERVER_BIN kube-apiserver apiserver_works "$APISERVER_DEST") || APISERVER=
    ETCD=$(find_bin ETCD_BIN etcd etcd_works "$ETCD_DEST") || ETCD=
}

report() { printf 'KUBE_APISERVER_BIN=%s\nETCD_BIN=%s\n' "$APISERVER" "$ETCD"; }

resolve
if [ -n "$APISERVER" ] && [ -n "$ETCD" ]; then
    report
    exit 0
fi
if [ "$CACHED_ONLY" = 1 ]; then
    [ -n "$APISERVER" ] || log "no kube-apiserver: not in \$KUBE_APISERVER_BIN, on PATH, or at $APISERVER_DEST"
    [ -n "$ETCD" ] || log "no etcd: not in \$ETCD_BIN, on PATH, or at $ETCD_DEST"
    log "run \`bash scripts/get-kube.sh\` (or \`make test-kube\`) to build them offline and cache them"
    exit 1
fi

# --- get what is missing -------------------------------------------------------
mkdir -p "$CACHE/bin"
CACHE=$(cd "$CACHE" && pwd -P)
APISERVER_DEST=$CACHE/bin/kube-apiserver
ETCD_DEST=$CACHE/bin/etcd

# Serialise concurrent runs when flock(1) is there; without it, concurrent
# runs each build into their own temp paths and the last `mv` wins (harmless).
if command -v flock >/dev/null 2>&1; then
    exec 9>"$CACHE/.get-kube.lock"
    if ! flock -n 9; then
        log "another get-kube.sh is running; waiting for it"
        flock 9
    fi
    resolve
    if [ -n "$APISERVER" ] && [ -n "$ETCD" ]; then
        report
        exit 0
    fi
fi

for tool in apt-get apt-cache dpkg-deb; do
    command -v "$tool" >/dev/null 2>&1 || die "'$tool' is needed but was not found"
done
if [ -z "$APISERVER" ]; then
    for tool in dpkg-source make; do
        command -v "$tool" >/dev/null 2>&1 ||
            die "'$tool' is needed to build kube-apiserver but was not found (apt-get install dpkg-dev make)"
    done
fi
[ -r "$KEYRING" ] || die "$KEYRING is missing (package debian-archive-keyring)"

# The source, the generated code and the Go build cache take ~2 GB: on tmpfs when
# there is room. Use $TMPDIR if set, else /dev/shm when it has 4 GiB free, else /tmp.
pick_tmp() {
    local free_kb
    if [ -n "${TMPDIR:-}" ]; then printf '%s\n' "$TMPDIR"; return; fi
    if [ -d /dev/shm ] && [ -w /dev/shm ]; then
        free_kb=$(df -Pk /dev/shm 2>/dev/null | awk 'NR == 2 {print $4}')
        if [ "${free_kb:-0}" -ge $((4 * 1024 * 1024)) ]; then printf '/dev/shm\n'; return; fi
    fi
    printf '/tmp\n'
}
WORK=$(mktemp -d "$(pick_tmp)/get-kube.XXXXXX")
TMP_APISERVER=$CACHE/bin/.kube-apiserver.tmp.$$
TMP_ETCD=$CACHE/bin/.etcd.tmp.$$
cleanup() {
    local rc=$?
    rm -rf "$WORK" "$TMP_APISERVER" "$TMP_ETCD"
    if [ "$rc" -eq 0 ]; then log "done; temp files removed"; else log "failed (exit $rc); temp files removed"; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# shellcheck source=scripts/debian-mirror.sh
. "$(dirname "${BASH_SOURCE[0]}")/debian-mirror.sh"

MIRROR=$(find_debian_mirror "${KUBE_DEBIAN_MIRROR:-}") ||
    die "no Debian archive URI (…/debian) found in /etc/apt/sources.list*; set KUBE_DEBIAN_MIRROR"
log "Debian mirror (from the machine's apt sources): $MIRROR"

A=$WORK/apt
log "reading the $SUITE suite index"
make_apt_root "$A" "$SUITE" src
APT=(apt-get -c "$A/apt.conf" -qq)

# download PKG... into $WORK/debs and unpack them into $WORK/root.
fetch_debs() {
    mkdir -p "$WORK/debs" "$WORK/root"
    (cd "$WORK/debs" && "${APT[@]}" download "$@" >&2) || die "could not download $* from $SUITE"
    local d
    for d in "$WORK"/debs/*.deb; do dpkg-deb -x "$d" "$WORK/root" || die "dpkg-deb -x $d failed"; done
    rm -f "$WORK"/debs/*.deb
}

# --- etcd ----------------------------------------------------------------------
if [ -z "$ETCD" ]; then
    log "fetching etcd from $SUITE's $ETCD_PKG"
    fetch_debs "$ETCD_PKG"
    cp "$WORK/root/usr/bin/etcd" "$TMP_ETCD" || die "$ETCD_PKG has no /usr/bin/etcd"
    chmod 0755 "$TMP_ETCD"
    etcd_works "$TMP_ETCD" || die "the etcd from $ETCD_PKG does not run"
    mv -f "$TMP_ETCD" "$ETCD_DEST"
    ETCD=$ETCD_DEST
    log "installed $ETCD_DEST ($("$ETCD" --version | head -n1))"
fi

# --- kube-apiserver ------------------------------------------------------------
if [ -z "$APISERVER" ]; then
    log "no usable kube-apiserver found; building it offline from $SUITE's kubernetes source (several minutes)"
    log "work tree: $WORK"
    mkdir -p "$WORK/src"
    (cd "$WORK/src" && "${APT[@]}" source --download-only kubernetes >&2) ||
        die "apt-get source --download-only kubernetes failed"
    DSC=$(ls "$WORK"/src/kubernetes_*.dsc)
    log "unpacking $(basename "$DSC")"
    dpkg-source --no-check -x "$DSC" "$WORK/kubernetes" >/dev/null 2>&1 ||
        die "dpkg-source -x $DSC failed"
    rm -rf "$WORK/src"
    K=$WORK/kubernetes

    log "fetching Go 1.19 ($GO_PKG, $GO_SRC_PKG) and $REFLECT2_PKG"
    fetch_debs "$GO_PKG" "$GO_SRC_PKG" "$REFLECT2_PKG"
    GOROOT=$WORK/root/$GO_DIR
    [ -x "$GOROOT/bin/go" ] || die "$GO_PKG did not provide $GO_DIR/bin/go"
    log "$(env GOROOT="$GOROOT" "$GOROOT/bin/go" version)"

    # reflect2 1.0.1 (vendored) reads runtime internals that changed in Go 1.18.
    R2=$WORK/root/usr/share/gocode/src/github.com/modern-go/reflect2
    [ -f "$R2/reflect2.go" ] || die "$REFLECT2_PKG did not provide $R2"
    rm -rf "$K/vendor/github.com/modern-go/reflect2"
    cp -a "$R2" "$K/vendor/github.com/modern-go/reflect2"

    # hack/lib/golang.sh places the binary with `rsync -pc FILE DIR`; without
    # rsync on the machine a `cp -p` stand-in does the same for that one call.
    TOOLS=$WORK/tools
    mkdir -p "$TOOLS"
    if ! command -v rsync >/dev/null 2>&1; then
        cat >"$TOOLS/rsync" <<'EOF'
#!/bin/sh
# get-kube.sh's stand-in for the single `rsync -pc FILE... DIR` in hack/lib/golang.sh.
[ "$1" = "-pc" ] || { echo "rsync stand-in: unsupported arguments: $*" >&2; exit 1; }
shift
exec cp -p "$@"
EOF
        chmod 0755 "$TOOLS/rsync"
    fi

    log "make WHAT=cmd/kube-apiserver (GOPATH mode, vendor/, CGO off, GOPROXY=off)"
    # A clean environment for go, so that a developer's GOFLAGS, GOPATH, GOOS etc. do not leak in.
    (cd "$K" && env -u GOFLAGS -u GOOS -u GOARCH -u GOBIN -u GOPATH -u GOEXPERIMENT -u GOTOOLCHAIN \
        GOROOT="$GOROOT" PATH="$GOROOT/bin:$TOOLS:$PATH" HOME="$WORK/home" \
        GOCACHE="$WORK/gocache" GOENV=off GOPROXY=off CGO_ENABLED=0 \
        make WHAT=cmd/kube-apiserver >&2) || die "make WHAT=cmd/kube-apiserver failed"

    BUILT=$K/_output/local/go/bin/kube-apiserver
    [ -x "$BUILT" ] || BUILT=$K/_output/bin/kube-apiserver
    [ -x "$BUILT" ] || die "the build left no kube-apiserver under $K/_output"
    cp "$BUILT" "$TMP_APISERVER"
    chmod 0755 "$TMP_APISERVER"
    VERSION_OUT=$("$TMP_APISERVER" --version) || die "the built kube-apiserver does not run"
    log "built: $VERSION_OUT"
    [ "$VERSION_OUT" = "Kubernetes v$KUBE_UPSTREAM_VERSION" ] ||
        log "WARNING: built kube-apiserver is not v$KUBE_UPSTREAM_VERSION"
    mv -f "$TMP_APISERVER" "$APISERVER_DEST"
    APISERVER=$APISERVER_DEST
    log "installed $APISERVER_DEST ($(du -h "$APISERVER_DEST" | cut -f1))"
fi

exec 9>&- # let a waiting run use the binaries while the temp tree is being removed
report
