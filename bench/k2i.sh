#!/usr/bin/env bash
# k2i and drcond on a control group of three Elton masters (--insecure, on
# loopback; each master is also a host that answers `ps` and applies
# limits), release build.
#
#   bash bench/k2i.sh            # as root (drcond writes cgroups)
#
# Figures:
#   - `elton ps --host m1 --window 0ms` (every process of one host, the
#     direct read path, CPU% as the lifetime average like `ps aux` shows
#     it) against `ps aux`: median wall time of $ROUNDS runs each,
#     alternating, and their ratio (target <= 0.5x);
#   - what that time is made of: `elton ps --pid 1` (one process: CLI
#     start, connection, one call), an `elton ps` refused before it
#     connects (process start, argument parsing, runtime), the CPU
#     window's cost (`elton ps --host m1`, default 100 ms window), and the
#     same answer over HTTP (`/v1/proc`) from a fresh `curl` and from one
#     long-lived client on a kept-alive connection (no process start);
#   - `elton ps --all` on the 3 hosts: p50 of $ROUNDS runs;
#   - drcond: from `elton limit --all --pid P --cpu 50%` returning to the
#     limit being in effect on every host (its cpu.cfs_quota_us read back
#     as 50000 under each host's root, and P in one host's group: the
#     hosts share this machine, see below), polled from this shell: p50
#     and p99 of $LIMITS runs (target p50 < 50 ms); each run is released
#     and its groups gone before the next.
# Timings use bash's EPOCHREALTIME (no fork per reading).
#
# Tunables (environment): ROUNDS (10), LIMITS (20), ELTON_BIN.

set -euo pipefail

ROUNDS=${ROUNDS:-10}
LIMITS=${LIMITS:-20}

# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
require ps python3 curl
[[ -d /sys/fs/cgroup/cpu ]] || die "needs cgroup v1 with the cpu controller at /sys/fs/cgroup/cpu"
release_bins elton
bench_start k2i

declare -a PORT PID
for i in 1 2 3; do PORT[i]=$(free_port "${PORT[@]:-}"); done

ctl() { "$ELTON" --master "http://127.0.0.1:${PORT[1]}" "$@"; }

for i in 1 2 3; do
    init=()
    [[ $i == 1 ]] && init=(--control-init)
    ELTON_LOG=warn "$ELTON" master --id "m$i" --data-dir "$WORK/m$i" \
        --listen "127.0.0.1:${PORT[i]}" --insecure "${init[@]}" >>"$WORK/m$i.log" 2>&1 &
    PID[i]=$!
    track_pid "${PID[i]}" "elton master m$i"
done
for ((t = 0; t < 200; t++)); do
    ctl control status --json 2>/dev/null | grep -q '"leader":"m1"' && break
    sleep 0.1
done
for i in 2 3; do
    ctl control join --node "m$i" --addr "http://127.0.0.1:${PORT[i]}" --role master >/dev/null \
        || die "m$i could not join"
done
log "3 masters in one group (gRPC on ${PORT[*]})"

ms() { # start-EPOCHREALTIME: ms since then
    awk -v a="$1" -v b="${EPOCHREALTIME/[!0-9]/.}" 'BEGIN {printf "%.1f\n", (b - a) * 1000}'
}

pct() { # P values...: the P-th percentile (nearest rank)
    local p=$1
    shift
    printf '%s\n' "$@" | sort -n | awk -v p="$p" '{v[NR] = $1} END {i = int((p * NR + 99) / 100); if (i < 1) i = 1; print v[i]}'
}

med() { printf '%.1f' "$(median -a "$@")"; } # median, 1 decimal

# ---- ps ---------------------------------------------------------------------

ELTON_PS=() PS_AUX=() PS_ALL=() PS_ONE=() PS_WINDOW=() START=() CURL=()
for ((r = 0; r < ROUNDS; r++)); do
    t=${EPOCHREALTIME/[!0-9]/.}
    ctl ps --window 10s --deadline 1s >/dev/null 2>&1 && die "a window above the deadline was taken"
    START+=("$(ms "$t")")
    t=${EPOCHREALTIME/[!0-9]/.}
    curl -sf -o /dev/null "http://127.0.0.1:${PORT[1]}/v1/proc?host=m1&window_ms=0" || die "curl /v1/proc failed"
    CURL+=("$(ms "$t")")
    t=${EPOCHREALTIME/[!0-9]/.}
    ctl ps --host m1 --window 0ms >/dev/null
    ELTON_PS+=("$(ms "$t")")
    t=${EPOCHREALTIME/[!0-9]/.}
    ps aux >/dev/null
    PS_AUX+=("$(ms "$t")")
    t=${EPOCHREALTIME/[!0-9]/.}
    ctl ps --host m1 --window 0ms --pid 1 >/dev/null
    PS_ONE+=("$(ms "$t")")
    t=${EPOCHREALTIME/[!0-9]/.}
    ctl ps --host m1 >/dev/null
    PS_WINDOW+=("$(ms "$t")")
    t=${EPOCHREALTIME/[!0-9]/.}
    ctl ps --all --window 0ms >/dev/null
    PS_ALL+=("$(ms "$t")")
