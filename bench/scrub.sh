#!/usr/bin/env bash
# Scrub benchmark: `elton scrub` against `b3sum` of the same files, and the
# cost of a running scrub (at its default rate) to small-file HTTP reads.
#
#   bash bench/scrub.sh
#
# Builds the release `elton`, writes $OBJECTS random objects (sizes spread
# evenly over 1..$MAX_KIB KiB) straight into the store layout of a fresh
# `elton up` data dir (named by their BLAKE3 hash, which b3sum computes),
# starts `elton up` (it announces them), imports one 4 KiB file, then:
#   1. rounds of: `b3sum` over every object file (xargs, as many files per
#      call as fit), and `elton scrub --json` (unlimited rate) over the same
#      store; objects/s and MiB/s of each, their ratio. Both read from the
#      page cache (the store fits in RAM; both are warmed once first), so the
#      figure compares hashing and per-file overhead, not the disk.
#   2. rounds of: wrk (-t1 -c$CONNS) on the 4 KiB file for $DURATION s with
#      no scrub, and again while `elton scrub --rate $DEFAULT_RATE` (the
#      background scrub's default pace) runs, in alternating order; req/s of
#      each, their ratio.
# Each figure is the median of $ROUNDS rounds; the two sides of a ratio are
# measured alternately within a round.
#
# b3sum comes from Debian's `b3sum` package (apt-get install b3sum, done
# here if missing). Tunables (environment): OBJECTS (100000), MAX_KIB (8),
# ROUNDS (3), DURATION (10), CONNS (32), ELTON_BIN. Loopback only.

set -euo pipefail

OBJECTS=${OBJECTS:-100000}
MAX_KIB=${MAX_KIB:-8}
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10}
CONNS=${CONNS:-32}
VOLUME=bench-scrub

# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

if ! command -v b3sum >/dev/null || ! command -v wrk >/dev/null; then
    SUDO=""
    [[ $(id -u) -ne 0 ]] && SUDO=sudo
    log "installing b3sum and wrk with apt-get"
    $SUDO apt-get update -qq
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq b3sum wrk >/dev/null
fi
require b3sum wrk curl python3 xargs
release_bins elton
DEFAULT_RATE=$("$ELTON" slave --help | sed -n 's/.*--scrub-rate.*\[default: \([0-9]*\)\].*/\1/p' | head -n 1)
[[ -n "$DEFAULT_RATE" ]] || DEFAULT_RATE=$("$ELTON" slave --help | tr '\n' ' ' | sed -n 's/.*--scrub-rate <[A-Z_]*>.*\[default: \([0-9]*\)\].*/\1/p')
[[ -n "$DEFAULT_RATE" ]] || die "could not read the default --scrub-rate from elton slave --help"

bench_start scrub

# --- objects ---------------------------------------------------------------------
HOME_DIR="$WORK/elton-home"
STAGE="$WORK/stage"
mkdir -p "$STAGE" "$HOME_DIR/slave/objects"
log "writing $OBJECTS objects of 1..$MAX_KIB KiB"
python3 - "$STAGE" "$OBJECTS" "$MAX_KIB" <<'PY'
import os, random, sys
stage, n, max_kib = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rnd = random.Random(42)
for i in range(n):
    # At least 64 bytes: a few 1-byte files would share their content
    # (and so their id), leaving fewer objects than asked for.
    size = max(64, rnd.randint(1, max_kib) * 1024 - rnd.randint(0, 1023))
    with open(os.path.join(stage, f"{i:07d}"), "wb") as f:
        f.write(os.urandom(size))
PY
log "naming them by hash (b3sum) into the store layout"
(cd "$STAGE" && find . -type f -print0 | xargs -0 b3sum) | python3 -c '
import os, sys
stage, objects = sys.argv[1], sys.argv[2]
for line in sys.stdin:
    h, name = line.split(None, 1)
    d = os.path.join(objects, h[:2])
    os.makedirs(d, exist_ok=True)
    os.rename(os.path.join(stage, name.strip()), os.path.join(d, h[2:]))
