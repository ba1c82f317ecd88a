#!/usr/bin/env bash
# What TLS between masters costs a cross-cluster cold read: bench/wan.sh run
# alternately with mutual TLS (the default) and with INSECURE=1 (no TLS, no
# authentication), $PAIRS times each, so that drift in the machine's load
# falls on both alike.
#
#   bash bench/wan-tls.sh
#
# From each wan.sh run it takes the cold-read figure (median MiB/s of its
# $ROUNDS rounds, $TPUT_MIB MiB per read, every byte across the link) and
# the CPU-seconds the whole machine spent per read; prints the medians over
# the runs of each mode and the ratios TLS / insecure (throughput) and
# insecure / TLS (CPU per byte), so 1.00 means TLS costs nothing. Also the
# WAN bytes of the thesis scenario in each mode (TLS framing crosses too).
#
# Tunables: PAIRS (3), and wan.sh's (ROUNDS 3, TPUT_MIB 256, RATE,
# LATENCY_MS, THESIS_MIB 64, EDIT_MIB 256; ELTON_BIN, LINK_BIN).

set -euo pipefail

PAIRS=${PAIRS:-3}
export ROUNDS=${ROUNDS:-3}

# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
release_bins elton elton-link
export ELTON_BIN=$ELTON LINK_BIN=$LINK
bench_start wan-tls

declare -A MIBS CPUS WAN
run() { # mode (tls|insecure) pair
    local out insecure=""
    [[ $1 == insecure ]] && insecure=1
    log "pair $2/$PAIRS: wan.sh, $1"
    out=$(INSECURE=$insecure bash "$ROOT/bench/wan.sh" 2>"$WORK/wan-$1-$2.err") ||
        { tail -20 "$WORK/wan-$1-$2.err" >&2; die "wan.sh ($1) failed"; }
    printf '%s\n' "$out" >"$WORK/wan-$1-$2.out"
    MIBS[$1]+="$(sed -n 's/^| Elton: slave B.* | \([0-9.]*\) |$/\1/p' <<<"$out") "
    CPUS[$1]+="$(sed -n 's/^CPU-seconds.*median: Elton \([0-9.]*\),.*/\1/p' <<<"$out") "
    WAN[$1]+="$(sed -n 's/^| \*\*total\*\* | \([0-9]*\) |.*/\1/p' <<<"$out") "
    log "  $1: $(tail -n 1 <<<"${MIBS[$1]% }" | awk '{print $NF}') MiB/s"
}
for ((p = 1; p <= PAIRS; p++)); do
    if ((p % 2)); then run tls "$p"; run insecure "$p"; else run insecure "$p"; run tls "$p"; fi
done

med() { # shellcheck disable=SC2086
    median -a $1
}
t_mib=$(med "${MIBS[tls]}") i_mib=$(med "${MIBS[insecure]}")
t_cpu=$(med "${CPUS[tls]}") i_cpu=$(med "${CPUS[insecure]}")
t_wan=$(med "${WAN[tls]}") i_wan=$(med "${WAN[insecure]}")

echo
echo "TLS between masters: cross-cluster cold read (${TPUT_MIB:-256} MiB, $(nproc) cores, $PAIRS alternating pairs of wan.sh runs of $ROUNDS rounds; link: rate ${RATE:-unlimited}, latency ${LATENCY_MS:-0} ms)"
echo
printf '| %-44s | %10s | %10s | %6s |\n' "figure (median over runs)" "mutual TLS" "insecure" "ratio"
printf '|%s|%s|%s|%s|\n' "----------------------------------------------" "------------" "------------" "--------"
printf '| %-44s | %10.0f | %10.0f | %6s |\n' "cold read, MiB/s" "$t_mib" "$i_mib" "$(ratio "$t_mib" "$i_mib")"
printf '| %-44s | %10.2f | %10.2f | %6s |\n' "CPU-seconds of the machine per read" "$t_cpu" "$i_cpu" "$(ratio "$i_cpu" "$t_cpu")"
printf '| %-44s | %10.0f | %10.0f | %6s |\n' "WAN bytes, thesis scenario" "$t_wan" "$i_wan" "$(ratio "$i_wan" "$t_wan")"
echo
echo "per run, MiB/s: tls ${MIBS[tls]}| insecure ${MIBS[insecure]}"
echo "per run, CPU-s: tls ${CPUS[tls]}| insecure ${CPUS[insecure]}"
load_line
