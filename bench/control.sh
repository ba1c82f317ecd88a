#!/usr/bin/env bash
# The control plane against etcd: three Elton masters forming a Raft group
# and a three-member etcd (Debian's etcd-server, 3.4), on loopback, driven
# by the same load generator (`elton-raftbench`, tests/src/bin_raftbench.rs).
#
#   bash bench/control.sh
#
# Figures, for each system:
#   - small writes with 1, 16 and 64 concurrent clients (closed loop, each
#     client waits for its acknowledgement): writes/s, p50 and p99 latency.
#     Elton: a `put` command of a 14-byte key and a $VALUE_BYTES-byte value
#     through Control.Submit to any member; etcd: a KV.Put of the same key
#     and value. Clients are spread over the three members (followers
#     forward to the leader in both systems). Each figure is the median of
#     $ROUNDS rounds; the two systems alternate within a round.
#   - unavailability after `kill -9` of the leader: ms from the kill to the
#     first acknowledged write sent after it (probes every 5 ms to the two
#     survivors); the killed member is restarted and the group left to
#     settle between measurements; median of $FAILOVERS.
# Both run with their default timers (etcd: heartbeat 100 ms, election
# timeout 1000 ms; Elton: heartbeat 50 ms, election timeout 200-400 ms after
# openraft's leader lease of 400 ms, see docs/operations.md "Control plane
# timers") and without TLS (etcd as configured by default; Elton masters
# with --insecure), so the comparison is Raft and storage, not transport
# security. Elton's leader batches concurrent writes into one log entry
# (control/src/batcher.rs), as etcd does.
#
# Tunables (environment): ROUNDS (3), DURATION (s per load run, 10),
# FAILOVERS (5), CLIENTS ("1 16 64"), VALUE_BYTES (64), SYSTEMS ("etcd
# elton"), ELTON_BIN / RAFTBENCH_BIN (use these binaries, skip the build),
# ELTON_MASTER_FLAGS (extra flags for every Elton master, e.g. timers:
# "--control-election-min-ms 200 --control-election-max-ms 400"). ROUNDS=0
# measures failover only. MASTER_LOG: the masters' ELTON_LOG (default warn;
# "warn,elton_control::batcher=debug,elton_control::forwarder=debug" logs
# every entry and forwarded call with its size and time, in $WORK/m*.log;
# add elton_control::net=debug for each AppendEntries sent and answered, and
# elton_control::store::log_writer=debug for each write of the control log).
# Installs etcd-server with apt-get if it is missing.

set -euo pipefail

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10}
FAILOVERS=${FAILOVERS:-5}
CLIENTS=${CLIENTS:-"1 16 64"}
VALUE_BYTES=${VALUE_BYTES:-64}
SYSTEMS=${SYSTEMS:-"etcd elton"}

# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

if ! command -v etcd >/dev/null; then
    SUDO=""
    [[ $(id -u) -ne 0 ]] && SUDO=sudo
    log "installing etcd-server with apt-get"
    $SUDO apt-get update -qq
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq etcd-server >/dev/null
fi
require etcd curl python3

RAFTBENCH=${RAFTBENCH_BIN:-$ROOT/target/release/elton-raftbench}
if [[ -z "${RAFTBENCH_BIN:-}" ]]; then
    log "building release elton-raftbench"
    (cd "$ROOT" && cargo build --release -q -p elton-tests --bin elton-raftbench) || die "cargo build failed"
fi
[[ -x "$RAFTBENCH" ]] || die "$RAFTBENCH is not an executable"
if [[ " $SYSTEMS " == *" elton "* ]]; then release_bins elton; fi
bench_start control

# ---- etcd: three members ------------------------------------------------

declare -a ETCD_CLIENT ETCD_PEER ETCD_PID
etcd_cluster=""
for i in 1 2 3; do
    ETCD_CLIENT[i]=$(free_port "${ETCD_CLIENT[@]:-}" "${ETCD_PEER[@]:-}")
    ETCD_PEER[i]=$(free_port "${ETCD_CLIENT[@]:-}" "${ETCD_PEER[@]:-}")
    etcd_cluster+="${etcd_cluster:+,}e$i=http://127.0.0.1:${ETCD_PEER[i]}"
