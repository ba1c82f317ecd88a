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
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ELTON="${ELTON_BIN:-$ROOT/target/release/elton}"
unset http_proxy https_proxy HTTP_PROXY HTTPS_PROXY all_proxy ALL_PROXY

log() { printf '[eltonfs-seq.sh] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }
[[ -e /dev/fuse ]] || die "/dev/fuse is missing"
for t in fusermount3 python3 curl; do command -v "$t" >/dev/null || die "$t is required"; done
if [[ -z "${ELTON_BIN:-}" ]]; then
    log "building release elton"
    (cd "$ROOT" && cargo build --release -q -p eltonfs) || die "cargo build failed"
fi

LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
WORK=$(mktemp -d /tmp/elton-bench-seq.XXXXXX)
UP_PID=""
cleanup() {
    fusermount3 -uz "$WORK/mnt" 2>/dev/null || true
    [[ -n "$UP_PID" ]] && kill "$UP_PID" 2>/dev/null && wait "$UP_PID" 2>/dev/null
    rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
MP=$(free_port); SP=$(free_port)
export ELTON_HOME="$WORK/home" ELTON_MASTER="http://127.0.0.1:$MP" ELTON_SLAVE="http://127.0.0.1:$SP"
"$ELTON" up --no-mount --master-listen "127.0.0.1:$MP" --slave-listen "127.0.0.1:$SP" >"$WORK/up.log" 2>&1 &
UP_PID=$!
for _ in $(seq 100); do curl -fs "http://127.0.0.1:$SP/metrics" >/dev/null 2>&1 && break; sleep 0.1; done
curl -fs "http://127.0.0.1:$SP/metrics" >/dev/null || die "elton up did not start (see $WORK/up.log)"

mkdir -p "$WORK/src" "$WORK/native" "$WORK/mnt"
head -c "$((BIG_MIB << 20))" /dev/urandom >"$WORK/src/big.bin"
"$ELTON" import --create "$WORK/src" big >/dev/null
"$ELTON" mount big "$WORK/mnt" --upper "$WORK/state" >/dev/null
cat "$WORK/mnt/big.bin" >/dev/null

# dd's own figure, in MiB/s.
dd_mibs() {
    LC_ALL=C dd "$@" 2>&1 >/dev/null | tail -n 1 | python3 -c '
import re, sys
m = re.search(r"^(\d+) bytes.* copied, ([0-9.e+-]+) s", sys.stdin.read())
print(f"{int(m.group(1)) / float(m.group(2)) / 2**20:.0f}")'
}
write_once() { # dir bs count
    dd_mibs if=/dev/zero of="$1/w.bin" bs="$2" count="$3"
    rm -f "$1/w.bin"; sync
}
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

cat "$WORK/src/big.bin" >/dev/null
echo "| figure | round | eltonfs MiB/s | native MiB/s | eltonfs/native |"
echo "|---|---:|---:|---:|---:|"
declare -A MED
ratio_of() { python3 -c "import sys; print(f'{float(sys.argv[1])/float(sys.argv[2]):.2f}')" "$1" "$2"; }
for bs in 4k 1M; do
    q=()
    for r in $(seq "$ROUNDS"); do
        if (( r % 2 )); then
            a=$(dd_mibs if="$WORK/mnt/big.bin" of=/dev/null bs=$bs); b=$(dd_mibs if="$WORK/src/big.bin" of=/dev/null bs=$bs)
        else
            b=$(dd_mibs if="$WORK/src/big.bin" of=/dev/null bs=$bs); a=$(dd_mibs if="$WORK/mnt/big.bin" of=/dev/null bs=$bs)
        fi
        ratio=$(ratio_of "$a" "$b")
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
        ratio=$(ratio_of "$a" "$b")
        q+=("$ratio")
        echo "| write bs=$bs | $r | $a | $b | $ratio |"
    done
    MED[write_$bs]=$(median "${q[@]}")
done
echo
echo "median eltonfs/native: read bs=4k ${MED[read_4k]}, read bs=1M ${MED[read_1M]}, write bs=4k ${MED[write_4k]}, write bs=1M ${MED[write_1M]}"
echo "load average (1/5/15 min) at start: $LOAD_START; at end: $(cut -d' ' -f1-3 /proc/loadavg)"
