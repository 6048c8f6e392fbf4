#!/usr/bin/env bash
# get-redis.sh — make sure a real `redis-server` (and `redis-cli`, for the Cluster tests) is on PATH.
#
# The tests start their own redis-server processes (standalone, Sentinel and Cluster) on free loopback
# ports; they need the binaries, never a running service. On a machine without them this installs
# Debian's redis-server package (root, or sudo without a password), saying so on stderr.
# stdout: the path of redis-server. Exit 1 with an install hint when it cannot be had.
set -euo pipefail

log() { printf 'get-redis: %s\n' "$*" >&2; }

if command -v redis-server >/dev/null 2>&1 && command -v redis-cli >/dev/null 2>&1; then
    command -v redis-server
    exit 0
fi

SUDO=()
if [ "$(id -u)" != 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        SUDO=(sudo -n)
    else
        log "error: redis-server is not installed and this user cannot install packages."
        log "install it with: sudo apt-get install redis-server   (macOS: brew install redis)"
        exit 1
    fi
fi
if ! command -v apt-get >/dev/null 2>&1; then
    log "error: redis-server is not installed and there is no apt-get here; install Redis 7 and retry."
    exit 1
fi

log "redis-server is not installed: installing Debian's redis-server package (apt-get)..."
export DEBIAN_FRONTEND=noninteractive
APT_LOG=$(mktemp)
trap 'rm -f "$APT_LOG"' EXIT
"${SUDO[@]}" apt-get update -qq >"$APT_LOG" 2>&1 || log "warning: apt-get update failed; trying the cached package lists"
if ! "${SUDO[@]}" apt-get install -y -qq --no-install-recommends redis-server redis-tools >>"$APT_LOG" 2>&1; then
    tail -n 20 "$APT_LOG" >&2
    log "error: apt-get install redis-server failed"
    exit 1
fi
# The package starts a system service on port 6379; the tests do not use it, so stop it again.
if command -v service >/dev/null 2>&1; then
    "${SUDO[@]}" service redis-server stop >/dev/null 2>&1 || true
fi
command -v redis-server >/dev/null 2>&1 || { log "error: redis-server still not on PATH"; exit 1; }
log "installed $(redis-server --version | head -c 60)"
command -v redis-server
