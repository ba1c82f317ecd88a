#!/usr/bin/env bash
# WAN benchmark: two clusters on loopback, their masters joined through the
# user-space link proxy (`elton-link`), which counts every byte that crosses
# the "WAN".
#
#   bash bench/wan.sh
#
# Cluster A and cluster B each run one master and one slave. Master A
# reaches master B through link A->B, master B reaches master A through link
# B->A; only masters talk across. Three figures:
#
#   1. The thesis scenario: write a $THESIS_MIB MiB file in A (import =
#      write + commit), then read it $READS times over HTTP from B's slave.
#      WAN bytes after the write and after each read, next to what an NFS
#      mount of A's export from B would move: every written and every read
#      byte crosses (write + $READS full reads), which is what the thesis
#      measured for NFS. The NFS figure is computed from that rule, not
#      measured (no NFS server runs here).
#   2. Cross-cluster cold read throughput: a fresh $TPUT_MIB MiB file per
#      round is imported in A and read once from B's slave (every byte
#      crosses the link, verified and stored in B), against a plain HTTP
#      download of the same file from A's slave through a second instance of
#      the same proxy. Median of $ROUNDS rounds, ratio per round. A third
#      download goes through four proxy processes in a row (as many
#      relaying processes as Elton's path has), to tell the cost of the
#      path's length from the cost of Elton's code. Each read also reports
#      the CPU-seconds the whole machine spent during it.
#   3. The 1-byte edit: a $EDIT_MIB MiB file in A, read in B, then one byte
#      in the middle changed and imported as the next version in A, read
#      again in B: WAN bytes of the second read vs the file size.
#
# Tunables: THESIS_MIB (64), READS (3), TPUT_MIB (256), ROUNDS (3),
# EDIT_MIB (256), LATENCY_MS (0, added by both links), RATE (unlimited,
# bytes/s per link direction), ELTON_BIN / LINK_BIN (skip the build),
# KEEP_LOGS=DIR (the servers' logs are copied there at the end; with e.g.
# ELTON_LOG=info,elton_slave=debug for per-chunk timestamps).

set -euo pipefail

THESIS_MIB=${THESIS_MIB:-64}
READS=${READS:-3}
TPUT_MIB=${TPUT_MIB:-256}
ROUNDS=${ROUNDS:-3}
EDIT_MIB=${EDIT_MIB:-256}
LATENCY_MS=${LATENCY_MS:-0}
RATE=${RATE:-}
# INSECURE=1: masters without TLS or authentication (the baseline of the
# "TLS between masters vs without" figure); default: mutual TLS everywhere.
INSECURE=${INSECURE:-}

TOKEN=bench-wan-token-0123456789abcdef

# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

require curl python3 cmp
release_bins elton elton-link
bench_start wan

wait_port() { # port pid name log
    for _ in $(seq 200); do
        python3 -c "import socket,sys; socket.create_connection(('127.0.0.1',int(sys.argv[1])),0.2)" "$1" 2>/dev/null && return 0
        kill -0 "$2" 2>/dev/null || { cat "$4" >&2 || true; die "$3 exited early"; }
        sleep 0.05
    done
    cat "$4" >&2 || true
    die "$3: port $1 did not open"
}

MA=$(free_port); MB=$(free_port); SA=$(free_port); SB=$(free_port)
LAB=$(free_port); LBA=$(free_port); LPLAIN=$(free_port)
LCHAIN=(); for _ in 1 2 3 4; do LCHAIN+=("$(free_port)"); done
echo "$TOKEN" >"$WORK/token"

link_args=()
[[ "$LATENCY_MS" != 0 ]] && link_args+=(--latency-ms "$LATENCY_MS")
[[ -n "$RATE" ]] && link_args+=(--rate "$RATE")
start_link() { # name listen-port target-port
    "$LINK" "127.0.0.1:$2" "127.0.0.1:$3" "${link_args[@]}" >"$WORK/link-$1.out" 2>&1 &
    track_pid $! "link $1"
}
start_link ab "$LAB" "$MB"
start_link ba "$LBA" "$MA"
start_link plain "$LPLAIN" "$SA"
# Four proxy processes in a row: as many relaying processes as Elton's path
# has between slave A and the client (master A, the link, master B, slave
# B), doing nothing but copying bytes.
start_link chain4 "${LCHAIN[3]}" "$SA"
start_link chain3 "${LCHAIN[2]}" "${LCHAIN[3]}"
start_link chain2 "${LCHAIN[1]}" "${LCHAIN[2]}"
start_link chain1 "${LCHAIN[0]}" "${LCHAIN[1]}"

