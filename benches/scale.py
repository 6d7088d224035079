#!/usr/bin/env python3
"""Scaling benchmark: how legate's start time and memory grow with its config, and whether a
second worker thread buys throughput.

Run by benches/load.sh (`make bench`) after benches/compare.py; appends its tables to
benches/results/<date>.md (creating it when compare.py did not run). Everything is on 127.0.0.1.

PARTS=startup,concurrency (default: both) selects the parts; LEGATE_BIN=path measures another
build (for before/after comparisons).

startup: configs of growing size (one virtual host of N prefix routes, N/10 STATIC clusters of 10
  endpoints each, on ports nothing listens on), each started ROUNDS times: the time from exec to
  the admin `/ready` answering 200 (polled every 5 ms), then VmRSS and VmHWM (peak) from /proc.
  The first row (1 route, 1 cluster) is the fixed cost that "MB per 1k routes" leaves out.
concurrency: the same HTTP/1.1 keep-alive load (wrk, 50 connections) through legate with
  `--concurrency 1` and `--concurrency 2`, interleaved over ROUNDS rounds, against an nginx
  upstream. Nothing is pinned: with two CPUs the load generator, the upstream and the proxy share
  them, so this shows what a second worker does on a shared box, not the scaling on free cores.
"""
import datetime
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from compare import LEGATE, ROOT, cpu_seconds, run_wrk, wait_port, write  # noqa: E402

LEGATE = os.environ.get("LEGATE_BIN", LEGATE)
ROUNDS = int(os.environ.get("ROUNDS", "3"))
PARTS = os.environ.get("PARTS", "startup,concurrency").split(",")
ADMIN = 18409
# (routes, clusters); every cluster has ENDPOINTS hosts.
SIZES = [(1, 1), (100, 10), (1_000, 100), (10_000, 1_000)]
ENDPOINTS = 10
UPSTREAM, PROXY = 18480, 18481


def config(routes, clusters, listen_port=0, upstream=None):
    """A bootstrap with `routes` prefix routes spread over `clusters` clusters. With `upstream`
    every cluster has that one endpoint; otherwise ENDPOINTS endpoints on ports nobody serves."""
    lines = [
        f"admin: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {ADMIN} }} }} }}",
        "static_resources:",
        "  listeners:",
        "  - name: http",
        f"    address: {{ socket_address: {{ address: 127.0.0.1, port_value: {listen_port} }} }}",
        "    filter_chains:",
        "    - filters:",
        "      - name: envoy.filters.network.http_connection_manager",
        "        typed_config:",
        '          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager',
        "          stat_prefix: http",
        "          http_filters: [{ name: envoy.filters.http.router }]",
        "          route_config:",
        "            name: local",
        "            virtual_hosts:",
        "            - name: all",
        '              domains: ["*"]',
        "              routes:",
    ]
    for i in range(routes):
        lines.append(f'              - {{ match: {{ prefix: "/service-{i}/" }}, route: {{ cluster: c{i % clusters} }} }}')
    lines.append('              - { match: { prefix: "/" }, route: { cluster: c0 } }')
    lines.append("  clusters:")
    for c in range(clusters):
        if upstream:
            eps = [upstream]
        else:
            eps = [20000 + (c * ENDPOINTS + e) % 40000 for e in range(ENDPOINTS)]
        lb = ", ".join(
            f"{{ endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {p} }} }} }} }}" for p in eps)
        lines.append(f"  - {{ name: c{c}, type: STATIC, connect_timeout: 1s, "
                     f"load_assignment: {{ cluster_name: c{c}, endpoints: [{{ lb_endpoints: [{lb}] }}] }} }}")
    return "\n".join(lines) + "\n"


