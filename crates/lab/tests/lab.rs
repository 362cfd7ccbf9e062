//! The lab itself, on the real kernel (needs root).

#![allow(clippy::unwrap_used)]

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