if [[ -n "$INSECURE" ]]; then SCHEME=http; else SCHEME=https; fi
for c in a b; do
    [[ -n "$INSECURE" ]] || "$ELTON" cert init --pki "$WORK/pki-$c" --cluster "$c" --id "$c" >/dev/null
done
start_master() { # cluster port peer-name peer-port
    local security=(--tls-dir "$WORK/pki-$1" --bootstrap-token-file "$WORK/token"
        --peer "$3=https://127.0.0.1:$4,ca=$WORK/pki-$3/ca.pem")
    [[ -z "$INSECURE" ]] || security=(--insecure --peer "$3=http://127.0.0.1:$4")
    "$ELTON" master --id "$1" --cluster "$1" --listen "127.0.0.1:$2" --data-dir "$WORK/master-$1" \
        "${security[@]}" >"$WORK/master-$1.log" 2>&1 &
    track_pid $! "master $1"
}
start_master a "$MA" b "$LAB"; pid_ma=$!
start_master b "$MB" a "$LBA"; pid_mb=$!
wait_port "$MA" "$pid_ma" "master a" "$WORK/master-a.log"
wait_port "$MB" "$pid_mb" "master b" "$WORK/master-b.log"
start_slave() { # cluster port master-port
    [[ -n "$INSECURE" ]] || "$ELTON" cert issue --pki "$WORK/pki-$1" --node "slave-$1" \
        --out "$WORK/tls-slave-$1" >/dev/null
    "$ELTON" slave --listen "127.0.0.1:$2" --data-dir "$WORK/slave-$1" --node-id "slave-$1" \
        --master-url "$SCHEME://127.0.0.1:$3" --tls-dir "$WORK/tls-slave-$1" >"$WORK/slave-$1.log" 2>&1 &
    track_pid $! "slave $1"
}
start_slave a "$SA" "$MA"; pid_sa=$!
start_slave b "$SB" "$MB"; pid_sb=$!
wait_http "http://127.0.0.1:$SA/metrics" "$pid_sa" "slave a" "$WORK/slave-a.log"
wait_http "http://127.0.0.1:$SB/metrics" "$pid_sb" "slave b" "$WORK/slave-b.log"
sleep 1 # both slaves registered with their masters

in_a() { ELTON_MASTER="$SCHEME://127.0.0.1:$MA" ELTON_SLAVE="http://127.0.0.1:$SA" ELTON_TOKEN="$TOKEN" \
    ELTON_CA="$WORK/pki-a/ca.pem" "$ELTON" "$@"; }

# Bytes across both links, both directions, as the links last reported them
# (they print once a second).
wan_bytes() {
    sleep 1.2
    python3 - "$WORK/link-ab.out" "$WORK/link-ba.out" <<'PY'
import sys
total = 0
for path in sys.argv[1:]:
    lines = [l for l in open(path) if l.startswith("up=")]
    if lines:
        up, down = (int(x.split("=")[1]) for x in lines[-1].split())
        total += up + down
print(total)
PY
}
mib() { python3 -c "import sys; print(f'{int(sys.argv[1]) / 2**20:.2f}')" "$1"; }
random_file() { # path mib seed
    python3 - "$1" "$2" "$3" <<'PY'
import random, sys
path, mib, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rng = random.Random(seed)
with open(path, "wb") as f:
    for _ in range(mib):
        f.write(rng.randbytes(1 << 20))
PY
}
# user+system CPU seconds of each server process (for CPU_REPORT=1).
cpu_times() {
    local out="" p
    for p in "${BENCH_PIDS[@]}"; do
        out+="$(awk -v p="$p" '{printf "%s:%.2f ", p, ($14+$15)/100}' "/proc/$p/stat" 2>/dev/null)"
    done
    echo "$out"
}
# CPU-seconds the whole machine has spent busy so far (/proc/stat: user,
# nice, system, irq, softirq, steal; in USER_HZ ticks of 10 ms).
machine_busy() { awk '/^cpu /{print $2+$3+$4+$7+$8+$9}' /proc/stat; }
rate_and_cpu() { # t0 t1 busy0 busy1 -> "MiB/s CPU-seconds"
    python3 -c "import sys; t0,t1,c0,c1=map(float,sys.argv[1:]); print(f'{$TPUT_MIB / (t1 - t0):.0f} {(c1 - c0) / 100:.2f}')" "$@"
}
read_b() { # url-path -> downloads from B's slave into $WORK/got; the time to its first byte in $WORK/ttfb
    curl -fsS -o "$WORK/got" -w '%{time_starttransfer}' "http://127.0.0.1:$SB$1" >"$WORK/ttfb" ||
        die "read of $1 in B failed"
}

