#!/usr/bin/env bash
# Small-commit benchmark (issue 16): `elton commit` of $CHANGED changed
# files in a mounted $VOLUME_FILES-file volume, next to `git add -A && git
# commit` of the same change on the same tree (section 5 of
# bench/eltonfs.sh on its own). A commit should cost O(changes): the
# target is at most 0.2x git's time.
#
#   bash bench/commit-small.sh
#
# The volume: 100-byte random files, 1,000 a directory, imported with
# `elton import`, mounted with `elton mount`; the same tree in a git
# repository. Each round rewrites $CHANGED files spread over the tree
# (one per directory with the defaults) in the mount and in the work tree,
# then times the commit of each (wall clock, the whole CLI process).
# Medians of $ROUNDS rounds.
#
# Tunables (environment): ROUNDS (5), VOLUME_FILES (100000), CHANGED (100),
# ELTON_BIN (skip the release build). Loopback only; needs /dev/fuse.

set -euo pipefail

ROUNDS=${ROUNDS:-5}
VOLUME_FILES=${VOLUME_FILES:-100000}
CHANGED=${CHANGED:-100}

# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

require_fuse
require git python3 curl
release_bins elton
bench_start commit-small
elton_up "$WORK/home"

elapsed() { python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.3f}')" "$1" "$2"; }

log "writing a $VOLUME_FILES-file tree"
small_tree "$WORK/src-vol" "$VOLUME_FILES"
log "importing it"
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
settle_disk
declare -a E=() G=()
for r in $(seq "$ROUNDS"); do
    change "$WORK/mnt-vol" "$r"
    sync
    t0=${EPOCHREALTIME/[!0-9]/.}; "$ELTON" commit "$WORK/mnt-vol" -m "round $r" >/dev/null; t1=${EPOCHREALTIME/[!0-9]/.}
    E+=("$(elapsed "$t0" "$t1")")
    change "$WORK/git-vol" "$r"
    sync
    t0=${EPOCHREALTIME/[!0-9]/.}
    (cd "$WORK/git-vol" && git add -A && git -c user.name=b -c user.email=b@b commit -q -m "round $r")
    t1=${EPOCHREALTIME/[!0-9]/.}
    G+=("$(elapsed "$t0" "$t1")")
    log "round $r: elton commit ${E[-1]} s, git ${G[-1]} s"
done
fusermount3 -u "$WORK/mnt-vol"

e=$(median -a "${E[@]}"); g=$(median -a "${G[@]}")
echo
printf '| commit of %s changed files in a %s-file volume | elton commit | git add -A && git commit | ratio |\n|---|---:|---:|---:|\n' "$CHANGED" "$VOLUME_FILES"
printf '| median s (%s rounds) | %.3f | %.3f | %s (target <= 0.2) |\n' "$ROUNDS" "$e" "$g" "$(ratio "$e" "$g")"
echo "rounds: elton ${E[*]} | git ${G[*]}"
load_line
