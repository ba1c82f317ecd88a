# shellcheck shell=bash
# Helpers shared by the benchmark scripts in bench/. Sourced, not executed:
#
#   set -euo pipefail
#   source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
#
# Sourcing only sets variables: ROOT (the repository), BENCH_NAME (the log
# prefix: the sourcing script's file name, e.g. wan.sh), empty WORK,
# LOAD_START and ELTON_PID; and it unsets the proxy variables and sets
# no_proxy to loopback, so benchmark traffic never goes through a proxy.
# The functions, one line each:
#
#   log MSG...               "[BENCH_NAME] MSG" on stderr
#   die MSG...               logs "error: MSG", exits 1
#   require CMD...           dies unless every CMD is on the PATH
#   require_fuse             dies unless /dev/fuse and fusermount3 are there
#   release_bins elton [elton-link]  ELTON=$ELTON_BIN, LINK=$LINK_BIN, else builds and uses target/release/
#   bench_start NAME         sets LOAD_START, WORK=${TMPDIR:-/tmp}/elton-bench-NAME.*, cleanup on exit
#   track_pid PID NAME       cleanup stops PID (the last tracked first)
#   stop_pid PID             a tracked PID: TERM, up to 5 s, then KILL; untracks it
#   track_mount DIR          cleanup lazily unmounts DIR, before stopping PIDs
#   free_port [PORT...]      a free loopback port, none of the given PORTs
#   wait_http URL [PID NAME [LOG...]]  waits 20 s for URL; dies, showing LOGs, if PID exits
#   elton_up HOME [FLAGS..]  tracked `elton up` (no mount, data dir HOME, free ports), waited for;
#                            sets ELTON_PID MASTER_PORT SLAVE_PORT, exports ELTON_HOME/MASTER/SLAVE/TOKEN
#   mount_volume VOL DIR     mounts VOL at DIR, upper layer $WORK/state-<basename DIR>; tracked
#   small_tree ROOT N        N files of 100 random bytes under ROOT, 1,000 per directory (d000/f000000 ...)
#   median [-a] N...         median; of an even count the lower middle value (-a: mean of the two)
#   ratio A B                A / B, 2 decimals
#   dd_mibs DD-ARG...        runs dd, prints the rate it reports in MiB/s (integer)
#   write_once DIR BS COUNT [durable]  dd_mibs of writing DIR/w.bin (durable: fdatasync); rm; sync
#   load_line                the load averages at bench_start and now (the scripts' last line)
#
# Timed code reads the wall clock as ${EPOCHREALTIME/[!0-9]/.}: no process or
# subshell inside the interval (a Python timestamp put its 0.13 s start
# there), and a decimal point for awk whatever the locale.

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# Figures are for Elton as it is run, not under a developer's shell: with
# RUST_BACKTRACE set, every error value a process makes (also ones it
# handles) captures a backtrace, about a millisecond each.
unset RUST_BACKTRACE RUST_LIB_BACKTRACE
BENCH_NAME=$(basename "${BASH_SOURCE[1]:-$0}")
WORK=""
LOAD_START=""
ELTON_PID=""
BENCH_PIDS=()
declare -gA BENCH_PID_NAMES=()
BENCH_MOUNTS=()

# Loopback only: never send benchmark traffic through a proxy.
unset http_proxy https_proxy HTTP_PROXY HTTPS_PROXY all_proxy ALL_PROXY
export no_proxy=127.0.0.1,localhost NO_PROXY=127.0.0.1,localhost

log() { printf '[%s] %s\n' "$BENCH_NAME" "$*" >&2; }
die() { log "error: $*"; exit 1; }

require() {
    local t
    for t in "$@"; do
        command -v "$t" >/dev/null || die "$t is required"
    done
}

require_fuse() {
    [[ -e /dev/fuse ]] || die "/dev/fuse is missing"
    command -v fusermount3 >/dev/null || die "fusermount3 is required (apt-get install fuse3)"
}

