#!/usr/bin/env bash
# `make bench`: criterion micro-benchmarks, then the side-by-side load benchmark
# (benches/compare.py: direct, legate, nginx and HAProxy as proxies, interleaved rounds), then the
# scaling benchmark (benches/scale.py: start time and memory by config size, --concurrency 1 vs 2).
# Installs wrk, h2load (nghttp2-client), nginx and haproxy with apt when missing. PGO_ONLY=1 (`make
# pgo`) stops after the profile-guided build (benches/pgo.sh).
# Only 127.0.0.1 is used. Results go to benches/results/<date>.md and .svg.
set -euo pipefail
cd "$(dirname "$0")/.."

need() {
  if ! command -v "$1" >/dev/null 2>&1 && [ ! -x "/usr/sbin/$1" ]; then
    echo "installing $2" >&2
    if [ "$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null
    else sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null; fi
  fi
}
need wrk wrk
need h2load nghttp2-client
need nginx nginx
need haproxy haproxy
need openssl openssl
export PATH="$PATH:/usr/sbin"

if [ "${SKIP_MICRO:-0}" != 1 ] && [ "${PGO_ONLY:-0}" != 1 ]; then
  # criterion prints a long name on its own line, then the time line.
  cargo bench --bench hot_path -- --warm-up-time 1 --measurement-time 3 2>&1 \
    | grep -E "^[a-z_0-9/]+( +time:.*)?$|^ +time:" || true
  # Heap allocations per proxied request, counted on legate's own threads.
  cargo bench --bench allocs 2>&1 | grep "allocations/request"
fi
# The profile-guided build is what the benchmark measures (PGO=0: the plain release build), as
# it is what `make pgo` gives users who want the cheapest requests.
cargo build --release -q
if [ "${PGO:-1}" = 1 ] && bash benches/pgo.sh; then
  export LEGATE_BIN="$PWD/target/pgo/release/legate"
  export LEGATE_BUILD="profile-guided release build (\`make pgo\`)"
fi
[ "${PGO_ONLY:-0}" = 1 ] && exit 0
# 5,000 idle connections per proxy for the memory scenario.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
python3 benches/compare.py
# Appends its tables to the report compare.py just wrote.
python3 benches/scale.py
