#!/usr/bin/env bash
# Eltonfs benchmark: the mount vs the native filesystem underneath it, in one
# run, on the same filesystem (the temp dir's).
#
#   bash bench/eltonfs.sh
#
# Figures (each the median of $ROUNDS runs, eltonfs and native alternated):
#   - sequential read of a cached 1 GiB lower file, dd bs=4k and bs=1M
#   - sequential write of a 1 GiB upper file, dd bs=4k and bs=1M, into the
#     page cache and with conv=fdatasync ($WRITE_ROUNDS rounds, default 5,
#     median of the per-round ratios)
#   - stat of 10,000 lower files (fresh mount: cold kernel cache)
#   - create of 10,000 small upper files
#   - commit of 100 changed files in a 100,000-file volume, next to
#     `git add -A && git commit` of the same change on the same tree
#
# Tunables: ROUNDS (default 3), WRITE_ROUNDS (5), BIG_MIB (1024), STAT_FILES (10000),
# CREATE_FILES (10000), VOLUME_FILES (100000), CHANGED (100),
# ELTON_BIN (skip the release build). Loopback only.

set -euo pipefail

ROUNDS=${ROUNDS:-3}
BIG_MIB=${BIG_MIB:-1024}
STAT_FILES=${STAT_FILES:-10000}
CREATE_FILES=${CREATE_FILES:-10000}
VOLUME_FILES=${VOLUME_FILES:-100000}
CHANGED=${CHANGED:-100}
WRITE_ROUNDS=${WRITE_ROUNDS:-5}

# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

require_fuse
require git python3 curl
release_bins elton
bench_start fs
elton_up "$WORK/home"

unmount() { fusermount3 -u "$1"; }
elapsed() { python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.3f}')" "$1" "$2"; }

# --- 1. sequential read of a cached 1 GiB lower file --------------------------
log "preparing a ${BIG_MIB} MiB file"
mkdir -p "$WORK/src-big" "$WORK/native"
head -c "$((BIG_MIB << 20))" /dev/urandom >"$WORK/src-big/big.bin"
"$ELTON" import --create "$WORK/src-big" big >/dev/null
mount_volume big "$WORK/mnt-big"
cat "$WORK/mnt-big/big.bin" >/dev/null # the object is in the store; warm both caches
cat "$WORK/src-big/big.bin" >/dev/null

declare -A R
for bs in 4k 1M; do
    e=(); n=()
    for _ in $(seq "$ROUNDS"); do
        e+=("$(dd_mibs if="$WORK/mnt-big/big.bin" of=/dev/null bs=$bs)")
        n+=("$(dd_mibs if="$WORK/src-big/big.bin" of=/dev/null bs=$bs)")
    done
    R[read_$bs]="$(median "${e[@]}") $(median "${n[@]}")"
    log "read bs=$bs: eltonfs $(median "${e[@]}") MiB/s, native $(median "${n[@]}") MiB/s"
done

# --- 2. sequential write of a 1 GiB upper file --------------------------------
# Two modes. "cached": dd returns when the bytes are in the page cache, which
# shows the mount's own overhead but moves with the kernel's writeback
# thresholds. "durable": conv=fdatasync, so the time includes getting the bytes
# onto the disk, the figure a storage user cares about and a far steadier one.
# The order alternates per round so neither side always runs first, and the
# ratio is taken per round (back-to-back pairs) before the median.
for mode in cached durable; do
    for bs in 4k 1M; do
        count=$(( (BIG_MIB << 20) / $( [[ $bs == 4k ]] && echo 4096 || echo 1048576 ) ))
        e=(); n=(); q=()
        for r in $(seq "$WRITE_ROUNDS"); do
            if (( r % 2 )); then
                a=$(write_once "$WORK/mnt-big" $bs $count $mode); b=$(write_once "$WORK/native" $bs $count $mode)
            else
                b=$(write_once "$WORK/native" $bs $count $mode); a=$(write_once "$WORK/mnt-big" $bs $count $mode)
            fi
            e+=("$a"); n+=("$b"); q+=("$(ratio "$a" "$b")")
        done
        R[write_${mode}_$bs]="$(median "${e[@]}") $(median "${n[@]}") $(median "${q[@]}")"
        log "write $mode bs=$bs: eltonfs ${e[*]} MiB/s, native ${n[*]} MiB/s, ratios ${q[*]}"
    done
done
unmount "$WORK/mnt-big"

