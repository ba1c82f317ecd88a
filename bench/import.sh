#!/usr/bin/env bash
# Import benchmark: `elton import` of a 10,000-file tree vs `cp -r` of it.
#
#   bash bench/import.sh
#
# Builds the release `elton`, writes a tree of $DIRS directories x $FILES
# files of 1-8 KiB random content (seeded, ~45 MiB) to a temp dir, and times
# (wall clock; 1 uncounted warm-up run, then $RUNS counted runs; median,
# min and max printed):
#
#   cp -r          copy to a fresh directory on the same filesystem
#   cp -r + sync   the same followed by `sync` (elton fsyncs every object)
#   elton fresh    `elton import --create` into a just-started `elton up`
#                  with an empty data dir: every object is written and fsynced
#   elton again    `elton import` of the unchanged tree into the same volume
#                  of the same server: the client still hashes and uploads
#                  every file; the server hashes each upload, finds the
#                  object already stored and discards it, then a new
#                  version (same root) is committed
#
# Only the copy/import command is timed. Server start-up and a `sync` to
# flush earlier runs' dirty pages happen before each run, untimed. Every run
# writes to a new destination (copy-N, home-N); nothing is deleted until the
# end, because creating files on ext4 right after deleting thousands of
# others made `cp -r` erratic and several times slower here. No caches
# are dropped: the source tree stays in the page cache for every run. All
# traffic is to 127.0.0.1.
#
# Tunables (environment): DIRS (100), FILES (100), RUNS (3), ELTON_BIN (use
# this elton binary instead of building target/release/elton).

set -euo pipefail

DIRS=${DIRS:-100}
FILES=${FILES:-100}
RUNS=${RUNS:-3}
VOLUME=bench-import

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ELTON="${ELTON_BIN:-$ROOT/target/release/elton}"

unset http_proxy https_proxy HTTP_PROXY HTTPS_PROXY all_proxy ALL_PROXY
export no_proxy=127.0.0.1,localhost NO_PROXY=127.0.0.1,localhost

