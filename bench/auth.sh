#!/usr/bin/env bash
# What authentication costs: the same single node with TLS and tokens (the
# default) and with --insecure (no TLS, no checks), side by side.
#
#   bash bench/auth.sh
#
# Builds the release `elton`, starts two `elton up --no-mount` (temporary
# ELTON_HOMEs, free loopback ports): one as shipped, one with --insecure.
# Imports the same 4 KiB file into each, then, in each of $ROUNDS rounds
# (the order of the two alternates from round to round):
#   - HTTP small-file reads: wrk -t1 -c32 for $DURATION s on the 4 KiB file's
#     numbered URL (slave reads are public either way: the figure shows that
#     nothing on the read path pays for authentication);
#   - commit latency: $COMMITS one-file commits in a row through the slave's
#     HTTP (`PUT /v1/volumes/<vol>/<file>` with the token; the slave checks
#     the token with the master, the master authenticates, validates and
#     commits), the median per-commit time of curl;
#   - CLI commit latency: $IMPORTS `elton import` of a one-file directory
#     (a new process each: TLS handshake and token included), median.
# Each figure is the median of the rounds' medians; ratios are "with
# authentication / without" for req/s and "without / with" for latencies,
# so 1.00 means no cost and the target is >= 0.9 for every row.
#
# Tunables (environment): ROUNDS (5), DURATION (s per wrk run, 10),
# COMMITS (40), IMPORTS (5), ELTON_BIN (use this binary, skip the build).
# Loopback only. Needs root or sudo for apt-get if wrk is missing.

set -euo pipefail

ROUNDS=${ROUNDS:-5}
DURATION=${DURATION:-10}
COMMITS=${COMMITS:-40}
IMPORTS=${IMPORTS:-5}
CONNS=32
VOLUME=bench-auth

# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

if ! command -v wrk >/dev/null; then
    SUDO=""
    [[ $(id -u) -ne 0 ]] && SUDO=sudo
    log "installing wrk with apt-get"
    $SUDO apt-get update -qq
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null
fi
require curl wrk python3
release_bins elton
bench_start auth

mkdir -p "$WORK/src" "$WORK/one"
head -c 4096 /dev/urandom >"$WORK/src/small.bin"
cp "$WORK/src/small.bin" "$WORK/one/"

# One node per mode; their client settings kept by name.
declare -A HOME_OF MASTER_OF SLAVE_OF TOKEN_OF
start() { # mode [flags]
    elton_up "$WORK/$1" "${@:2}"
    HOME_OF[$1]=$ELTON_HOME MASTER_OF[$1]=$ELTON_MASTER
    SLAVE_OF[$1]=$ELTON_SLAVE TOKEN_OF[$1]=$ELTON_TOKEN
}
start secure
start insecure --insecure
in_mode() { # mode command...
    ELTON_HOME=${HOME_OF[$1]} ELTON_MASTER=${MASTER_OF[$1]} ELTON_SLAVE=${SLAVE_OF[$1]} \
        ELTON_TOKEN=${TOKEN_OF[$1]} "${@:2}"
}
for m in secure insecure; do
    in_mode "$m" "$ELTON" import --create "$WORK/src" "$VOLUME" >/dev/null
    who=$(in_mode "$m" "$ELTON" whoami)
    log "$m: whoami: $who"
    curl -sf -o /dev/null "${SLAVE_OF[$m]}/v1/volumes/$VOLUME/1/small.bin" || die "$m: read failed"
done

rps() { # mode
    local out
    out=$(wrk -t1 -c"$CONNS" -d"$DURATION"s "${SLAVE_OF[$1]}/v1/volumes/$VOLUME/1/small.bin")
    if grep -qE 'Non-2xx|Socket errors' <<<"$out"; then
        printf '%s\n' "$out" >&2
        die "$1: wrk reported errors"
    fi
    awk '/^Requests\/sec:/ {print $2}' <<<"$out"
}

put_ms() { # mode round: median ms of $COMMITS one-file commits over HTTP
    local i res code t times=()
    for ((i = 0; i < COMMITS; i++)); do
        res=$(curl -s -o /dev/null -w '%{http_code} %{time_total}' -X PUT \
            -H "Authorization: Bearer ${TOKEN_OF[$1]}" --data-binary @"$WORK/src/small.bin" \
            "${SLAVE_OF[$1]}/v1/volumes/$VOLUME/r$2/f$i.bin")
        code=${res%% *} t=${res##* }
        [[ $code == 201 ]] || die "$1: PUT answered $code"
        times+=("$(awk -v t="$t" 'BEGIN {printf "%.3f", t * 1000}')")
    done
    printf '%.2f' "$(median -a "${times[@]}")"
}

import_ms() { # mode: median ms of $IMPORTS `elton import` of one file
    local i t0 t1 times=()
    for ((i = 0; i < IMPORTS; i++)); do
        t0=${EPOCHREALTIME/[!0-9]/.}
        in_mode "$1" "$ELTON" import "$WORK/one" "$VOLUME" >/dev/null
        t1=${EPOCHREALTIME/[!0-9]/.}
        times+=("$(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.3f", (b - a) * 1000}')")
    done
    printf '%.1f' "$(median -a "${times[@]}")"
}

log "warming up"
for m in secure insecure; do
    DURATION=2 rps "$m" >/dev/null
    COMMITS=5 put_ms "$m" 0 >/dev/null
done

declare -A RPS PUT IMP
for ((r = 1; r <= ROUNDS; r++)); do
    if ((r % 2)); then order=(secure insecure); else order=(insecure secure); fi
    for m in "${order[@]}"; do
        RPS[$m]+="$(rps "$m") "
        PUT[$m]+="$(put_ms "$m" "$r") "
        IMP[$m]+="$(import_ms "$m") "
    done
    log "round $r/$ROUNDS done"
done

med() { # space-separated list
    # shellcheck disable=SC2086
    median -a $1
}
s_rps=$(med "${RPS[secure]}") i_rps=$(med "${RPS[insecure]}")
s_put=$(med "${PUT[secure]}") i_put=$(med "${PUT[insecure]}")
s_imp=$(med "${IMP[secure]}") i_imp=$(med "${IMP[insecure]}")

echo
echo "Authentication cost ($(nproc) cores; median of $ROUNDS rounds; per round: wrk -t1 -c$CONNS ${DURATION}s, $COMMITS HTTP commits, $IMPORTS CLI imports)"
echo
printf '| %-46s | %12s | %12s | %6s |\n' "figure" "TLS + tokens" "--insecure" "ratio"
printf '|%s|%s|%s|%s|\n' "------------------------------------------------" "--------------" "--------------" "--------"
printf '| %-46s | %12.0f | %12.0f | %6s |\n' "HTTP 4 KiB reads, req/s" "$s_rps" "$i_rps" "$(ratio "$s_rps" "$i_rps")"
printf '| %-46s | %12.2f | %12.2f | %6s |\n' "one-file commit over HTTP, ms (median)" "$s_put" "$i_put" "$(ratio "$i_put" "$s_put")"
printf '| %-46s | %12.1f | %12.1f | %6s |\n' "elton import of one file, ms (whole process)" "$s_imp" "$i_imp" "$(ratio "$i_imp" "$s_imp")"
echo
echo "per round, req/s: secure ${RPS[secure]}| insecure ${RPS[insecure]}"
echo "per round, HTTP commit ms: secure ${PUT[secure]}| insecure ${PUT[insecure]}"
echo "per round, import ms: secure ${IMP[secure]}| insecure ${IMP[insecure]}"
load_line