done

etcd_start() { # member-number
    local i=$1
    etcd --name "e$i" --data-dir "$WORK/etcd$i" \
        --listen-client-urls "http://127.0.0.1:${ETCD_CLIENT[i]}" \
        --advertise-client-urls "http://127.0.0.1:${ETCD_CLIENT[i]}" \
        --listen-peer-urls "http://127.0.0.1:${ETCD_PEER[i]}" \
        --initial-advertise-peer-urls "http://127.0.0.1:${ETCD_PEER[i]}" \
        --initial-cluster "$etcd_cluster" --initial-cluster-state new \
        --initial-cluster-token elton-bench --log-level error \
        >>"$WORK/etcd$i.log" 2>&1 &
    ETCD_PID[i]=$!
    echo "${ETCD_PID[i]}" >"$WORK/etcd$i.pid"
    track_pid "${ETCD_PID[i]}" "etcd e$i"
}

etcd_wait() { # waits until every member reports healthy
    local i
    for i in 1 2 3; do
        wait_http "http://127.0.0.1:${ETCD_CLIENT[i]}/health" "${ETCD_PID[i]}" "etcd e$i" "$WORK/etcd$i.log"
        for ((t = 0; t < 100; t++)); do
            curl -sf --max-time 1 "http://127.0.0.1:${ETCD_CLIENT[i]}/health" | grep -q '"true"' && break
            sleep 0.1
        done
    done
}

etcd_endpoints() {
    local i out=""
    for i in 1 2 3; do out+="${out:+,}http://127.0.0.1:${ETCD_CLIENT[i]}"; done
    echo "$out"
}

etcd_members() { # --member flags for failover
    local i
    for i in 1 2 3; do
        printf -- '--member e%s=http://127.0.0.1:%s=%s ' "$i" "${ETCD_CLIENT[i]}" "$WORK/etcd$i.pid"
    done
}

# Restarts the member the failover run killed (its pid is gone).
etcd_heal() {
    local i
    for i in 1 2 3; do
        if ! kill -0 "${ETCD_PID[i]}" 2>/dev/null; then
            unset "BENCH_PID_NAMES[${ETCD_PID[i]}]"
            wait "${ETCD_PID[i]}" 2>/dev/null || true
            log "restarting etcd e$i"
            etcd_start "$i"
        fi
    done
    etcd_wait
}

if [[ " $SYSTEMS " == *" etcd "* ]]; then
    log "starting etcd (3 members, clients on ${ETCD_CLIENT[*]})"
    for i in 1 2 3; do etcd_start "$i"; done
    etcd_wait
fi

# ---- Elton: three masters -----------------------------------------------

declare -a ELTON_PORT ELTON_PID
for i in 1 2 3; do
    ELTON_PORT[i]=$(free_port "${ETCD_CLIENT[@]:-}" "${ETCD_PEER[@]:-}" "${ELTON_PORT[@]:-}")
done
# Insecure masters take no token; a secured group would need ELTON_TOKEN
# and ELTON_CA here.
ELTON_BENCH_FLAGS=()

elton_start() { # member-number
    local i=$1 init=()
    [[ $i == 1 ]] && init=(--control-init) # a no-op once m1 is in the group
    # shellcheck disable=SC2086
    ELTON_LOG=${MASTER_LOG:-warn} "$ELTON" master --id "m$i" --data-dir "$WORK/m$i" \
        --listen "127.0.0.1:${ELTON_PORT[i]}" --insecure "${init[@]}" ${ELTON_MASTER_FLAGS:-} \
        >>"$WORK/m$i.log" 2>&1 &
    ELTON_PID[i]=$!
    echo "${ELTON_PID[i]}" >"$WORK/m$i.pid"
    track_pid "${ELTON_PID[i]}" "elton master m$i"
}

