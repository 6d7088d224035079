//! Property tests: the config loader, the route matcher and header handling take any input
//! without panicking. Failures are kept in `tests/proptest-regressions/` and replayed first.

use legate::bootstrap::{self, ConfigSource, DownstreamLimits, UnderscoreAction};
use legate::http::headers::strip_hop_by_hop;
use legate::http::router::{Action, PathMatch, Route, RouteTable, VirtualHost};
use legate::http::validation::{check_request, UnderscoreStats};
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(
            "tests/proptest-regressions/properties.txt",
        ))),
        ..ProptestConfig::default()
    }
}

/// YAML-ish text: fragments of real bootstrap syntax mixed with noise.
fn yamlish() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just("static_resources:\n".to_string()),
        Just("  listeners:\n".to_string()),
        Just("  - name: l\n".to_string()),
        Just("    address: { socket_address: { address: 127.0.0.1, port_value: 0 } }\n".to_string()),
        Just("    filter_chains: [{ filters: [{ name: envoy.filters.network.http_connection_manager, typed_config: { stat_prefix: x, http_filters: [{ name: envoy.filters.http.router }], route_config: { virtual_hosts: [{ name: v, domains: [\"*\"], routes: [{ match: { prefix: / }, direct_response: { status: 200 } }] }] } } }] }]\n".to_string()),
        Just("  clusters: [{ name: c, connect_timeout: 1s }]\n".to_string()),
        Just("request_headers_timeout: 0.5s\n".to_string()),
        Just("stream_idle_timeout: -1s\n".to_string()),
        Just("common_http_protocol_options: { headers_with_underscores_action: FOO }\n".to_string()),
        Just("max_request_uri_kb: 99999999999\n".to_string()),
        Just("- [\n".to_string()),
        Just("{{{\n".to_string()),
        Just("\"@type\": x\n".to_string()),
        "[ -~\\n\\t]{0,40}",
    ];
    prop::collection::vec(piece, 0..8).prop_map(|v| v.concat())
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn loader_never_panics(text in yamlish()) {
        let _ = bootstrap::load(&ConfigSource::yaml(text));
    }

    #[test]
    fn loader_never_panics_on_bytes(text in "\\PC{0,200}") {
        let _ = bootstrap::load(&ConfigSource::yaml(text));
    }

    #[test]
    fn route_matcher_never_panics(
        domains in prop::collection::vec("[a-z*.:0-9-]{0,12}", 1..4),
        prefixes in prop::collection::vec("/[ -~]{0,8}", 1..4),
        host in "\\PC{0,30}",
        path in "\\PC{0,60}",
    ) {
        let vhosts = domains
            .iter()
            .enumerate()
            .filter(|(_, d)| legate::http::router::validate_domain(d).is_ok())
            .map(|(i, d)| VirtualHost {
                name: format!("v{i}"),
                domains: vec![d.clone()],
                routes: prefixes
                    .iter()
                    .map(|p| Route {
                        name: String::new(),
                        path_match: PathMatch::Prefix(p.clone()),
                        case_sensitive: i % 2 == 0,
                        action: Action::DirectResponse { status: 200, body: bytes::Bytes::new() },
                    })
                    .collect::<Vec<Route<()>>>(),
            })
            .collect();
        let table = RouteTable::new("t".into(), vhosts);
        if let Some((vi, ri)) = table.find(&host, &path) {
            prop_assert!(vi < table.virtual_hosts.len());
            prop_assert!(ri < table.virtual_hosts[vi].routes.len());
        }
    }

    /// The route index answers exactly what the first-match scan does: random virtual hosts of
    /// prefix and exact-path routes, either case mode, over a tiny alphabet so that prefixes
    /// overlap, repeat, differ only in case and contain `?` (and a non-ASCII letter, which
    /// ASCII case folding leaves alone).
    #[test]
    fn route_index_agrees_with_linear_scan(
        vhosts in prop::collection::vec(
            prop::collection::vec(("[/aAbÉé?]{0,5}", any::<bool>(), any::<bool>()), 0..12),
            1..4,
        ),
        paths in prop::collection::vec("[/aAbÉé?]{0,8}", 1..16),
    ) {
        let vhosts: Vec<VirtualHost<()>> = vhosts
            .into_iter()
            .enumerate()
            .map(|(i, routes)| VirtualHost {
                name: format!("v{i}"),
                domains: vec![if i == 0 { "*".into() } else { format!("h{i}") }],
                routes: routes
                    .into_iter()
                    .map(|(key, exact, case_sensitive)| Route {
                        name: String::new(),
                        path_match: if exact { PathMatch::Path(key) } else { PathMatch::Prefix(key) },
                        case_sensitive,
                        action: Action::DirectResponse { status: 200, body: bytes::Bytes::new() },
                    })
                    .collect(),
            })
            .collect();
        let hosts: Vec<String> = (0..vhosts.len()).map(|i| format!("h{i}")).collect();
        let table = RouteTable::new("t".into(), vhosts);
        for host in &hosts {
            for path in &paths {
                prop_assert_eq!(
                    table.find(host, path),
                    table.find_linear(host, path),
                    "host {} path {:?}", host, path
                );
            }
        }
    }

    #[test]
    fn header_handling_never_panics(
        headers in prop::collection::vec(("[a-zA-Z0-9_!#$%&'*+.^`|~-]{1,20}", "[ -~\\t]{0,40}"), 0..20),
        uri in "(/|http://[a-z.]{1,10}(:[0-9]{1,5})?/)[ -~]{0,30}",
        h2 in any::<bool>(),
        action in 0u8..3,
    ) {
        let mut map = http::HeaderMap::new();
        for (k, v) in &headers {
            if let (Ok(k), Ok(v)) = (
                http::header::HeaderName::from_bytes(k.as_bytes()),
                http::HeaderValue::from_str(v),
            ) {
                map.append(k, v);
            }
        }
        let Ok(uri) = uri.parse::<http::Uri>() else { return Ok(()) };
        let mut req = http::Request::builder()
            .uri(uri)
            .version(if h2 { http::Version::HTTP_2 } else { http::Version::HTTP_11 })
            .body(())
            .unwrap();
        *req.headers_mut() = map.clone();
        let (mut parts, ()) = req.into_parts();
        let stats = legate::observe::Stats::new();
        let limits = DownstreamLimits {
            headers_with_underscores: match action {
                0 => UnderscoreAction::Allow,
                1 => UnderscoreAction::DropHeader,
                _ => UnderscoreAction::RejectRequest,
            },
            ..Default::default()
        };
        let u = UnderscoreStats { dropped: stats.counter("d"), rejected: stats.counter("r") };
        if check_request(&mut parts, &limits, &u).is_ok() {
            prop_assert!(parts.headers.get("http2-settings").is_none());
            if action == 1 {
                prop_assert!(parts.headers.keys().all(|k| !k.as_str().contains('_')));
            }
        }
        strip_hop_by_hop(&mut map);
        for h in ["connection", "keep-alive", "proxy-connection", "upgrade", "transfer-encoding"] {
            prop_assert!(map.get(h).is_none());
        }
    }
}
