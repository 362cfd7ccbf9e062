//! TLS termination, for the names whose requests the gateway must read
//! (HTTP rules; secrets next): the sandbox's TLS ends at the gateway,
//! under a certificate for the name that the gateway's own CA issues (the
//! CA each sandbox trusts: its certificate is in the sandbox's trust
//! store), and the gateway opens its own TLS to the destination, verified
//! against the host's trust roots, with the same server name.
//!
//! The CA is made at the first start and kept (`ca.pem`, `ca.key`, the
//! key readable by root alone) in the runner's data directory; leaf
//! certificates are issued on the fly, for one name each, valid from a day
//! before to thirty days after issue, and kept in memory (at most
//! [`LEAF_CACHE`] names; the oldest issued goes first).

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::collections::{HashMap, VecDeque};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

/// Leaf certificates kept at once.
pub const LEAF_CACHE: usize = 4096;

/// How long a leaf certificate is valid after its issue.
const LEAF_DAYS: u64 = 30;

/// The subject of the CA: the same at every load, so that the issuer
/// rebuilt from the kept key names the kept certificate.
const CA_NAME: &str = "sandgate gateway CA";

fn tls_error<E: std::fmt::Display>(what: &str) -> impl FnOnce(E) -> io::Error + '_ {
    move |e| io::Error::other(format!("{what}: {e}"))
}

/// The gateway's CA and what it terminates with.
pub struct Terminator {
    issuer: Issuer<'static, KeyPair>,
    ca_der: CertificateDer<'static>,
    ca_pem: String,
    leaves: Mutex<Leaves>,
    provider: Arc<rustls::crypto::CryptoProvider>,
    server: Arc<rustls::ServerConfig>,
    upstream: Arc<rustls::ClientConfig>,
}

impl std::fmt::Debug for Terminator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Terminator").finish_non_exhaustive()
    }
}

#[derive(Default)]
struct Leaves {
    by_name: HashMap<String, Arc<CertifiedKey>>,
    order: VecDeque<(String, SystemTime)>,
}

/// Where the CA is kept, and the roots the destinations are checked
/// against.
#[derive(Debug, Clone)]
pub struct TerminatorConfig {
    /// The directory of `ca.pem` and `ca.key` (made if missing).
    pub ca_dir: PathBuf,
    /// A PEM file of the CA certificates a destination's certificate must
    /// chain to (the host's bundle, or the lab's CA in tests).
    pub upstream_roots: PathBuf,
}

struct Resolver(std::sync::Weak<Terminator>);

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Resolver")
    }
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let name = hello.server_name()?;
        let terminator = self.0.upgrade()?;
        match terminator.leaf(name) {
            Ok(key) => Some(key),
            Err(e) => {
                tracing::warn!(error = %e, name, "gateway: cannot issue a certificate");
                None
            }
        }
    }
}

fn ca_params() -> io::Result<CertificateParams> {
    let mut params =
        CertificateParams::new(Vec::<String>::new()).map_err(tls_error("the CA's parameters"))?;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.distinguished_name.push(DnType::CommonName, CA_NAME);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    Ok(params)
}

/// Writes `bytes` to `path` through a file of its own (`<path>.new`),
/// renamed into place, with `mode` (set on the file whatever a leftover
/// one had).
fn write_new(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".new");
    let tmp = PathBuf::from(tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)?;
    f.set_permissions(std::fs::Permissions::from_mode(mode))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// The CA kept in `dir`, made there first if there is none.
