//! The command line: version, validate mode, config errors with their field paths, `-c` merged
//! with `--config-yaml`, JSON configs, and serving from a file.

use crate::common;
use common::*;

use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::TcpStream;

/// A bootstrap with one listener whose HCM routes to `route_cluster`, and the given clusters.
fn listener_yaml(route_cluster: &str, clusters: &str) -> String {
    config(&route_all_to(route_cluster), clusters)
}

async fn invalid(name: &str, yaml: &str) -> Output {
    let file = TempFile::new(name, yaml);
    let out = run_legate(&["--mode", "validate", "-c", file.path_str()]).await;
    assert_eq!(
        out.code,
        Some(1),
        "expected exit 1\nstdout: {}\nstderr: {}",
        out.stdout,
        out.stderr
    );
    assert!(
        out.stderr
            .contains(&format!("configuration '{}' is invalid", file.path_str())),
        "{}",
        out.stderr
    );
    assert!(!out.stdout.contains("OK"), "{}", out.stdout);
    out
}

fn lines_with<'a>(stderr: &'a str, needle: &str) -> Vec<&'a str> {
    stderr.lines().filter(|l| l.contains(needle)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn version_prints_and_exits_zero() {
    let out = run_legate(&["--version"]).await;
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert_eq!(
        out.stdout.trim(),
        format!("legate version: {}", env!("CARGO_PKG_VERSION"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validate_accepts_the_default_config() {
    let out = run_legate(&["--mode", "validate", "-c", "config/default.yaml"]).await;
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert_eq!(out.stdout.trim(), "configuration 'config/default.yaml' OK");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsupported_lb_policy_names_the_field() {
    let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
    let clusters = format!(
        "{}{}    lb_policy: FOO\n",
        cluster("a", &[a]),
        cluster("b", &[])
    );
    let out = invalid("lb.yaml", &listener_yaml("a", &clusters)).await;
    assert_eq!(
        lines_with(&out.stderr, "lb_policy"),
        vec!["static_resources.clusters[1].lb_policy: unsupported value 'FOO'"],
        "{}",
        out.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_field_names_its_path() {
    let clusters = format!("{}    bogus: 1\n", cluster("a", &[]));
    let out = invalid("unknown-field.yaml", &listener_yaml("a", &clusters)).await;
    let lines = lines_with(&out.stderr, "bogus");
    assert_eq!(lines.len(), 1, "{}", out.stderr);
    assert!(
        lines[0].starts_with("static_resources.clusters[0].bogus: unknown field `bogus`"),
        "{}",
        out.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_network_filter_type_is_rejected() {
    let yaml = listener_yaml("a", &cluster("a", &[])).replace(
        "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "type.googleapis.com/envoy.extensions.filters.network.redis_proxy.v3.RedisProxy",
    );
    let out = invalid("filter.yaml", &yaml).await;
    assert!(
        out.stderr.contains(
            "static_resources.listeners[0].filter_chains[0].filters[0].typed_config.@type: \
             unsupported network filter type 'type.googleapis.com/envoy.extensions.filters.network.redis_proxy.v3.RedisProxy'"
        ),
        "{}",
        out.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_to_unknown_cluster_is_rejected() {
    let out = invalid("route.yaml", &listener_yaml("nope", &cluster("a", &[]))).await;
    let path = "static_resources.listeners[0].filter_chains[0].filters[0].typed_config\
                .route_config.virtual_hosts[0].routes[0].route.cluster";
    assert!(
        out.stderr
            .contains(&format!("{path}: unknown cluster 'nope'")),
        "{}",
        out.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duration_in_other_units_is_rejected() {
    let clusters = cluster("a", &[]).replace("connect_timeout: 1s", "connect_timeout: 5ms");
    let out = invalid("duration.yaml", &listener_yaml("a", &clusters)).await;
    assert!(
        out.stderr
            .contains("static_resources.clusters[0].connect_timeout: invalid duration '5ms'"),
        "{}",
        out.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validate_reports_every_semantic_error() {
    let clusters = format!(
        "{}    lb_policy: FOO\n{}    type: EDS\n",
        cluster("a", &[]),
        cluster("b", &[])
    );
    let out = invalid("two.yaml", &listener_yaml("nope", &clusters)).await;
    let errors: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| l.starts_with("static_resources."))
        .collect();
    assert!(
        errors.contains(&"static_resources.clusters[0].lb_policy: unsupported value 'FOO'"),
        "{}",
        out.stderr
    );
    assert!(
        errors.contains(&"static_resources.clusters[1].type: unsupported value 'EDS'"),
        "{}",
        out.stderr
    );
    assert!(
        errors
            .iter()
            .any(|l| l.ends_with("route.cluster: unknown cluster 'nope'")),
        "{}",
        out.stderr
    );
    assert_eq!(errors.len(), 3, "{}", out.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_config_exits_one() {
    let out = run_legate(&[]).await;
    assert_eq!(out.code, Some(1));
    assert!(
        out.stderr.contains("a configuration is required"),
        "{}",
        out.stderr
    );

    let path = std::env::temp_dir().join(format!("legate-test-{}-absent.yaml", std::process::id()));
    let path = path.to_str().unwrap();
    let out = run_legate(&["-c", path]).await;
    assert_eq!(out.code, Some(1));
    assert!(
        out.stderr.contains(&format!("cannot read '{path}'")),
        "{}",
        out.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn yaml_syntax_error_exits_one_with_a_message() {
    let file = TempFile::new("syntax.yaml", "static_resources:\n  clusters: [\n");
    let out = run_legate(&["-c", file.path_str()]).await;
    assert_eq!(out.code, Some(1));
    assert!(
        out.stderr
            .contains(&format!("cannot parse '{}'", file.path_str())),
        "{}",
        out.stderr
    );

    let out = run_legate(&["--mode", "validate", "--config-yaml", "admin: {"]).await;
    assert_eq!(out.code, Some(1));
    assert!(
        out.stderr.contains("cannot parse '--config-yaml'"),
        "{}",
        out.stderr
    );
}

/// GET `path` on `addr` with a bound; None when nothing answered.
async fn try_get(addr: SocketAddr, path: &str) -> Option<Reply> {
    tokio::time::timeout(Duration::from_secs(10), async {
        let mut c = Conn::open(addr).await;
        c.get("x", path).await.ok()
    })
    .await
    .ok()
    .flatten()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_yaml_is_merged_over_the_file() {
    let up = Upstream::echo("merged").await;
    let (port, admin, file_admin) = (free_port(), free_port(), free_port());
    // The file has admin and the cluster; --config-yaml adds the listener (repeated fields append)
    // and moves admin to another port (scalars replace).
    let file_yaml = format!(
        "admin:\n  address: {{ socket_address: {{ address: 127.0.0.1, port_value: {file_admin} }} }}\n\
         static_resources:\n  clusters:\n{}",
        cluster("svc", &[up.addr])
    );
    let full = standalone_config(port, admin, up.addr);
    let listeners = full
        .split("\nstatic_resources:\n")
        .nth(1)
        .unwrap()
        .split("  clusters:\n")
        .next()
        .unwrap();
    let overlay = format!(
        "admin:\n  address: {{ socket_address: {{ port_value: {admin} }} }}\nstatic_resources:\n{listeners}"
    );
    let file = TempFile::new("merge.yaml", &file_yaml);

    // Neither half is a server on its own; the file alone has no listener.
    let out = run_legate(&["--mode", "validate", "--config-yaml", &overlay]).await;
    assert_eq!(
        out.code,
        Some(1),
        "the overlay alone routes to an unknown cluster"
    );

    let mut legate = LegateProcess::spawn(&[
        "-c",
        file.path_str(),
        "--config-yaml",
        &overlay,
        "--concurrency",
        "1",
    ]);
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    legate.wait_listening(addr).await;
    let r = try_get(addr, "/via-merge").await.expect("served");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-upstream"), "merged");
    assert_eq!(up.last().uri, "/via-merge");
    let clusters = get(&format!("http://127.0.0.1:{admin}/clusters")).await;
    assert!(
        clusters
            .text()
            .contains(&format!("svc::{}::rq_total::1", up.addr)),
        "{}",
        clusters.text()
    );
    assert!(
        TcpStream::connect(("127.0.0.1", file_admin)).await.is_err(),
        "admin still on the file's port"
    );

    // A cluster from --config-yaml is appended to the file's: a new name is fine, the same name is
    // a duplicate (it would silently replace the file's cluster if lists were replaced).
    let two = format!(
        "static_resources:\n  clusters:\n{}",
        cluster("extra", &[up.addr])
    );
    let out = run_legate(&[
        "--mode",
        "validate",
        "-c",
        file.path_str(),
        "--config-yaml",
        &two,
    ])
    .await;
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let dup = format!(
        "static_resources:\n  clusters:\n{}",
        cluster("svc", &[up.addr])
    );
    let out = run_legate(&[
        "--mode",
        "validate",
        "-c",
        file.path_str(),
        "--config-yaml",
        &dup,
    ])
    .await;
    assert_eq!(out.code, Some(1));
    assert!(
        out.stderr
            .contains("static_resources.clusters[1].name: duplicate cluster name 'svc'"),
        "appending a cluster of the same name must be a duplicate: {}",
        out.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_from_a_file_with_ports_chosen_by_the_os() {
    let up = Upstream::echo("zero").await;
    let file = TempFile::new(
        "port0.yaml",
        &config(&route_all_to("svc"), &cluster("svc", &[up.addr])),
    );
    let legate = LegateProcess::spawn(&["-c", file.path_str(), "--concurrency", "1"]);
    let line = legate
        .wait_for_log("admin listening", Duration::from_secs(10))
        .await
        .unwrap_or_else(|| panic!("no admin address logged:\n{}", legate.stderr()));
    let admin: SocketAddr = line
        .split("address=")
        .nth(1)
        .and_then(|a| a.split_whitespace().next())
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("cannot read the admin address from {line:?}"));
    assert_ne!(admin.port(), 0);

    let listeners = get(&format!("http://{admin}/listeners?format=json")).await;
    assert_eq!(listeners.status, 200);
    let v: serde_json::Value = serde_json::from_slice(&listeners.body).unwrap();
    let text = v.to_string();
    let port = v["listener_statuses"][0]["local_address"]["socket_address"]["port_value"]
        .as_u64()
        .unwrap_or_else(|| panic!("no listener port in {text}"));
    assert_ne!(port, 0);
    let r = try_get(format!("127.0.0.1:{port}").parse().unwrap(), "/p0")
        .await
        .expect("served");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-upstream"), "zero");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_config_file_works() {
    let up = Upstream::echo("json").await;
    let (port, admin) = (free_port(), free_port());
    let c = |p: u16| serde_json::json!({ "socket_address": { "address": "127.0.0.1", "port_value": p } });
    let bootstrap = serde_json::json!({
        "admin": { "address": c(admin) },
        "static_resources": {
            "listeners": [{
                "name": "listener_0",
                "address": c(port),
                "filter_chains": [{ "filters": [{
                    "name": "envoy.filters.network.http_connection_manager",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                        "stat_prefix": "ingress",
                        "http_filters": [{ "name": "envoy.filters.http.router" }],
                        "route_config": { "virtual_hosts": [{
                            "name": "all", "domains": ["*"],
                            "routes": [{ "match": { "prefix": "/" }, "route": { "cluster": "svc" } }]
                        }]}
                    }
                }]}]
            }],
            "clusters": [{
                "name": "svc",
                "connect_timeout": "0.5s",
                "load_assignment": { "cluster_name": "svc", "endpoints": [{ "lb_endpoints": [
                    { "endpoint": { "address": { "socket_address": {
                        "address": "127.0.0.1", "port_value": up.addr.port() } } } }
                ]}]}
            }]
        }
    });
    let file = TempFile::new(
        "bootstrap.json",
        &serde_json::to_string_pretty(&bootstrap).unwrap(),
    );
    let out = run_legate(&["--mode", "validate", "-c", file.path_str()]).await;
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert_eq!(
        out.stdout.trim(),
        format!("configuration '{}' OK", file.path_str())
    );

    let mut legate = LegateProcess::spawn(&["-c", file.path_str(), "--concurrency", "1"]);
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    legate.wait_listening(addr).await;
    let r = try_get(addr, "/from-json").await.expect("served");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-upstream"), "json");

    // A JSON error in a .json file is reported as such.
    let broken = TempFile::new("broken.json", "{\"static_resources\": ");
    let out = run_legate(&["--mode", "validate", "-c", broken.path_str()]).await;
    assert_eq!(out.code, Some(1));
    assert!(out.stderr.contains("cannot parse"), "{}", out.stderr);
}
