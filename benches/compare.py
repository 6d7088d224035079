#!/usr/bin/env python3
"""Side-by-side load benchmark: direct to the upstream, legate, nginx and HAProxy as proxies.

Run by benches/load.sh (`make bench`), which installs wrk, h2load, nginx and haproxy first.
Everything listens on 127.0.0.1. Targets run interleaved (A B C D A B C D ...) over ROUNDS rounds;
the report gives medians with min-max, each proxy's own CPU time per request (from
/proc/<pid>/stat, the upstream's and the load generator's excluded) and legate's ratios to nginx
and HAProxy. Results: benches/results/<date>.md and <date>.svg.
"""
import datetime
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROUNDS = int(os.environ.get("ROUNDS", "3"))
DURATION = int(os.environ.get("DURATION", "10"))
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# LEGATE_BIN: the binary to measure (benches/load.sh passes the profile-guided build when it
# could make one); LEGATE_BUILD says in the report which build it is.
LEGATE = os.environ.get("LEGATE_BIN", os.path.join(ROOT, "target", "release", "legate"))
LEGATE_BUILD = os.environ.get("LEGATE_BUILD", "release build (`cargo build --release`)")
CLK_TCK = os.sysconf("SC_CLK_TCK")
PIN = shutil.which("taskset") and os.cpu_count() >= 2
BODY = "x" * 100

UP_H1, UP_H2 = 18080, 18082
PORTS = {  # proxy -> (h1/h2c to h1 upstream, h2c to h2c upstream, TLS h2 to h1 upstream)
    "legate": (18100, 18101, 18102),
    "nginx": (18200, None, 18202),
    "haproxy": (18300, 18301, 18302),
}
H2C_PORTS = {"legate": 18100, "nginx": 18201, "haproxy": 18303}


def pin(core, cmd):
    return (["taskset", "-c", str(core)] + cmd) if PIN else cmd


def cpu_seconds(pids):
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except OSError:
            pass
    return total / CLK_TCK


def rss_kib(pids):
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total


def children(pid):
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def wait_port(port, timeout=10):
    end = time.time() + timeout
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


def write(path, text):
    with open(path, "w") as f:
        f.write(text)