done
# CPU time, which the machine's load does not inflate the way it does wall
# time: the client's (perf stat's task-clock) and the master's (its threads'
# schedstat run time, before and after the call; it includes a few Raft
# heartbeats), against `ps aux`'s.
server_ns() { # pid: CPU ns its threads have run
    local f n sum=0
    for f in /proc/"$1"/task/*/schedstat; do
        read -r n _ <"$f" 2>/dev/null || continue
        sum=$((sum + n))
    done
    echo "$sum"
}
task_ms() { # cmd...: the command's CPU ms (perf stat task-clock)
    perf stat -x, -e task-clock -- "$@" 2>&1 >/dev/null | awk -F, '$3 ~ /task-clock/ {printf "%.2f\n", $1}'
}
CPU_CLIENT=() CPU_SERVER=() CPU_PS=()
if command -v perf >/dev/null && perf stat -e task-clock true >/dev/null 2>&1; then
    for ((r = 0; r < ROUNDS; r++)); do
        before=$(server_ns "${PID[1]}")
        CPU_CLIENT+=("$(task_ms "$ELTON" --master "http://127.0.0.1:${PORT[1]}" ps --host m1 --window 0ms)")
        after=$(server_ns "${PID[1]}")
        CPU_SERVER+=("$(awk -v a="$before" -v b="$after" 'BEGIN {printf "%.2f\n", (b - a) / 1e6}')")
        CPU_PS+=("$(task_ms ps aux)")
    done
else
    log "no usable perf: CPU times left out"
fi

# A long-lived client: one HTTP/1.1 connection kept alive, each answer
# read and parsed (what a monitoring agent would do); no process start.
read -r KEEP_ALIVE < <(python3 - "${PORT[1]}" "$ROUNDS" <<'PY'
import http.client, json, statistics, sys, time
port, rounds = int(sys.argv[1]), int(sys.argv[2])
c = http.client.HTTPConnection("127.0.0.1", port)
times = []
for i in range(rounds + 1):
    t = time.perf_counter()
    c.request("GET", "/v1/proc?host=m1&window_ms=0")
    r = c.getresponse()
    body = r.read()
    assert r.status == 200, (r.status, body[:200])
    json.loads(body)
    if i:  # the first pays for the connection
        times.append((time.perf_counter() - t) * 1000)
print("%.1f" % statistics.median(times))
PY
)
procs=$(ctl ps --host m1 --window 0ms --json | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["hosts"]["m1"]["procs"]))')

# ---- drcond -----------------------------------------------------------------
#
# The three hosts share this machine's /proc and cgroup tree, so one pid is
# selected on all three: the first host to reconcile takes the process into
# its group, the other two make their groups (limit written) and leave the
# process to it (`elton limit ls`: "not taken: another Elton host on this
# machine holds it"). "In effect on every host" is therefore: each host's
# group holds the quota, and the process is in one of the three groups.
# Each host's root is the one its report names (`root` in `limit ls
# --json`), not a glob: roots of earlier runs (other data dirs) may remain
# on the machine under the same host names.

cpu_cg=$(awk -F: '$2 ~ /(^|,)cpu(,|$)/ {print $3}' /proc/self/cgroup)
cpu_dir=/sys/fs/cgroup/cpu${cpu_cg%/}

sleep 1000 &
SLEEPER=$!
track_pid "$SLEEPER" "limited sleep"

# A first limit, untimed: names each host's root.
id=$(ctl limit --json --pid "$SLEEPER" --all --cpu 50% | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
declare -A ROOT=()
for ((w = 0; w < 100; w++)); do
    while read -r h r; do ROOT[$h]=$r; done < <(ctl limit ls --json | python3 -c '
import json, sys
for l in json.load(sys.stdin):
    for h, st in l["status"].items():
        if st.get("root") and st.get("state") == "applied":
            print(h, st["root"])')
    [[ ${#ROOT[@]} == 3 ]] && break
    sleep 0.1
done
[[ ${#ROOT[@]} == 3 ]] || die "the first limit was not applied on every host: $(ctl limit ls)"
log "host roots: ${ROOT[*]}"

gone() { # id: its group is gone under every host's root
    local h
    for h in m1 m2 m3; do
        [[ -d $cpu_dir/${ROOT[$h]}/$1 ]] && return 1
    done
    return 0
}

release_gone() { # id: releases it, waits until every group is gone
    ctl limit release "$1" >/dev/null
    for ((w = 0; w < 200; w++)); do
        gone "$1" && return 0
        sleep 0.05
    done
    die "limit $1 released but a group is left: $(ls -d "$cpu_dir"/elton-m?-*/"$1" 2>/dev/null)"
}
release_gone "$id"