fn load_or_make_ca(dir: &Path) -> io::Result<(Issuer<'static, KeyPair>, String)> {
    let (cert_path, key_path) = (dir.join("ca.pem"), dir.join("ca.key"));
    let params = ca_params()?;
    match (key_path.exists(), cert_path.exists()) {
        (true, false) | (false, true) => {
            return Err(io::Error::other(format!(
                "{} holds one of ca.pem and ca.key: restore the other, or remove it to make a new CA (sandboxes made before then trust the old one)",
                dir.display()
            )))
        }
        _ => {}
    }
    if key_path.exists() && cert_path.exists() {
        let key = KeyPair::from_pem(&std::fs::read_to_string(&key_path)?)
            .map_err(tls_error("the gateway CA's key"))?;
        let pem = std::fs::read_to_string(&cert_path)?;
        // The certificate kept must be the key's: a pair that does not
        // match would issue leaves no sandbox trusts.
        let der = CertificateDer::from_pem_slice(pem.as_bytes())
            .map_err(tls_error("the gateway CA's certificate"))?;
        if !der
            .as_ref()
            .windows(key.public_key_raw().len())
            .any(|w| w == key.public_key_raw())
        {
            return Err(io::Error::other(format!(
                "{} is not the certificate of {}; remove both to make a new CA",
                cert_path.display(),
                key_path.display()
            )));
        }
        return Ok((Issuer::new(params, key), pem));
    }
    std::fs::create_dir_all(dir)?;
    let key = KeyPair::generate().map_err(tls_error("the gateway CA's key"))?;
    let cert = params
        .self_signed(&key)
        .map_err(tls_error("the gateway CA's certificate"))?;
    write_new(&key_path, key.serialize_pem().as_bytes(), 0o600)?;
    write_new(&cert_path, cert.pem().as_bytes(), 0o644)?;
    tracing::info!(dir = %dir.display(), "gateway: made its CA");
    Ok((Issuer::new(params, key), cert.pem()))
}

/// The day of `t` (midnight, UTC): a leaf's validity is given in days.
fn day_of(t: SystemTime) -> time::OffsetDateTime {
    time::OffsetDateTime::from(t).replace_time(time::Time::MIDNIGHT)
}

