#!/usr/bin/env bash
# HTTP read benchmark: Elton's slave vs nginx serving the same bytes.
#
#   bash bench/http.sh
#
# Builds the release `elton`, starts `elton up` (temporary ELTON_HOME, free
# loopback ports), imports a 4 KiB and a 64 MiB random file as version 1 of a
# new volume, starts nginx (own config, own temp dir, same disk) on another
# loopback port serving copies of the same two files, warms both, then
# measures with wrk:
#   - requests/s for the 4 KiB file  (wrk -t1 -c32)
#   - MiB/s      for the 64 MiB file (wrk -t1 -c4)
# nginx runs with sendfile on (the comparison asked for); a second nginx with
# sendfile off is measured on the 64 MiB file as a reference, because over
# loopback sendfile is not always nginx's fastest path for large files.
# Elton is read through its numbered URL /v1/volumes/<vol>/<N>/<file>
# (no `latest` redirect). Each figure is the median of $ROUNDS rounds, the two
# servers measured alternately within a round.
#
# Tunables (environment): DURATION (s per measurement, default 10),
# WARMUP (s, default 3), ROUNDS (default 3), SMALL_CONNS (32), BIG_CONNS (4),
# ELTON_BIN (use this elton binary instead of building target/release/elton).
# Everything talks to 127.0.0.1 only. Needs root or sudo for apt-get if
# nginx/wrk are missing.

set -euo pipefail

DURATION=${DURATION:-10}
WARMUP=${WARMUP:-3}
ROUNDS=${ROUNDS:-3}
SMALL_CONNS=${SMALL_CONNS:-32}
BIG_CONNS=${BIG_CONNS:-4}
VOLUME=bench-http

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ELTON="${ELTON_BIN:-$ROOT/target/release/elton}"

# Loopback only: never send benchmark traffic through a proxy.
unset http_proxy https_proxy HTTP_PROXY HTTPS_PROXY all_proxy ALL_PROXY
export no_proxy=127.0.0.1,localhost NO_PROXY=127.0.0.1,localhost

