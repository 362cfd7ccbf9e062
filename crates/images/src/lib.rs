//! sandgate's image puller: OCI images from the registries the operator
//! configured, for the runtime to make snapshots of.
//!
//! - **Only configured registries.** An image reference names its
//!   registry (`docker.io` when it names none); a registry the operator did
//!   not list is refused before any connection ([`ImageError::NotAllowed`]).
//!   The pull is the runner's traffic, from the runner's host, never a
//!   sandbox's.
//! - **By platform.** An image index (a multi-platform image) gives the
//!   manifest of this host's (`linux` and its architecture); none is
//!   [`ImageError::Unsupported`].
//! - **Verified.** Every layer's bytes are checked against its digest as
//!   they arrive, and against its declared size (more is refused at once);
//!   a blob is kept only once verified.
//! - **Shared.** Layers are kept by digest (`<dir>/sha256/<hex>`): a layer
//!   two images share is fetched and stored once.
//!
//! The [`oci_client`] crate speaks the distribution protocol (tokens,
//! manifests, indexes, blobs); TLS is rustls with ring, the workspace's.

pub mod debian;

use oci_client::client::{Certificate, CertificateEncoding, ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::manifest::OciDescriptor;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use serde::{Deserialize, Serialize};
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

/// The layer media types a snapshot is made from: tar archives, plain or
/// gzip-compressed, OCI's and Docker's names.
pub const LAYER_TYPES: &[&str] = &[
    "application/vnd.oci.image.layer.v1.tar",
    "application/vnd.oci.image.layer.v1.tar+gzip",
    "application/vnd.docker.image.rootfs.diff.tar",
    "application/vnd.docker.image.rootfs.diff.tar.gzip",
];

/// A registry the operator allows images from.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Registry {
    /// Its host, with its port if not 443, as image references name it
    /// (`docker.io`, `registry.example.com:5000`).
    pub host: String,
    /// Plain HTTP instead of HTTPS (a registry on a trusted network only).
    #[serde(default)]
    pub insecure: bool,
    /// A PEM file of CA certificates trusted for this registry, beside the
    /// built-in roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// The user name of its credentials, if it needs them.
    #[serde(default)]
    pub username: Option<String>,
    /// The password (or token) of its credentials.
    #[serde(default)]
    pub password: Option<String>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("host", &self.host)
            .field("insecure", &self.insecure)
            .field("ca_file", &self.ca_file)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<hidden>"))
            .finish()
    }
}

/// A pull that failed, and whose fault it is ([`ImageError::is_callers_fault`]).
#[derive(Debug)]
pub enum ImageError {
    /// Not an image reference.
    BadReference(String),
    /// The reference names a registry the operator did not allow.
    NotAllowed {
        /// The registry named.
        registry: String,
        /// Those allowed.
        allowed: Vec<String>,
    },
    /// The registry has no such image (or tag).
    NotFound(String),
    /// The image is of a kind no snapshot is made from (no manifest for
    /// this platform, a layer's media type, an artifact that is no image).
    Unsupported(String),
    /// The image's layers are larger than the operator allows.
    TooLarge {
        /// Their size, bytes.
        bytes: u64,
        /// The limit, bytes.
        limit: u64,
    },
    /// The registry refused the operator's credentials (or their absence).
    Denied(String),
    /// The registry could not be reached, failed, or sent what its own
    /// digests disprove.
    Registry(String),
    /// The blob store on this host failed.
    Io(io::Error),
}

impl ImageError {
    /// Whether the caller asked for something that cannot be (a bad or
    /// unknown reference, a registry not allowed, an image too large or of
    /// another kind), not a fault of this host or of the registry.
    pub fn is_callers_fault(&self) -> bool {
        matches!(
            self,
            ImageError::BadReference(_)
                | ImageError::NotAllowed { .. }
                | ImageError::NotFound(_)
                | ImageError::Unsupported(_)
                | ImageError::TooLarge { .. }
        )
    }
}