' "$STAGE" "$HOME_DIR/slave/objects"
LEFT=$(find "$STAGE" -type f | wc -l)
[[ "$LEFT" == 0 ]] || log "$LEFT generated files were not moved into the store"
STORED=$(find "$HOME_DIR/slave/objects" -type f | wc -l)
STORE_BYTES=$(du -sb "$HOME_DIR/slave/objects" | cut -f1)
log "$STORED objects, $((STORE_BYTES >> 20)) MiB (with directories)"

# --- elton ---------------------------------------------------------------------------
elton_up "$HOME_DIR"
SRC="$WORK/src"
mkdir -p "$SRC"
head -c 4096 /dev/urandom >"$SRC/small.bin"
IMPORT_OUT=$("$ELTON" import --create "$SRC" "$VOLUME")
VERSION=$(sed -n "s/^$VOLUME@\([0-9][0-9]*\):.*/\1/p" <<<"$IMPORT_OUT")
[[ -n "$VERSION" ]] || die "could not read the version from: $IMPORT_OUT"
SMALL_URL="http://127.0.0.1:$SLAVE_PORT/v1/volumes/$VOLUME/$VERSION/small.bin"
curl -sf -o /dev/null "$SMALL_URL" || die "GET $SMALL_URL failed"

# --- 1. scrub vs b3sum -------------------------------------------------------------------
b3sum_secs() {
    local t0 t1
    t0=${EPOCHREALTIME/[!0-9]/.}
    (cd "$HOME_DIR/slave/objects" && find . -type f -print0 | xargs -0 b3sum >/dev/null)
    t1=${EPOCHREALTIME/[!0-9]/.}
    awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.3f\n", b - a}'
}
# Prints "seconds objects bytes bad" of one `elton scrub --json`.
scrub_run() {
    local t0 t1 out
    t0=${EPOCHREALTIME/[!0-9]/.}
    out=$("$ELTON" scrub --json 2>/dev/null) || die "elton scrub failed: $out"
    t1=${EPOCHREALTIME/[!0-9]/.}
    python3 -c '
import json, sys
s = json.loads(sys.argv[1])
secs = float(sys.argv[3]) - float(sys.argv[2])
print("%.3f %d %d %d" % (secs, s["objects"], s["bytes"], s["bad"]))' "$out" "$t0" "$t1"
}
log "warming the page cache (one pass of each)"
b3sum_secs >/dev/null
scrub_run >/dev/null
declare -a B_OPS=() S_OPS=() B_MIB=() S_MIB=()
for ((r = 1; r <= ROUNDS; r++)); do
    read -r bs < <(b3sum_secs)
    read -r ss objs bytes bad < <(scrub_run)
    [[ "$bad" == 0 ]] || die "the scrub found $bad bad objects in a fresh store"
    [[ "$objs" -ge "$STORED" ]] || die "the scrub checked $objs of $STORED objects"
    B_OPS+=("$(awk -v n="$STORED" -v s="$bs" 'BEGIN {printf "%.0f", n / s}')")
    S_OPS+=("$(awk -v n="$objs" -v s="$ss" 'BEGIN {printf "%.0f", n / s}')")
    B_MIB+=("$(awk -v b="$bytes" -v s="$bs" 'BEGIN {printf "%.1f", b / s / 1048576}')")
    S_MIB+=("$(awk -v b="$bytes" -v s="$ss" 'BEGIN {printf "%.1f", b / s / 1048576}')")
    log "round $r/$ROUNDS: b3sum ${bs}s (${B_OPS[-1]} objects/s)  elton scrub ${ss}s (${S_OPS[-1]} objects/s)"
done

