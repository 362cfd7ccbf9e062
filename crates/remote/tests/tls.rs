//! A runner served over TLS with a certificate of the operator's CA, and
//! the API's client that trusts that CA only: the calls and the streams
//! cross it; another CA's certificate, a certificate for another
//! address, plain HTTP to the TLS port, TLS to a plain port and an
//! `https://` URL without a CA are refused, each said so. The runner behind is the double: this is
//! the link's test (the real runner over HTTP is `remote.rs`'s). Needs
//! no root.

#![allow(clippy::unwrap_used)]

use sandgate_contract::{Runner, RunnerError, SandboxSpec};
use sandgate_remote::{service, RemoteRunner};
use sandgate_testkit::double::RunnerDouble;
use sandgate_testkit::tls::Ca;
use std::sync::Arc;
use std::time::Duration;

const TOKEN: &str = "the-runners-token-for-tests";

/// Serves `double` over TLS with `cert` and `key` on a loopback port of
/// `rt`: its port.
fn serve_tls(
    rt: &tokio::runtime::Runtime,
    double: &Arc<RunnerDouble>,
    cert: &str,
    key: &str,
) -> u16 {
    let tls = service::tls_config(cert.as_bytes(), key.as_bytes()).unwrap();
    serve(rt, double, Some(tls))
}

/// Serves `double` on a loopback port of `rt`, over TLS when `tls` is
/// given: its port.
fn serve(
    rt: &tokio::runtime::Runtime,
    double: &Arc<RunnerDouble>,
    tls: Option<Arc<rustls::ServerConfig>>,
) -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let served: Arc<dyn Runner> = double.clone();
    rt.spawn(async move {
        let router = service::router(served, TOKEN).unwrap();
        service::serve(router, listener, tls, std::future::pending())
            .await
            .unwrap();
    });
    port
}

#[test]
fn a_runner_over_tls_is_trusted_by_its_ca_only() {
    let policy = sandgate_lab::lab_policy();
    let double = Arc::new(RunnerDouble::new(&["busybox"], policy.clone()));
    let rt = tokio::runtime::Runtime::new().unwrap();
    let ca = Ca::new("sandgate runners CA");
    let (cert, key) = ca.issue(&["127.0.0.1"]);
    let port = serve_tls(&rt, &double, &cert, &key);
    let url = format!("https://127.0.0.1:{port}");

    // Trusted: a change and a stream cross the link.
    let remote =
        RemoteRunner::connect_with(&url, TOKEN, Some(ca.pem().as_bytes()), policy.clone()).unwrap();
    assert_eq!(remote.snapshots().unwrap(), vec!["busybox".to_string()]);
    let spec = SandboxSpec {
        id: "sb-tls".into(),
        organization: "org-tls".into(),
        snapshot: "busybox".into(),
        policy: policy
            .resolve(3, &sandgate_policy::NetworkSettings::default())
            .unwrap(),
        resources: policy.tier(3).unwrap().resources.default,
        runtime_class: Default::default(),
        secrets: Vec::new(),
    };
    // A runner serves no sandbox until its API has restored it (it may
    // have started again): said so, with a code of its own.
    let early = remote.create(&spec).unwrap_err();
    assert_eq!((early.status(), early.code()), (503, "runner_restoring"));
    assert!(early.is_out_of_reach());
    assert!(double.held("sb-tls").is_none());
    remote.restore(&[]).unwrap();
    remote.create(&spec).unwrap();
    assert!(double.held("sb-tls").is_some());
    let mut deaths = remote.take_deaths().unwrap();
    double.kill("sb-tls");
    let died =
        rt.block_on(async { tokio::time::timeout(Duration::from_secs(10), deaths.recv()).await });
    assert_eq!(died.ok().flatten().as_deref(), Some("sb-tls"));

    // Another CA's certificate, and a certificate of this CA for another
    // address: not trusted, and said so.
    let other = Ca::new("another CA");
    for (cert, key) in [other.issue(&["127.0.0.1"]), ca.issue(&["127.0.0.2"])] {
        let port = serve_tls(&rt, &double, &cert, &key);
        let refused = RemoteRunner::connect_with(
            &format!("https://127.0.0.1:{port}"),
            TOKEN,
            Some(ca.pem().as_bytes()),
            policy.clone(),
        )
        .unwrap_err();
        assert!(
            matches!(&refused, RunnerError::Unavailable(m) if m.contains("not trusted")),
            "{refused:?}"
        );
    }

    // Plain HTTP to the TLS port gets no answer it can read.
    let plain = RemoteRunner::connect(&format!("http://127.0.0.1:{port}"), TOKEN, policy.clone())
        .unwrap_err();
    assert!(plain.is_host_fault(), "{plain:?}");

    // https:// to a runner that serves plain HTTP: said so.
    let plain_port = serve(&rt, &double, None);
    let untls = RemoteRunner::connect_with(
        &format!("https://127.0.0.1:{plain_port}"),
        TOKEN,
        Some(ca.pem().as_bytes()),
        policy.clone(),
    )
    .unwrap_err();
    assert!(
        matches!(&untls, RunnerError::Unavailable(m) if m.contains("does not speak TLS")),
        "{untls:?}"
    );

    // An https:// URL needs the CA; a CA file with no certificate is said.
    let no_ca = RemoteRunner::connect_with(&url, TOKEN, None, policy.clone()).unwrap_err();
    assert_eq!((no_ca.status(), no_ca.code()), (400, "invalid_request"));
    assert!(no_ca.message().contains("CA"), "{no_ca:?}");
    let empty = RemoteRunner::connect_with(&url, TOKEN, Some(b"not a PEM file"), policy.clone())
        .unwrap_err();
    assert!(empty.message().contains("no certificate"), "{empty:?}");

    // The runner's side refuses a certificate or key it cannot read.
    let bad = service::tls_config(b"nonsense", key.as_bytes()).unwrap_err();
    assert!(bad.contains("certificate"), "{bad}");
    let bad = service::tls_config(cert.as_bytes(), b"nonsense").unwrap_err();
    assert!(bad.contains("key"), "{bad}");
}
