#!/usr/bin/env bash
# FastContainer's proxy (`elton proxy`) on one host: a master (--insecure,
# the control group's only member) and a slave on loopback, release build.
# The app is nginx serving a small file from the Elton volume `site`
# (its config is in the volume; the app's command fills in $PORT and the
# mount's path), run by the proxy from its read-only mount.
#
#   bash bench/fastcontainer.sh          # as root (mounts, cgroups, apt)
#
# Figures:
#   (a) scale from zero: the time from sending a request to an idle app
#       (no instance) to its full answer through the proxy, minus the same
#       command's own start-to-first-answer time run bare in a read-only
#       mount of the same version (spawned, its port polled every 0.5 ms,
#       then one GET): the proxy's overhead (target < 10 ms). Medians of
#       $ROUNDS runs each; each proxied run waits for the idle stop first.
#       The version's mount exists (the proxy mounts each version once per
#       host, at its first start: one warm-up run).
#   (b) small-answer throughput: wrk -t1 -c$CONNS for $DURATION s with the
#       app's Host, through the proxy and through nginx `proxy_pass` (an
#       upstream with keep-alive, worker_processes auto) to the same
#       instance; medians of $ROUNDS runs, alternating, and their ratio
#       (target >= 1.0x); the instance alone for reference.
#   (c) the seed's experiment scaled to this host: $REQUESTS requests at
#       concurrency $CONC (elton-fcbench, keep-alive) to a CPU-bound app
#       (elton-cpuapp: $WORK_US us of CPU per request) limited to 25 % of a
#       core, at most one instance and no scale-up (--max 1, --max-cpu
#       25%). At request $TRIGGER `elton app set scaled --max 2`: the
#       instance, at its quota, asks for more and the proxy's scaling rule
#       starts a second one (scale-out), then balances over both. p50 of
#       the 10,000 requests before vs after the trigger and of the last
#       10,000, and the longest time without any answer around it.
#
# Tunables (environment): ROUNDS (5), DURATION (10), CONNS (32),
# REQUESTS (100000), CONC (16), TRIGGER (50000), WORK_US (200), ELTON_BIN,
# FCBENCH_BIN, CPUAPP_BIN.

set -euo pipefail

ROUNDS=${ROUNDS:-5}
DURATION=${DURATION:-10}
CONNS=${CONNS:-32}
REQUESTS=${REQUESTS:-100000}
CONC=${CONC:-16}
TRIGGER=${TRIGGER:-50000}
WORK_US=${WORK_US:-200}

# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
require_fuse
missing=()
command -v wrk >/dev/null || missing+=(wrk)
command -v nginx >/dev/null || missing+=(nginx-light)
if ((${#missing[@]})); then
    SUDO=""
    [[ $(id -u) == 0 ]] || SUDO=sudo
    log "installing ${missing[*]} with apt-get"
    $SUDO apt-get update -qq
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
require curl wrk nginx python3
release_bins elton
FCBENCH=${FCBENCH_BIN:-$ROOT/target/release/elton-fcbench}
CPUAPP=${CPUAPP_BIN:-$ROOT/target/release/elton-cpuapp}
if [[ -z "${FCBENCH_BIN:-}" || -z "${CPUAPP_BIN:-}" ]]; then
    log "building release elton-fcbench and elton-cpuapp"
    (cd "$ROOT" && cargo build --release -q -p elton-tests --bin elton-fcbench --bin elton-cpuapp) ||
        die "cargo build failed"
fi
bench_start fastcontainer
# nginx's workers (user nobody) reach the mounts under it.
chmod 755 "$WORK"

MPORT=$(free_port)
SPORT=$(free_port "$MPORT")
PPORT=$(free_port "$MPORT" "$SPORT")
NPORT=$(free_port "$MPORT" "$SPORT" "$PPORT")
export ELTON_MASTER=http://127.0.0.1:$MPORT ELTON_SLAVE=http://127.0.0.1:$SPORT
export ELTON_SLAVE_DATA=$WORK/s1 ELTON_HOME=$WORK/home
# An --insecure master checks no token; the CLI wants one for writes.
export ELTON_TOKEN=insecure-bench-token-0000
unset ELTON_CA

ELTON_LOG=warn "$ELTON" master --id m1 --data-dir "$WORK/m1" --listen "127.0.0.1:$MPORT" \
    --insecure --control-init >>"$WORK/m1.log" 2>&1 &
track_pid $! "elton master"
for ((t = 0; t < 200; t++)); do
    "$ELTON" control status --json 2>/dev/null | grep -q '"leader":"m1"' && break
    sleep 0.1
done
ELTON_LOG=warn "$ELTON" slave --listen "127.0.0.1:$SPORT" --data-dir "$WORK/s1" \
    --master "$ELTON_MASTER" --node-id s1 >>"$WORK/s1.log" 2>&1 &
track_pid $! "elton slave"
wait_http "$ELTON_SLAVE/metrics" "$!" "elton slave" "$WORK/s1.log"

mkdir -p "$WORK/site"
printf 'hello from the volume\n' >"$WORK/site/index.html"
cat >"$WORK/site/nginx.conf.in" <<'EOF'
daemon off;
worker_processes 1;
pid /tmp/elton-fc-nginx-@PORT@.pid;
error_log stderr;
events { worker_connections 1024; }
http {
    access_log off;
    server { listen 127.0.0.1:@PORT@; root @ROOT@; }
}
EOF
"$ELTON" import "$WORK/site" site --create >"$WORK/import.log" 2>&1 || {
    cat "$WORK/import.log" >&2
    die "import failed"
}
# shellcheck disable=SC2016 # expanded by the app's shell
CMD='sed -e "s|@PORT@|$PORT|g" -e "s|@ROOT@|$PWD|g" nginx.conf.in >/tmp/elton-fc-nginx-$PORT.conf && exec nginx -e stderr -p /tmp -c /tmp/elton-fc-nginx-$PORT.conf'
"$ELTON" app create zero --host-name zero.test --volume site --cmd "$CMD" --idle 1s >/dev/null
# One instance, so (b) compares the two proxies in front of one backend
# (the proxy would otherwise scale out and spread over several).
"$ELTON" app create steady --host-name steady.test --volume site --cmd "$CMD" --idle 1h --max 1 >/dev/null
"$ELTON" app create scaled --host-name scaled.test --volume site --cmd "$CPUAPP --work-us $WORK_US" \
    --idle 1h --cpu 25% --max-cpu 25% --max 1 --cooldown 5s >/dev/null

ELTON_LOG=info "$ELTON" proxy --listen "127.0.0.1:$PPORT" --dir "$WORK/proxy" \
    --refresh 200ms >>"$WORK/proxy.log" 2>&1 &
PROXY_PID=$!
track_pid "$PROXY_PID" "elton proxy"
track_mount "$WORK/proxy/mounts/site@1"
wait_http "http://127.0.0.1:$PPORT/metrics" "$PROXY_PID" "elton proxy" "$WORK/proxy.log"

# ---- (a) scale from zero ------------------------------------------------------

mkdir -p "$WORK/bare"
"$ELTON" mount site@1 "$WORK/bare" --read-only --upper "$WORK/state-bare" >/dev/null
track_mount "$WORK/bare"

# One bare start: spawn, poll the port, GET; prints ms to the answer.
bare_once() {
    python3 - "$WORK/bare" "$CMD" "$(free_port "$MPORT" "$SPORT" "$PPORT" "$NPORT")" <<'EOF'
import os, signal, socket, subprocess, sys, time
cwd, cmd, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
t0 = time.perf_counter()
p = subprocess.Popen(["sh", "-c", cmd], cwd=cwd, env=dict(os.environ, PORT=str(port)),
                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
while True:
    try:
        s = socket.create_connection(("127.0.0.1", port))
        break
    except OSError:
        time.sleep(0.0005)
s.sendall(b"GET /index.html HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
while s.recv(65536):
    pass
t1 = time.perf_counter()
os.killpg(p.pid, signal.SIGKILL)
p.wait()
print(f"{(t1 - t0) * 1000:.2f}")
EOF
}

metric() { # NAME APP
    curl -s "http://127.0.0.1:$PPORT/metrics" | awk -v k="$1{app=\"$2\"}" '$1 == k {print $2}'
}

# One request to the idle app `zero` through the proxy; prints ms to the answer.
cold_once() {
    python3 - "$PPORT" <<'EOF'
import socket, sys, time
t0 = time.perf_counter()
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
s.sendall(b"GET /index.html HTTP/1.1\r\nHost: zero.test\r\nConnection: close\r\n\r\n")
head = s.recv(65536)
while s.recv(65536):
    pass
t1 = time.perf_counter()
assert head.startswith(b"HTTP/1.1 200"), head[:200]
print(f"{(t1 - t0) * 1000:.2f}")
EOF
}

wait_idle() {
    local w n
    for ((w = 0; w < 100; w++)); do
        n=$(metric elton_proxy_instances zero)
        [[ -z "$n" || "$n" == 0 ]] && return 0
        sleep 0.1
    done
    die "zero did not stop when idle"
}

BARE=() COLD=()
# Warm-ups: the first reads of the files, and the proxy's mount of the
# version (made once per host and version, by the first start).
bare_once >/dev/null
cold_once >/dev/null
for ((r = 0; r < ROUNDS; r++)); do
    BARE+=("$(bare_once)")
    wait_idle
    COLD+=("$(cold_once)")
done
log "bare ms: ${BARE[*]}; through the proxy from zero ms: ${COLD[*]}"

# ---- (b) small-answer throughput ----------------------------------------------

curl -sf -H 'Host: steady.test' "http://127.0.0.1:$PPORT/index.html" >/dev/null || die "steady did not answer"
BPORT=$(grep -o 'app=steady addr=127.0.0.1:[0-9]*' "$WORK/proxy.log" | tail -1 | cut -d: -f2)
[[ -n "$BPORT" ]] || die "no port for steady in the proxy's log"
cat >"$WORK/front.conf" <<EOF
daemon off;
worker_processes auto;
pid $WORK/front.pid;
error_log $WORK/front.err;
events { worker_connections 4096; }
http {
    access_log off;
    upstream backend { server 127.0.0.1:$BPORT; keepalive 64; }
    server {
        listen 127.0.0.1:$NPORT;
        location / {
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host \$host;
        }
    }
}
EOF
nginx -e "$WORK/front.err" -p "$WORK" -c "$WORK/front.conf" &
track_pid $! "nginx proxy_pass"
wait_http "http://127.0.0.1:$NPORT/index.html" "$!" nginx "$WORK/front.err"

rps() { # URL: wrk's Requests/sec
    local out
    out=$(wrk -t1 -c"$CONNS" -d"$DURATION"s -H 'Host: steady.test' "$1")
    if grep -q 'Non-2xx\|Socket errors' <<<"$out"; then
        echo "$out" >&2
        die "wrk reported errors for $1"
    fi
    awk '/^Requests\/sec:/ {printf "%.0f\n", $2}' <<<"$out"
}
ELTON_RPS=() NGINX_RPS=()
rps "http://127.0.0.1:$PPORT/index.html" >/dev/null # warm-up
for ((r = 0; r < ROUNDS; r++)); do
    ELTON_RPS+=("$(rps "http://127.0.0.1:$PPORT/index.html")")
    NGINX_RPS+=("$(rps "http://127.0.0.1:$NPORT/index.html")")
done
DIRECT_RPS=$(rps "http://127.0.0.1:$BPORT/index.html")
log "elton req/s: ${ELTON_RPS[*]}; nginx req/s: ${NGINX_RPS[*]}; instance alone: $DIRECT_RPS"

# ---- (c) 100,000 requests, a second instance at the 50,000th ------------------

curl -sf -H 'Host: scaled.test' "http://127.0.0.1:$PPORT/index.html" >/dev/null || die "scaled did not answer"
C_OUT=$("$FCBENCH" --addr "127.0.0.1:$PPORT" --host scaled.test --requests "$REQUESTS" \
    --concurrency "$CONC" --trigger-at "$TRIGGER" \
    --trigger "\"$ELTON\" app set scaled --max 2 >/dev/null")
log "elton-fcbench: $C_OUT"
SCALED_TO=$("$ELTON" app show scaled --json | python3 -c 'import json,sys
d = json.load(sys.stdin)
print(len(d.get("instances", [])))')
log "scaled runs $SCALED_TO instance(s) after the run"
((SCALED_TO == 2)) || die "the experiment did not scale out (instances: $SCALED_TO); see $WORK/proxy.log"
field() { python3 -c 'import json,sys; d=json.loads(sys.argv[1]); 
for k in sys.argv[2].split("."): d = d[k]
print(d)' "$C_OUT" "$1"; }
us_ms() { awk -v u="$1" 'BEGIN {printf "%.2f", u / 1000}'; }

med() { printf '%.2f' "$(median -a "$@")"; }
echo
echo "| figure | value |"
echo "|---|---|"
printf '| (a) bare start to first answer (nginx, read-only mount), median ms | %s |\n' "$(med "${BARE[@]}")"
printf '| (a) first answer through the proxy from zero, median ms | %s |\n' "$(med "${COLD[@]}")"
printf '| (a) proxy overhead on a cold start, ms (target < 10) | %s |\n' \
    "$(awk -v a="$(med "${COLD[@]}")" -v b="$(med "${BARE[@]}")" 'BEGIN {printf "%.2f", a - b}')"
printf '| (b) through elton proxy, median req/s | %s |\n' "$(median "${ELTON_RPS[@]}")"
printf '| (b) through nginx proxy_pass, median req/s | %s |\n' "$(median "${NGINX_RPS[@]}")"
printf '| (b) ratio elton / nginx (target >= 1.0) | %s |\n' "$(ratio "$(median "${ELTON_RPS[@]}")" "$(median "${NGINX_RPS[@]}")")"
printf '| (b) the instance alone, req/s | %s |\n' "$DIRECT_RPS"
printf '| (c) instances of the app after the run | %s |\n' "$SCALED_TO"
printf '| (c) requests answered / errors | %s / %s |\n' "$(field answered)" "$(field errors)"
printf '| (c) mean of the %s before / after the trigger / of the last %s, ms | %s / %s / %s |\n' "$(field before.count)" "$(field last.count)" \
    "$(us_ms "$(field before.mean_us)")" "$(us_ms "$(field after.mean_us)")" "$(us_ms "$(field last.mean_us)")"
printf '| (c) p50 of the %s before the trigger, ms | %s |\n' "$(field before.count)" "$(us_ms "$(field before.p50_us)")"
printf '| (c) p50 of the %s after the trigger, ms | %s |\n' "$(field after.count)" "$(us_ms "$(field after.p50_us)")"
printf '| (c) p50 of the last %s, ms | %s |\n' "$(field last.count)" "$(us_ms "$(field last.p50_us)")"
printf '| (c) longest request around the trigger, ms | %s |\n' \
    "$(us_ms "$(python3 -c 'import json,sys; d=json.loads(sys.argv[1]); print(max(d["before"]["max_us"], d["after"]["max_us"]))' "$C_OUT")")"
printf '| (c) longest time without an answer around the trigger, ms | %s |\n' "$(us_ms "$(field longest_gap_us)")"
echo
echo "per run, bare ms: ${BARE[*]}"
echo "per run, cold through the proxy ms: ${COLD[*]}"
echo "per run, elton req/s: ${ELTON_RPS[*]}"
echo "per run, nginx req/s: ${NGINX_RPS[*]}"
echo "elton-fcbench: $C_OUT"
load_line
