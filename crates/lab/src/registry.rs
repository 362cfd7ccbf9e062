//! An OCI distribution registry in the lab's world: Debian's
//! `docker-registry`, serving HTTPS with the world's certificate (the lab
//! CA's) on [`SERVER4`]:[`REGISTRY`], its storage in a temporary
//! directory. Tests push images to it ([`LabRegistry::push`]) and pull them
//! as a runner would.

use crate::addrs::{REGISTRY, SERVER4};
use crate::Lab;
use oci_client::client::{Certificate, CertificateEncoding, ClientConfig, Config, ImageLayer};
use oci_client::manifest::{
    ImageIndexEntry, OciImageIndex, Platform, OCI_IMAGE_INDEX_MEDIA_TYPE, OCI_IMAGE_MEDIA_TYPE,
};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The registry program (Debian's `docker-registry` package).
pub const PROGRAM: &str = "/usr/bin/docker-registry";

/// A registry running in a lab's world; stopped and its storage removed
/// when dropped.
pub struct LabRegistry {
    child: Child,
    dir: PathBuf,
    client: Client,
    /// How the lab's own pushes log in.
    auth: RegistryAuth,
}

impl std::fmt::Debug for LabRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LabRegistry")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

fn other<E: std::fmt::Display>(what: &str) -> impl FnOnce(E) -> io::Error + '_ {
    move |e| io::Error::other(format!("{what}: {e}"))
}

impl LabRegistry {
    /// Starts a registry in `lab`'s world and waits until it answers.
    pub fn start(lab: &Lab) -> io::Result<LabRegistry> {
        LabRegistry::start_with_login(lab, None)
    }

