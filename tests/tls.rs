//! TLS on both hops: certificates chosen by SNI with one filter chain per domain, the default
//! chain, ALPN choosing the HTTP codec, client certificates (mTLS) with SAN matching, TLS to
//! upstreams (CA, expiry, SAN, SNI), the TLS inspector's timeout and `/certs`. Certificates are
//! made at test time by a test CA.

use crate::common;
use common::*;

use std::time::{Duration, Instant, SystemTime};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// An HTTP chain for `names` terminating TLS with `cert` and routing to `cluster`.
fn sni_chain(names: &str, cert: &TestCert, cluster: &str) -> String {
    chain_item(&chain_body(
        &format!("server_names: [{names}]"),
        &downstream_tls(&[cert], "", ""),
        &hcm_to(cluster, cluster, ""),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sni_selects_the_certificate_and_the_chain_and_unknown_names_are_closed() {
    let ca = TestCa::new("sni");
    let a_cert = ca.server_cert(&["a.example.com"]);
    let b_cert = ca.server_cert(&["b.example.com"]);
    let (ua, ub) = (Upstream::echo("a").await, Upstream::echo("b").await);
    let chains =
        sni_chain("a.example.com", &a_cert, "a") + &sni_chain("b.example.com", &b_cert, "b");
    let clusters = cluster("a", &[ua.addr]) + &cluster("b", &[ub.addr]);
    let legate = Legate::start(&listener_bootstrap(TLS_INSPECTOR, &chains, &clusters)).await;

    // The client verifies the chain against the test CA and the name against its SNI.
    let client = tls_client_config(Some(&ca), None, &[]);
    for (sni, upstream) in [
        ("a.example.com", "a"),
        ("b.example.com", "b"),
        ("A.Example.COM", "a"),
    ] {
        let r = https_get(legate.addr, sni, client.clone(), "/")
            .await
            .unwrap_or_else(|e| panic!("{sni}: {e}"));
        assert_eq!(r.reply.status, 200, "{sni}");
        assert_eq!(
            r.peer_names,
            vec![format!("{upstream}.example.com")],
            "{sni}"
        );
        assert_eq!(r.reply.header("x-upstream"), upstream, "{sni}");
    }
    assert_eq!((ua.request_count(), ub.request_count()), (2, 1));
    legate.wait_stat("listener.edge.ssl.handshake", 3).await;

    // No chain for an unknown name, nor for a ClientHello without SNI (an IP address as the
    // server name): the connection is closed before any handshake.
    let any = tls_client_config(None, None, &[]);
    for sni in ["c.example.com", "127.0.0.1"] {
        let err = tls_connect(legate.addr, sni, any.clone()).await;
        assert!(err.is_err(), "{sni}: handshake completed without a chain");
    }
    legate
        .wait_stat("listener.edge.no_filter_chain_match", 2)
        .await;
    assert_eq!((ua.request_count(), ub.request_count()), (2, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_sni_uses_the_default_filter_chain() {
    let ca = TestCa::new("default");
    let a_cert = ca.server_cert(&["a.example.com"]);
    let fallback = ca.server_cert(&["fallback.example.com"]);
    let (ua, uc) = (Upstream::echo("a").await, Upstream::echo("c").await);
    let chains = sni_chain("a.example.com", &a_cert, "a")
        + &default_chain(&chain_body(
            "",
            &downstream_tls(&[&fallback], "", ""),
            &hcm_to("fallback", "c", ""),
        ));
    let clusters = cluster("a", &[ua.addr]) + &cluster("c", &[uc.addr]);
    let legate = Legate::start(&listener_bootstrap(TLS_INSPECTOR, &chains, &clusters)).await;

    // Accept any certificate, to see which one the default chain presents.
    let any = tls_client_config(None, None, &[]);
    let r = https_get(legate.addr, "unknown.example.org", any.clone(), "/")
        .await
        .unwrap();
    assert_eq!(r.reply.status, 200);
    assert_eq!(r.peer_names, vec!["fallback.example.com".to_string()]);
    assert_eq!(r.reply.header("x-upstream"), "c");

    let r = https_get(legate.addr, "a.example.com", any, "/")
        .await
        .unwrap();
    assert_eq!(r.peer_names, vec!["a.example.com".to_string()]);
    assert_eq!(r.reply.header("x-upstream"), "a");
    assert_eq!((ua.request_count(), uc.request_count()), (1, 1));
    // The default chain is a match: nothing counts as unmatched.
    assert_eq!(legate.stat("listener.edge.no_filter_chain_match"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alpn_chooses_http2_or_http1() {
    let ca = TestCa::new("alpn");
    let cert = ca.server_cert(&["api.example.com"]);
    let up = Upstream::echo("api").await;
    let chains = chain_item(&chain_body(
        "",
        &downstream_tls(&[&cert], "            alpn_protocols: [h2, http/1.1]\n", ""),
        &hcm_to("api", "api", ""),
    ));
    let legate = Legate::start(&listener_bootstrap(
        "",
        &chains,
        &cluster("api", &[up.addr]),
    ))
    .await;

    let cases: [(&[&str], Option<&str>, http::Version); 4] = [
        (&["h2"], Some("h2"), http::Version::HTTP_2),
        (&["http/1.1"], Some("http/1.1"), http::Version::HTTP_11),
        (&["http/1.1", "h2"], Some("h2"), http::Version::HTTP_2),
        // No ALPN at all: the codec falls back to sniffing, and this client speaks HTTP/1.1.
        (&[], None, http::Version::HTTP_11),
    ];
    for (offer, chosen, version) in cases {
        let client = tls_client_config(Some(&ca), None, offer);
        let r = https_get(legate.addr, "api.example.com", client, "/")
            .await
            .unwrap_or_else(|e| panic!("offering {offer:?}: {e}"));
        assert_eq!(r.alpn.as_deref(), chosen, "offering {offer:?}");
        assert_eq!(r.version, version, "offering {offer:?}");
        assert_eq!(r.reply.status, 200, "offering {offer:?}");
        assert_eq!(r.reply.header("x-upstream"), "api", "offering {offer:?}");
    }
    assert_eq!(up.request_count(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alpn_without_a_common_protocol_continues_without_alpn() {
    // Envoy (BoringSSL's select callback answering NOACK) completes the handshake with no
    // protocol chosen when the client offers nothing the listener lists.
    let ca = TestCa::new("alpn-none");
    let cert = ca.server_cert(&["api.example.com"]);
    let up = Upstream::echo("api").await;
    let chains = chain_item(&chain_body(
        "",
        &downstream_tls(&[&cert], "            alpn_protocols: [h2]\n", ""),
        &hcm_to("api", "api", ""),
    ));
    let legate = Legate::start(&listener_bootstrap(
        "",
        &chains,
        &cluster("api", &[up.addr]),
    ))
    .await;
    let client = tls_client_config(Some(&ca), None, &["http/1.1"]);
    let r = https_get(legate.addr, "api.example.com", client, "/")
        .await
        .unwrap();
    assert_eq!(r.alpn, None);
    assert_eq!(r.version, http::Version::HTTP_11);
    assert_eq!(r.reply.status, 200);
    assert_eq!(r.reply.header("x-upstream"), "api");
}

/// A TLS chain requiring a client certificate issued by `client_ca` (and, with `sans`, one of
/// those DNS names).
fn mtls_chain(cert: &TestCert, client_ca: &TestCa, sans: &[&str], cluster: &str) -> String {
    chain_item(&chain_body(
        "",
        &downstream_tls(
            &[cert],
            &validation_context(client_ca, sans),
            "          require_client_certificate: true\n",
        ),
        &hcm_to(cluster, cluster, ""),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_requires_a_client_certificate_from_the_trusted_ca() {
    let ca = TestCa::new("mtls");
    let other_ca = TestCa::new("mtls-other");
    let cert = ca.server_cert(&["secure.example.com"]);
    let up = Upstream::echo("secure").await;
    let legate = Legate::start(&listener_bootstrap(
        "",
        &mtls_chain(&cert, &ca, &[], "secure"),
        &cluster("secure", &[up.addr]),
    ))
    .await;

    let no_cert = tls_client_config(Some(&ca), None, &[]);
    let r = https_get(legate.addr, "secure.example.com", no_cert, "/").await;
    assert!(r.is_err(), "served without a client certificate");

    let foreign = other_ca.client_cert(&["client.example.com"]);
    let r = https_get(
        legate.addr,
        "secure.example.com",
        tls_client_config(Some(&ca), Some(&foreign), &[]),
        "/",
    )
    .await;
    assert!(r.is_err(), "served a certificate from an untrusted CA");
    assert_eq!(up.request_count(), 0);
    legate
        .wait_stat("listener.edge.ssl.connection_error", 2)
        .await;

    let good = ca.client_cert(&["client.example.com"]);
    let r = https_get(
        legate.addr,
        "secure.example.com",
        tls_client_config(Some(&ca), Some(&good), &[]),
        "/",
    )
    .await
    .unwrap();
    assert_eq!(r.reply.status, 200);
    assert_eq!(r.reply.header("x-upstream"), "secure");
    assert_eq!(up.request_count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_subject_alt_name_must_match() {
    let ca = TestCa::new("mtls-san");
    let cert = ca.server_cert(&["secure.example.com"]);
    let up = Upstream::echo("secure").await;
    let legate = Legate::start(&listener_bootstrap(
        "",
        &mtls_chain(&cert, &ca, &["client.example.com"], "secure"),
        &cluster("secure", &[up.addr]),
    ))
    .await;

    let wrong = ca.client_cert(&["intruder.example.com"]);
    let r = https_get(
        legate.addr,
        "secure.example.com",
        tls_client_config(Some(&ca), Some(&wrong), &[]),
        "/",
    )
    .await;
    assert!(r.is_err(), "served a client certificate with the wrong SAN");
    assert_eq!(up.request_count(), 0);

    let right = ca.client_cert(&["other.example.com", "client.example.com"]);
    let r = https_get(
        legate.addr,
        "secure.example.com",
        tls_client_config(Some(&ca), Some(&right), &[]),
        "/",
    )
    .await
    .unwrap();
    assert_eq!(r.reply.status, 200);
    assert_eq!(up.request_count(), 1);
}

/// A cluster over `addr` with an `UpstreamTlsContext` sending `sni` and trusting the CA in
/// `ca_file`; `validation_extra` goes into its `validation_context` (column 12).
fn tls_cluster(
    name: &str,
    addr: std::net::SocketAddr,
    ca_file: &str,
    sni: &str,
    validation_extra: &str,
) -> String {
    cluster(name, &[addr])
        + &format!(
            r#"    transport_socket:
      name: envoy.transport_sockets.tls
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
        sni: {sni}
        common_tls_context:
          validation_context:
            trusted_ca: {{ filename: "{ca_file}" }}
{validation_extra}"#
        )
}

fn prefix_routes(routes: &[(&str, &str)]) -> String {
    let mut out = String::from(
        "            - name: all\n              domains: [\"*\"]\n              routes:\n",
    );
    for (prefix, cluster) in routes {
        out.push_str(&format!(
            "              - match: {{ prefix: \"{prefix}\" }}\n                route: {{ cluster: {cluster} }}\n"
        ));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_tls_verifies_the_upstream_certificate() {
    let ca = TestCa::new("upstream");
    let other_ca = TestCa::new("upstream-other");
    let ca_file = TempFile::new("upstream-tls-ca.pem", ca.pem());
    let good = Upstream::echo_tls("good", &ca.server_cert(&["up.example.com"])).await;
    let foreign = Upstream::echo_tls("foreign", &other_ca.server_cert(&["up.example.com"])).await;
    let expired = Upstream::echo_tls("expired", &ca.expired_server_cert(&["up.example.com"])).await;
    let renamed = Upstream::echo_tls("renamed", &ca.server_cert(&["elsewhere.example.com"])).await;
    let ca_path = ca_file.path_str();
    let clusters = tls_cluster("good", good.addr, ca_path, "up.example.com", "")
        + &tls_cluster("foreign", foreign.addr, ca_path, "up.example.com", "")
        + &tls_cluster("expired", expired.addr, ca_path, "up.example.com", "")
        + &tls_cluster(
            "renamed",
            renamed.addr,
            ca_path,
            "up.example.com",
            "            match_typed_subject_alt_names: [{ san_type: DNS, matcher: { exact: up.example.com } }]\n",
        );
    let routes = prefix_routes(&[
        ("/good", "good"),
        ("/foreign", "foreign"),
        ("/expired", "expired"),
        ("/renamed", "renamed"),
    ]);
    let log = AccessLog::with_format(
        "upstream",
        "%REQ(:PATH)% %RESPONSE_CODE% %RESPONSE_FLAGS% reason=[%UPSTREAM_TRANSPORT_FAILURE_REASON%]",
    );
    let legate = Legate::start(&config_with(&routes, &clusters, &log.hcm_extra())).await;

    let r = get(&legate.url("/good")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-upstream"), "good");
    assert_eq!(r.header("x-upstream-sni"), "up.example.com");
    assert_eq!(good.request_count(), 1);
    let line = log.line_starting("/good ").await;
    assert!(line.contains(" 200 - reason=[-]"), "{line}");

    for (path, up) in [
        ("/foreign", &foreign),
        ("/expired", &expired),
        ("/renamed", &renamed),
    ] {
        let r = get(&legate.url(path)).await;
        assert_eq!(r.status, 503, "{path}");
        assert!(
            r.text()
                .starts_with("upstream connect error or disconnect/reset before headers"),
            "{path}: {}",
            r.text()
        );
        let line = log.line_starting(&format!("{path} ")).await;
        assert!(line.contains(" 503 UF "), "{line}");
        assert!(
            line.contains(" 503 UF reason=[TLS_error:"),
            "no transport failure reason: {line}"
        );
        assert!(
            r.text().contains("transport failure reason: TLS_error:"),
            "{}",
            r.text()
        );
        assert!(up.connection_count() >= 1, "{path}: never dialled");
        assert_eq!(
            up.request_count(),
            0,
            "{path}: request sent over untrusted TLS"
        );
    }
    legate
        .wait_stat("cluster.expired.upstream_cx_connect_fail", 1)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_client_hello_is_closed_after_listener_filters_timeout() {
    let ca = TestCa::new("stall");
    let cert = ca.server_cert(&["a.example.com"]);
    let up = Upstream::echo("a").await;
    let extra = format!("{TLS_INSPECTOR}    listener_filters_timeout: 0.3s\n");
    let legate = Legate::start(&listener_bootstrap(
        &extra,
        &sni_chain("a.example.com", &cert, "a"),
        &cluster("a", &[up.addr]),
    ))
    .await;

    let mut s = TcpStream::connect(legate.addr).await.unwrap();
    // The first bytes of a TLS handshake record, then nothing.
    s.write_all(&[0x16, 0x03, 0x01]).await.unwrap();
    let start = Instant::now();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .expect("closed within 5 s");
    let waited = start.elapsed();
    assert!(matches!(n, Ok(0) | Err(_)), "got bytes: {n:?}");
    assert!(
        waited >= Duration::from_millis(250),
        "closed after {waited:?}"
    );
    legate
        .wait_stat("listener.edge.downstream_pre_cx_timeout", 1)
        .await;

    // A real client on the same listener is unaffected.
    let r = https_get(
        legate.addr,
        "a.example.com",
        tls_client_config(Some(&ca), None, &[]),
        "/",
    )
    .await
    .unwrap();
    assert_eq!(r.reply.status, 200);
}

/// Days from the epoch to 2080-01-01 (when the test CA's server certificates expire).
const DAYS_TO_2080: i64 = 110 * 365 + 27;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certs_endpoint_lists_listener_and_cluster_certificates() {
    let ca = TestCa::new("admin");
    let cert = ca.server_cert(&["a.example.com", "www.a.example.com"]);
    let cert_file = TempFile::new("certs-endpoint-cert.pem", &cert.cert_pem);
    let key_file = TempFile::new("certs-endpoint-key.pem", &cert.key_pem);
    let ca_file = TempFile::new("certs-endpoint-ca.pem", ca.pem());
    let up = Upstream::echo("a").await;
    let transport = format!(
        r#"      transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          common_tls_context:
            tls_certificates:
            - certificate_chain: {{ filename: "{}" }}
              private_key: {{ filename: "{}" }}
"#,
        cert_file.path_str(),
        key_file.path_str()
    );
    let chains = chain_item(&chain_body("", &transport, &hcm_to("a", "a", "")));
    // The cluster presents an expired client certificate: reported with 0 days left.
    let client_cert = ca.expired_server_cert(&["client.example.com"]);
    let clusters = cluster("a", &[up.addr])
        + &format!(
            r#"  - name: secure
    connect_timeout: 1s
    transport_socket:
      name: envoy.transport_sockets.tls
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
        common_tls_context:
{}          validation_context:
            trusted_ca: {{ filename: "{}" }}
"#,
            tls_certificates_at(&[&client_cert], 10),
            ca_file.path_str()
        );
    let legate = Legate::start(&listener_bootstrap("", &chains, &clusters)).await;

    let r = get(&legate.admin_url("/certs")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), "application/json");
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    let certs = v["certificates"].as_array().expect("certificates array");
    assert_eq!(certs.len(), 2, "{v:#}");

    let listener = &certs[0];
    assert_eq!(listener["ca_cert"], serde_json::json!([]), "{v:#}");
    let leaf = &listener["cert_chain"][0];
    assert_eq!(leaf["path"], cert_file.path_str());
    assert_eq!(
        leaf["subject_alt_names"],
        serde_json::json!([{ "dns": "a.example.com" }, { "dns": "www.a.example.com" }])
    );
    let today = (SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        / 86_400) as i64;
    let days = leaf["days_until_expiration"].as_i64().expect("days number");
    assert!((days - (DAYS_TO_2080 - today)).abs() <= 1, "{days}");
    assert_eq!(leaf["valid_from"], "2020-01-01T00:00:00Z");
    assert_eq!(leaf["expiration_time"], "2080-01-01T00:00:00Z");
    let serial = leaf["serial_number"].as_str().unwrap();
    assert!(
        !serial.is_empty() && serial.chars().all(|c| c.is_ascii_hexdigit()),
        "{serial}"
    );

    let cluster_entry = &certs[1];
    assert_eq!(cluster_entry["ca_cert"][0]["path"], ca_file.path_str());
    assert_eq!(
        cluster_entry["ca_cert"][0]["expiration_time"],
        "2090-01-01T00:00:00Z"
    );
    let client = &cluster_entry["cert_chain"][0];
    assert_eq!(client["path"], "<inline>");
    assert_eq!(client["days_until_expiration"], 0);
    assert_eq!(client["expiration_time"], "2021-01-01T00:00:00Z");

    let help = get(&legate.admin_url("/help")).await.text();
    assert!(help.contains("/certs"), "{help}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_listener_filters_timeout_disables_the_timeout() {
    // Envoy: "Specify 0 to disable the timeout".
    let ca = TestCa::new("no-timeout");
    let cert = ca.server_cert(&["a.example.com"]);
    let up = Upstream::echo("a").await;
    let extra = format!("{TLS_INSPECTOR}    listener_filters_timeout: 0s\n");
    let legate = Legate::start(&listener_bootstrap(
        &extra,
        &sni_chain("a.example.com", &cert, "a"),
        &cluster("a", &[up.addr]),
    ))
    .await;
    let client = tls_client_config(Some(&ca), None, &[]);
    for _ in 0..3 {
        let r = https_get(legate.addr, "a.example.com", client.clone(), "/")
            .await
            .unwrap();
        assert_eq!(r.reply.status, 200);
    }
    // A ClientHello that takes its time is waited for, not cut off.
    let mut s = TcpStream::connect(legate.addr).await.unwrap();
    s.write_all(&[0x16, 0x03, 0x01]).await.unwrap();
    let mut buf = [0u8; 1];
    let r = tokio::time::timeout(Duration::from_millis(500), s.read(&mut buf)).await;
    assert!(r.is_err(), "closed a slow ClientHello: {r:?}");
    assert_eq!(legate.stat("listener.edge.downstream_pre_cx_timeout"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_chain_with_several_certificates_picks_by_sni() {
    // One chain for `*.example.com` holding two certificates: the one covering the SNI is
    // served (an exact name before a wildcard), the first one when none covers it.
    let ca = TestCa::new("multi");
    let api = ca.server_cert(&["api.example.com"]);
    let wildcard = ca.server_cert(&["*.example.com"]);
    let up = Upstream::echo("svc").await;
    let chains = sni_chain_certs("\"*.example.com\"", &[&api, &wildcard], "svc");
    let legate = Legate::start(&listener_bootstrap(
        TLS_INSPECTOR,
        &chains,
        &cluster("svc", &[up.addr]),
    ))
    .await;
    let any = tls_client_config(None, None, &[]);
    for (sni, want) in [
        ("api.example.com", "api.example.com"),
        ("www.example.com", "*.example.com"),
        // The chain's `*.example.com` matches any depth (Envoy's server_names), but the
        // certificate's wildcard covers one label only: the first certificate is served.
        ("deep.www.example.com", "api.example.com"),
    ] {
        let r = https_get(legate.addr, sni, any.clone(), "/")
            .await
            .unwrap_or_else(|e| panic!("{sni}: {e}"));
        assert_eq!(r.peer_names, vec![want.to_string()], "{sni}");
        assert_eq!(r.reply.header("x-upstream"), "svc", "{sni}");
    }
    // A name outside the wildcard matches no chain.
    assert!(tls_connect(legate.addr, "example.com", any).await.is_err());
    legate
        .wait_stat("listener.edge.no_filter_chain_match", 1)
        .await;
}

fn sni_chain_certs(names: &str, certs: &[&TestCert], cluster: &str) -> String {
    chain_item(&chain_body(
        &format!("server_names: [{names}]"),
        &downstream_tls(certs, "", ""),
        &hcm_to(cluster, cluster, ""),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_and_plaintext_http_share_a_port_by_transport_protocol() {
    let ca = TestCa::new("shared-port");
    let cert = ca.server_cert(&["www.example.com"]);
    let (secure, plain) = (
        Upstream::echo("secure").await,
        Upstream::echo("plain").await,
    );
    let chains = chain_item(&chain_body(
        "transport_protocol: tls",
        &downstream_tls(&[&cert], "", ""),
        &hcm_to("secure", "secure", ""),
    )) + &chain_item(&chain_body("", "", &hcm_to("plain", "plain", "")));
    let legate = Legate::start(&listener_bootstrap(
        TLS_INSPECTOR,
        &chains,
        &(cluster("secure", &[secure.addr]) + &cluster("plain", &[plain.addr])),
    ))
    .await;
    let r = https_get(
        legate.addr,
        "www.example.com",
        tls_client_config(Some(&ca), None, &[]),
        "/",
    )
    .await
    .unwrap();
    assert_eq!(r.reply.header("x-upstream"), "secure");
    let r = get(&legate.url("/")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-upstream"), "plain");
    assert_eq!((secure.request_count(), plain.request_count()), (1, 1));
    // The upstream learns the client's scheme.
    assert_eq!(secure.last().headers["x-forwarded-proto"], "https");
    assert_eq!(plain.last().headers["x-forwarded-proto"], "http");
    assert_eq!(legate.stat("listener.edge.downstream_pre_cx_timeout"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn optional_client_certificate_is_verified_when_presented() {
    // trusted_ca without require_client_certificate: no certificate is fine, a bad one is not.
    let ca = TestCa::new("optional");
    let other_ca = TestCa::new("optional-other");
    let cert = ca.server_cert(&["www.example.com"]);
    let up = Upstream::echo("svc").await;
    let chains = chain_item(&chain_body(
        "",
        &downstream_tls(&[&cert], &validation_context(&ca, &[]), ""),
        &hcm_to("svc", "svc", ""),
    ));
    let legate = Legate::start(&listener_bootstrap(
        "",
        &chains,
        &cluster("svc", &[up.addr]),
    ))
    .await;
    let r = https_get(
        legate.addr,
        "www.example.com",
        tls_client_config(Some(&ca), None, &[]),
        "/",
    )
    .await
    .unwrap();
    assert_eq!(r.reply.status, 200);
    let good = ca.client_cert(&["client.example.com"]);
    let r = https_get(
        legate.addr,
        "www.example.com",
        tls_client_config(Some(&ca), Some(&good), &[]),
        "/",
    )
    .await
    .unwrap();
    assert_eq!(r.reply.status, 200);
    let foreign = other_ca.client_cert(&["client.example.com"]);
    let r = https_get(
        legate.addr,
        "www.example.com",
        tls_client_config(Some(&ca), Some(&foreign), &[]),
        "/",
    )
    .await;
    assert!(
        r.is_err(),
        "accepted a client certificate from an untrusted CA"
    );
    assert_eq!(up.request_count(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_tls_without_sni_sends_none() {
    let ca = TestCa::new("no-sni");
    let up = Upstream::echo_tls("up", &ca.server_cert(&["up.example.com"])).await;
    let clusters = cluster("up", &[up.addr])
        + &format!(
            r#"    transport_socket:
      name: envoy.transport_sockets.tls
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
        common_tls_context:
          validation_context:
{}"#,
            inline_pem("trusted_ca", ca.pem(), 12)
        );
    let legate = Legate::start(&config(&route_all_to("up"), &clusters)).await;
    let r = get(&legate.url("/")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-upstream"), "up");
    assert_eq!(r.header("x-upstream-sni"), "");
}
