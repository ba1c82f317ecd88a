#!/usr/bin/env bash
# The whole test suite, on a fresh Debian machine with only the Rust toolchain:
# installs what the end-to-end tests need (when run as root), then runs every
# unit and end-to-end test of the workspace.
set -euo pipefail
cd "$(dirname "$0")"

# Debian packages the end-to-end tests use: FUSE for the mounts, Docker's
# engine and a static busybox (the plugin test's image) for the Docker test;
# a headless Chromium for the web view test (tests/tests/web_view.rs).
PACKAGES=(fuse3 docker.io busybox-static chromium)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" -eq 0 ]; then
    echo "test.sh: installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "test.sh: please install: ${missing[*]}" >&2
    exit 1
  fi
fi

# The Docker test needs a running engine. Start one when none answers (CI
# machines have no init system running services); it keeps running after
# the tests, like a service would.
start_dockerd() { # extra dockerd flags...
  setsid nohup dockerd "$@" </dev/null >>/var/log/elton-test-dockerd.log 2>&1 &
  for _ in $(seq 60); do
    docker info >/dev/null 2>&1 && return 0
    kill -0 $! 2>/dev/null || return 1
    sleep 1
  done
  kill $! 2>/dev/null
  return 1
}
if ! docker info >/dev/null 2>&1; then
  if [ "$(id -u)" -eq 0 ] && command -v dockerd >/dev/null; then
    echo "test.sh: starting dockerd (log: /var/log/elton-test-dockerd.log)"
    # The tests run containers with --network none; a machine without
    # bridge or iptables support still gets an engine without them.
    start_dockerd || start_dockerd --bridge=none --iptables=false || {
      echo "test.sh: dockerd did not come up; last lines of its log:" >&2
      tail -20 /var/log/elton-test-dockerd.log >&2
      exit 1
    }
  else
    echo "test.sh: no Docker engine answers; start dockerd (the Docker plugin test needs it)" >&2
    exit 1
  fi
fi

# fsx (the file system exerciser) for tests/tests/posix.rs, built once into
# target/tools; the test finds it through FSX_BIN.
TOOLS="${CARGO_TARGET_DIR:-$PWD/target}/tools"
if [ ! -x "$TOOLS/bin/fsx" ]; then
  echo "test.sh: installing fsx 0.3.2 into $TOOLS"
  cargo install fsx --version 0.3.2 --locked --root "$TOOLS" --quiet
fi
export FSX_BIN="$TOOLS/bin/fsx"

# pjdfstest (an independent POSIX conformance suite) for
# tests/tests/pjdfstest.rs, likewise; found through PJDFSTEST_BIN.
if [ ! -x "$TOOLS/bin/pjdfstest" ]; then
  echo "test.sh: installing pjdfstest 0.2.2 into $TOOLS"
  cargo install pjdfstest --version 0.2.2 --locked --root "$TOOLS" --quiet
fi
export PJDFSTEST_BIN="$TOOLS/bin/pjdfstest"

exec cargo test --workspace --locked "$@"
