#!/usr/bin/env bash
# Garbage collection: how fast `elton gc` removes unreferenced objects,
# against the plain cost of deleting the same number of files.
#
#   bash bench/gc.sh
#
# Builds the release `elton`, starts one `elton up --no-mount` (temporary
# ELTON_HOME, free loopback ports) and imports a live volume of $LIVE files
# (the walk has something to read; none of it may be deleted). Then, in each
# of $ROUNDS rounds:
#   - gc: $N objects of $SIZE random bytes are put straight into the slave's
#     store (objects/<2 hex>/<62 hex>, named by b3sum: what a failed upload
#     leaves, unknown to the master), then, past the cutoff, `elton gc --json
#     --grace-secs 0.001` is timed end to end (CLI start, walk of every
#     version, the slave's listing and offers, the master's decisions, the
#     deletions, the reports); it must report exactly $N deleted;
#   - baseline: $N files of $SIZE bytes in the same 256-directory layout on
#     the same filesystem, removed with `find DIR -type f -delete` (timed):
#     the unlinks any collector has to make, with no decision at all.
# Figures are medians over the rounds: objects/s and MiB/s of each, and the
# ratio gc / baseline (1.00 = gc costs no more than the unlinks).
#
# Tunables (environment): ROUNDS (3), N (100000), SIZE (4096), LIVE (1000),
# ELTON_BIN (use this binary, skip the build). Loopback only.

set -euo pipefail

ROUNDS=${ROUNDS:-3}
N=${N:-100000}
SIZE=${SIZE:-4096}
LIVE=${LIVE:-1000}
VOLUME=bench-gc

# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

require curl python3 b3sum find
release_bins elton
bench_start gc
elton_up "$WORK/home"
STORE=$ELTON_HOME/slave/objects
[[ -d "$STORE" ]] || die "no store at $STORE"

log "importing a live volume of $LIVE files"
python3 - "$WORK/live" "$LIVE" <<'EOF'
import os, sys
root, n = sys.argv[1], int(sys.argv[2])
for i in range(n):
    d = os.path.join(root, f"d{i % 32}")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, f"f{i}"), "wb") as f:
        f.write(os.urandom(1024))
EOF
"$ELTON" import --create "$WORK/live" "$VOLUME" >/dev/null

# make_files DIR: N files of SIZE random bytes, DIR/<i>
make_files() {
    python3 - "$1" "$N" "$SIZE" <<'EOF'
import os, sys
root, n, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
os.makedirs(root, exist_ok=True)
for i in range(n):
    with open(os.path.join(root, str(i)), "wb") as f:
        f.write(os.urandom(size))
EOF
}

# plant: N new objects in the store, named by their hash.
plant() {
    rm -rf "$WORK/gen"
    make_files "$WORK/gen"
    (cd "$WORK/gen" && find . -type f -print0 | xargs -0 b3sum) >"$WORK/gen.sums"
    python3 - "$WORK/gen" "$STORE" "$WORK/gen.sums" <<'EOF'
import os, sys
gen, store, sums = sys.argv[1:4]
for line in open(sums):
    h, name = line.split(None, 1)
    os.rename(os.path.join(gen, name.strip()), os.path.join(store, h[:2], h[2:]))
EOF
    sync
}

# layout: N files in DIR/<2 hex>/<name>, as the store lays them out.
layout() {
    rm -rf "$1"
    make_files "$1.flat"
    python3 - "$1.flat" "$1" <<'EOF'
import os, sys
flat, out = sys.argv[1:3]
for b in range(256):
    os.makedirs(os.path.join(out, f"{b:02x}"), exist_ok=True)
for i, name in enumerate(os.listdir(flat)):
    os.rename(os.path.join(flat, name), os.path.join(out, f"{i % 256:02x}", name))
EOF
    rmdir "$1.flat"
    sync
}

GC_S=() RM_S=()
for ((r = 1; r <= ROUNDS; r++)); do
    plant
    sleep 2 # past the cutoff: one second after the walk begins
    t0=${EPOCHREALTIME/[!0-9]/.}
    out=$("$ELTON" gc --json --grace-secs 0.001)
    t1=${EPOCHREALTIME/[!0-9]/.}
    deleted=$(python3 -c 'import json,sys; print(json.load(sys.stdin)["deleted"])' <<<"$out")
    [[ "$deleted" == "$N" ]] || die "round $r: gc deleted $deleted, expected $N: $out"
    live=$(python3 -c 'import json,sys; print(json.load(sys.stdin)["live_objects"])' <<<"$out")
    GC_S+=("$(awk -v a="$t0" -v b="$t1" 'BEGIN {print b - a}')")

    layout "$WORK/base"
    t0=${EPOCHREALTIME/[!0-9]/.}
    find "$WORK/base" -type f -delete
    t1=${EPOCHREALTIME/[!0-9]/.}
    RM_S+=("$(awk -v a="$t0" -v b="$t1" 'BEGIN {print b - a}')")
    log "round $r: gc ${GC_S[-1]} s ($live live objects kept), find -delete ${RM_S[-1]} s"
done
curl -sf -o /dev/null "$ELTON_SLAVE/v1/volumes/$VOLUME/1/d0/f0" || die "a live file is gone"
"$ELTON" fsck >/dev/null || die "fsck found problems after gc"

gc_s=$(median -a "${GC_S[@]}")
rm_s=$(median -a "${RM_S[@]}")
rate() { awk -v n="$1" -v s="$2" 'BEGIN {printf "%.0f", n / s}'; }
mibs() { awk -v n="$1" -v z="$SIZE" -v s="$2" 'BEGIN {printf "%.1f", n * z / s / 1048576}'; }
echo "objects: $N of $SIZE bytes per round, $ROUNDS rounds, $LIVE live files"
printf '%-22s %12s %10s %10s\n' "" "objects/s" "MiB/s" "seconds"
printf '%-22s %12s %10s %10.2f\n' "elton gc" "$(rate "$N" "$gc_s")" "$(mibs "$N" "$gc_s")" "$gc_s"
printf '%-22s %12s %10s %10.2f\n' "find -delete (base)" "$(rate "$N" "$rm_s")" "$(mibs "$N" "$rm_s")" "$rm_s"
echo "ratio gc / baseline (objects/s): $(ratio "$rm_s" "$gc_s")"
echo "per round, s: gc ${GC_S[*]} | find -delete ${RM_S[*]}"
load_line
