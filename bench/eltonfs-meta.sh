#!/usr/bin/env bash
# Eltonfs metadata benchmark: the mount vs the native filesystem underneath
# it, in one run, on the same filesystem (the temp dir's).
#
#   bash bench/eltonfs-meta.sh
#
# Figures (each the median of $ROUNDS per-round ratios, eltonfs/native speed;
# the times are medians too):
#   - stat of $STAT_FILES lower files, each round on a fresh mount (cold
#     kernel cache), then again on that mount, Python os.walk + os.stat
#   - create of $CREATE_FILES small upper files (Python open/write/close)
#   - `ls -lR` and `find` over a $TREE_FILES-file lower tree, cold (a fresh
#     mount) and warm (the same command again on that mount)
# The native side is the source tree the volume was imported from, in the
# page cache (dropping the machine's caches would disturb everything else
# running on it), so "cold" is the mount's cold start against a warm native
# directory: the cost a user sees right after `elton mount`.
#
# The cold figures are also given against a native filesystem that starts
# cold the same way (NATIVE_FRESH=0 skips it): the same trees in ext4
# images, loop-mounted afresh for each cold walk. Their blocks come from the
# image files in the page cache, as a fresh Elton mount's manifests come
# from its store in the page cache; their inodes and dentries are built by
# the first walk, as a fresh Elton mount's are.
#
# Tunables: ROUNDS (default 5), STAT_FILES (10000), CREATE_FILES (10000),
# TREE_FILES (100000), NATIVE_FRESH (1), ELTON_BIN (skip the release build).
# Loopback only; the fresh native side needs root, mkfs.ext4 and loop devices.

set -euo pipefail

ROUNDS=${ROUNDS:-5}
STAT_FILES=${STAT_FILES:-10000}
CREATE_FILES=${CREATE_FILES:-10000}
TREE_FILES=${TREE_FILES:-100000}
# The fresh native side mounts loop devices: on by default for root only.
if [[ $EUID == 0 ]]; then NATIVE_FRESH=${NATIVE_FRESH:-1}; else NATIVE_FRESH=${NATIVE_FRESH:-0}; fi

# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

require_fuse
require python3 curl find ls
release_bins elton
bench_start meta
elton_up "$WORK/home"

# Wall time of a command in seconds, from bash's own clock (no process
# start in the measurement); its output is discarded.
timed() {
    local t0=${EPOCHREALTIME/[!0-9]/.}
    "$@" >/dev/null
    awk -v a="$t0" -v b="${EPOCHREALTIME/[!0-9]/.}" 'BEGIN {printf "%.4f\n", b - a}'
}

STAT_PY='import os, sys, time
t = time.perf_counter()
for d, _, files in os.walk(sys.argv[1]):
    for f in files:
        os.stat(os.path.join(d, f))
print(f"{time.perf_counter() - t:.4f}")'
CREATE_PY='import os, sys, time
root, n = sys.argv[1], int(sys.argv[2])
os.makedirs(root)
t = time.perf_counter()
for i in range(n):
    with open(os.path.join(root, f"n{i:05}"), "wb") as f:
        f.write(b"x" * 100)
print(f"{time.perf_counter() - t:.4f}")'

log "preparing $STAT_FILES and $TREE_FILES small files"
small_tree "$WORK/src-stat" "$STAT_FILES"
small_tree "$WORK/src-tree" "$TREE_FILES"
"$ELTON" import --create "$WORK/src-stat" small >/dev/null
"$ELTON" import --create "$WORK/src-tree" tree >/dev/null
mkdir -p "$WORK/native"

# ext4 images of the two source trees, for the fresh native mounts.
if [[ $NATIVE_FRESH == 1 ]]; then
    command -v mkfs.ext4 >/dev/null && [[ -e /dev/loop-control && $EUID == 0 ]] ||
        die "the fresh native side needs root, mkfs.ext4 and /dev/loop-control (or NATIVE_FRESH=0)"
    for t in stat tree; do
        # Room for one block and one inode per file, and as much again.
        n=$(find "$WORK/src-$t" | wc -l)
        mkfs.ext4 -q -F -N $((n * 2 + 1024)) -d "$WORK/src-$t" "$WORK/native-$t.img" "$((n * 8 / 1024 + 64))M"
        mkdir -p "$WORK/fresh-$t"
        track_mount "$WORK/fresh-$t"
    done
else
    log "NATIVE_FRESH=0: no comparison with a freshly mounted native filesystem"