    /// Starts a registry in `lab`'s world that serves only who logs in
    /// with `login` (user, password: HTTP basic, docker-registry's
    /// `htpasswd`), if given.
    pub fn start_with_login(lab: &Lab, login: Option<(&str, &str)>) -> io::Result<LabRegistry> {
        let dir = std::env::temp_dir().join(format!("sandgate-registry-{}", lab.tag()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("data"))?;
        let (chain, key) = lab.server_pem();
        std::fs::write(dir.join("cert.pem"), chain)?;
        std::fs::write(dir.join("key.pem"), key)?;
        std::fs::write(dir.join("ca.pem"), lab.ca_pem())?;
        let mut auth_config = String::new();
        let mut auth = RegistryAuth::Anonymous;
        if let Some((user, password)) = login {
            let hash =
                bcrypt::hash(password, 4).map_err(other("hashing the lab registry's password"))?;
            std::fs::write(dir.join("htpasswd"), format!("{user}:{hash}\n"))?;
            auth_config = format!(
                "auth:\n  htpasswd:\n    realm: sandgate-lab\n    path: {}\n",
                dir.join("htpasswd").display()
            );
            auth = RegistryAuth::Basic(user.to_string(), password.to_string());
        }
        let config = format!(
            "version: 0.1\n\
             log:\n  level: warn\n\
             storage:\n  filesystem:\n    rootdirectory: {data}\n  delete:\n    enabled: true\n\
             http:\n  addr: {addr}\n  tls:\n    certificate: {dir}/cert.pem\n    key: {dir}/key.pem\n{auth_config}",
            data = dir.join("data").display(),
            addr = std::net::SocketAddr::new(SERVER4, REGISTRY),
            dir = dir.display(),
        );
        std::fs::write(dir.join("config.yml"), config)?;
        let log = std::fs::File::create(dir.join("registry.log"))?;
        let child = lab.world().run(|| {
            Command::new(PROGRAM)
                .arg("serve")
                .arg(dir.join("config.yml"))
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()
                .map_err(|e| {
                    io::Error::new(
                        e.kind(),
                        format!("{PROGRAM}: {e} (scripts/setup installs docker-registry)"),
                    )
                })
        })?;
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = Client::try_from(ClientConfig {
            extra_root_certificates: vec![Certificate {
                encoding: CertificateEncoding::Pem,
                data: lab.ca_pem().as_bytes().to_vec(),
            }],
            ..Default::default()
        })
        .map_err(other("a registry client"))?;
        let mut registry = LabRegistry {
            child,
            dir,
            client,
            auth,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let up = lab.world().run(|| {
                Ok(std::net::TcpStream::connect_timeout(
                    &std::net::SocketAddr::new(SERVER4, REGISTRY),
                    Duration::from_millis(200),
                )
                .is_ok())
            })?;
            if up {
                return Ok(registry);
            }
            if let Some(status) = registry.child.try_wait()? {
                let log =
                    std::fs::read_to_string(registry.dir.join("registry.log")).unwrap_or_default();
                return Err(io::Error::other(format!(
                    "the lab registry exited ({status}): {log}"
                )));
            }
            if Instant::now() > deadline {
                return Err(io::Error::other(
                    "the lab registry did not listen within 20 s",
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The registry's host, as image references name it.
    pub fn host(&self) -> String {
        std::net::SocketAddr::new(SERVER4, REGISTRY).to_string()
    }

    /// The lab CA's certificate, in a file (what a runner is configured
    /// with to trust the registry).
    pub fn ca_file(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// Pushes an image of `layers` (each a tar archive; gzip if it starts
    /// as gzip does) as `repository:tag`, from `lab`'s world; returns the
    /// digest of its manifest.
    pub fn push(&self, lab: &Lab, name: &str, layers: &[Vec<u8>]) -> io::Result<String> {
        let reference = self.reference(name)?;
        let layers: Vec<ImageLayer> = layers
            .iter()
            .map(|l| {
                if l.starts_with(&[0x1f, 0x8b]) {
                    ImageLayer::oci_v1_gzip(l.clone(), None)
                } else {
                    ImageLayer::oci_v1(l.clone(), None)
                }
            })
            .collect();
        let diff_ids: Vec<String> = layers
            .iter()
            .map(|l| format!("\"{}\"", l.sha256_digest()))
            .collect();
        let config = Config::oci_v1(
            format!(
                r#"{{"architecture":"{}","os":"linux","rootfs":{{"type":"layers","diff_ids":[{}]}},"config":{{}}}}"#,
                arch(),
                diff_ids.join(",")
            ),
            None,
        );
        self.run(lab, async {
            self.client
                .push(&reference, &layers, config, &self.auth, None)
                .await
                .map_err(other("pushing an image"))?;
            self.client
                .fetch_manifest_digest(&reference, &self.auth)
                .await
                .map_err(other("reading a pushed image's digest"))
        })
    }

    /// Pushes an image index as `name` whose entries are the image of
    /// manifest `digest` (pushed before, in the same repository) for each of
    /// `platforms` (`(os, architecture)`, as Go names them).
    pub fn push_index(
        &self,
        lab: &Lab,
        name: &str,
        digest: &str,
        platforms: &[(&str, &str)],
    ) -> io::Result<()> {
        let reference = self.reference(name)?;
        let of = reference.clone_with_digest(digest.to_string());
        self.run(lab, async {
            let (raw, _) = self
                .client
                .pull_manifest_raw(&of, &self.auth, &[OCI_IMAGE_MEDIA_TYPE])
                .await
                .map_err(other("reading a pushed manifest"))?;
            let manifests = platforms
                .iter()
                .map(|(os, architecture)| {
                    let platform: Platform = serde_json::from_value(serde_json::json!({
                        "os": os, "architecture": architecture,
                    }))
                    .map_err(other("a platform"))?;
                    Ok(ImageIndexEntry {
                        media_type: OCI_IMAGE_MEDIA_TYPE.to_string(),
                        digest: digest.to_string(),
                        size: raw.len() as i64,
                        platform: Some(platform),
                        annotations: None,
                        artifact_type: None,
                    })
                })
                .collect::<io::Result<Vec<_>>>()?;
            let index = OciImageIndex {
                schema_version: 2,
                media_type: Some(OCI_IMAGE_INDEX_MEDIA_TYPE.to_string()),
                manifests,
                artifact_type: None,
                annotations: None,
            };
            self.client
                .push_manifest_list(&reference, &self.auth, index)
                .await
                .map(|_| ())
                .map_err(other("pushing an image index"))
        })
    }

    /// How many times a blob of `digest` was fetched, from the registry's
    /// log.
    pub fn blob_fetches(&self, digest: &str) -> usize {
        let log = std::fs::read_to_string(self.dir.join("registry.log")).unwrap_or_default();
        log.lines()
            .filter(|l| l.contains("GET /v2/") && l.contains(&format!("/blobs/{digest}")))
            .count()
    }

    fn reference(&self, name: &str) -> io::Result<Reference> {
        format!("{}/{name}", self.host())
            .parse()
            .map_err(other("an image reference"))
    }

    /// Runs `work` in `lab`'s world, on a runtime of its own.
    fn run<T: Send>(
        &self,
        lab: &Lab,
        work: impl std::future::Future<Output = io::Result<T>> + Send,
    ) -> io::Result<T> {
        lab.world().run(|| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?
                .block_on(work)
        })
    }

    /// Where its storage and log are.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// This host's architecture as OCI names it (Go's names).
pub fn arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

impl Drop for LabRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
