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
#   cp -r + sync   the same followed by `sync` (elton's import is durable too)
#   git            `git add -A && git commit` of the tree into a fresh
#                  repository (git's own fsync defaults)
#   elton fresh    `elton import --create` into a just-started `elton up`
#                  with an empty data dir: every object is written, and
#                  flushed per batch (two syncfs per batch of <= 64 MiB)
#   elton again    `elton import` of the unchanged tree into the same volume
#                  of the same server: the client still hashes and uploads
#                  every file; the server hashes each object, finds it
#                  already stored and discards it, then a new version
#                  (same root) is committed
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

# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

require curl python3 cmp cp sync git
[[ ${BASH_VERSINFO[0]} -ge 5 ]] || die "bash 5 is required (EPOCHREALTIME)"
release_bins elton
bench_start import

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
elapsed_since() { awk -v a="$1" -v b="${EPOCHREALTIME/[!0-9]/.}" 'BEGIN {printf "%.3f", b - a}'; }
stats() { # prints "median min max" of the arguments (the median of an even count: the mean of the middle two)
    printf '%s\n' "$@" | sort -g | awk -v m="$(median -a "$@")" '{a[NR] = $1} END {
        printf "%.3f %.3f %.3f", m, a[1], a[NR] }'
}

settle_disk
declare -a T_CP=() T_CPSYNC=() T_GIT=() T_FRESH=() T_AGAIN=()

# cp -r
for ((r = 0; r <= RUNS; r++)); do
    sync
    t0=${EPOCHREALTIME/[!0-9]/.}
    cp -r "$TREE" "$WORK/copy-$r"
    t=$(elapsed_since "$t0")
    ((r == 0)) && { log "cp -r warm-up: ${t}s"; continue; }
    log "cp -r run $r: ${t}s"
    T_CP+=("$t")
done

# cp -r + sync
for ((r = 0; r <= RUNS; r++)); do
    sync
    t0=${EPOCHREALTIME/[!0-9]/.}
    cp -r "$TREE" "$WORK/copy-sync-$r"
    sync
    t=$(elapsed_since "$t0")
    ((r == 0)) && { log "cp -r + sync warm-up: ${t}s"; continue; }
    log "cp -r + sync run $r: ${t}s"
    T_CPSYNC+=("$t")
done

# git add -A && git commit into a fresh repository (the tree is the work tree)
for ((r = 0; r <= RUNS; r++)); do
    sync
    export GIT_DIR="$WORK/git-$r" GIT_WORK_TREE="$TREE"
    git init -q
    t0=${EPOCHREALTIME/[!0-9]/.}
    git add -A && git -c user.name=bench -c user.email=bench@localhost commit -qm import
    t=$(elapsed_since "$t0")
    unset GIT_DIR GIT_WORK_TREE
    ((r == 0)) && { log "git warm-up: ${t}s"; continue; }
    log "git run $r: ${t}s"
    T_GIT+=("$t")
done

# elton import into an empty store
for ((r = 0; r <= RUNS; r++)); do
    stop_pid "$ELTON_PID"
    elton_up "$WORK/home-fresh-$r"
    sync
    t0=${EPOCHREALTIME/[!0-9]/.}
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
    t0=${EPOCHREALTIME/[!0-9]/.}
    out=$("$ELTON" import "$TREE" "$VOLUME")
    t=$(elapsed_since "$t0")
    log "$out"
    log "elton again run $r: ${t}s"
    T_AGAIN+=("$t")
done
stop_pid "$ELTON_PID"

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
row "git add -A && git commit" "${T_GIT[@]}"
row "elton import (empty store)" "${T_FRESH[@]}"
row "elton import (again, same volume)" "${T_AGAIN[@]}"
echo
read -r sync_med _ _ <<<"$(stats "${T_CPSYNC[@]}")"
read -r git_med _ _ <<<"$(stats "${T_GIT[@]}")"
read -r fresh_med _ _ <<<"$(stats "${T_FRESH[@]}")"
echo "elton import (empty store) / cp -r && sync: $(ratio "$fresh_med" "$sync_med")x (target <= 3x);" \
    "/ git add && commit: $(ratio "$fresh_med" "$git_med")x (target < 1x)"
load_line
