#!/usr/bin/env bash
# The Debian packages the serving tests need: headless Chromium + ChromeDriver (the browser test) and
# PostgreSQL (the store test starts its own server). Idempotent and fast when they are there; as root it
# installs what is missing with apt (retrying while another apt holds the lock); otherwise it only says what
# is missing, and those tests skip with that reason.
set -euo pipefail
say() { echo "serve test deps: $*" >&2; }

missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v chromedriver >/dev/null 2>&1 || missing+=(chromium-driver)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing+=(postgresql)
if [ ${#missing[@]} -eq 0 ]; then
    exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    say "missing ${missing[*]} (install them with apt as root); the browser / PostgreSQL tests will skip"
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
for attempt in 1 2 3 4 5 6; do
    if apt-get update -qq && apt-get install -y -qq "${missing[@]}" >/dev/null; then
        say "installed ${missing[*]}"
        exit 0
    fi
    say "apt failed (attempt $attempt; another apt may hold the lock), retrying in 10 s"
    sleep 10
done
say "could not install ${missing[*]}; the browser / PostgreSQL tests will skip"
exit 0