release_bins() {
    ELTON=${ELTON_BIN:-$ROOT/target/release/elton}
    if [[ " $* " == *" elton-link "* ]]; then
        LINK=${LINK_BIN:-$ROOT/target/release/elton-link}
        if [[ -z "${ELTON_BIN:-}" || -z "${LINK_BIN:-}" ]]; then
            log "building release elton and elton-link"
            (cd "$ROOT" && cargo build --release -q -p eltonfs -p elton-tests --bin elton --bin elton-link) \
                || die "cargo build failed"
        fi
        [[ -x "$LINK" ]] || die "$LINK is not an executable"
    elif [[ -z "${ELTON_BIN:-}" ]]; then
        log "building release elton"
        (cd "$ROOT" && cargo build --release -q -p eltonfs) || die "cargo build failed"
    fi
    [[ -x "$ELTON" ]] || die "$ELTON is not an executable"
    log "elton binary: $ELTON"
}

bench_start() {
    LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
    WORK=$(mktemp -d "${TMPDIR:-/tmp}/elton-bench-$1.XXXXXX")
    trap bench_cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
}

bench_cleanup() {
    local rc=$? m i pids=("${BENCH_PIDS[@]}")
    trap - EXIT INT TERM
    for m in "${BENCH_MOUNTS[@]}"; do
        fusermount3 -uz "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
    done
    for ((i = ${#pids[@]} - 1; i >= 0; i--)); do stop_pid "${pids[i]}"; done
    # KEEP_LOGS=DIR: the servers' logs outlive the run (e.g. with ELTON_LOG=debug).
    if [[ -n "${KEEP_LOGS:-}" && -n "$WORK" ]]; then
        mkdir -p "$KEEP_LOGS" && cp "$WORK"/*.log "$KEEP_LOGS"/ 2>/dev/null || true
    fi
    if [[ -n "$WORK" ]]; then rm -rf "$WORK"; fi
    exit "$rc"
}

track_pid() {
    BENCH_PIDS+=("$1")
    BENCH_PID_NAMES[$1]=$2
}

stop_pid() {
    local pid=$1 p i left=()
    [[ -n "$pid" && -n "${BENCH_PID_NAMES[$pid]:-}" ]] || return 0 # untracked: already stopped
    for p in "${BENCH_PIDS[@]}"; do [[ "$p" == "$pid" ]] || left+=("$p"); done
    BENCH_PIDS=("${left[@]}")
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null || true
        for ((i = 0; i < 50; i++)); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$pid" 2>/dev/null; then
            log "${BENCH_PID_NAMES[$pid]} ($pid) did not stop; killing"
            kill -KILL "$pid" 2>/dev/null || true
        fi
    fi
    unset "BENCH_PID_NAMES[$pid]"
    wait "$pid" 2>/dev/null || true
}

track_mount() { BENCH_MOUNTS+=("$1"); }

free_port() {
    local port
    while :; do
        port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()')
        [[ " $* " == *" $port "* ]] || break
    done
    echo "$port"
}

wait_http() {
    local url=$1 pid=${2:-} name=${3:-$1} i
    for ((i = 0; i < 200; i++)); do
        if [[ -n "$pid" ]] && ! kill -0 "$pid" 2>/dev/null; then
            if (($# > 3)); then cat "${@:4}" >&2 || true; fi
            die "$name exited early"
        fi
        if curl -s -o /dev/null --max-time 1 "$url"; then return 0; fi
        sleep 0.1
    done
    if (($# > 3)); then cat "${@:4}" >&2 || true; fi
    die "$name not answering at $url after 20 s"
}

elton_up() { # ELTON_HOME [extra `elton up` flags, e.g. --insecure]
    local extra=("${@:2}") scheme=https
    MASTER_PORT=$(free_port)
    SLAVE_PORT=$(free_port "$MASTER_PORT")
    # Newer `elton up` also mounts a volume; the benchmarks need only the
    # servers. (The help is captured first: `| grep -q` under pipefail fails
    # when grep exits before elton has written all of it.)
    if grep -q -- '--no-mount' <<<"$("$ELTON" up --help 2>/dev/null)"; then extra+=(--no-mount); fi
    [[ " ${extra[*]} " != *" --insecure "* ]] || scheme=http
    export ELTON_HOME=$1
    log "starting elton up (master 127.0.0.1:$MASTER_PORT, slave 127.0.0.1:$SLAVE_PORT)"
    ELTON_LOG=warn "$ELTON" up "${extra[@]}" --data-dir "$ELTON_HOME" \
        --master-listen "127.0.0.1:$MASTER_PORT" \
        --slave-listen "127.0.0.1:$SLAVE_PORT" >"$WORK/elton.out" 2>"$WORK/elton.err" &
    ELTON_PID=$!
    track_pid "$ELTON_PID" elton
    wait_http "http://127.0.0.1:$SLAVE_PORT/metrics" "$ELTON_PID" elton "$WORK/elton.out" "$WORK/elton.err"
    export ELTON_MASTER="$scheme://127.0.0.1:$MASTER_PORT"
    export ELTON_SLAVE="http://127.0.0.1:$SLAVE_PORT"
    ELTON_TOKEN=$(cat "$ELTON_HOME/token")
    export ELTON_TOKEN
}

mount_volume() {
    mkdir -p "$2"
    "$ELTON" mount "$1" "$2" --upper "$WORK/state-$(basename "$2")" >/dev/null
    track_mount "$2"
}

small_tree() { # root n: n files of 100 random bytes, 1,000 per directory
    python3 - "$1" "$2" <<'PY'
import os, sys
root, n = sys.argv[1], int(sys.argv[2])
for i in range(n):
    d = os.path.join(root, f"d{i // 1000:03}")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, f"f{i:06}"), "wb") as f:
        f.write(os.urandom(100))
PY
}

median() {
    local mean=0
    if [[ ${1:-} == -a ]]; then mean=1; shift; fi
    # %.17g: the mean at full double precision; callers format it.
    printf '%s\n' "$@" | sort -g | awk -v mean="$mean" '{a[NR] = $1} END {
        if (NR % 2) print a[(NR + 1) / 2]
        else if (mean) printf "%.17g\n", (a[NR / 2] + a[NR / 2 + 1]) / 2
        else print a[NR / 2] }'
}

ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f\n", a / b}'; }

dd_mibs() { # dd prints "N bytes ... copied, S s, ..." last on stderr
    LC_ALL=C dd "$@" 2>&1 >/dev/null | tail -n 1 | python3 -c '
import re, sys
m = re.search(r"^(\d+) bytes.* copied, ([0-9.e+-]+) s", sys.stdin.read())
print(f"{int(m.group(1)) / float(m.group(2)) / 2**20:.0f}")'
}

write_once() {
    local extra=()
    if [[ ${4:-} == durable ]]; then extra=(conv=fdatasync); fi
    dd_mibs if=/dev/zero of="$1/w.bin" bs="$2" count="$3" "${extra[@]}"
    rm -f "$1/w.bin"
    sync
}

create_us() { # dir: microseconds per empty file created there (200 files)
    python3 - "$1" <<'PY'
import os, sys, time
d = os.path.join(sys.argv[1], "create-probe")
os.makedirs(d, exist_ok=True)
t = time.perf_counter()
for i in range(200):
    open(os.path.join(d, f"p{i}"), "wb").close()
print(round((time.perf_counter() - t) / 200 * 1e6))
for i in range(200):
    os.unlink(os.path.join(d, f"p{i}"))
os.rmdir(d)
PY
}

# Waits (at most SETTLE_MAX seconds, 400 by default) until creating a file
# in $WORK costs at most SETTLE_US microseconds (60), and logs the cost.
# ext4 skips inodes freed in the last 60-300 s when it allocates one
# (`recently_deleted`), scanning inode tables on every create: after
# another benchmark deleted a few hundred thousand files, a create costs
# 150-1,000 us instead of 20-40 for minutes, for Elton and the baseline
# alike, which makes create-heavy figures meaningless.
settle_disk() {
    local us waited=0
    while us=$(create_us "$WORK") && ((us > ${SETTLE_US:-60} && waited < ${SETTLE_MAX:-400})); do
        ((waited == 0)) && log "creating a file costs ${us} us (recently freed inodes); waiting for the disk to settle"
        sleep 10
        waited=$((waited + 10))
    done
    CREATE_US=$us
    log "creating a file costs ${us} us (waited ${waited} s)"
}

load_line() {
    echo "load average (1/5/15 min) at start: $LOAD_START; at end: $(cut -d' ' -f1-3 /proc/loadavg)${CREATE_US:+; a file create cost $CREATE_US us at the start}"
}