impl std::fmt::Display for ImageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ImageError::BadReference(what) => write!(f, "not an image reference: {what}"),
            ImageError::NotAllowed { registry, allowed } if allowed.is_empty() => write!(
                f,
                "registry {registry} is not allowed: the operator allows no registry"
            ),
            ImageError::NotAllowed { registry, allowed } => write!(
                f,
                "registry {registry} is not allowed; the operator allows: {}",
                allowed.join(", ")
            ),
            ImageError::NotFound(what) => write!(f, "no such image: {what}"),
            ImageError::Unsupported(what) => f.write_str(what),
            ImageError::TooLarge { bytes, limit } => write!(
                f,
                "the image's layers are {bytes} bytes; at most {limit} are allowed"
            ),
            ImageError::Denied(what) => write!(f, "the registry refused access: {what}"),
            ImageError::Registry(what) => write!(f, "the registry failed: {what}"),
            ImageError::Io(e) => write!(f, "the image store: {e}"),
        }
    }
}

impl std::error::Error for ImageError {}

impl From<io::Error> for ImageError {
    fn from(e: io::Error) -> ImageError {
        ImageError::Io(e)
    }
}

/// An image pulled: its layers, lowest first, as files of the blob store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pulled {
    /// The reference, in full (`docker.io/library/python:3.12-slim`).
    pub reference: String,
    /// The digest of the manifest used (this platform's).
    pub digest: String,
    /// The layers' files, lowest first.
    pub layers: Vec<PathBuf>,
    /// How many layers were fetched (the rest were already held).
    pub fetched: usize,
}

/// Pulls images from the registries it was given into a blob store.
pub struct Puller {
    dir: PathBuf,
    registries: Vec<(Registry, Client, RegistryAuth)>,
    max_bytes: u64,
}

impl std::fmt::Debug for Puller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Puller")
            .field("dir", &self.dir)
            .field(
                "registries",
                &self
                    .registries
                    .iter()
                    .map(|(r, _, _)| r)
                    .collect::<Vec<_>>(),
            )
            .field("max_bytes", &self.max_bytes)
            .finish()
    }
}

/// How long connecting to a registry may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a registry may stay silent in a response.
const READ_TIMEOUT: Duration = Duration::from_secs(60);