impl Terminator {
    /// Loads (or makes) the CA and reads the upstream roots.
    pub fn new(cfg: &TerminatorConfig) -> io::Result<Arc<Terminator>> {
        let (issuer, ca_pem) = load_or_make_ca(&cfg.ca_dir)?;
        let ca_der = CertificateDer::from_pem_slice(ca_pem.as_bytes())
            .map_err(tls_error("the gateway CA's certificate"))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        let pem = std::fs::read(&cfg.upstream_roots).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "the upstream trust roots {}: {e}",
                    cfg.upstream_roots.display()
                ),
            )
        })?;
        let (added, _ignored) = roots
            .add_parsable_certificates(CertificateDer::pem_slice_iter(&pem).filter_map(Result::ok));
        if added == 0 {
            return Err(io::Error::other(format!(
                "the upstream trust roots {} hold no certificate",
                cfg.upstream_roots.display()
            )));
        }
        let mut upstream = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(tls_error("the upstream TLS configuration"))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        upstream.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new_cyclic(|weak| {
            let mut server = rustls::ServerConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()
                .expect("ring supports the default protocol versions")
                .with_no_client_auth()
                .with_cert_resolver(Arc::new(Resolver(weak.clone())));
            server.alpn_protocols = vec![b"http/1.1".to_vec()];
            Terminator {
                issuer,
                ca_der,
                ca_pem,
                leaves: Mutex::new(Leaves::default()),
                provider,
                server: Arc::new(server),
                upstream: Arc::new(upstream),
            }
        }))
    }

    /// The CA's certificate, PEM: what each sandbox trusts.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// The server side's configuration (the sandbox's TLS).
    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.server.clone())
    }

    /// The client side's (the gateway's own TLS to `name`).
    pub fn connector(&self) -> tokio_rustls::TlsConnector {
        tokio_rustls::TlsConnector::from(self.upstream.clone())
    }

    /// `name` as a server name of the gateway's own TLS.
    pub fn server_name(name: &str) -> io::Result<ServerName<'static>> {
        ServerName::try_from(name.to_string()).map_err(tls_error("the server name"))
    }

    /// The certificate (and key) for `name`, issued now or earlier.
    fn leaf(&self, name: &str) -> io::Result<Arc<CertifiedKey>> {
        let now = SystemTime::now();
        let fresh = Duration::from_secs((LEAF_DAYS - 1) * 86_400);
        {
            let leaves = self.leaves.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(key) = leaves.by_name.get(name) {
                let issued = leaves
                    .order
                    .iter()
                    .find(|(n, _)| n == name)
                    .map(|(_, t)| *t);
                if issued.is_some_and(|t| now.duration_since(t).unwrap_or_default() < fresh) {
                    return Ok(key.clone());
                }
            }
        }
        let mut params =
            CertificateParams::new(vec![name.to_string()]).map_err(tls_error("a leaf's name"))?;
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.not_before = day_of(now - Duration::from_secs(86_400));
        params.not_after = day_of(now + Duration::from_secs(LEAF_DAYS * 86_400));
        let key = KeyPair::generate().map_err(tls_error("a leaf's key"))?;
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(tls_error("a leaf certificate"))?;
        let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let signing = self
            .provider
            .key_provider
            .load_private_key(der)
            .map_err(tls_error("a leaf's key"))?;
        let certified = Arc::new(CertifiedKey::new(
            vec![cert.der().clone(), self.ca_der.clone()],
            signing,
        ));
        let mut leaves = self.leaves.lock().unwrap_or_else(|e| e.into_inner());
        leaves.order.retain(|(n, _)| n != name);
        while leaves.order.len() >= LEAF_CACHE {
            if let Some((old, _)) = leaves.order.pop_front() {
                leaves.by_name.remove(&old);
            }
        }
        leaves.order.push_back((name.to_string(), now));
        leaves.by_name.insert(name.to_string(), certified.clone());
        Ok(certified)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_leaf_is_valid_from_the_day_before_to_thirty_days_on() {
        let at = |s: u64| SystemTime::UNIX_EPOCH + Duration::from_secs(s);
        // 2026-12-02 13:45:00 UTC.
        let noonish = at(1_796_169_600 + 13 * 3600 + 45 * 60);
        assert_eq!(day_of(noonish), rcgen::date_time_ymd(2026, 12, 2));
        assert_eq!(day_of(at(951_782_400)), rcgen::date_time_ymd(2000, 2, 29));
    }

    #[test]
    fn the_ca_is_kept_and_read_back_and_its_leaves_chain_to_it() {
        let dir = std::env::temp_dir().join(format!("sandgate-ca-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        // Any PEM bundle serves as upstream roots here.
        let (issuer, pem) = load_or_make_ca(&dir.join("ca")).unwrap();
        drop(issuer);
        std::fs::write(dir.join("roots.pem"), &pem).unwrap();
        let cfg = TerminatorConfig {
            ca_dir: dir.join("ca"),
            upstream_roots: dir.join("roots.pem"),
        };
        let t = Terminator::new(&cfg).unwrap();
        assert_eq!(t.ca_pem(), pem, "the kept CA is read back, not made again");
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(dir.join("ca/ca.key"))
                .unwrap()
                .permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
        let leaf = t.leaf("api.example.com").unwrap();
        assert!(Arc::ptr_eq(&leaf, &t.leaf("api.example.com").unwrap()));
        // The leaf verifies for its name against the CA alone.
        let mut roots = rustls::RootCertStore::empty();
        roots.add(t.ca_der.clone()).unwrap();
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            t.provider.clone(),
        )
        .build()
        .unwrap();
        use rustls::client::danger::ServerCertVerifier;
        let now = rustls::pki_types::UnixTime::now();
        let name = ServerName::try_from("api.example.com").unwrap();
        verifier
            .verify_server_cert(&leaf.cert[0], &leaf.cert[1..], &name, &[], now)
            .unwrap();
        let other = ServerName::try_from("www.example.net").unwrap();
        assert!(verifier
            .verify_server_cert(&leaf.cert[0], &leaf.cert[1..], &other, &[], now)
            .is_err());
        // One file without the other is refused, never made anew.
        let key = std::fs::read(dir.join("ca/ca.key")).unwrap();
        std::fs::remove_file(dir.join("ca/ca.key")).unwrap();
        assert!(Terminator::new(&cfg).is_err());
        std::fs::write(dir.join("ca/ca.key"), key).unwrap();
        // A certificate that is not the key's is refused, not used.
        let (_, other_pem) = load_or_make_ca(&dir.join("other")).unwrap();
        std::fs::write(dir.join("ca/ca.pem"), other_pem).unwrap();
        assert!(Terminator::new(&cfg).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