elton_ctl() { # member-number control-args...
    "$ELTON" control --master "http://127.0.0.1:${ELTON_PORT[$1]}" "${@:2}"
}

elton_wait() { # member-number: until it answers and knows a leader
    local i=$1 t
    for ((t = 0; t < 200; t++)); do
        kill -0 "${ELTON_PID[i]}" 2>/dev/null || { cat "$WORK/m$i.log" >&2; die "elton master m$i exited"; }
        if elton_ctl "$i" status --json 2>/dev/null | python3 -c '
import json, sys
sys.exit(0 if json.load(sys.stdin).get("leader") else 1)' 2>/dev/null; then
            return 0
        fi
        sleep 0.1
    done
    cat "$WORK/m$i.log" >&2
    die "elton master m$i knows no leader after 20 s"
}

elton_group_start() {
    local i
    log "starting 3 Elton masters (--insecure, gRPC on ${ELTON_PORT[*]})"
    for i in 1 2 3; do elton_start "$i"; done
    elton_wait 1
    for i in 2 3; do
        elton_ctl 1 join --node "m$i" --addr "http://127.0.0.1:${ELTON_PORT[i]}" --role master >/dev/null \
            || die "m$i could not join"
    done
    for i in 1 2 3; do elton_wait "$i"; done
}

elton_endpoints() {
    local i out=""
    for i in 1 2 3; do out+="${out:+,}http://127.0.0.1:${ELTON_PORT[i]}"; done
    echo "$out"
}

elton_members() {
    local i
    for i in 1 2 3; do
        printf -- '--member m%s=http://127.0.0.1:%s=%s ' "$i" "${ELTON_PORT[i]}" "$WORK/m$i.pid"
    done
}

elton_heal() {
    local i
    for i in 1 2 3; do
        if ! kill -0 "${ELTON_PID[i]}" 2>/dev/null; then
            unset "BENCH_PID_NAMES[${ELTON_PID[i]}]"
            wait "${ELTON_PID[i]}" 2>/dev/null || true
            log "restarting elton master m$i"
            elton_start "$i"
        fi
    done
    for i in 1 2 3; do elton_wait "$i"; done
}

if [[ " $SYSTEMS " == *" elton "* ]]; then
    elton_group_start
fi

# ---- measurements -------------------------------------------------------

endpoints_of() { # system
    case $1 in
    etcd) etcd_endpoints ;;
    elton) elton_endpoints ;;
    esac
}

load_once() { # system clients -> "writes_per_s p50_ms p99_ms"
    local out
    out=$("$RAFTBENCH" load --system "$1" --endpoints "$(endpoints_of "$1")" \
        --clients "$2" --seconds "$DURATION" --value-bytes "$VALUE_BYTES" \
        "${ELTON_FLAGS[@]}") || die "$1: load with $2 clients failed"
    python3 -c 'import json, sys
r = json.loads(sys.argv[1])
if r["errors"]:
    print("%s: %d failed writes" % (r["system"], r["errors"]), file=sys.stderr)
print("%.1f %.3f %.3f" % (r["writes_per_s"], r["p50_ms"], r["p99_ms"]))' "$out"
}

failover_once() { # system -> ms
    local out members
    case $1 in
    etcd) members=$(etcd_members) ;;
    elton) members=$(elton_members) ;;
    esac
    # shellcheck disable=SC2086
    out=$("$RAFTBENCH" failover --system "$1" $members "${ELTON_FLAGS[@]}") \
        || die "$1: failover measurement failed"
    log "$1: $out"
    python3 -c 'import json, sys; print("%.0f" % json.loads(sys.argv[1])["failover_ms"])' "$out"
}

heal() { # system
    case $1 in
    etcd) etcd_heal ;;
    elton) elton_heal ;;
    esac
    sleep 3 # a settled group: the restarted member caught up, no election pending
}

ELTON_FLAGS=("${ELTON_BENCH_FLAGS[@]}")
read -ra SYS <<<"$SYSTEMS"
read -ra NCLIENTS <<<"$CLIENTS"

