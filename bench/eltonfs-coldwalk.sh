#!/usr/bin/env bash
# Where a cold `stat` walk of a mount goes: the first listing of each
# directory apart from the stat calls, and the mount's own CPU, for one or
# two binaries side by side (alternating fresh mounts on one `elton up`).
#
#   bash bench/eltonfs-coldwalk.sh                   # target/release/elton
#   ELTON_BIN=new B_BIN=old bash bench/eltonfs-coldwalk.sh   # A/B of two mounts
#
# For each round and binary: a fresh mount of a $FILES-file volume (1,000
# files per directory), a walk that times `scandir` and `os.stat` apart,
# the same walk again on that mount (warm), and the native source tree
# (in the page cache). Prints the medians of list, stat and total seconds
# and of the mount's CPU milliseconds during the cold walk (utime+stime of
# the mount process from /proc, 10 ms ticks: read the sum over rounds).
# Tunables: ROUNDS (7), FILES (10000), ELTON_BIN, B_BIN. Loopback only.

set -euo pipefail

ROUNDS=${ROUNDS:-7}
FILES=${FILES:-10000}

# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

require_fuse
require python3 curl
release_bins elton
bench_start coldwalk
elton_up "$WORK/home"
BINS=("$ELTON")
if [[ -n ${B_BIN:-} ]]; then BINS+=("$B_BIN"); fi

log "preparing $FILES small files"
small_tree "$WORK/src" "$FILES"
"$ELTON" import --create "$WORK/src" small >/dev/null

# Prints "list stat total" in seconds.
WALK_PY='import os, sys, time
tl = ts = 0.0
t = time.perf_counter()
stack = [sys.argv[1]]
while stack:
    d = stack.pop()
    a = time.perf_counter()
    entries = list(os.scandir(d))
    b = time.perf_counter()
    for e in entries:
        p = os.path.join(d, e.name)
        if e.is_dir(follow_symlinks=False):
            stack.append(p)
        os.stat(p)
    tl += b - a
    ts += time.perf_counter() - b
print(f"{tl:.4f} {ts:.4f} {time.perf_counter() - t:.4f}")'
walk() { python3 -c "$WALK_PY" "$1"; }
cpu_ms() { awk '{print ($14 + $15) * 10}' "/proc/$1/stat"; }

declare -A R
add() { R[$1]+="$2 "; }
for r in $(seq "$ROUNDS"); do
    log "round $r of $ROUNDS"
    for i in "${!BINS[@]}"; do
        m="$WORK/mnt-$r-$i"
        mkdir -p "$m"
        "${BINS[$i]}" mount small "$m" --upper "$WORK/state-$r-$i" >/dev/null
        track_mount "$m"
        pid=$(pgrep -f -- "--upper $WORK/state-$r-$i " | head -n 1)
        c0=$(cpu_ms "$pid")
        read -r l s t < <(walk "$m")
        c1=$(cpu_ms "$pid")
        add "cold-list-$i" "$l"; add "cold-stat-$i" "$s"; add "cold-total-$i" "$t"
        add "cpu-$i" "$((c1 - c0))"
        read -r l s t < <(walk "$m")
        add "warm-list-$i" "$l"; add "warm-stat-$i" "$s"; add "warm-total-$i" "$t"
        fusermount3 -u "$m"
    done
    read -r l s t < <(walk "$WORK/src")
    add native-list "$l"; add native-stat "$s"; add native-total "$t"
done

med() { median ${R[$1]}; }
sum() { awk '{s = 0; for (i = 1; i <= NF; i++) s += $i; print s}' <<<"${R[$1]}"; }
echo
echo "| walk of $FILES files | list (s) | stat (s) | total (s) | mount CPU during the cold walk, ms (sum of $ROUNDS) |"
echo "|---|---:|---:|---:|---:|"
for i in "${!BINS[@]}"; do
    name=$(basename "${BINS[$i]}")
    echo "| $name, fresh mount | $(med "cold-list-$i") | $(med "cold-stat-$i") | $(med "cold-total-$i") | $(sum "cpu-$i") |"
    echo "| $name, same mount again | $(med "warm-list-$i") | $(med "warm-stat-$i") | $(med "warm-total-$i") | |"
done
echo "| native | $(med native-list) | $(med native-stat) | $(med native-total) | |"
echo "per-round cold totals: $(for i in "${!BINS[@]}"; do printf '%s: %s; ' "$(basename "${BINS[$i]}")" "${R[cold-total-$i]}"; done)"
load_line