# --- 1. the thesis scenario ----------------------------------------------------
log "thesis scenario: ${THESIS_MIB} MiB written in A, read ${READS} times in B"
mkdir -p "$WORK/thesis"
random_file "$WORK/thesis/data.bin" "$THESIS_MIB" 1
# The name check of a new volume asks the peers (a few hundred bytes); it
# is not part of the write.
in_a volume create thesis >/dev/null
w0=$(wan_bytes)
in_a import "$WORK/thesis" thesis -m "thesis write" >/dev/null
w_write=$(wan_bytes)
reads=()
for i in $(seq "$READS"); do
    read_b /v1/volumes/thesis/1/data.bin
    cmp -s "$WORK/got" "$WORK/thesis/data.bin" || die "read $i in B differs"
    reads+=("$(wan_bytes)")
done
size=$((THESIS_MIB << 20))
nfs=$((size * (READS + 1)))

# --- 2. cold read throughput across the link --------------------------------------
log "cold cross-cluster reads of ${TPUT_MIB} MiB vs a plain HTTP download through the same proxy"
tput_e=(); tput_p=(); tput_r=(); cpu_e=(); cpu_p=(); tput_c=(); tput_rc=(); cpu_c=()
for r in $(seq "$ROUNDS"); do
    mkdir -p "$WORK/tput-$r"
    random_file "$WORK/tput-$r/big.bin" "$TPUT_MIB" $((100 + r))
    in_a import --create ${TPUT_IMPORT_ARGS:-} "$WORK/tput-$r" "tput-$r" >/dev/null
    # Warm A's page cache the same way for both: one local read on A.
    curl -fsS -o /dev/null "http://127.0.0.1:$SA/v1/volumes/tput-$r/1/big.bin"
    # Each prints "MiB/s CPU-seconds", the CPU-seconds being what the whole
    # machine (all processes, both cores) spent during the read.
    run_e() {
        local t0 t1 c0 c1; c0=$(machine_busy); t0=${EPOCHREALTIME/[!0-9]/.}
        read_b "/v1/volumes/tput-$r/1/big.bin"
        t1=${EPOCHREALTIME/[!0-9]/.}; c1=$(machine_busy)
        cmp -s "$WORK/got" "$WORK/tput-$r/big.bin" || die "cold read in B differs"
        rate_and_cpu "$t0" "$t1" "$c0" "$c1"
    }
    run_p() {
        local t0 t1 c0 c1; c0=$(machine_busy); t0=${EPOCHREALTIME/[!0-9]/.}
        curl -fsS -o "$WORK/got" -w '%{time_starttransfer}' "http://127.0.0.1:$LPLAIN/v1/volumes/tput-$r/1/big.bin" \
            >"$WORK/ttfb-plain" || die "plain download failed"
        t1=${EPOCHREALTIME/[!0-9]/.}; c1=$(machine_busy)
        rate_and_cpu "$t0" "$t1" "$c0" "$c1"
    }
    run_c() {
        local t0 t1 c0 c1; c0=$(machine_busy); t0=${EPOCHREALTIME/[!0-9]/.}
        curl -fsS -o "$WORK/got" "http://127.0.0.1:${LCHAIN[0]}/v1/volumes/tput-$r/1/big.bin" || die "chained download failed"
        t1=${EPOCHREALTIME/[!0-9]/.}; c1=$(machine_busy)
        rate_and_cpu "$t0" "$t1" "$c0" "$c1"
    }
    cpu_before=$(cpu_times)
    if (( r % 2 )); then e=$(run_e); p=$(run_p); c=$(run_c); else c=$(run_c); p=$(run_p); e=$(run_e); fi
    [[ -n "${CPU_REPORT:-}" ]] && log "round $r CPU seconds (before -> after): $cpu_before -> $(cpu_times)"
    read -r e e_cpu <<<"$e"; read -r p p_cpu <<<"$p"; read -r c c_cpu <<<"$c"
    cpu_e+=("$e_cpu"); cpu_p+=("$p_cpu"); cpu_c+=("$c_cpu"); tput_c+=("$c")
    tput_rc+=("$(ratio "$e" "$c")")
    tput_e+=("$e"); tput_p+=("$p")
    tput_r+=("$(ratio "$e" "$p")")
    log "round $r: elton cold read $e MiB/s ($e_cpu CPU-s), plain download $p MiB/s ($p_cpu CPU-s), through 4 proxies $c MiB/s ($c_cpu CPU-s)"
    # The first byte waits for the version record, the manifests on the
    # path and the recipe before the first chunk: round trips that the plain
    # download does not make.
    log "round $r: first byte after: elton $(cat "$WORK/ttfb") s, plain $(cat "$WORK/ttfb-plain") s"