def start_servers(work):
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost",
                    "-keyout", f"{work}/key.pem", "-out", f"{work}/cert.pem"],
                   check=True, capture_output=True)
    write(f"{work}/combined.pem", open(f"{work}/cert.pem").read() + open(f"{work}/key.pem").read())
    procs = {}
    nginx_bin = shutil.which("nginx") or "/usr/sbin/nginx"
    # The upstream: nginx answering 100 bytes over HTTP/1.1 and h2c.
    write(f"{work}/upstream.conf", f"""
worker_processes 1; pid {work}/upstream.pid; error_log {work}/upstream.err;
events {{ worker_connections 20000; }}
http {{ access_log off; keepalive_requests 10000000;
  server {{ listen 127.0.0.1:{UP_H1}; location / {{ return 200 '{BODY}'; }} }}
  server {{ listen 127.0.0.1:{UP_H2} http2; http2_max_concurrent_streams 1024; location / {{ return 200 '{BODY}'; }} }} }}
""")
    subprocess.run(pin(1, [nginx_bin, "-c", f"{work}/upstream.conf", "-p", work]), check=True)
    # nginx as a proxy, one worker, upstream keep-alive.
    write(f"{work}/nginx.conf", f"""
worker_processes 1; pid {work}/nginx.pid; error_log {work}/nginx.err;
worker_rlimit_nofile 20000;
events {{ worker_connections 20000; }}
http {{ access_log off; keepalive_requests 10000000;
  upstream up {{ server 127.0.0.1:{UP_H1}; keepalive 128; }}
  server {{ listen 127.0.0.1:{PORTS['nginx'][0]}; listen 127.0.0.1:{H2C_PORTS['nginx']} http2;
    listen 127.0.0.1:{PORTS['nginx'][2]} ssl http2;
    ssl_certificate {work}/cert.pem; ssl_certificate_key {work}/key.pem;
    location / {{ proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection ""; }} }} }}
""")
    subprocess.run(pin(1, [nginx_bin, "-c", f"{work}/nginx.conf", "-p", work]), check=True)
    # HAProxy, one thread, upstream keep-alive (http-reuse), h2 to the h2c upstream.
    write(f"{work}/haproxy.cfg", f"""
global
  nbthread 1
  maxconn 9000
defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  http-reuse always
frontend fe
  bind 127.0.0.1:{PORTS['haproxy'][0]}
  bind 127.0.0.1:{H2C_PORTS['haproxy']} proto h2
  bind 127.0.0.1:{PORTS['haproxy'][2]} ssl crt {work}/combined.pem alpn h2,http/1.1
  default_backend be
frontend fe_h2up
  bind 127.0.0.1:{PORTS['haproxy'][1]} proto h2
  default_backend be_h2
backend be
  server s1 127.0.0.1:{UP_H1}
backend be_h2
  server s1 127.0.0.1:{UP_H2} proto h2
""")
    # Every server gets a session of its own, as a daemon or a service would. nginx
    # daemonizes itself (setsid); a foreground child would share this script's
    # session, and with the kernel's autogroups enabled it would share one CPU
    # weight with the load generator running on the other core: on core 1 it then
    # counts as half a task against the upstream, which then preempts it far more
    # often (measured, HTTP/1.1: 0.52 preemptions per request instead of 0.26).
    procs["haproxy"] = subprocess.Popen(pin(1, ["haproxy", "-f", f"{work}/haproxy.cfg"]),
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                        start_new_session=True)
    cert = open(f"{work}/cert.pem").read()
    key = open(f"{work}/key.pem").read()
    indent = lambda s, n: "\n".join(" " * n + line for line in s.strip().splitlines())
    def listener(name, port, cluster, tls=False):
        ts = ""
        if tls:
            ts = f"""
      transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          common_tls_context:
            alpn_protocols: [h2, http/1.1]
            tls_certificates:
            - certificate_chain:
                inline_string: |
{indent(cert, 18)}
              private_key:
                inline_string: |
{indent(key, 18)}"""
        return f"""
  - name: {name}
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: {port} }} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: {name}
          http_filters: [{{ name: envoy.filters.http.router }}]
          route_config:
            virtual_hosts: [{{ name: all, domains: ["*"], routes: [{{ match: {{ prefix: "/" }}, route: {{ cluster: {cluster} }} }}] }}]{ts}
"""
    write(f"{work}/legate.yaml", f"""
admin: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: 18109 }} }} }}
static_resources:
  listeners:{listener("h1", PORTS['legate'][0], "up")}{listener("h2up", PORTS['legate'][1], "up_h2")}{listener("tls", PORTS['legate'][2], "up", True)}
  clusters:
  - name: up
    load_assignment: {{ cluster_name: up, endpoints: [{{ lb_endpoints: [{{ endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {UP_H1} }} }} }} }}] }}] }}
  - name: up_h2
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {{ http2_protocol_options: {{}} }}
    load_assignment: {{ cluster_name: up_h2, endpoints: [{{ lb_endpoints: [{{ endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {UP_H2} }} }} }} }}] }}] }}
""")
    procs["legate"] = subprocess.Popen(pin(1, [LEGATE, "--concurrency", "1", "-l", "error", "-c", f"{work}/legate.yaml"]),
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                       start_new_session=True)
    for port in (UP_H1, UP_H2, *[p for ps in PORTS.values() for p in ps if p], *H2C_PORTS.values()):
        wait_port(port)
    nginx_master = int(open(f"{work}/nginx.pid").read())
    pids = {
        "legate": [procs["legate"].pid],
        "haproxy": [procs["haproxy"].pid] + children(procs["haproxy"].pid),
        "nginx": [nginx_master] + children(nginx_master),
        "direct": [],
    }
    upstream_master = int(open(f"{work}/upstream.pid").read())
    return procs, pids, [upstream_master]


def parse_latency(v):
    m = re.match(r"([\d.]+)(us|ms|s)", v)
    if not m:
        return float("nan")
    x = float(m.group(1))
    return {"us": x / 1000, "ms": x, "s": x * 1000}[m.group(2)]