# --- 3. stat of 10,000 lower files; 4. create of 10,000 upper files ----------
log "preparing $STAT_FILES small files"
small_tree "$WORK/src-stat" "$STAT_FILES"
"$ELTON" import --create "$WORK/src-stat" small >/dev/null
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
e=(); n=(); ce=(); cn=()
for r in $(seq "$ROUNDS"); do
    mount_volume small "$WORK/mnt-small-$r" # fresh mount: cold kernel cache
    e+=("$(python3 -c "$STAT_PY" "$WORK/mnt-small-$r")")
    n+=("$(python3 -c "$STAT_PY" "$WORK/src-stat")")
    ce+=("$(python3 -c "$CREATE_PY" "$WORK/mnt-small-$r/new" "$CREATE_FILES")")
    cn+=("$(python3 -c "$CREATE_PY" "$WORK/native/new-$r" "$CREATE_FILES")")
    unmount "$WORK/mnt-small-$r"
done
R[stat]="$(median "${e[@]}") $(median "${n[@]}")"
R[create]="$(median "${ce[@]}") $(median "${cn[@]}")"
log "stat: eltonfs ${R[stat]% *} s, native ${R[stat]#* } s; create: eltonfs ${R[create]% *} s, native ${R[create]#* } s"

# --- 5. commit of 100 changed files in a 100,000-file volume vs git ----------
log "preparing a $VOLUME_FILES-file volume"
small_tree "$WORK/src-vol" "$VOLUME_FILES"
"$ELTON" import --create "$WORK/src-vol" vol >/dev/null
cp -a "$WORK/src-vol" "$WORK/git-vol"
(cd "$WORK/git-vol" && git init -q && git add -A && git -c user.name=b -c user.email=b@b commit -q -m base)
change() { # root round: rewrite CHANGED files spread over the tree
    python3 - "$1" "$2" "$VOLUME_FILES" "$CHANGED" <<'PY'
import os, sys
root, r, n, k = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
for j in range(k):
    i = (j * (n // k) + r) % n
    with open(os.path.join(root, f"d{i // 1000:03}", f"f{i:06}"), "wb") as f:
        f.write(f"round {r} change {j}\n".encode())
PY
}
mount_volume vol "$WORK/mnt-vol"
e=(); g=()
for r in $(seq "$ROUNDS"); do
    change "$WORK/mnt-vol" "$r"
    t0=${EPOCHREALTIME/[!0-9]/.}; "$ELTON" commit "$WORK/mnt-vol" -m "round $r" >/dev/null; t1=${EPOCHREALTIME/[!0-9]/.}
    e+=("$(elapsed "$t0" "$t1")")
    change "$WORK/git-vol" "$r"
    t0=${EPOCHREALTIME/[!0-9]/.}
    (cd "$WORK/git-vol" && git add -A && git -c user.name=b -c user.email=b@b commit -q -m "round $r")
    t1=${EPOCHREALTIME/[!0-9]/.}
    g+=("$(elapsed "$t0" "$t1")")
done
R[commit]="$(median "${e[@]}") $(median "${g[@]}")"
unmount "$WORK/mnt-vol"

# --- report --------------------------------------------------------------------
printf '\n| figure | eltonfs | native | eltonfs/native |\n|---|---|---|---|\n'
for k in read_4k read_1M; do
    set -- ${R[$k]}
    printf '| %s (MiB/s) | %s | %s | %s |\n' "${k/_/ bs=}" "$1" "$2" "$(ratio "$1" "$2")"
done
for mode in cached durable; do
    for bs in 4k 1M; do
        set -- ${R[write_${mode}_$bs]}
        printf '| write %s bs=%s (MiB/s) | %s | %s | %s (median of per-round ratios) |\n' "$mode" "$bs" "$1" "$2" "$3"
    done
done
set -- ${R[stat]};   printf '| stat %s lower files (s) | %s | %s | %s (speed) |\n' "$STAT_FILES" "$1" "$2" "$(ratio "$2" "$1")"
set -- ${R[create]}; printf '| create %s upper files (s) | %s | %s | %s (speed) |\n' "$CREATE_FILES" "$1" "$2" "$(ratio "$2" "$1")"
set -- ${R[commit]}
printf '\n| commit of %s changed files in a %s-file volume | elton commit | git add -A && git commit | ratio |\n|---|---|---|---|\n' "$CHANGED" "$VOLUME_FILES"
printf '| time (s) | %s | %s | %s |\n' "$1" "$2" "$(ratio "$1" "$2")"