# --- 2. HTTP small-file reads with and without a running scrub --------------------------------
run_wrk() { # duration
    local out rps
    out=$(wrk -t1 -c"$CONNS" -d"$1"s --timeout 30s "$SMALL_URL")
    if grep -qE 'Non-2xx|Socket errors' <<<"$out"; then
        printf '%s\n' "$out" >&2
        die "wrk reported errors"
    fi
    rps=$(awk '/^Requests\/sec:/ {printf "%.0f", $2}' <<<"$out")
    [[ -n "$rps" ]] || die "no req/s in: $out"
    echo "$rps"
}
log "warming up wrk"
run_wrk 3 >/dev/null
declare -a IDLE=() BUSY=() BUSY_SCRUBBED=()
scrubbed() { curl -sf "http://127.0.0.1:$SLAVE_PORT/metrics" | awk '/^elton_slave_scrubbed_objects_total/ {print $2}'; }
busy_run() {
    local before after
    before=$(scrubbed)
    "$ELTON" scrub --rate "$DEFAULT_RATE" --json >/dev/null 2>&1 &
    SCRUB_PID=$!
    track_pid "$SCRUB_PID" "elton scrub"
    sleep 1 # the scrub is under way
    BUSY+=("$(run_wrk "$DURATION")")
    after=$(scrubbed)
    stop_pid "$SCRUB_PID"
    BUSY_SCRUBBED+=("$(awk -v a="$before" -v b="$after" -v d="$DURATION" 'BEGIN {printf "%.0f", (b - a) / (d + 1)}')")
    sleep 1 # the scrub stops after its current shard
}
# Odd rounds measure idle first, even rounds busy first: the order shows
# in the figures of this loaded machine.
for ((r = 1; r <= ROUNDS; r++)); do
    if ((r % 2)); then
        IDLE+=("$(run_wrk "$DURATION")")
        busy_run
    else
        busy_run
        IDLE+=("$(run_wrk "$DURATION")")
    fi
    log "round $r/$ROUNDS: 4 KiB req/s idle ${IDLE[-1]}  scrubbing ${BUSY[-1]} (scrub: ${BUSY_SCRUBBED[-1]} objects/s)"
done

b_ops=$(median -a "${B_OPS[@]}")
s_ops=$(median -a "${S_OPS[@]}")
b_mib=$(median -a "${B_MIB[@]}")
s_mib=$(median -a "${S_MIB[@]}")
idle=$(median -a "${IDLE[@]}")
busy=$(median -a "${BUSY[@]}")
pace=$(median "${BUSY_SCRUBBED[@]}")

echo
echo "Scrub benchmark ($(nproc) cores; $STORED objects of 1..$MAX_KIB KiB, $((bytes >> 20)) MiB; median of $ROUNDS rounds)"
echo
printf '| %-48s | %12s | %12s | %8s |\n' "test" "elton" "baseline" "ratio"
printf '|%s|%s|%s|%s|\n' "--------------------------------------------------" "--------------" "--------------" "----------"
printf '| %-48s | %12.0f | %12.0f | %7.2fx |\n' "scrub vs b3sum, objects/s" "$s_ops" "$b_ops" "$(ratio "$s_ops" "$b_ops")"
printf '| %-48s | %12.1f | %12.1f | %7.2fx |\n' "scrub vs b3sum, MiB/s" "$s_mib" "$b_mib" "$(ratio "$s_mib" "$b_mib")"
printf '| %-48s | %12.0f | %12.0f | %7.2fx |\n' "4 KiB HTTP req/s, scrub at $DEFAULT_RATE MiB/s vs idle" "$busy" "$idle" "$(ratio "$busy" "$idle")"
echo
echo "rounds: b3sum objects/s ${B_OPS[*]} | scrub objects/s ${S_OPS[*]}"
echo "        req/s idle ${IDLE[*]} | req/s while scrubbing ${BUSY[*]} (scrub objects/s ${BUSY_SCRUBBED[*]})"
echo
load_line
