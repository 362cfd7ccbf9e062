//! The lab itself, on the real kernel (needs root).

#![allow(clippy::unwrap_used)]

use hickory_proto::op::{Message, Query, ResponseCode};
use hickory_proto::rr::{Name, RecordType};
use rustls::pki_types::pem::PemObject;
use sandgate_lab::addrs::*;
use sandgate_lab::Lab;
use sandgate_netns::Netns;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::time::Duration;

const T: Duration = Duration::from_secs(2);

#[test]
fn the_world_answers_the_host_on_every_service_and_family() {
    let lab = Lab::up().unwrap();
    lab.host()
        .run(|| {
            for server in [SERVER4, SERVER6, SERVER4_B, SERVER6_B] {
                let mut c = TcpStream::connect_timeout(&SocketAddr::new(server, TCP_ECHO), T)?;
                c.set_read_timeout(Some(T))?;
                c.write_all(b"hello")?;
                let mut buf = [0u8; 5];
                c.read_exact(&mut buf)?;
                assert_eq!(&buf, b"hello");

                let mut s = TcpStream::connect_timeout(&SocketAddr::new(server, TCP_STREAM), T)?;
                s.set_read_timeout(Some(T))?;
                let mut buf = [0u8; 8192];
                s.read_exact(&mut buf)?;

                let bind = if server.is_ipv4() {
                    "0.0.0.0:0"
                } else {
                    "[::]:0"
                };
                let u = UdpSocket::bind(bind)?;
                u.set_read_timeout(Some(T))?;
                u.send_to(b"ping", SocketAddr::new(server, UDP_ECHO))?;
                let (n, from) = u.recv_from(&mut buf)?;
                assert_eq!((&buf[..n], from.ip()), (&b"ping"[..], server));
            }
            Ok(())
        })
        .unwrap();
}

#[test]
fn the_lab_is_isolated_and_removes_itself_even_on_panic() {
    let tag;
    {
        let lab = Lab::up().unwrap();
        tag = lab.tag().to_string();
        lab.assert_isolated().unwrap();
        // The host namespace's only routes lead to the world.
        let routes = std::process::Command::new("ip")
            .args([
                "-n",
                &format!("{tag}-host"),
                "-4",
                "route",
                "show",
                "default",
            ])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&routes.stdout);
        assert!(text.contains("via 203.0.113.2 dev uplink"), "{text}");
        assert_eq!(Netns::list(&format!("{tag}-")).unwrap().len(), 2);
    }
    assert!(Netns::list(&format!("{tag}-")).unwrap().is_empty());

    let result = std::panic::catch_unwind(|| {
        let lab = Lab::up().unwrap();
        let tag = lab.tag().to_string();
        std::panic::panic_any(tag);
    });
    let tag = result.unwrap_err().downcast::<String>().unwrap();
    assert!(Netns::list(&format!("{tag}-")).unwrap().is_empty());
}

fn http_get(stream: &mut (impl Read + Write), host: &str) -> String {
    stream
        .write_all(format!("GET /probe HTTP/1.1\r\nhost: {host}\r\n\r\n").as_bytes())
        .unwrap();
    let mut out = String::new();
    let _ = stream.read_to_string(&mut out);
    out
}

#[test]
fn the_world_serves_http_and_https_with_the_lab_certificate() {
    let lab = Lab::up().unwrap();
    let (plain, tls) = lab
        .host()
        .run(|| {
            let mut c = TcpStream::connect_timeout(&SocketAddr::new(SERVER6, HTTP), T)?;
            c.set_read_timeout(Some(T))?;
            let plain = http_get(&mut c, "plain.example.com");

            let mut roots = rustls::RootCertStore::empty();
            let ca =
                rustls::pki_types::CertificateDer::from_pem_slice(lab.ca_pem().as_bytes()).unwrap();
            roots.add(ca).unwrap();
            let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
            let name = rustls::pki_types::ServerName::try_from("www.example.com").unwrap();
            let conn = rustls::ClientConnection::new(std::sync::Arc::new(config), name).unwrap();
            let sock = TcpStream::connect_timeout(&SocketAddr::new(SERVER4_B, HTTPS), T)?;
            sock.set_read_timeout(Some(T))?;
            let mut stream = rustls::StreamOwned::new(conn, sock);
            let tls = http_get(&mut stream, "www.example.com");
            Ok((plain, tls))
        })
        .unwrap();
    assert!(plain.starts_with("HTTP/1.1 200 OK"), "{plain}");
    assert!(
        plain.ends_with(&format!(
            "sandgate lab: GET /probe from={} host=plain.example.com\n",
            HOST_LINK6.addr()
        )),
        "{plain}"
    );
    assert!(tls.starts_with("HTTP/1.1 200 OK"), "{tls}");
    assert!(tls.ends_with("host=www.example.com\n"), "{tls}");
}

fn query(name: &str, rtype: RecordType) -> Vec<u8> {
    let mut m = Message::query();
    m.metadata.id = 4242;
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), rtype));
    m.to_vec().unwrap()
}

fn answers(bytes: &[u8]) -> (ResponseCode, Vec<String>) {
    let m = Message::from_vec(bytes).unwrap();
    assert!(m.metadata.authoritative);
    let data = m.answers.iter().map(|r| r.data.to_string()).collect();
    (m.metadata.response_code, data)
}

#[test]
fn the_world_answers_dns_for_the_catalog_and_the_test_domains() {
    let lab = Lab::up().unwrap();
    // A catalog name, taken from the catalog.
    let name = sandgate_lab::catalog_name(&sandgate_policy::Catalog::builtin()).unwrap();
    let before = lab.dns_queries();
    let results = lab
        .host()
        .run(|| {
            let u = UdpSocket::bind("0.0.0.0:0")?;
            u.set_read_timeout(Some(T))?;
            let mut out = Vec::new();
            for (q, t) in [
                (name.as_str(), RecordType::A),
                ("Www.Example.com.", RecordType::AAAA),
                ("cname.example.com", RecordType::A),
                ("nothing.example.org", RecordType::A),
            ] {
                u.send_to(&query(q, t), SocketAddr::new(DNS4, 53))?;
                let mut buf = [0u8; 1500];
                let (n, _) = u.recv_from(&mut buf)?;
                out.push(answers(&buf[..n]));
            }
            // And over TCP, to the IPv6 address.
            let mut c = TcpStream::connect_timeout(&SocketAddr::new(DNS6, 53), T)?;
            c.set_read_timeout(Some(T))?;
            let q = query("a.b.example.net", RecordType::A);
            c.write_all(&(q.len() as u16).to_be_bytes())?;
            c.write_all(&q)?;
            let mut len = [0u8; 2];
            c.read_exact(&mut len)?;
            let mut buf = vec![0u8; u16::from_be_bytes(len) as usize];
            c.read_exact(&mut buf)?;
            out.push(answers(&buf));
            Ok(out)
        })
        .unwrap();
    assert_eq!(
        results[0],
        (ResponseCode::NoError, vec![SERVER4.to_string()])
    );
    assert_eq!(
        results[1],
        (ResponseCode::NoError, vec![SERVER6_B.to_string()])
    );
    assert_eq!(
        results[2].1,
        vec!["www.example.com.".to_string(), SERVER4_B.to_string()]
    );
    assert_eq!(results[3], (ResponseCode::NXDomain, vec![]));
    assert_eq!(
        results[4],
        (ResponseCode::NoError, vec![SERVER4_B.to_string()])
    );
    assert_eq!(lab.dns_queries() - before, 5);
}
