#!/usr/bin/env bash
# Focused sequential I/O benchmark, round by round with nothing else in
# between (bench/eltonfs.sh measures the same among many other figures):
#   - read of a cached 1 GiB lower file through an Eltonfs mount vs the same
#     bytes in a native file (both in the page cache), dd bs=4k and bs=1M;
#   - page-cache write of a 1 GiB file into the mount's upper layer vs a
#     native directory on the same filesystem, dd bs=4k and bs=1M (each
#     write is followed by rm and sync, untimed).
# Eltonfs and native alternate which goes first; each round's ratio is
# printed, then the median ratio per figure.
#
#   bash bench/eltonfs-seq.sh
#
# Tunables: ROUNDS (8), BIG_MIB (1024), ELTON_BIN (skip the release build).

set -euo pipefail
ROUNDS=${ROUNDS:-8}
BIG_MIB=${BIG_MIB:-1024}
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

require_fuse
require python3 curl
release_bins elton
bench_start seq
elton_up "$WORK/home"

mkdir -p "$WORK/src" "$WORK/native"
head -c "$((BIG_MIB << 20))" /dev/urandom >"$WORK/src/big.bin"
"$ELTON" import --create "$WORK/src" big >/dev/null
mount_volume big "$WORK/mnt"
cat "$WORK/mnt/big.bin" >/dev/null

cat "$WORK/src/big.bin" >/dev/null
echo "| figure | round | eltonfs MiB/s | native MiB/s | eltonfs/native |"
echo "|---|---:|---:|---:|---:|"
declare -A MED
for bs in 4k 1M; do
    q=()
    for r in $(seq "$ROUNDS"); do
        if (( r % 2 )); then
            a=$(dd_mibs if="$WORK/mnt/big.bin" of=/dev/null bs=$bs); b=$(dd_mibs if="$WORK/src/big.bin" of=/dev/null bs=$bs)
        else
            b=$(dd_mibs if="$WORK/src/big.bin" of=/dev/null bs=$bs); a=$(dd_mibs if="$WORK/mnt/big.bin" of=/dev/null bs=$bs)
        fi
        ratio=$(ratio "$a" "$b")
        q+=("$ratio")
        echo "| read bs=$bs | $r | $a | $b | $ratio |"
    done
    MED[read_$bs]=$(median "${q[@]}")
done
for bs in 4k 1M; do
    count=$(( (BIG_MIB << 20) / $( [[ $bs == 4k ]] && echo 4096 || echo 1048576 ) ))
    q=()
    for r in $(seq "$ROUNDS"); do
        if (( r % 2 )); then
            a=$(write_once "$WORK/mnt" $bs $count); b=$(write_once "$WORK/native" $bs $count)
        else
            b=$(write_once "$WORK/native" $bs $count); a=$(write_once "$WORK/mnt" $bs $count)
        fi
        ratio=$(ratio "$a" "$b")
        q+=("$ratio")
        echo "| write bs=$bs | $r | $a | $b | $ratio |"
    done
    MED[write_$bs]=$(median "${q[@]}")
done
echo
echo "median eltonfs/native: read bs=4k ${MED[read_4k]}, read bs=1M ${MED[read_1M]}, write bs=4k ${MED[write_4k]}, write bs=1M ${MED[write_1M]}"
load_line