def ready():
    try:
        with socket.create_connection(("127.0.0.1", ADMIN), 0.5) as s:
            s.sendall(b"GET /ready HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            return s.recv(64).startswith(b"HTTP/1.1 200")
    except OSError:
        return False


def proc_status(pid):
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM", "Threads"):
                out[key] = int(value.split()[0])
    return out


def stop(p):
    p.send_signal(signal.SIGTERM)
    try:
        p.wait(10)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()


def start_once(path):
    """(ms from exec to /ready 200, VmRSS KiB, VmHWM KiB)."""
    t0 = time.monotonic()
    p = subprocess.Popen([LEGATE, "--concurrency", "1", "-l", "error", "-c", path],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        while not ready():
            if p.poll() is not None:
                raise RuntimeError(f"legate exited: {p.stderr.read().decode()[-2000:]}")
            if time.monotonic() - t0 > 60:
                raise RuntimeError("not ready after 60 s")
            time.sleep(0.005)
        ms = (time.monotonic() - t0) * 1000
        # Let anything started after /ready (actors finishing pre_start) settle.
        time.sleep(0.5)
        st = proc_status(p.pid)
        return ms, st["VmRSS"], st["VmHWM"]
    finally:
        stop(p)


def startup(work):
    rows = []
    for routes, clusters in SIZES:
        path = f"{work}/scale-{routes}.yaml"
        write(path, config(routes, clusters))
        size_kib = os.path.getsize(path) / 1024
        runs = [start_once(path) for _ in range(ROUNDS)]
        ms = statistics.median(r[0] for r in runs)
        rss = statistics.median(r[1] for r in runs) / 1024
        hwm = statistics.median(r[2] for r in runs) / 1024
        rows.append((routes, clusters, size_kib, ms, rss, hwm))
        print(f"  {routes:6} routes {clusters:5} clusters ({size_kib:7.0f} KiB yaml): ready in {ms:7.1f} ms, "
              f"RSS {rss:6.1f} MiB, peak {hwm:6.1f} MiB", file=sys.stderr)
    base_rss = rows[0][4]
    lines = [f"## Startup and memory by config size (`--concurrency 1`, median of {ROUNDS})", "",
             f"One virtual host of N prefix routes, N/10 STATIC clusters of {ENDPOINTS} endpoints each. "
             "Ready: exec to the admin `/ready` answering 200. RSS 0.5 s after ready; peak is VmHWM. "
             "Per 1k routes: RSS above the 1-route config, per 1,000 routes (with their 100 clusters "
             f"and {100 * ENDPOINTS:,} endpoints).", "",
             "| routes | clusters | endpoints | YAML KiB | ready ms | RSS MiB | peak RSS MiB | MiB per 1k routes |",
             "|---|---|---|---|---|---|---|---|"]
    for routes, clusters, size_kib, ms, rss, hwm in rows:
        per = "-" if routes <= SIZES[0][0] else f"{(rss - base_rss) * 1000 / routes:.2f}"
        lines.append(f"| {routes:,} | {clusters:,} | {clusters * ENDPOINTS:,} | {size_kib:,.0f} | {ms:.0f} | "
                     f"{rss:.1f} | {hwm:.1f} | {per} |")
    return lines


def worker_ticks(pid):
    """CPU ticks per worker thread (`legate-worker`) of one process, by thread id."""
    ticks = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                head, rest = f.read().rsplit(")", 1)
            if "legate-worker" not in head:
                continue
            fields = rest.split()
            ticks[tid] = int(fields[11]) + int(fields[12])
        except OSError:
            pass
    return ticks


def concurrency(work):
    nginx = "/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else "nginx"
    write(f"{work}/upstream.conf", f"""
worker_processes 1; pid {work}/upstream.pid; error_log {work}/upstream.err;
events {{ worker_connections 4096; }}
http {{ access_log off; keepalive_requests 10000000;
  server {{ listen 127.0.0.1:{UPSTREAM}; location / {{ return 200 '{"x" * 100}'; }} }} }}
""")
    subprocess.run([nginx, "-c", f"{work}/upstream.conf", "-p", work], check=True)
    path = f"{work}/concurrency.yaml"
    write(path, config(0, 1, PROXY, UPSTREAM))
    results = {1: [], 2: []}
    try:
        wait_port(UPSTREAM)
        for r in range(ROUNDS):
            for n in (1, 2):
                # A session of its own, as in compare.py: not sharing an autogroup (one CPU
                # weight) with wrk.
                p = subprocess.Popen([LEGATE, "--concurrency", str(n), "-l", "error", "-c", path],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     start_new_session=True)
                try:
                    wait_port(PROXY)
                    # Warm up: upstream connections, the allocator.
                    subprocess.run(["wrk", "-t1", "-c50", "-d1s", f"http://127.0.0.1:{PROXY}/"],
                                   capture_output=True)
                    before = cpu_seconds([p.pid])
                    ticks = worker_ticks(p.pid)
                    rps, reqs, p99 = run_wrk(PROXY, 50)
                    cpu = (cpu_seconds([p.pid]) - before) * 1e6 / reqs
                    # How evenly the workers shared the load: the busiest one's share of the
                    # workers' CPU (0.5 is an even split of two).
                    used = [t - ticks.get(tid, 0) for tid, t in worker_ticks(p.pid).items()]
                    busiest = max(used) / sum(used) if sum(used) else 1.0
                finally:
                    stop(p)
                results[n].append((rps, p99, cpu, busiest))
                print(f"  round {r + 1}: --concurrency {n}: {rps:8.0f} req/s  p99 {p99:.3f} ms  "
                      f"cpu/req {cpu:.1f} us  busiest worker {busiest:.0%}", file=sys.stderr)
    finally:
        try:
            os.kill(int(open(f"{work}/upstream.pid").read()), signal.SIGTERM)
        except OSError:
            pass
    fmt = lambda xs, d: f"{statistics.median(xs):.{d}f} ({min(xs):.{d}f}–{max(xs):.{d}f})"
    lines = [f"## `--concurrency 1` vs `--concurrency 2` (HTTP/1.1 keep-alive, 50 connections)", "",
             f"wrk -t1 -c50, nginx upstream, {ROUNDS} interleaved rounds; median (min–max). Nothing pinned: "
             f"on this {os.cpu_count()}-CPU machine the load generator and the upstream share the cores "
             "with legate's workers, so this is not the scaling legate would show on free cores.", "",
             "| workers | req/s | p99 ms | CPU µs/req | busiest worker's share of the workers' CPU |",
             "|---|---|---|---|---|"]
    for n in (1, 2):
        rs = results[n]
        share = statistics.median(r[3] for r in rs)
        lines.append(f"| {n} | {fmt([r[0] for r in rs], 0)} | {fmt([r[1] for r in rs], 3)} | "
                     f"{fmt([r[2] for r in rs], 1)} | {share:.0%} |")
    ratio = statistics.median(r[0] for r in results[2]) / statistics.median(r[0] for r in results[1])
    lines += ["", f"req/s with 2 workers / 1 worker = {ratio:.2f}."]
    return lines


def main():
    if not os.path.exists(LEGATE):
        sys.exit(f"{LEGATE} missing: cargo build --release")
    work = tempfile.mkdtemp(prefix="legate-scale-")
    lines = [f"# Scaling, {datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')}", ""]
    try:
        if "startup" in PARTS:
            print("startup and memory by config size", file=sys.stderr)
            lines += startup(work) + [""]
        if "concurrency" in PARTS:
            print("--concurrency 1 vs 2", file=sys.stderr)
            lines += concurrency(work) + [""]
    finally:
        subprocess.run(["rm", "-rf", work])
    md = os.path.join(ROOT, "benches", "results", f"{datetime.date.today().isoformat()}.md")
    os.makedirs(os.path.dirname(md), exist_ok=True)
    with open(md, "a") as f:
        f.write("\n" + "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
