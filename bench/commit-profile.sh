#!/usr/bin/env bash
# Profiling wrapper for bench/commit-small.sh (issue 16): use it as the
# benchmark's elton binary,
#
#   ELTON_BIN=bench/commit-profile.sh ELTON_REAL=target/release/elton \
#       PERF_OUT=/tmp/prof ROUNDS=3 bash bench/commit-small.sh
#
# `elton up` logs the slave's and the master's commit phases at debug level
# into $PERF_OUT/up.log; each `elton commit` runs under `perf record -g` of
# the benchmark's own elton processes ($PERF_OUT/commit.*.data; read with
# `perf report -i FILE --no-children --sort sym`) and copies the mount's
# log, with its commit phases, to $PERF_OUT/mount.log. The timings the
# benchmark prints in this mode include perf's start and stop: they are
# not figures.

set -uo pipefail
: "${ELTON_REAL:?the elton binary to run}" "${PERF_OUT:?a directory for the profiles}"
mkdir -p "$PERF_OUT"

case "${1:-}" in
up)
    export ELTON_LOG=warn,elton_slave=debug,elton_master=debug
    exec "$ELTON_REAL" "$@" 2>>"$PERF_OUT/up.log"
    ;;
mount)
    export ELTON_LOG=warn,eltonfs=debug
    exec "$ELTON_REAL" "$@"
    ;;
commit)
    pids=$(pgrep -d, -f "elton.*elton-bench-commit-small")
    perf record -F 1999 -g -o "$PERF_OUT/commit.$(date +%s%N).data" -p "$pids" >/dev/null 2>&1 &
    perf_pid=$!
    sleep 0.5 # perf attaches
    "$ELTON_REAL" "$@"
    rc=$?
    kill -INT "$perf_pid"
    wait "$perf_pid"
    cp "$(dirname "$2")/state-$(basename "$2")/mount.log" "$PERF_OUT/mount.log" 2>/dev/null
    exit "$rc"
    ;;
*)
    exec "$ELTON_REAL" "$@"
    ;;
esac
