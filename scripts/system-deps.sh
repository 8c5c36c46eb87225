#!/usr/bin/env bash
# The machine-level prerequisites of `make test`, `make demo` and `make bench`, installed from
# Debian's packages when a command is missing. Run by `make deps` (and so by every target that
# needs it); as root it installs, otherwise it stops with the one command to run.
#
#   scripts/system-deps.sh [GROUP ...]   groups: run (default), test, bench
#
#   run    redis-server               the demo's and the tests' own Redis server
#          libgomp1                   OpenMP, which LightGBM's wheel links to (not bundled)
#   test   prometheus (promtool too)  the Prometheus config checks and the Prometheus e2e test
#          chromium                   the gateway's /docs page rendered in a headless browser
#          kubernetes-client          its kubectl renders deploy/k8s (kustomize); unpacked into
#                                     .tools/, not installed, so a kubectl the machine has stays
#   bench  wrk                        bench/serve.py's HTTP load
# A running PostgreSQL server (the SQL source tests) is started when it is installed but stopped.
set -euo pipefail

groups=("${@:-run}")
missing=()   # Debian packages to install, each once

need() {  # need COMMAND PACKAGE: the package, if the command is not on PATH
    command -v "$1" >/dev/null 2>&1 && return
    [[ " ${missing[*]} " == *" $2 "* ]] || missing+=("$2")
}

# Where shared libraries are looked for (SYSTEM_DEPS_LIBDIRS overrides, for the tests).
libdirs=(${SYSTEM_DEPS_LIBDIRS:-/lib /usr/lib /lib64 /usr/lib64})

need_lib() {  # need_lib LIBRARY PACKAGE: the package, if no library directory holds LIBRARY
    local dir
    for dir in "${libdirs[@]}"; do
        compgen -G "$dir/$1" >/dev/null && return
        compgen -G "$dir/*/$1" >/dev/null && return
    done
    [[ " ${missing[*]} " == *" $2 "* ]] || missing+=("$2")
}

for group in "${groups[@]}"; do
    case "$group" in
        run)
            need redis-server redis-server
            need_lib libgomp.so.1 libgomp1
            ;;
        test)
            need redis-server redis-server
            need_lib libgomp.so.1 libgomp1
            need promtool prometheus
            need prometheus prometheus
            need chromium chromium
            ;;
        bench) need wrk wrk ;;
        *) echo "system-deps.sh: unknown group $group (run, test, bench)" >&2; exit 2 ;;
    esac
done

if [ ${#missing[@]} -gt 0 ]; then
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "missing: ${missing[*]} (not a Debian system: install them with your package manager)" >&2
        exit 1
    fi
    if [ "$(id -u)" -ne 0 ]; then
        echo "missing: ${missing[*]}; run: sudo apt-get install -y --no-install-recommends ${missing[*]}" >&2
        exit 1
    fi
    echo "installing Debian packages: ${missing[*]}"
    apt-get update -qq
    # No recommends: prometheus would bring the node exporter, chromium a desktop's worth.
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" \
        >/dev/null
fi

# The SQL source tests and the MLflow-on-PostgreSQL test use the local server.
if [[ " ${groups[*]} " == *" test "* ]] && command -v pg_isready >/dev/null 2>&1 \
    && ! pg_isready -q -h 127.0.0.1; then
    if [ "$(id -u)" -eq 0 ] && command -v pg_ctlcluster >/dev/null 2>&1; then
        echo "PostgreSQL is not answering: starting it"
        for version in /etc/postgresql/*; do
            pg_ctlcluster --skip-systemctl-redirect "$(basename "$version")" main start || true
        done
    else
        echo "PostgreSQL is installed but not answering on 127.0.0.1:5432: start it (pg_ctlcluster VERSION main start)" >&2
    fi
fi

# deploy/k8s is rendered by `kubectl kustomize` in the tests. Debian's kubernetes-client, unpacked
# into .tools/ (no install: it would conflict with another kubectl package), pins the version
# every machine renders with. Its kustomize (2.0) is the oldest the manifests must work with.
# SYSTEM_DEPS_TOOLS overrides the directory, for the tests.
tools="${SYSTEM_DEPS_TOOLS:-${BASH_SOURCE[0]%/*}/../.tools}"
if [[ " ${groups[*]} " == *" test "* ]] && [ ! -x "$tools/kubectl" ]; then
    if ! command -v apt-get >/dev/null 2>&1 || ! command -v dpkg >/dev/null 2>&1; then
        echo "no $tools/kubectl: put a kubectl there (not a Debian system)" >&2
        exit 1
    fi
    echo "unpacking Debian's kubernetes-client into $tools"
    work="$(mktemp -d)"
    trap 'rm -rf "$work"' EXIT
    if ! (cd "$work" && apt-get download -qq kubernetes-client >/dev/null 2>&1); then
        [ "$(id -u)" -eq 0 ] && apt-get update -qq
        (cd "$work" && apt-get download -qq kubernetes-client >/dev/null 2>&1)
    fi
    dpkg -x "$work"/kubernetes-client_*.deb "$work/unpacked"
    mkdir -p "$tools"
    cp "$work/unpacked/usr/bin/kubectl" "$tools/kubectl"
fi
