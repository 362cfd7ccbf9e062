//! The lab's certificate authority and the certificate of its HTTPS server.

use crate::addrs::WORLD_ADDRESSES;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, SanType};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use std::io;
use std::net::IpAddr;
use std::sync::Arc;

/// A lab CA and a server certificate it signed for the world's names and
/// addresses.
#[derive(Debug)]
pub struct LabTls {
    /// The CA certificate, PEM, for clients to trust.
    pub ca_pem: String,
    /// The server configuration of the world's HTTPS service.
    pub server: Arc<rustls::ServerConfig>,
    /// The server's certificate chain (PEM), for servers the lab runs as
    /// programs (the registry).
    pub server_chain_pem: String,
    /// The server's private key (PEM, PKCS #8).
    pub server_key_pem: String,
}

fn tls_error<E: std::fmt::Display>(e: E) -> io::Error {
    io::Error::other(format!("lab certificate: {e}"))
}

impl LabTls {
    /// A fresh CA and server certificate for `names` and every world address.
    pub fn new(names: &[String]) -> io::Result<LabTls> {
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(tls_error)?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "sandgate lab CA");
        let ca_key = KeyPair::generate().map_err(tls_error)?;
        let ca_cert = ca_params.self_signed(&ca_key).map_err(tls_error)?;
        let issuer = Issuer::new(ca_params, ca_key);

        let mut params = CertificateParams::new(names.to_vec()).map_err(tls_error)?;
        params
            .distinguished_name
            .push(DnType::CommonName, "sandgate lab world");
        for net in WORLD_ADDRESSES {
            let addr: IpAddr = net
                .split('/')
                .next()
                .and_then(|a| a.parse().ok())
                .ok_or_else(|| tls_error(net))?;
            params.subject_alt_names.push(SanType::IpAddress(addr));
        }
        let key = KeyPair::generate().map_err(tls_error)?;
        let cert = params.signed_by(&key, &issuer).map_err(tls_error)?;
        let server_chain_pem = format!("{}{}", cert.pem(), ca_cert.pem());
        let server_key_pem = key.serialize_pem();
        let chain: Vec<CertificateDer<'static>> = vec![cert.der().clone(), ca_cert.der().clone()];
        let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let server = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(tls_error)?
            .with_no_client_auth()
            .with_single_cert(chain, key_der)
            .map_err(tls_error)?;
        Ok(LabTls {
            ca_pem: ca_cert.pem(),
            server: Arc::new(server),
            server_chain_pem,
            server_key_pem,
        })
    }
}