fi
# Sets FRESH to the output of `cmd DIR` (a time) on a fresh read-only mount
# of image $1 at DIR=$2. Mounting and unmounting stay in this shell, so a
# failure stops the script (not a subshell) and the cleanup sees the mount.
fresh_native() { # image mountpoint cmd...
    mount -o loop,ro,noatime "$1" "$2"
    mountpoint -q "$2" || die "$1 is not mounted at $2"
    FRESH=$("${@:3}" "$2")
    umount "$2"
}

# Each figure: arrays of eltonfs times, native times, per-round speed ratios
# (native time / eltonfs time).
declare -A E N Q
add() { # figure eltonfs-seconds native-seconds
    E[$1]+="$2 "; N[$1]+="$3 "; Q[$1]+="$(ratio "$3" "$2") "
}

settle_disk
for r in $(seq "$ROUNDS"); do
    log "round $r of $ROUNDS"
    # stat and create: a fresh mount of the 10,000-file volume.
    mount_volume small "$WORK/mnt-small-$r"
    e=$(python3 -c "$STAT_PY" "$WORK/mnt-small-$r")
    warm=$(python3 -c "$STAT_PY" "$WORK/mnt-small-$r")
    n=$(python3 -c "$STAT_PY" "$WORK/src-stat")
    add stat "$e" "$n"
    add "stat warm" "$warm" "$n"
    if [[ $NATIVE_FRESH == 1 ]]; then
        fresh_native "$WORK/native-stat.img" "$WORK/fresh-stat" python3 -c "$STAT_PY"
        add "stat fresh" "$e" "$FRESH"
    fi
    e=$(python3 -c "$CREATE_PY" "$WORK/mnt-small-$r/new" "$CREATE_FILES")
    n=$(python3 -c "$CREATE_PY" "$WORK/native/new-$r" "$CREATE_FILES")
    add create "$e" "$n"
    fusermount3 -u "$WORK/mnt-small-$r"
    # ls -lR, then find, each on its own fresh mount of the big tree.
    for cmd in ls find; do
        m="$WORK/mnt-$cmd-$r"
        mount_volume tree "$m"
        if [[ $cmd == ls ]]; then run=(ls -lR); else run=(find); fi
        cold=$(timed "${run[@]}" "$m")
        warm=$(timed "${run[@]}" "$m")
        n=$(timed "${run[@]}" "$WORK/src-tree")
        add "$cmd cold" "$cold" "$n"
        add "$cmd warm" "$warm" "$n"
        if [[ $NATIVE_FRESH == 1 ]]; then
            fresh_native "$WORK/native-tree.img" "$WORK/fresh-tree" timed "${run[@]}"
            add "$cmd fresh" "$cold" "$FRESH"
        fi
        fusermount3 -u "$m"
    done
done

# --- report --------------------------------------------------------------------
printf '\n| figure | eltonfs (s) | native (s) | speed eltonfs/native (median of per-round ratios) | per-round ratios |\n|---|---|---|---|---|\n'
row() { # figure label
    # shellcheck disable=SC2086 # the arrays are space-separated lists
    printf '| %s | %s | %s | **%s** | %s |\n' "$2" "$(median ${E[$1]})" "$(median ${N[$1]})" \
        "$(median ${Q[$1]})" "${Q[$1]% }"
}
row stat "stat of $STAT_FILES lower files, fresh mount"
row "stat warm" "stat of $STAT_FILES lower files, same mount again"
row create "create of $CREATE_FILES small upper files"
row "ls cold" "\`ls -lR\` of a $TREE_FILES-file lower tree, fresh mount"
row "ls warm" "\`ls -lR\`, same mount again"
row "find cold" "\`find\` of a $TREE_FILES-file lower tree, fresh mount"
row "find warm" "\`find\`, same mount again"
if [[ $NATIVE_FRESH == 1 ]]; then
    printf '\nThe cold figures against a fresh native mount (ext4 image, loop, read-only):\n'
    printf '\n| figure | eltonfs (s) | native, fresh mount (s) | speed eltonfs/native (median of per-round ratios) | per-round ratios |\n|---|---|---|---|---|\n'
    row "stat fresh" "stat of $STAT_FILES lower files, fresh mount"
    row "ls fresh" "\`ls -lR\` of a $TREE_FILES-file lower tree, fresh mount"
    row "find fresh" "\`find\` of a $TREE_FILES-file lower tree, fresh mount"
fi
load_line