# Reads with builtins only (no fork per poll).
in_effect() { # id: 0 when every host's group holds the quota and one holds the process
    local h q line held=0
    for h in m1 m2 m3; do
        q=""
        read -r q 2>/dev/null <"$cpu_dir/${ROOT[$h]}/$1/cpu.cfs_quota_us" || return 1
        [[ $q == 50000 ]] || return 1
    done
    while IFS= read -r line; do
        [[ $line =~ ^[0-9]+:([a-z,]*,)?cpu(,[a-z,]*)?:.*/elton-m[123]-[0-9a-f]{8}/$1$ ]] && held=1
    done </proc/"$SLEEPER"/cgroup
    [[ $held == 1 ]]
}

EFFECT=()
for ((r = 0; r < LIMITS; r++)); do
    id=$(ctl limit --json --pid "$SLEEPER" --all --cpu 50% | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
    t=${EPOCHREALTIME/[!0-9]/.}
    for ((spin = 0; ; spin++)); do
        in_effect "$id" && break
        ((spin < 200000)) || die "limit $id not in effect on every host: $(ctl limit ls)"
    done
    EFFECT+=("$(ms "$t")")
    release_gone "$id"
done

echo
echo "| figure | value |"
echo "|---|---|"
printf '| `elton ps --host m1 --window 0ms` (%s processes), median ms | %s |\n' "$procs" "$(med "${ELTON_PS[@]}")"
printf '| `ps aux`, median ms | %s |\n' "$(med "${PS_AUX[@]}")"
printf '| ratio elton ps / ps aux | %s |\n' "$(ratio "$(med "${ELTON_PS[@]}")" "$(med "${PS_AUX[@]}")")"
printf '| `elton ps --host m1 --pid 1` (fixed cost), median ms | %s |\n' "$(med "${PS_ONE[@]}")"
printf '| `elton ps` refused before connecting (process start, arguments, runtime), median ms | %s |\n' "$(med "${START[@]}")"
printf '| `curl /v1/proc?host=m1&window_ms=0` (fresh small process, HTTP), median ms | %s |\n' "$(med "${CURL[@]}")"
printf '| the same over one kept-alive connection (python, parsed), median ms | %s |\n' "$KEEP_ALIVE"
printf '| ratio kept-alive / ps aux | %s |\n' "$(ratio "$KEEP_ALIVE" "$(med "${PS_AUX[@]}")")"
if ((${#CPU_PS[@]})); then
    printf '| CPU: `elton ps` client process, median ms | %s |\n' "$(med "${CPU_CLIENT[@]}")"
    printf '| CPU: the master answering it, median ms | %s |\n' "$(med "${CPU_SERVER[@]}")"
    printf '| CPU: `ps aux`, median ms | %s |\n' "$(med "${CPU_PS[@]}")"
    printf '| CPU ratio (client + master) / ps aux | %s |\n' "$(ratio "$(awk -v a="$(med "${CPU_CLIENT[@]}")" -v b="$(med "${CPU_SERVER[@]}")" 'BEGIN {print a + b}')" "$(med "${CPU_PS[@]}")")"
fi
printf '| `elton ps --host m1` (100 ms CPU window), median ms | %s |\n' "$(med "${PS_WINDOW[@]}")"
printf '| `elton ps --all` (3 hosts), p50 ms | %s |\n' "$(pct 50 "${PS_ALL[@]}")"
printf '| limit to in effect on 3 hosts, p50 ms | %s |\n' "$(pct 50 "${EFFECT[@]}")"
printf '| limit to in effect on 3 hosts, p99 ms | %s |\n' "$(pct 99 "${EFFECT[@]}")"
echo
echo "per run, elton ps ms: ${ELTON_PS[*]}"
echo "per run, ps aux ms: ${PS_AUX[*]}"
echo "per run, elton ps --pid 1 ms: ${PS_ONE[*]}"
echo "per run, elton ps refused before connecting ms: ${START[*]}"
echo "per run, curl /v1/proc ms: ${CURL[*]}"
echo "per run, elton ps (100 ms window) ms: ${PS_WINDOW[*]}"
echo "per run, elton ps --all ms: ${PS_ALL[*]}"
echo "per limit, ms: ${EFFECT[*]}"
load_line
