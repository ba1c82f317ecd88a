#!/usr/bin/env bash
# Commit benchmark (issue 16): a mount's commit of many new files, and the
# cost of a one-file commit as the volume grows.
#
#   bash bench/commit.sh
#
# Builds the release `elton`, starts `elton up`, and measures (wall clock;
# 1 uncounted warm-up, then $ROUNDS counted runs; medians):
#
#   new files   `elton commit` of $NEW_FILES new files (12 KiB each, random,
#               ~60 MiB) written into a fresh mount of an empty volume, vs
#               `cp -r && sync` of the same tree to a fresh directory on the
#               same filesystem (the commit is durable too). Each round
#               writes the files, runs `sync` (untimed), then times the
#               commit alone.
#   one change  `elton commit` of one changed file in a volume of $SMALL_VOL
#               files and in one of $BIG_VOL files (100-byte files, 1,000 a
#               directory): a commit should cost O(changes), so the ratio
#               big / small should be near 1.
#
# Tunables (environment): ROUNDS (3), NEW_FILES (5000), SMALL_VOL (1000),
# BIG_VOL (100000), ELTON_BIN (skip the release build). Loopback only.

set -euo pipefail

ROUNDS=${ROUNDS:-3}
NEW_FILES=${NEW_FILES:-5000}
SMALL_VOL=${SMALL_VOL:-1000}
BIG_VOL=${BIG_VOL:-100000}

# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

require_fuse
require python3 curl cp sync
[[ ${BASH_VERSINFO[0]} -ge 5 ]] || die "bash 5 is required (EPOCHREALTIME)"
release_bins elton
bench_start commit
elton_up "$WORK/home"

elapsed_since() { awk -v a="$1" -v b="${EPOCHREALTIME/[!0-9]/.}" 'BEGIN {printf "%.3f", b - a}'; }
tree() { # root n size: n files of `size` random bytes, 1,000 per directory
    python3 - "$1" "$2" "$3" <<'PY'
import os, sys
root, n, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
for i in range(n):
    d = os.path.join(root, f"d{i // 1000:03}")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, f"f{i:06}"), "wb") as f:
        f.write(os.urandom(size))
PY
}

# --- 1. commit of many new files vs cp -r && sync ------------------------------
log "writing $NEW_FILES files of 12 KiB"
tree "$WORK/src-new" "$NEW_FILES" 12288
settle_disk
declare -a T_CP=() T_NEW=()
for ((r = 0; r <= ROUNDS; r++)); do
    sync
    t0=${EPOCHREALTIME/[!0-9]/.}
    cp -r "$WORK/src-new" "$WORK/copy-$r"
    sync
    t=$(elapsed_since "$t0")
    ((r == 0)) && continue
    log "cp -r && sync run $r: ${t}s"
    T_CP+=("$t")
done
for ((r = 0; r <= ROUNDS; r++)); do
    "$ELTON" import --create "$(mktemp -d "$WORK/empty.XXXX")" "new$r" >/dev/null
    mount_volume "new$r" "$WORK/mnt-new$r"
    cp -r "$WORK/src-new" "$WORK/mnt-new$r/tree"
    sync
    t0=${EPOCHREALTIME/[!0-9]/.}
    "$ELTON" commit -q -m "new files" "$WORK/mnt-new$r" >/dev/null
    t=$(elapsed_since "$t0")
    fusermount3 -u "$WORK/mnt-new$r"
    ((r == 0)) && continue
    log "elton commit of $NEW_FILES new files run $r: ${t}s"
    T_NEW+=("$t")
done

# --- 2. one changed file in a small and a big volume ---------------------------
one_change() { # files -> median seconds of a one-file commit
    local n=$1 vol="vol$1" times=() r t0
    tree "$WORK/src-$vol" "$n" 100
    "$ELTON" import --create "$WORK/src-$vol" "$vol" >/dev/null
    mount_volume "$vol" "$WORK/mnt-$vol"
    find "$WORK/mnt-$vol" -type f | wc -l >/dev/null # warm the lower manifests
    for ((r = 0; r <= ROUNDS; r++)); do
        echo "round $r" >"$WORK/mnt-$vol/d000/f000000"
        sync
        t0=${EPOCHREALTIME/[!0-9]/.}
        "$ELTON" commit -q -m "round $r" "$WORK/mnt-$vol" >/dev/null
        t=$(elapsed_since "$t0")
        ((r == 0)) && continue
        log "one-file commit in a $n-file volume run $r: ${t}s"
        times+=("$t")
    done
    fusermount3 -u "$WORK/mnt-$vol"
    median -a "${times[@]}"
}
log "one-file commits: $SMALL_VOL-file volume"
SMALL=$(one_change "$SMALL_VOL")
log "one-file commits: $BIG_VOL-file volume"
BIG=$(one_change "$BIG_VOL")

CP=$(median -a "${T_CP[@]}")
NEW=$(median -a "${T_NEW[@]}")
echo
echo "Commit benchmark ($(nproc) cores); medians of $ROUNDS runs after 1 warm-up"
echo
echo "| figure | seconds | ratio |"
echo "|---|---:|---:|"
printf '| cp -r && sync of %s files (12 KiB) | %.3f | |\n' "$NEW_FILES" "$CP"
printf '| elton commit of the same %s new files | %.3f | %sx of cp -r && sync (target <= 3x) |\n' "$NEW_FILES" "$NEW" "$(ratio "$NEW" "$CP")"
printf '| elton commit of 1 changed file, %s-file volume | %.3f | |\n' "$SMALL_VOL" "$SMALL"
printf '| elton commit of 1 changed file, %s-file volume | %.3f | %sx of the small volume |\n' "$BIG_VOL" "$BIG" "$(ratio "$BIG" "$SMALL")"
echo
load_line