log() { printf '[import.sh] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

for t in curl python3 cmp cp sync; do
    command -v "$t" >/dev/null || die "$t is required"
done
[[ ${BASH_VERSINFO[0]} -ge 5 ]] || die "bash 5 is required (EPOCHREALTIME)"

if [[ -z "${ELTON_BIN:-}" ]]; then
    log "building release elton"
    (cd "$ROOT" && cargo build --release -q -p eltonfs) || die "cargo build failed"
fi
[[ -x "$ELTON" ]] || die "$ELTON is not an executable"
log "elton binary: $ELTON"

LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/elton-bench-import.XXXXXX")
ELTON_PID=""

stop_elton() {
    local i
    [[ -n "$ELTON_PID" ]] || return 0
    if kill -0 "$ELTON_PID" 2>/dev/null; then
        kill -TERM "$ELTON_PID" 2>/dev/null || true
        for ((i = 0; i < 50; i++)); do
            kill -0 "$ELTON_PID" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$ELTON_PID" 2>/dev/null; then
            log "elton ($ELTON_PID) did not stop; killing"
            kill -KILL "$ELTON_PID" 2>/dev/null || true
        fi
    fi
    wait "$ELTON_PID" 2>/dev/null || true
    ELTON_PID=""
}

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    stop_elton
    rm -rf "$WORK"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

UP_EXTRA=()
# Newer `elton up` also mounts a volume; the benchmark needs only the servers.
if "$ELTON" up --help 2>/dev/null | grep -q -- '--no-mount'; then UP_EXTRA=(--no-mount); fi

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

# Starts `elton up` with an empty data dir $WORK/home-$1 and exports the
# ELTON_* variables for the client.
start_elton() {
    local home="$WORK/home-$1" mport sport i
    stop_elton
    mport=$(free_port)
    sport=$(free_port)
    while [[ "$sport" == "$mport" ]]; do sport=$(free_port); done
    ELTON_LOG=warn "$ELTON" up "${UP_EXTRA[@]}" --data-dir "$home" --master-listen "127.0.0.1:$mport" \
        --slave-listen "127.0.0.1:$sport" >"$WORK/elton.out" 2>"$WORK/elton.err" &
    ELTON_PID=$!
    for ((i = 0; i < 200; i++)); do
        if ! kill -0 "$ELTON_PID" 2>/dev/null; then
            cat "$WORK/elton.out" "$WORK/elton.err" >&2 || true
            die "elton up exited early"
        fi
        curl -s -o /dev/null --max-time 1 "http://127.0.0.1:$sport/metrics" && break
        sleep 0.1
    done
    ((i < 200)) || die "elton up not answering after 20 s"
    export ELTON_HOME="$home"
    export ELTON_MASTER="http://127.0.0.1:$mport"
    export ELTON_SLAVE="http://127.0.0.1:$sport"
    ELTON_TOKEN=$(cat "$home/token")
    export ELTON_TOKEN
}

# --- the tree ---------------------------------------------------------------------
TREE="$WORK/tree"
log "writing $((DIRS * FILES)) files to $TREE"
python3 - "$TREE" "$DIRS" "$FILES" <<'EOF'
import os, random, sys
root, dirs, files = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rng = random.Random(42)
for d in range(dirs):
    path = os.path.join(root, f"d{d:03d}")
    os.makedirs(path)
    for f in range(files):
        size = rng.randint(1024, 8192)
        with open(os.path.join(path, f"f{f:03d}.bin"), "wb") as out:
            out.write(rng.randbytes(size))
EOF
TREE_FILES=$(find "$TREE" -type f | wc -l)
TREE_BYTES=$(find "$TREE" -type f -printf '%s\n' | awk '{s += $1} END {print s}')
log "tree: $TREE_FILES files, $TREE_BYTES bytes"

# --- timing helpers ----------------------------------------------------------------
elapsed_since() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN {printf "%.3f", b - a}'; }
stats() { # prints "median min max" of the arguments
    printf '%s\n' "$@" | sort -g | awk '{a[NR] = $1} END {
        m = (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2;
        printf "%.3f %.3f %.3f", m, a[1], a[NR] }'
}

declare -a T_CP=() T_CPSYNC=() T_FRESH=() T_AGAIN=()

# cp -r
for ((r = 0; r <= RUNS; r++)); do
    sync
    t0=$EPOCHREALTIME
    cp -r "$TREE" "$WORK/copy-$r"
    t=$(elapsed_since "$t0")
    ((r == 0)) && { log "cp -r warm-up: ${t}s"; continue; }
    log "cp -r run $r: ${t}s"
    T_CP+=("$t")
done

# cp -r + sync
for ((r = 0; r <= RUNS; r++)); do
    sync
    t0=$EPOCHREALTIME
    cp -r "$TREE" "$WORK/copy-sync-$r"
    sync
    t=$(elapsed_since "$t0")
    ((r == 0)) && { log "cp -r + sync warm-up: ${t}s"; continue; }
    log "cp -r + sync run $r: ${t}s"
    T_CPSYNC+=("$t")
done

# elton import into an empty store
for ((r = 0; r <= RUNS; r++)); do
    start_elton "fresh-$r"
    sync
    t0=$EPOCHREALTIME
    out=$("$ELTON" import --create "$TREE" "$VOLUME")
    t=$(elapsed_since "$t0")
    log "$out"
    ((r == 0)) && { log "elton fresh warm-up: ${t}s"; continue; }
    log "elton fresh run $r: ${t}s"
    T_FRESH+=("$t")
done

# sanity: the last import holds the tree's bytes
VERSION=$(sed -n "s/^$VOLUME@\([0-9][0-9]*\):.*/\1/p" <<<"$out")
[[ -n "$VERSION" ]] || die "could not read the version from: $out"
"$ELTON" cat "$VOLUME@$VERSION:d000/f000.bin" >"$WORK/check"
cmp -s "$WORK/check" "$TREE/d000/f000.bin" || die "elton cat returned other bytes"
grep -q "$TREE_FILES files" <<<"$out" || die "import did not report $TREE_FILES files: $out"

# elton import of the unchanged tree into the same volume (objects present)
for ((r = 1; r <= RUNS; r++)); do
    sync
    t0=$EPOCHREALTIME
    out=$("$ELTON" import "$TREE" "$VOLUME")
    t=$(elapsed_since "$t0")
    log "$out"
    log "elton again run $r: ${t}s"
    T_AGAIN+=("$t")
done
stop_elton

read -r cp_med cp_min cp_max <<<"$(stats "${T_CP[@]}")"
row() { # label times...
    local label=$1 med min max
    shift
    read -r med min max <<<"$(stats "$@")"
    printf '| %-34s | %8.3f | %8.3f | %8.3f | %9.1fx |\n' "$label" "$med" "$min" "$max" \
        "$(awk -v a="$med" -v b="$cp_med" 'BEGIN {print a / b}')"
}

echo
echo "Import benchmark ($(nproc) cores): $TREE_FILES files in $DIRS dirs, $TREE_BYTES bytes;"
echo "wall seconds over $RUNS runs after 1 warm-up; ratio = median / median of cp -r"
echo
printf '| %-34s | %8s | %8s | %8s | %10s |\n' "command" "median" "min" "max" "vs cp -r"
printf '|%s|%s|%s|%s|%s|\n' "------------------------------------" "----------" "----------" "----------" "------------"
row "cp -r" "${T_CP[@]}"
row "cp -r && sync" "${T_CPSYNC[@]}"
row "elton import (empty store)" "${T_FRESH[@]}"
row "elton import (again, same volume)" "${T_AGAIN[@]}"
echo
echo "load average (1/5/15 min) at start: $LOAD_START; at end: $(cut -d' ' -f1-3 /proc/loadavg)"
