#!/usr/bin/env bash
# Make a Docker engine answer on this machine, for the sandbox's Docker backend.
#
# Idempotent and fast when done: if `docker info` already answers, nothing else happens.
# Otherwise (as root, Debian/Ubuntu): install docker.io with apt when dockerd is missing, start dockerd
# in the background (log: $DOCKERD_LOG) and wait until the engine answers. Without root it can only
# report what is missing. Needs no image registry.
set -euo pipefail

DOCKERD_LOG="${DOCKERD_LOG:-/var/log/reasoner-dockerd.log}"
WAIT_S="${DOCKER_WAIT_S:-60}"

say() { echo "ensure-docker: $*" >&2; }

if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
    say "engine already answering"
    exit 0
fi

if [ "$(id -u)" != 0 ]; then
    say "no Docker engine answers and this is not root: start the engine (e.g. 'sudo systemctl start docker'),"
    say "or add yourself to the 'docker' group, or run this script as root."
    exit 1
fi

if ! command -v dockerd >/dev/null 2>&1 || ! command -v docker >/dev/null 2>&1; then
    if ! command -v apt-get >/dev/null 2>&1; then
        say "dockerd is missing and there is no apt-get here: install Docker Engine by hand (https://docs.docker.com/engine/install/)."
        exit 1
    fi
    say "installing docker.io with apt"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq docker.io >/dev/null
fi

# A service manager may own dockerd (systemd hosts): prefer it, fall back to starting dockerd ourselves.
if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
    systemctl start docker >/dev/null 2>&1 || true
fi

start_dockerd() {
    say "starting dockerd $* (log: $DOCKERD_LOG)"
    mkdir -p "$(dirname "$DOCKERD_LOG")"
    # setsid: the engine must outlive this script, and a Ctrl-C in the terminal that ran make.
    setsid dockerd "$@" >>"$DOCKERD_LOG" 2>&1 </dev/null &
    DOCKERD_PID=$!
}

wait_for_engine() {  # 0 once the engine answers; 1 if our dockerd died first or time ran out
    for _ in $(seq 1 "$((WAIT_S * 4))"); do
        if docker info >/dev/null 2>&1; then
            return 0
        fi
        if [ -n "${DOCKERD_PID:-}" ] && ! kill -0 "$DOCKERD_PID" 2>/dev/null; then
            return 1
        fi
        sleep 0.25
    done
    return 1
}

DOCKERD_PID=""
if ! docker info >/dev/null 2>&1; then
    if pgrep -x dockerd >/dev/null 2>&1; then
        say "a dockerd process exists but does not answer yet; waiting for it"
    else
        start_dockerd
    fi
fi

if ! wait_for_engine && [ -n "$DOCKERD_PID" ] && ! kill -0 "$DOCKERD_PID" 2>/dev/null; then
    # Kernels without the netfilter support dockerd wants: the sandbox needs no container networking.
    say "dockerd exited; retrying without iptables and bridge (sandbox containers use --network none)"
    start_dockerd --iptables=false --ip6tables=false --bridge=none
    wait_for_engine || true
fi

if docker info >/dev/null 2>&1; then
    say "engine answering ($(docker version --format '{{.Server.Version}}'))"
    exit 0
fi

say "dockerd did not answer within ${WAIT_S}s; last lines of $DOCKERD_LOG:"
tail -n 20 "$DOCKERD_LOG" >&2 || true
exit 1
