#!/usr/bin/env bash
# Build the sandbox image (default reasoner-sandbox:latest) from the top-level Dockerfile, offline.
#
# Idempotent and fast when done: the image carries a label with the hash of what it was built from
# (Dockerfile, sandbox/runner.py, base choice); when the label matches, nothing is rebuilt.
#
# Base image: $SANDBOX_BASE_IMAGE when set (e.g. python:3.11-slim where a registry is reachable; pulled if
# missing). Otherwise a Debian bookworm minbase + python3 root filesystem made with debootstrap from the
# mirror apt already uses, loaded with `docker import` as reasoner-sandbox-base:bookworm (once, ~1 min).
# Needs root for debootstrap (and apt-get, when debootstrap is missing) and a Docker engine that answers
# (run sandbox/scripts/ensure-docker.sh first).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
IMAGE="${SANDBOX_IMAGE:-reasoner-sandbox:latest}"
LOCAL_BASE="${SANDBOX_LOCAL_BASE:-reasoner-sandbox-base:bookworm}"  # the debootstrap-built base
BASE="${SANDBOX_BASE_IMAGE:-$LOCAL_BASE}"
LABEL="org.reasoner.sandbox.hash"

say() { echo "build-image: $*" >&2; }

if ! docker info >/dev/null 2>&1; then
    say "no Docker engine answers: run 'make docker' (bash sandbox/scripts/ensure-docker.sh) first."
    exit 1
fi

# One build at a time: a second `make` waits for the first (and then finds the image up to date) instead of
# racing it. flock is released by the kernel if the holder dies.
LOCK="${TMPDIR:-/tmp}/reasoner-sandbox-image.lock"
exec 9>>"$LOCK"
if ! flock -n 9; then
    say "waiting: another build of $IMAGE holds $LOCK"
    flock 9
fi

HASH="$( (cat "$ROOT/Dockerfile" "$ROOT/sandbox/runner.py"; echo "base=$BASE") | sha256sum | cut -c1-16)"
CURRENT="$(docker image inspect -f "{{ index .Config.Labels \"$LABEL\" }}" "$IMAGE" 2>/dev/null || true)"
if [ "$CURRENT" = "$HASH" ]; then
    say "$IMAGE is up to date ($LABEL=$HASH)"
    exit 0
fi

# The Debian mirror apt uses here (deb822 .sources first, then one-line sources.list), else deb.debian.org.
debian_mirror() {
    local uri=""
    for f in /etc/apt/sources.list.d/*.sources; do
        [ -f "$f" ] || continue
        uri="$(awk '
            /^[ \t]*$/ { if (u != "" && s ~ /bookworm/ && s !~ /security/) { print u; exit } u = ""; s = "" }
            /^URIs:/ { u = $2 } /^Suites:/ { s = $0 }
            END { if (u != "" && s ~ /bookworm/ && s !~ /security/) print u }' "$f" | head -n1)"
        [ -n "$uri" ] && break
    done
    if [ -z "$uri" ] && [ -f /etc/apt/sources.list ]; then
        uri="$(sed -nE 's/^deb[ \t]+(\[[^]]*\][ \t]+)?([^ \t]+)[ \t]+bookworm[ \t].*/\2/p' /etc/apt/sources.list | head -n1)"
    fi
    echo "${uri:-http://deb.debian.org/debian}"
}

build_local_base() {
    if [ "$(id -u)" != 0 ]; then
        say "building the base image needs root (debootstrap); run as root or set SANDBOX_BASE_IMAGE=python:3.11-slim."
        exit 1
    fi
    if ! command -v debootstrap >/dev/null 2>&1; then
        say "installing debootstrap with apt"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq debootstrap >/dev/null
    fi
    local mirror proxy rootfs
    mirror="$(debian_mirror)"
    # Reuse apt's HTTP proxy, if it has one: debootstrap downloads with wget, which reads http_proxy.
    proxy="$(apt-config dump 2>/dev/null | sed -nE 's/^Acquire::http::Proxy "([^"]+)";$/\1/p' | head -n1)"
    if [ -n "$proxy" ] && [ -z "${http_proxy:-}" ]; then export http_proxy="$proxy"; fi
    rootfs="$(mktemp -d /var/tmp/reasoner-sandbox-rootfs.XXXXXX)"
    trap 'rm -rf "$rootfs"' EXIT
    say "debootstrap bookworm (minbase + python3) from $mirror into $rootfs"
    debootstrap --variant=minbase --include=python3 bookworm "$rootfs" "$mirror" >"$rootfs.log" 2>&1 || {
        tail -n 30 "$rootfs.log" >&2
        say "debootstrap failed (full log: $rootfs.log)"
        exit 1
    }
    rm -f "$rootfs.log"
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* \
        "$rootfs"/usr/share/doc "$rootfs"/usr/share/man "$rootfs"/usr/share/info
    say "docker import -> $LOCAL_BASE"
    tar -C "$rootfs" --numeric-owner -c . | docker import \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'CMD ["/bin/bash"]' - "$LOCAL_BASE" >/dev/null
    rm -rf "$rootfs"
    trap - EXIT
}

if ! docker image inspect "$BASE" >/dev/null 2>&1; then
    if [ "$BASE" = "$LOCAL_BASE" ]; then
        build_local_base
    else
        say "pulling $BASE"
        docker pull "$BASE" >/dev/null
    fi
fi

# A build context with only what the Dockerfile copies, at the same relative paths as in the repository,
# so `docker build .` from the repository root builds the same image.
context="$(mktemp -d)"
trap 'rm -rf "$context"' EXIT
mkdir -p "$context/sandbox"
cp "$ROOT/Dockerfile" "$context/Dockerfile"
cp "$ROOT/sandbox/runner.py" "$context/sandbox/runner.py"
say "docker build $IMAGE (FROM $BASE)"
old_id="$(docker image inspect -f '{{.Id}}' "$IMAGE" 2>/dev/null || true)"
# The legacy builder needs no buildx plugin and works offline; its output only matters when it fails.
if ! DOCKER_BUILDKIT=0 docker build --build-arg "BASE=$BASE" --label "$LABEL=$HASH" -t "$IMAGE" "$context" \
    >"$context.log" 2>&1; then
    cat "$context.log" >&2
    rm -f "$context.log"
    say "docker build failed"
    exit 1
fi
rm -f "$context.log"
# The image this one replaces is now untagged: remove it unless something still uses it.
if [ -n "$old_id" ] && [ "$old_id" != "$(docker image inspect -f '{{.Id}}' "$IMAGE")" ]; then
    docker image rm "$old_id" >/dev/null 2>&1 || true
fi
say "built $IMAGE ($LABEL=$HASH)"