log() { printf '[http.sh] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# --- tools -------------------------------------------------------------------
NGINX_BIN=$(command -v nginx || true)
[[ -z "$NGINX_BIN" && -x /usr/sbin/nginx ]] && NGINX_BIN=/usr/sbin/nginx
if [[ -z "$NGINX_BIN" ]] || ! command -v wrk >/dev/null; then
    SUDO=""
    [[ $(id -u) -ne 0 ]] && SUDO=sudo
    log "installing nginx and wrk with apt-get"
    $SUDO apt-get update -qq
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx wrk >/dev/null
    NGINX_BIN=$(command -v nginx || echo /usr/sbin/nginx)
fi
for t in curl wrk python3 cmp; do
    command -v "$t" >/dev/null || die "$t is required"
done
[[ -x "$NGINX_BIN" ]] || die "nginx not found"

if [[ -z "${ELTON_BIN:-}" ]]; then
    log "building release elton"
    (cd "$ROOT" && cargo build --release -q -p eltonfs) || die "cargo build failed"
fi
[[ -x "$ELTON" ]] || die "$ELTON is not an executable"
log "elton binary: $ELTON"

# --- temp dir, cleanup ---------------------------------------------------------
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/elton-bench-http.XXXXXX")
ELTON_PID=""
NGINX_PIDS=()

stop_pid() { # pid name: TERM, wait up to 5 s, then KILL
    local pid=$1 name=$2 i
    [[ -n "$pid" ]] || return 0
    kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        log "$name ($pid) did not stop; killing"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
}

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    local p
    for p in "${NGINX_PIDS[@]}"; do stop_pid "$p" nginx; done
    stop_pid "$ELTON_PID" elton
    rm -rf "$WORK"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

free_port() { # asks the kernel for a free loopback port
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

wait_http() { # url pid name: up to 20 s
    local url=$1 pid=$2 name=$3 i
    for ((i = 0; i < 200; i++)); do
        kill -0 "$pid" 2>/dev/null || die "$name exited early (see logs above)"
        if curl -s -o /dev/null --max-time 1 "$url"; then return 0; fi
        sleep 0.1
    done
    die "$name not answering at $url after 20 s"
}

# --- test data ------------------------------------------------------------------
SRC="$WORK/src"
WWW="$WORK/www"
mkdir -p "$SRC" "$WWW"
head -c 4096 /dev/urandom >"$SRC/small.bin"
head -c $((64 << 20)) /dev/urandom >"$SRC/big.bin"
cp "$SRC/small.bin" "$SRC/big.bin" "$WWW/"
SMALL_BYTES=4096
BIG_BYTES=$((64 << 20))

# --- elton -----------------------------------------------------------------------
export ELTON_HOME="$WORK/elton-home"
MASTER_PORT=$(free_port)
SLAVE_PORT=$(free_port)
while [[ "$SLAVE_PORT" == "$MASTER_PORT" ]]; do SLAVE_PORT=$(free_port); done
log "starting elton up (master 127.0.0.1:$MASTER_PORT, slave 127.0.0.1:$SLAVE_PORT)"
UP_EXTRA=()
# Newer `elton up` also mounts a volume; the benchmark needs only the servers.
if "$ELTON" up --help 2>/dev/null | grep -q -- '--no-mount'; then UP_EXTRA=(--no-mount); fi
ELTON_LOG=warn "$ELTON" up "${UP_EXTRA[@]}" --data-dir "$ELTON_HOME" \
    --master-listen "127.0.0.1:$MASTER_PORT" \
    --slave-listen "127.0.0.1:$SLAVE_PORT" >"$WORK/elton.out" 2>"$WORK/elton.err" &
ELTON_PID=$!
if ! (wait_http "http://127.0.0.1:$SLAVE_PORT/metrics" "$ELTON_PID" elton); then
    cat "$WORK/elton.out" "$WORK/elton.err" >&2 || true
    exit 1
fi
export ELTON_MASTER="http://127.0.0.1:$MASTER_PORT"
export ELTON_SLAVE="http://127.0.0.1:$SLAVE_PORT"
ELTON_TOKEN=$(cat "$ELTON_HOME/token")
export ELTON_TOKEN

log "importing test files"
IMPORT_OUT=$("$ELTON" import --create "$SRC" "$VOLUME")
log "$IMPORT_OUT"
VERSION=$(sed -n "s/^$VOLUME@\([0-9][0-9]*\):.*/\1/p" <<<"$IMPORT_OUT")
[[ -n "$VERSION" ]] || die "could not read the version from: $IMPORT_OUT"
ELTON_BASE="http://127.0.0.1:$SLAVE_PORT/v1/volumes/$VOLUME/$VERSION"

# --- nginx --------------------------------------------------------------------------
USER_LINE=""
if [[ $(id -u) -eq 0 ]]; then
    # Workers would drop to `nobody`, who cannot read the 0700 temp dir.
    USER_LINE="user root $(id -gn);"
fi
USED_PORTS=" $MASTER_PORT $SLAVE_PORT "

# start_nginx NAME SENDFILE(on|off): sets NGINX_URL. worker_processes 2:
# elton's tokio runtime also runs 2 worker threads (one per core on this
# 2-core machine). keepalive_requests is raised so that nginx, like hyper,
# keeps each wrk connection open for the whole run.
start_nginx() {
    local name=$1 sendfile=$2 dir="$WORK/$1" port pid
    port=$(free_port)
    while [[ "$USED_PORTS" == *" $port "* ]]; do port=$(free_port); done
    USED_PORTS+="$port "
    mkdir -p "$dir"
    cat >"$dir/nginx.conf" <<NGINX_CONF
$USER_LINE
worker_processes 2;
daemon off;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections 1024; }
http {
    access_log off;
    sendfile $sendfile;
    keepalive_requests 1000000;
    keepalive_timeout 65;
    types { }
    default_type application/octet-stream;
    client_body_temp_path $dir/client_body;
    proxy_temp_path $dir/proxy;
    fastcgi_temp_path $dir/fastcgi;
    uwsgi_temp_path $dir/uwsgi;
    scgi_temp_path $dir/scgi;
    server {
        listen 127.0.0.1:$port;
        root $WWW;
    }
}
NGINX_CONF
    log "starting $name (sendfile $sendfile) on 127.0.0.1:$port"
    "$NGINX_BIN" -p "$dir" -c "$dir/nginx.conf" 2>"$dir/stderr" &
    pid=$!
    NGINX_PIDS+=("$pid")
    if ! (wait_http "http://127.0.0.1:$port/small.bin" "$pid" "$name"); then
        cat "$dir/stderr" "$dir/error.log" >&2 || true
        exit 1
    fi
    NGINX_URL="http://127.0.0.1:$port"
}

start_nginx nginx on
NGINX_BASE=$NGINX_URL
# Reference only: on loopback, sendfile can be slower than read/write for
# large files, so the 64 MiB figure is also taken against this instance.
start_nginx nginx-nosendfile off
NOSF_BASE=$NGINX_URL

# --- check all serve the same bytes ---------------------------------------------------
for f in small.bin big.bin; do
    for base in "$ELTON_BASE" "$NGINX_BASE" "$NOSF_BASE"; do
        curl -sf -o "$WORK/got" "$base/$f" || die "GET $base/$f failed"
        cmp -s "$WORK/got" "$SRC/$f" || die "$base/$f: wrong bytes"
    done
done
rm -f "$WORK/got"
log "all servers return identical bytes; response headers:"
curl -sI "$ELTON_BASE/small.bin" | sed 's/^/    elton: /' >&2
curl -sI "$NGINX_BASE/small.bin" | sed 's/^/    nginx: /' >&2

# --- wrk ----------------------------------------------------------------------------
# Prints "requests_per_s bytes_per_s" from one wrk run; fails on errors.
run_wrk() { # conns duration url
    local out rps tps
    out=$(wrk -t1 -c"$1" -d"$2"s --timeout 30s "$3")
    if grep -qE 'Non-2xx|Socket errors' <<<"$out"; then
        log "wrk reported errors for $3:"
        printf '%s\n' "$out" >&2
        return 1
    fi
    rps=$(awk '/^Requests\/sec:/ {print $2}' <<<"$out")
    # wrk prints Transfer/sec with binary units (1KB = 1024 B).
    tps=$(awk '/^Transfer\/sec:/ {
        v = $2; u = v; sub(/[0-9.]+/, "", u); sub(/[A-Za-z]+$/, "", v);
        m = 1; if (u == "KB") m = 1024; else if (u == "MB") m = 1024^2;
        else if (u == "GB") m = 1024^3; else if (u == "TB") m = 1024^4;
        printf "%.0f", v * m }' <<<"$out")
    [[ -n "$rps" && -n "$tps" ]] || { printf '%s\n' "$out" >&2; return 1; }
    echo "$rps $tps"
}

median() { sort -g | awk '{a[NR] = $1} END {
    if (NR == 0) exit 1;
    if (NR % 2) print a[(NR + 1) / 2]; else printf "%.2f\n", (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }

log "warming up (${WARMUP}s each)"
for base in "$ELTON_BASE" "$NGINX_BASE" "$NOSF_BASE"; do
    run_wrk "$SMALL_CONNS" "$WARMUP" "$base/small.bin" >/dev/null
    run_wrk "$BIG_CONNS" "$WARMUP" "$base/big.bin" >/dev/null
done

mib() { awk -v t="${1##* }" 'BEGIN {printf "%.1f", t / 1048576}'; }
declare -a E_RPS=() N_RPS=() E_MIB=() N_MIB=() S_MIB=()
for ((r = 1; r <= ROUNDS; r++)); do
    log "round $r/$ROUNDS (${DURATION}s per run)"
    res=$(run_wrk "$SMALL_CONNS" "$DURATION" "$ELTON_BASE/small.bin")
    E_RPS+=("${res%% *}")
    res=$(run_wrk "$SMALL_CONNS" "$DURATION" "$NGINX_BASE/small.bin")
    N_RPS+=("${res%% *}")
    res=$(run_wrk "$BIG_CONNS" "$DURATION" "$ELTON_BASE/big.bin")
    E_MIB+=("$(mib "$res")")
    res=$(run_wrk "$BIG_CONNS" "$DURATION" "$NGINX_BASE/big.bin")
    N_MIB+=("$(mib "$res")")
    res=$(run_wrk "$BIG_CONNS" "$DURATION" "$NOSF_BASE/big.bin")
    S_MIB+=("$(mib "$res")")
    log "  4 KiB req/s  elton ${E_RPS[-1]}  nginx ${N_RPS[-1]}"
    log "  64 MiB MiB/s elton ${E_MIB[-1]}  nginx ${N_MIB[-1]}  nginx-nosendfile ${S_MIB[-1]}"
done

e_rps=$(printf '%s\n' "${E_RPS[@]}" | median)
n_rps=$(printf '%s\n' "${N_RPS[@]}" | median)
e_mib=$(printf '%s\n' "${E_MIB[@]}" | median)
n_mib=$(printf '%s\n' "${N_MIB[@]}" | median)
s_mib=$(printf '%s\n' "${S_MIB[@]}" | median)
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {print a / b}'; }

echo
echo "HTTP read benchmark ($(nproc) cores; wrk -t1, ${DURATION}s runs, median of $ROUNDS rounds)"
echo
printf '| %-40s | %10s | %10s | %11s |\n' "test" "elton" "nginx" "elton/nginx"
printf '|%s|%s|%s|%s|\n' "------------------------------------------" "------------" "------------" "-------------"
printf '| %-40s | %10.0f | %10.0f | %10.2fx |\n' "4 KiB file, req/s (-c$SMALL_CONNS)" \
    "$e_rps" "$n_rps" "$(ratio "$e_rps" "$n_rps")"
printf '| %-40s | %10.1f | %10.1f | %10.2fx |\n' "64 MiB file, MiB/s (-c$BIG_CONNS)" \
    "$e_mib" "$n_mib" "$(ratio "$e_mib" "$n_mib")"
printf '| %-40s | %10.1f | %10.1f | %10.2fx |\n' "64 MiB file, MiB/s, nginx sendfile off" \
    "$e_mib" "$s_mib" "$(ratio "$e_mib" "$s_mib")"
echo
echo "rounds: elton req/s ${E_RPS[*]} | nginx req/s ${N_RPS[*]}"
echo "        elton MiB/s ${E_MIB[*]} | nginx MiB/s ${N_MIB[*]} | nginx sendfile off MiB/s ${S_MIB[*]}"
echo
echo "load average (1/5/15 min) at start: $LOAD_START; at end: $(cut -d' ' -f1-3 /proc/loadavg)"