done

# --- 3. the 1-byte edit -------------------------------------------------------------
log "1-byte edit of a ${EDIT_MIB} MiB file"
mkdir -p "$WORK/edit"
random_file "$WORK/edit/big.bin" "$EDIT_MIB" 7
in_a import --create "$WORK/edit" edit -m v1 >/dev/null
read_b /v1/volumes/edit/1/big.bin
e0=$(wan_bytes)
python3 - "$WORK/edit/big.bin" <<'PY'
import os, sys
with open(sys.argv[1], "r+b") as f:
    f.seek(os.path.getsize(sys.argv[1]) // 2)
    b = f.read(1)
    f.seek(-1, 1)
    f.write(bytes([b[0] ^ 0xFF]))
PY
in_a import "$WORK/edit" edit -m "one byte" >/dev/null
e1=$(wan_bytes)
read_b /v1/volumes/edit/2/big.bin
cmp -s "$WORK/got" "$WORK/edit/big.bin" || die "edited read in B differs"
e2=$(wan_bytes)

# --- report -----------------------------------------------------------------------------
echo
echo "| thesis scenario, ${THESIS_MIB} MiB | WAN bytes (Elton) | cumulative MiB | NFS would move (cumulative MiB) |"
echo "|---|---:|---:|---:|"
echo "| write + commit in A | $((w_write - w0)) | $(mib $((w_write - w0))) | $(mib "$size") |"
prev=$w_write
for i in $(seq "$READS"); do
    cur=${reads[$((i - 1))]}
    echo "| read $i in B | $((cur - prev)) | $(mib $((cur - w0))) | $(mib $((size * (i + 1)))) |"
    prev=$cur
done
total=$((prev - w0))
echo "| **total** | $total | **$(mib "$total")** | **$(mib "$nfs")** |"
echo
python3 -c "import sys; t,s,n=map(int,sys.argv[1:]); print(f'Elton / file size: {t/s:.4f}x; Elton / NFS: {t/n:.3f}x')" "$total" "$size" "$nfs"
echo
echo "| cold read across the link, ${TPUT_MIB} MiB | MiB/s (median of $ROUNDS) |"
echo "|---|---:|"
echo "| Elton: slave B, fetched through master B, link, master A, slave A | $(median "${tput_e[@]}") |"
echo "| plain HTTP download from slave A through the same proxy program | $(median "${tput_p[@]}") |"
echo "| **Elton / plain** (median of per-round ratios: ${tput_r[*]}) | **$(median "${tput_r[@]}")x** |"
echo "| plain HTTP download from slave A through 4 proxy processes in a row | $(median "${tput_c[@]}") |"
echo "| Elton / 4 proxies (median of per-round ratios: ${tput_rc[*]}) | $(median "${tput_rc[@]}")x |"
echo
echo "CPU-seconds the whole machine ($(nproc) cores) spent per read, median: Elton $(median "${cpu_e[@]}"), plain $(median "${cpu_p[@]}"), 4 proxies $(median "${cpu_c[@]}")."
echo
echo "| 1-byte edit of a ${EDIT_MIB} MiB file | bytes |"
echo "|---|---:|"
echo "| WAN at the edit's import in A | $((e1 - e0)) |"
echo "| WAN at B's read of the new version | $((e2 - e1)) ($(mib $((e2 - e1))) MiB) |"
python3 -c "import sys; a,s=map(int,sys.argv[1:]); print(f'| **WAN / file size** | **{a/s:.4f}x** |')" $((e2 - e1)) $((EDIT_MIB << 20))
echo
load_line