def run_wrk(port, conns, extra=()):
    out = subprocess.run(pin(0, ["wrk", "-t1", f"-c{conns}", f"-d{DURATION}s", "--latency", *extra,
                                 f"http://127.0.0.1:{port}/"]), capture_output=True, text=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    reqs = int(re.search(r"(\d+) requests in", out).group(1))
    p99 = parse_latency(re.search(r"\s99%\s+(\S+)", out).group(1))
    return rps, reqs, p99


def run_h2load(url, work):
    log = f"{work}/h2load.log"
    if os.path.exists(log):
        os.remove(log)
    out = subprocess.run(pin(0, ["h2load", "-c10", "-m10", f"-D{DURATION}", f"--log-file={log}", url]),
                         capture_output=True, text=True).stdout
    m = re.search(r"finished in [\d.]+s, ([\d.]+) req/s", out)
    rps = float(m.group(1)) if m else 0.0
    times = sorted(int(line.split()[2]) for line in open(log) if len(line.split()) >= 3) if os.path.exists(log) else []
    p99 = times[int(len(times) * 0.99) - 1] / 1000 if times else float("nan")
    return rps, len(times), p99


def idle_memory(port, pids, n=5000):
    base = rss_kib(pids)
    socks = []
    req = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
    try:
        for _ in range(n):
            s = socket.create_connection(("127.0.0.1", port))
            s.sendall(req)
            socks.append(s)
        for s in socks:
            s.settimeout(5)
            s.recv(4096)
        time.sleep(1)
        loaded = rss_kib(pids)
    finally:
        for s in socks:
            s.close()
    return base, (loaded - base) / n


def main():
    work = tempfile.mkdtemp(prefix="legate-bench-")
    procs, pids, upstream = start_servers(work)
    try:
        targets = ["direct", "legate", "nginx", "haproxy"]
        scenarios = [
            ("HTTP/1.1 keep-alive, 50 connections", lambda t: run_wrk(UP_H1 if t == "direct" else PORTS[t][0], 50)),
            ("HTTP/1.1 keep-alive, 1 connection", lambda t: run_wrk(UP_H1 if t == "direct" else PORTS[t][0], 1)),
            ("HTTP/1.1 new connection per request, 50 clients",
             lambda t: run_wrk(UP_H1 if t == "direct" else PORTS[t][0], 50, ("-H", "Connection: close"))),
            ("h2c -c10 -m10 → HTTP/1.1 upstream",
             lambda t: run_h2load(f"http://127.0.0.1:{UP_H2 if t == 'direct' else H2C_PORTS[t]}/", work)),
            ("h2c -c10 -m10 → h2c upstream",
             lambda t: run_h2load(f"http://127.0.0.1:{UP_H2 if t == 'direct' else PORTS[t][1]}/", work) if (t == "direct" or PORTS[t][1]) else None),
            ("TLS (h2 by ALPN) -c10 -m10 → HTTP/1.1 upstream",
             lambda t: run_h2load(f"https://127.0.0.1:{PORTS[t][2]}/", work) if t != "direct" else None),
        ]
        # TARGETS=legate,nginx and SCENARIOS=0,3 narrow a run (for quick before/after checks).
        if os.environ.get("TARGETS"):
            targets = [t for t in targets if t in os.environ["TARGETS"].split(",")]
        if os.environ.get("SCENARIOS"):
            keep = {int(i) for i in os.environ["SCENARIOS"].split(",")}
            scenarios = [sc for i, sc in enumerate(scenarios) if i in keep]
        results = {}  # (scenario, target) -> list of (rps, p99, cpu)
        for r in range(ROUNDS):
            print(f"round {r + 1}/{ROUNDS}", file=sys.stderr)
            for name, fn in scenarios:
                for t in targets:
                    probe = None
                    try:
                        before = cpu_seconds(pids[t])
                        out = fn(t)
                        if out is None:
                            continue
                        rps, reqs, p99 = out
                        cpu = (cpu_seconds(pids[t]) - before) * 1e6 / reqs if pids[t] and reqs else None
                        probe = (rps, p99, cpu)
                    except Exception as e:  # a failed run is reported, not fatal
                        print(f"  {name} / {t}: failed: {e}", file=sys.stderr)
                        continue
                    results.setdefault((name, t), []).append(probe)
                    print(f"  {name:48} {t:8} {probe[0]:10.0f} req/s  p99 {probe[1]:7.3f} ms  cpu/req "
                          f"{'-' if probe[2] is None else f'{probe[2]:.1f} us'}", file=sys.stderr)
        memory = {}
        if os.environ.get("MEMORY", "1") == "1":
            for t in ["legate", "nginx", "haproxy"]:
                memory[t] = idle_memory(PORTS[t][0], pids[t])
        # REPORT=0: a run only for its load (benches/pgo.sh trains on it).
        if os.environ.get("REPORT", "1") == "1":
            report(results, memory, scenarios, targets)
    finally:
        for p in procs.values():
            p.send_signal(signal.SIGTERM)
        for p in procs.values():
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
        for pidfile in ("nginx.pid", "upstream.pid"):
            try:
                os.kill(int(open(f"{work}/{pidfile}").read()), signal.SIGTERM)
            except OSError:
                pass
        time.sleep(0.5)
        shutil.rmtree(work, ignore_errors=True)


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def fmt(xs, digits=0):
    xs = [x for x in xs if x is not None]
    if not xs:
        return "-"
    return f"{statistics.median(xs):.{digits}f} ({min(xs):.{digits}f}–{max(xs):.{digits}f})"


def report(results, memory, scenarios, targets):
    date = datetime.date.today().isoformat()
    cpu_model = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    lines = [f"# Side-by-side load benchmark, {datetime.datetime.utcnow().isoformat(timespec='seconds')}Z", "",
             f"Machine: {os.cpu_count()} CPUs ({cpu_model}). Upstream: nginx, {len(BODY)}-byte body. "
             f"Each proxy: one worker (legate `--concurrency 1`, nginx `worker_processes 1`, HAProxy `nbthread 1`), "
             f"upstream keep-alive, no access log. Load generator pinned to CPU 0, upstream and proxy to CPU 1"
             f"{'' if PIN else ' (not pinned: taskset or a second CPU missing)'}. "
             f"{ROUNDS} interleaved rounds of {DURATION}s; median (min–max). CPU/req is the proxy process's own "
             f"user+system time per request. legate: {LEGATE_BUILD}.", ""]
    for name, _ in scenarios:
        lines += [f"## {name}", "", "| target | req/s | p99 ms | CPU µs/req |", "|---|---|---|---|"]
        for t in targets:
            rs = results.get((name, t))
            if not rs:
                continue
            lines.append(f"| {t} | {fmt([r[0] for r in rs])} | {fmt([r[1] for r in rs], 3)} | {fmt([r[2] for r in rs], 1)} |")
        lc = med([r[2] for r in results.get((name, "legate"), [])])
        lr = med([r[0] for r in results.get((name, "legate"), [])])
        ratios = []
        for peer in ("nginx", "haproxy"):
            pc = med([r[2] for r in results.get((name, peer), [])])
            pr = med([r[0] for r in results.get((name, peer), [])])
            if lc and pc:
                ratios.append(f"CPU/req legate/{peer} = {lc / pc:.2f}")
            if lr and pr:
                ratios.append(f"req/s legate/{peer} = {lr / pr:.2f}")
        if ratios:
            lines += ["", "Ratios: " + "; ".join(ratios) + "."]
        lines.append("")
    lines += ["## Memory", "", "| proxy | RSS idle | per idle keep-alive connection (5,000 open) |", "|---|---|---|"]
    for t, (base, per) in memory.items():
        lines.append(f"| {t} | {base / 1024:.1f} MiB | {per:.1f} KiB |")
    os.makedirs(os.path.join(ROOT, "benches", "results"), exist_ok=True)
    md = os.path.join(ROOT, "benches", "results", f"{date}.md")
    svg = os.path.join(ROOT, "benches", "results", f"{date}.svg")
    lines += ["", f"![req/s and p99 per scenario]({date}.svg)", ""]
    write(md, "\n".join(lines))
    write(svg, plot(results, scenarios, targets))
    print("\n".join(lines))


def plot(results, scenarios, targets):
    """Grouped bars: req/s (left) and p99 (right) per scenario and target, as plain SVG."""
    colors = {"direct": "#999999", "legate": "#d95f02", "nginx": "#1b9e77", "haproxy": "#7570b3"}
    rows = [name for name, _ in scenarios]
    w, row_h, bar_h, left, mid = 1000, 22 * len(targets) + 20, 18, 330, 660
    h = 60 + row_h * len(rows)
    max_rps = max([med([r[0] for r in v]) or 0 for v in results.values()] + [1])
    max_p99 = max([med([r[1] for r in v]) or 0 for v in results.values()] + [0.001])
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">',
           f'<text x="{left}" y="20" font-weight="bold">req/s (longer is better)</text>',
           f'<text x="{mid + 10}" y="20" font-weight="bold">p99 ms (shorter is better)</text>']
    for i, name in enumerate(rows):
        y0 = 40 + i * row_h
        out.append(f'<text x="5" y="{y0 + 14}">{name}</text>')
        for j, t in enumerate(targets):
            rs = results.get((name, t))
            if not rs:
                continue
            y = y0 + j * 22
            rps, p99 = med([r[0] for r in rs]) or 0, med([r[1] for r in rs]) or 0
            rw = (mid - left - 60) * rps / max_rps
            pw = (w - mid - 80) * p99 / max_p99
            out.append(f'<rect x="{left}" y="{y}" width="{rw:.1f}" height="{bar_h}" fill="{colors[t]}"/>')
            out.append(f'<text x="{left + rw + 4:.1f}" y="{y + 13}">{t} {rps:.0f}</text>')
            out.append(f'<rect x="{mid + 10}" y="{y}" width="{pw:.1f}" height="{bar_h}" fill="{colors[t]}"/>')
            out.append(f'<text x="{mid + 14 + pw:.1f}" y="{y + 13}">{p99:.3f}</text>')
    out.append("</svg>")
    return "\n".join(out)


if __name__ == "__main__":
    main()
