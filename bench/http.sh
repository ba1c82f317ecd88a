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

# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

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
require curl wrk python3 cmp
[[ -x "$NGINX_BIN" ]] || die "nginx not found"
release_bins elton

# --- temp dir, cleanup ---------------------------------------------------------
bench_start http

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
elton_up "$WORK/elton-home"

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
USED_PORTS=("$MASTER_PORT" "$SLAVE_PORT")

# start_nginx NAME SENDFILE(on|off): sets NGINX_URL. worker_processes 2:
# elton's tokio runtime also runs 2 worker threads (one per core on this
# 2-core machine). keepalive_requests is raised so that nginx, like hyper,
# keeps each wrk connection open for the whole run.
start_nginx() {
    local name=$1 sendfile=$2 dir="$WORK/$1" port pid
    port=$(free_port "${USED_PORTS[@]}")
    USED_PORTS+=("$port")
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
    track_pid "$pid" "$name"
    wait_http "http://127.0.0.1:$port/small.bin" "$pid" "$name" "$dir/stderr" "$dir/error.log"
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

e_rps=$(median -a "${E_RPS[@]}")
n_rps=$(median -a "${N_RPS[@]}")
e_mib=$(median -a "${E_MIB[@]}")
n_mib=$(median -a "${N_MIB[@]}")
s_mib=$(median -a "${S_MIB[@]}")

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
load_line
