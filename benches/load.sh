#!/usr/bin/env bash
# `make bench`: criterion micro-benchmarks, then a load run with wrk, direct to an nginx upstream
# vs through legate (one worker), interleaved over several rounds. Installs wrk and nginx with apt
# when missing. Only 127.0.0.1 is used. Results go to benches/results/<date>.md.
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10}
CONNS=${CONNS:-50}
UP_PORT=${UP_PORT:-18080}
UP_H2_PORT=${UP_H2_PORT:-18082}
LEGATE_H2UP_PORT=${LEGATE_H2UP_PORT:-18002}
LEGATE_PORT=${LEGATE_PORT:-18000}
ADMIN_PORT=${ADMIN_PORT:-18001}

need() {
  if ! command -v "$1" >/dev/null 2>&1; then
    echo "installing $2" >&2
    if [ "$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null
    else sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null; fi
  fi
}
need wrk wrk
need nginx nginx
need h2load nghttp2-client
NGINX=$(command -v nginx || echo /usr/sbin/nginx)

if [ "${SKIP_MICRO:-0}" != 1 ]; then
  # criterion prints a long name on its own line, then the time line.
  cargo bench --bench hot_path -- --warm-up-time 1 --measurement-time 3 2>&1 \
    | grep -E "^[a-z_0-9/]+( +time:.*)?$|^ +time:" || true
fi
cargo build --release -q

work=$(mktemp -d)
cleanup() {
  [ -n "${LEGATE_PID:-}" ] && kill "$LEGATE_PID" 2>/dev/null || true
  [ -f "$work/nginx.pid" ] && kill "$(cat "$work/nginx.pid")" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

# Pin the load generator to CPU 0 and the servers to CPU 1 when there are two or more CPUs, so
# the numbers compare the proxies rather than the scheduler.
PIN_LOAD=() PIN_SERVER=()
if command -v taskset >/dev/null 2>&1 && [ "$(nproc)" -ge 2 ]; then
  PIN_LOAD=(taskset -c 0) PIN_SERVER=(taskset -c 1)
fi

body=$(head -c 100 /dev/zero | tr '\0' 'x')
cat > "$work/nginx.conf" <<NGINX
worker_processes 1;
pid $work/nginx.pid;
error_log $work/error.log;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  server {
    listen 127.0.0.1:$UP_PORT;
    location / { return 200 '$body'; }
  }
  server {
    listen 127.0.0.1:$UP_H2_PORT http2;
    http2_max_concurrent_streams 1024;
    location / { return 200 '$body'; }
  }
}
NGINX
"${PIN_SERVER[@]}" "$NGINX" -c "$work/nginx.conf" -p "$work"

cat > "$work/legate.yaml" <<YAML
admin:
  address: { socket_address: { address: 127.0.0.1, port_value: $ADMIN_PORT } }
static_resources:
  listeners:
  - name: bench
    address: { socket_address: { address: 127.0.0.1, port_value: $LEGATE_PORT } }
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: bench
          http_filters: [{ name: envoy.filters.http.router }]
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes: [{ match: { prefix: "/" }, route: { cluster: upstream } }]
  - name: bench_h2_upstream
    address: { socket_address: { address: 127.0.0.1, port_value: $LEGATE_H2UP_PORT } }
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: bench_h2
          http_filters: [{ name: envoy.filters.http.router }]
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes: [{ match: { prefix: "/" }, route: { cluster: upstream_h2 } }]
  clusters:
  - name: upstream
    load_assignment:
      cluster_name: upstream
      endpoints:
      - lb_endpoints:
        - endpoint: { address: { socket_address: { address: 127.0.0.1, port_value: $UP_PORT } } }
  - name: upstream_h2
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: { http2_protocol_options: {} }
    load_assignment:
      cluster_name: upstream_h2
      endpoints:
      - lb_endpoints:
        - endpoint: { address: { socket_address: { address: 127.0.0.1, port_value: $UP_H2_PORT } } }
YAML
"${PIN_SERVER[@]}" ./target/release/legate --concurrency 1 -l warning -c "$work/legate.yaml" &
LEGATE_PID=$!
for _ in $(seq 50); do curl -fs "http://127.0.0.1:$LEGATE_PORT/" >/dev/null 2>&1 && break; sleep 0.1; done

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
TICK_US=$((1000000 / $(getconf CLK_TCK)))

# run NAME PORT CONNS PID → appends "name conns rps p99_ms cpu_us_per_req" to $work/rows
run() {
  local name=$1 port=$2 conns=$3 pid=${4:-}
  local before=0 after=0
  [ -n "$pid" ] && before=$(cpu_ticks "$pid")
  local out
  out=$("${PIN_LOAD[@]}" wrk -t1 -c"$conns" -d"${DURATION}s" --latency "http://127.0.0.1:$port/")
  [ -n "$pid" ] && after=$(cpu_ticks "$pid")
  local rps reqs p99
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  reqs=$(awk '/requests in/ {print $1}' <<<"$out")
  p99=$(awk '$1=="99%" {v=$2; if (v ~ /us$/) {sub("us","",v); v=v/1000} else if (v ~ /ms$/) {sub("ms","",v)} else if (v ~ /s$/) {sub("s","",v); v=v*1000}; print v}' <<<"$out")
  local cpu="-"
  if [ -n "$pid" ] && [ "$reqs" -gt 0 ]; then
    cpu=$(awk -v t=$((after - before)) -v us="$TICK_US" -v n="$reqs" 'BEGIN {printf "%.1f", t * us / n}')
  fi
  echo "$name $conns $rps $p99 $cpu" >> "$work/rows"
  echo "  round: $name c=$conns  ${rps} req/s  p99 ${p99} ms  cpu/req ${cpu} us" >&2
}

# run_h2 NAME PORT PID → h2c prior knowledge, 10 connections × 10 streams; appends to $work/h2rows
run_h2() {
  local name=$1 port=$2 pid=${3:-}
  local before=0 after=0
  [ -n "$pid" ] && before=$(cpu_ticks "$pid")
  local out
  rm -f "$work/h2.log"
  out=$("${PIN_LOAD[@]}" h2load -c10 -m10 -D"$DURATION" --log-file="$work/h2.log" "http://127.0.0.1:$port/" 2>&1)
  [ -n "$pid" ] && after=$(cpu_ticks "$pid")
  local rps reqs p99
  rps=$(awk '/^finished in/ {gsub(",", "", $4); print $4}' <<<"$out")
  reqs=$(wc -l < "$work/h2.log")
  # log columns: start time (µs since epoch), status, elapsed µs
  p99=$(awk '{print $3}' "$work/h2.log" | sort -n | awk '{a[NR]=$1} END {i=int(NR*0.99); if (i<1) i=1; printf "%.3f", a[i]/1000}')
  local cpu="-"
  if [ -n "$pid" ] && [ "$reqs" -gt 0 ]; then
    cpu=$(awk -v t=$((after - before)) -v us="$TICK_US" -v n="$reqs" 'BEGIN {printf "%.1f", t * us / n}')
  fi
  echo "$name h2c $rps $p99 $cpu" >> "$work/h2rows"
  echo "  round: $name h2c -c10 -m10  ${rps} req/s  p99 ${p99} ms  cpu/req ${cpu} us" >&2
}

for round in $(seq "$ROUNDS"); do
  echo "round $round/$ROUNDS" >&2
  for c in "$CONNS" 1; do
    run direct "$UP_PORT" "$c"
    run legate "$LEGATE_PORT" "$c" "$LEGATE_PID"
  done
  run_h2 "direct(nginx h2c)" "$UP_H2_PORT"
  run_h2 "legate→h1" "$LEGATE_PORT" "$LEGATE_PID"
  run_h2 "legate→h2c" "$LEGATE_H2UP_PORT" "$LEGATE_PID"
done

rss_kb=$(awk '/VmRSS/ {print $2}' "/proc/$LEGATE_PID/status")

median() { sort -g | awk '{a[NR]=$1} END {if (NR==0) {print "-"} else if (NR%2) {print a[(NR+1)/2]} else {print (a[NR/2]+a[NR/2+1])/2}}'; }
minmax() { sort -g | awk 'NR==1 {min=$1} {max=$1} END {print min "–" max}'; }

mkdir -p benches/results
out="benches/results/$(date +%F).md"
{
  echo "# Load benchmark, $(date -u +%FT%TZ)"
  echo
  echo "Machine: $(nproc) CPUs ($(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)), $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo)."
  echo "Upstream: nginx, 100-byte body, keep-alive. legate: release build, \`--concurrency 1\`, no access log."
  echo "Load: wrk -t1, ${DURATION}s per run, ${ROUNDS} interleaved rounds; load generator pinned to CPU 0, servers to CPU 1 when possible."
  echo "Median (min–max) over rounds. CPU/req is legate's own user+system time per request."
  echo
  echo "| target | connections | req/s | p99 ms | legate CPU µs/req |"
  echo "|---|---|---|---|---|"
  for c in "$CONNS" 1; do
    for t in direct legate; do
      rows=$(awk -v t="$t" -v c="$c" '$1==t && $2==c' "$work/rows")
      rps=$(awk '{print $3}' <<<"$rows" | median); rr=$(awk '{print $3}' <<<"$rows" | minmax)
      p99=$(awk '{print $4}' <<<"$rows" | median); pr=$(awk '{print $4}' <<<"$rows" | minmax)
      cpu=$(awk '{print $5}' <<<"$rows" | grep -v '^-$' | median || true)
      echo "| $t | $c | $rps ($rr) | $p99 ($pr) | ${cpu:--} |"
    done
  done
  echo
  echo "HTTP/2 (h2c prior knowledge), h2load -c10 -m10 -D${DURATION}; upstream nginx over HTTP/1.1 (legate→h1) or h2c (legate→h2c):"
  echo
  echo "| target | req/s | p99 ms | legate CPU µs/req |"
  echo "|---|---|---|---|"
  for t in "direct(nginx h2c)" "legate→h1" "legate→h2c"; do
    rows=$(awk -v t="$t" '{n=split($0, f, " "); name=f[1]; for (i=2; i<=n-4; i++) name=name " " f[i]; if (name==t) print f[n-2], f[n-1], f[n]}' "$work/h2rows")
    rps=$(awk '{print $1}' <<<"$rows" | median); rr=$(awk '{print $1}' <<<"$rows" | minmax)
    p99=$(awk '{print $2}' <<<"$rows" | median); pr=$(awk '{print $2}' <<<"$rows" | minmax)
    cpu=$(awk '{print $3}' <<<"$rows" | grep -v '^-$' | median || true)
    echo "| $t | $rps ($rr) | $p99 ($pr) | ${cpu:--} |"
  done
  echo
  echo "legate RSS after the run: $((rss_kb / 1024)) MiB."
} > "$out"
cat "$out"