declare -A WPS P50 P99 FAIL
log "warming up"
for s in "${SYS[@]}"; do
    DURATION=2 load_once "$s" 16 >/dev/null
done
for ((r = 1; r <= ROUNDS; r++)); do
    for c in "${NCLIENTS[@]}"; do
        if ((r % 2)); then order=("${SYS[@]}"); else order=(); for ((k = ${#SYS[@]} - 1; k >= 0; k--)); do order+=("${SYS[k]}"); done; fi
        for s in "${order[@]}"; do
            read -r w p50 p99 <<<"$(load_once "$s" "$c")"
            WPS[$s,$c]+="$w " P50[$s,$c]+="$p50 " P99[$s,$c]+="$p99 "
            log "round $r: $s, $c clients: $w writes/s, p50 $p50 ms, p99 $p99 ms"
        done
    done
done
for ((f = 1; f <= FAILOVERS; f++)); do
    for s in "${SYS[@]}"; do
        FAIL[$s]+="$(failover_once "$s") "
        heal "$s"
    done
done

med() { # space-separated list
    # shellcheck disable=SC2086
    median -a $1
}

echo
echo "Control plane: Elton vs etcd 3.4, 3 members each on loopback ($(nproc) cores; median of $ROUNDS rounds of ${DURATION}s per load figure, of $FAILOVERS failovers; ${VALUE_BYTES}-byte values)"
echo
printf '| %-34s |' "figure"
for s in "${SYS[@]}"; do printf ' %10s |' "$s"; done
[[ ${#SYS[@]} -eq 2 ]] && printf ' %14s |' "${SYS[1]} / ${SYS[0]}"
echo
printf '|%s|' "------------------------------------"
for s in "${SYS[@]}"; do printf '%s|' "------------"; done
[[ ${#SYS[@]} -eq 2 ]] && printf '%s|' "----------------"
echo
row() { # label array-name clients format invert
    local label=$1 arr=$2 c=$3 fmt=$4 inv=$5 s v vals=()
    printf '| %-34s |' "$label"
    for s in "${SYS[@]}"; do
        local -n a=$arr
        v=$(med "${a[$s,$c]}")
        vals+=("$v")
        printf " %10${fmt} |" "$v"
    done
    if [[ ${#SYS[@]} -eq 2 ]]; then
        if ((inv)); then printf ' %14s |' "$(ratio "${vals[0]}" "${vals[1]}")"; else printf ' %14s |' "$(ratio "${vals[1]}" "${vals[0]}")"; fi
    fi
    echo
}
((ROUNDS > 0)) && for c in "${NCLIENTS[@]}"; do
    row "$c clients: writes/s" WPS "$c" .0f 0
    row "$c clients: p50 latency, ms" P50 "$c" .2f 1
    row "$c clients: p99 latency, ms" P99 "$c" .2f 1
done
if ((FAILOVERS > 0)); then
    printf '| %-34s |' "kill -9 leader: unavailable, ms"
    fvals=()
    for s in "${SYS[@]}"; do
        v=$(med "${FAIL[$s]}")
        fvals+=("$v")
        printf ' %10.0f |' "$v"
    done
    [[ ${#SYS[@]} -eq 2 ]] && printf ' %14s |' "$(ratio "${fvals[0]}" "${fvals[1]}")"
    echo
fi
echo
if [[ ${#SYS[@]} -eq 2 ]]; then
    echo "ratios: writes/s ${SYS[1]}/${SYS[0]}; latencies and unavailability ${SYS[0]}/${SYS[1]} (above 1.00: ${SYS[1]} better)"
fi
for s in "${SYS[@]}"; do
    ((ROUNDS > 0)) && for c in "${NCLIENTS[@]}"; do echo "per round, $s, $c clients, writes/s: ${WPS[$s,$c]}"; done
    ((FAILOVERS > 0)) && echo "per failover, $s, ms: ${FAIL[$s]}"
done
load_line