impl Puller {
    /// A puller keeping blobs in `dir`, from `registries` only, of images
    /// whose layers add up to `max_bytes` at most. A CA file that cannot be
    /// read or a TLS setup that fails is an error here, not at the first
    /// pull.
    pub fn new(dir: &Path, registries: &[Registry], max_bytes: u64) -> io::Result<Puller> {
        // The workspace's TLS provider (reqwest is built without one).
        let _ = rustls::crypto::ring::default_provider().install_default();
        std::fs::create_dir_all(dir.join("sha256"))?;
        let mut made = Vec::new();
        for registry in registries {
            let mut config = ClientConfig {
                protocol: if registry.insecure {
                    ClientProtocol::HttpsExcept(vec![registry.host.clone()])
                } else {
                    ClientProtocol::Https
                },
                connect_timeout: Some(CONNECT_TIMEOUT),
                read_timeout: Some(READ_TIMEOUT),
                user_agent: concat!("sandgate/", env!("CARGO_PKG_VERSION")),
                ..Default::default()
            };
            if let Some(ca) = &registry.ca_file {
                let data = std::fs::read(ca).map_err(|e| {
                    io::Error::new(
                        e.kind(),
                        format!(
                            "the CA file of registry {}: {}: {e}",
                            registry.host,
                            ca.display()
                        ),
                    )
                })?;
                config.extra_root_certificates.push(Certificate {
                    encoding: CertificateEncoding::Pem,
                    data,
                });
            }
            let client = Client::try_from(config).map_err(|e| {
                io::Error::other(format!("a client for registry {}: {e}", registry.host))
            })?;
            if registry.insecure && registry.username.is_some() {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "registry {}: credentials are never sent over plain HTTP (insecure); use HTTPS with its CA in ca_file",
                        registry.host
                    ),
                ));
            }
            let auth = match (&registry.username, &registry.password) {
                (Some(user), Some(password)) => RegistryAuth::Basic(user.clone(), password.clone()),
                (None, None) => RegistryAuth::Anonymous,
                _ => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!(
                            "registry {}: a user name and a password, or neither",
                            registry.host
                        ),
                    ))
                }
            };
            made.push((registry.clone(), client, auth));
        }
        Ok(Puller {
            dir: dir.to_path_buf(),
            registries: made,
            max_bytes,
        })
    }

    /// The registries it pulls from.
    pub fn registries(&self) -> Vec<String> {
        self.registries
            .iter()
            .map(|(r, _, _)| r.host.clone())
            .collect()
    }

    /// Pulls `image` (`python:3.12-slim`, `registry:5000/team/tool@sha256:…`):
    /// its manifest for this platform, then each layer not already held.
    /// Blocks; runs its own I/O on a thread of its own, so it may be called
    /// from anywhere, an async task's blocking section included.
    pub fn pull(&self, image: &str) -> Result<Pulled, ImageError> {
        std::thread::scope(|s| {
            s.spawn(|| {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                rt.block_on(self.pull_async(image))
            })
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("the image pull's thread panicked").into()))
        })
    }

    async fn pull_async(&self, image: &str) -> Result<Pulled, ImageError> {
        let reference: Reference = image
            .parse()
            .map_err(|e| ImageError::BadReference(format!("{image:?}: {e}")))?;
        let registry = reference.registry().to_string();
        let Some((_, client, auth)) = self.registries.iter().find(|(r, _, _)| r.host == registry)
        else {
            return Err(ImageError::NotAllowed {
                registry,
                allowed: self.registries(),
            });
        };
        let whole = reference.whole();
        let (manifest, digest, _config) = client
            .pull_manifest_and_config(&reference, auth)
            .await
            .map_err(|e| registry_error(&whole, e))?;
        if manifest.layers.is_empty() {
            return Err(ImageError::Unsupported(format!(
                "image {whole} has no layers"
            )));
        }
        let mut bytes = 0u64;
        for layer in &manifest.layers {
            if !LAYER_TYPES.contains(&layer.media_type.as_str()) {
                return Err(ImageError::Unsupported(format!(
                    "image {whole} has a layer of type {}; snapshots are made from {}",
                    layer.media_type,
                    LAYER_TYPES.join(", ")
                )));
            }
            let size = u64::try_from(layer.size).map_err(|_| {
                ImageError::Registry(format!("a layer of {whole} has a negative size"))
            })?;
            bytes = bytes.saturating_add(size);
        }
        if bytes > self.max_bytes {
            return Err(ImageError::TooLarge {
                bytes,
                limit: self.max_bytes,
            });
        }
        let mut layers = Vec::new();
        let mut fetched = 0;
        for layer in &manifest.layers {
            let path = self.blob_path(&layer.digest)?;
            // Held only whole (written, synced, verified, renamed); one of
            // another size is no blob of this digest: fetched again.
            let held = std::fs::metadata(&path)
                .is_ok_and(|m| i64::try_from(m.len()).is_ok_and(|n| n == layer.size));
            if !held {
                self.fetch(client, &reference, layer, &path)
                    .await
                    .map_err(|e| match e {
                        Fetch::Registry(e) => registry_error(&whole, e),
                        Fetch::Io(e) => ImageError::Io(e),
                        Fetch::Oversize => ImageError::Registry(format!(
                            "layer {} of {whole} is larger than its manifest says",
                            layer.digest
                        )),
                    })?;
                fetched += 1;
            }
            layers.push(path);
        }
        tracing::info!(image = %whole, %digest, layers = layers.len(), fetched, "pulled an image");
        Ok(Pulled {
            reference: whole,
            digest,
            layers,
            fetched,
        })
    }

    /// Where the blob of `digest` is kept; refused unless it is a sha256
    /// digest (the name is a path).
    fn blob_path(&self, digest: &str) -> Result<PathBuf, ImageError> {
        match digest.strip_prefix("sha256:") {
            Some(hex)
                if hex.len() == 64
                    && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) =>
            {
                Ok(self.dir.join("sha256").join(hex))
            }
            _ => Err(ImageError::Unsupported(format!(
                "a layer's digest {digest:?} is not a sha256 digest"
            ))),
        }
    }

    /// Fetches `layer` into `path`: written to a file beside it, verified
    /// (by the client, against the digest) and then renamed in place, so
    /// that the store holds only whole, verified blobs.
    async fn fetch(
        &self,
        client: &Client,
        reference: &Reference,
        layer: &OciDescriptor,
        path: &Path,
    ) -> Result<(), Fetch> {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let partial = path.with_extension(format!(
            "partial-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let file = tokio::fs::File::create(&partial).await.map_err(Fetch::Io)?;
        let mut out = Bounded {
            inner: file,
            left: u64::try_from(layer.size).unwrap_or(0),
            over: false,
        };
        let pulled = client.pull_blob(reference, layer, &mut out).await;
        let result = match pulled {
            _ if out.over => Err(Fetch::Oversize),
            Ok(()) => match out.inner.sync_all().await {
                Ok(()) => tokio::fs::rename(&partial, path).await.map_err(Fetch::Io),
                Err(e) => Err(Fetch::Io(e)),
            },
            Err(e) => Err(Fetch::Registry(e)),
        };
        if result.is_err() {
            if let Err(e) = tokio::fs::remove_file(&partial).await {
                tracing::warn!(file = %partial.display(), error = %e, "removing a partial layer");
            }
        }
        result
    }

    /// Removes the blobs no image in `keep` (layer files, as [`Pulled`]
    /// gives them) uses; returns how many were removed.
    pub fn prune(&self, keep: &[PathBuf]) -> io::Result<usize> {
        let mut removed = 0;
        for entry in std::fs::read_dir(self.dir.join("sha256"))? {
            let path = entry?.path();
            if !keep.contains(&path) {
                std::fs::remove_file(&path)?;
                removed += 1;
            }
        }
        Ok(removed)
    }
}

/// Why a layer's fetch failed.
enum Fetch {
    Registry(OciDistributionError),
    Io(io::Error),
    Oversize,
}

/// The registry's error about `whole`, as whose fault it is.
fn registry_error(whole: &str, e: OciDistributionError) -> ImageError {
    match &e {
        // An image index with no manifest for this host's platform.
        OciDistributionError::ImageManifestNotFoundError(what) if what.contains("platform") => {
            ImageError::Unsupported(format!(
                "image {whole} has no manifest for this host's platform (linux/{})",
                std::env::consts::ARCH
            ))
        }
        OciDistributionError::ImageManifestNotFoundError(_) => {
            ImageError::NotFound(whole.to_string())
        }
        OciDistributionError::RegistryError { envelope, .. }
            if envelope.errors.iter().any(|e| {
                matches!(
                    e.code,
                    OciErrorCode::ManifestUnknown
                        | OciErrorCode::NameUnknown
                        | OciErrorCode::NotFound
                )
            }) =>
        {
            ImageError::NotFound(whole.to_string())
        }
        OciDistributionError::RegistryError { envelope, .. }
            if envelope
                .errors
                .iter()
                .any(|e| matches!(e.code, OciErrorCode::Unauthorized | OciErrorCode::Denied)) =>
        {
            ImageError::Denied(e.to_string())
        }
        OciDistributionError::AuthenticationFailure(_)
        | OciDistributionError::UnauthorizedError { .. } => ImageError::Denied(e.to_string()),
        OciDistributionError::ImageIndexParsingNoPlatformResolverError
        | OciDistributionError::IncompatibleLayerMediaTypeError(_)
        | OciDistributionError::UnsupportedMediaTypeError(_)
        | OciDistributionError::UnsupportedSchemaVersionError(_) => {
            ImageError::Unsupported(format!("image {whole}: {e}"))
        }
        _ => ImageError::Registry(format!("pulling {whole}: {e}")),
    }
}

/// A writer that takes at most `left` bytes: a registry that sends more
/// than a layer's declared size is cut off (and the layer refused) before
/// it fills the disk.
struct Bounded<W> {
    inner: W,
    left: u64,
    over: bool,
}

impl<W: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Bounded<W> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if buf.len() as u64 > self.left {
            self.over = true;
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::FileTooLarge,
                "the layer is larger than its manifest says",
            )));
        }
        let written = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &written {
            self.left -= *n as u64;
        }
        written
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
