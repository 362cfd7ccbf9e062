//! Pulls from a registry in the lab's world (Debian's `docker-registry`,
//! HTTPS with the lab CA's certificate), as a runner in the lab's host
//! namespace would.

#![allow(clippy::unwrap_used)]

use sandgate_images::{ImageError, Puller, Registry};
use sandgate_lab::registry::LabRegistry;
use sandgate_lab::Lab;
use std::path::{Path, PathBuf};

/// A tar archive of `files` (path, content).
fn layer(files: &[(&str, &str)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, data) in files {
        let mut h = tar::Header::new_gnu();
        h.set_path(path).unwrap();
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        h.set_cksum();
        b.append(&h, data.as_bytes()).unwrap();
    }
    b.into_inner().unwrap()
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, bytes).unwrap();
    gz.finish().unwrap()
}

fn sha256_of(path: &Path) -> String {
    let out = std::process::Command::new("sha256sum")
        .arg(path)
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap()[..64].to_string()
}

struct Fixture {
    lab: Lab,
    registry: LabRegistry,
    dir: PathBuf,
}

impl Fixture {
    fn new(tag: &str) -> Fixture {
        let lab = Lab::up().unwrap();
        let registry = LabRegistry::start(&lab).unwrap();
        let dir =
            std::env::temp_dir().join(format!("sandgate-images-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        Fixture { lab, registry, dir }
    }

    fn allowed(&self) -> Registry {
        Registry {
            host: self.registry.host(),
            insecure: false,
            ca_file: Some(self.registry.ca_file()),
            username: None,
            password: None,
        }
    }

    fn puller(&self, registries: &[Registry], max_bytes: u64) -> Puller {
        Puller::new(&self.dir.join("blobs"), registries, max_bytes).unwrap()
    }

    /// Pulls as the runner would: from the lab's host namespace.
    fn pull(&self, puller: &Puller, image: &str) -> Result<sandgate_images::Pulled, ImageError> {
        self.lab.host().run(|| Ok(puller.pull(image))).unwrap()
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn images_are_pulled_verified_by_digest_and_their_layers_shared() {
    let f = Fixture::new("pull");
    let shared = gzip(&layer(&[("etc/shared", "in both\n")]));
    let first = layer(&[("etc/first", "first\n")]);
    let second = gzip(&layer(&[("etc/second", "second\n")]));
    f.registry
        .push(&f.lab, "tools:1", &[shared.clone(), first.clone()])
        .unwrap();
    f.registry
        .push(&f.lab, "tools:2", &[shared.clone(), second.clone()])
        .unwrap();
    let puller = f.puller(&[f.allowed()], 1 << 30);
    let host = f.registry.host();

    let one = f.pull(&puller, &format!("{host}/tools:1")).unwrap();
    assert_eq!(one.reference, format!("{host}/tools:1"));
    assert!(one.digest.starts_with("sha256:"), "{one:?}");
    assert_eq!((one.layers.len(), one.fetched), (2, 2));
    assert_eq!(std::fs::read(&one.layers[0]).unwrap(), shared);
    assert_eq!(std::fs::read(&one.layers[1]).unwrap(), first);
    // Kept by digest: the file's name is its content's sha256.
    for path in &one.layers {
        assert_eq!(path.file_name().unwrap().to_str().unwrap(), sha256_of(path));
    }
    // The second image shares its first layer: fetched once.
    let two = f.pull(&puller, &format!("{host}/tools:2")).unwrap();
    assert_eq!((two.layers.len(), two.fetched), (2, 1));
    assert_eq!(two.layers[0], one.layers[0]);
    assert_eq!(std::fs::read(&two.layers[1]).unwrap(), second);
    let shared_digest = format!("sha256:{}", sha256_of(&one.layers[0]));
    assert_eq!(f.registry.blob_fetches(&shared_digest), 1);
    // By digest, too.
    let pinned = f
        .pull(&puller, &format!("{host}/tools@{}", one.digest))
        .unwrap();
    assert_eq!((pinned.layers, pinned.fetched), (one.layers.clone(), 0));

    // A blob the registry serves changed: refused, nothing kept.
    let fresh = gzip(&layer(&[("etc/tampered", "original\n")]));
    f.registry
        .push(&f.lab, "tampered:1", std::slice::from_ref(&fresh))
        .unwrap();
    let digest = {
        let tmp = f.dir.join("fresh");
        std::fs::create_dir_all(&f.dir).unwrap();
        std::fs::write(&tmp, &fresh).unwrap();
        sha256_of(&tmp)
    };
    let stored = f
        .registry
        .dir()
        .join("data/docker/registry/v2/blobs/sha256")
        .join(&digest[..2])
        .join(&digest)
        .join("data");
    let mut bytes = std::fs::read(&stored).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&stored, &bytes).unwrap();
    let err = f.pull(&puller, &format!("{host}/tampered:1")).unwrap_err();
    assert!(
        matches!(err, ImageError::Registry(_)) && !err.is_callers_fault(),
        "{err:?}"
    );
    assert!(err.to_string().contains("igest"), "{err}");
    let kept: Vec<_> = std::fs::read_dir(f.dir.join("blobs/sha256"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(!kept.iter().any(|k| k.contains(&digest)), "{kept:?}");
    assert_eq!(kept.len(), 3, "{kept:?}");
}

#[test]
fn only_configured_registries_this_platform_and_sizes_within_the_limit() {
    let f = Fixture::new("refuse");
    let host = f.registry.host();
    let digest = f
        .registry
        .push(&f.lab, "multi:plain", &[layer(&[("etc/x", "x\n")])])
        .unwrap();
    let ours = ("linux", sandgate_lab::registry::arch());
    let foreign = ("linux", if ours.1 == "arm64" { "s390x" } else { "arm64" });
    f.registry
        .push_index(&f.lab, "multi:both", &digest, &[foreign, ours])
        .unwrap();
    f.registry
        .push_index(&f.lab, "multi:foreign", &digest, &[foreign])
        .unwrap();
    let puller = f.puller(&[f.allowed()], 1 << 30);

    // An index gives this host's manifest.
    let both = f.pull(&puller, &format!("{host}/multi:both")).unwrap();
    assert_eq!(both.digest, digest);
    let err = f
        .pull(&puller, &format!("{host}/multi:foreign"))
        .unwrap_err();
    assert!(
        matches!(err, ImageError::Unsupported(_)) && err.is_callers_fault(),
        "{err:?}"
    );
    assert!(err.to_string().contains("platform"), "{err}");

    // A registry not configured: refused before any connection (the
    // default registry, a name, another lab address).
    for image in [
        "python:3.12-slim".to_string(),
        "docker.io/library/python:3.12-slim".to_string(),
        format!("{}:5000/multi:plain", sandgate_lab::addrs::SERVER4_B),
    ] {
        let err = f.pull(&puller, &image).unwrap_err();
        assert!(
            matches!(err, ImageError::NotAllowed { .. }) && err.is_callers_fault(),
            "{image}: {err:?}"
        );
        assert!(err.to_string().contains(&host), "{err}");
    }
    // No registry at all.
    let none = f.puller(&[], 1 << 30);
    let err = f.pull(&none, &format!("{host}/multi:plain")).unwrap_err();
    assert!(err.to_string().contains("allows no registry"), "{err}");

    // Unknown, malformed, too large.
    let err = f.pull(&puller, &format!("{host}/nothing:1")).unwrap_err();
    assert!(matches!(err, ImageError::NotFound(_)), "{err:?}");
    let err = f
        .pull(&puller, &format!("{host}/multi:absent"))
        .unwrap_err();
    assert!(matches!(err, ImageError::NotFound(_)), "{err:?}");
    let err = f.pull(&puller, "Not A Reference!").unwrap_err();
    assert!(matches!(err, ImageError::BadReference(_)), "{err:?}");
    let small = f.puller(&[f.allowed()], 10);
    let err = f.pull(&small, &format!("{host}/multi:plain")).unwrap_err();
    assert!(
        matches!(err, ImageError::TooLarge { limit: 10, .. }) && err.is_callers_fault(),
        "{err:?}"
    );

    // The registry's certificate is checked: without the lab CA, refused
    // (the host's fault: its configuration).
    let mut untrusted = f.allowed();
    untrusted.ca_file = None;
    let strict = Puller::new(&f.dir.join("strict"), &[untrusted], 1 << 30).unwrap();
    let err = f.pull(&strict, &format!("{host}/multi:plain")).unwrap_err();
    assert!(
        matches!(err, ImageError::Registry(_)) && !err.is_callers_fault(),
        "{err:?}"
    );
}

#[test]
fn a_registry_that_needs_credentials_gets_the_operators_and_no_other() {
    let lab = Lab::up().unwrap();
    let registry =
        LabRegistry::start_with_login(&lab, Some(("puller", "s3cret-for-the-lab"))).unwrap();
    let dir = std::env::temp_dir().join(format!("sandgate-images-login-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    registry
        .push(&lab, "private:1", &[layer(&[("etc/private", "yes\n")])])
        .unwrap();
    let image = format!("{}/private:1", registry.host());
    let with = |login: Option<(&str, &str)>, store: &str| {
        let allowed = Registry {
            host: registry.host(),
            insecure: false,
            ca_file: Some(registry.ca_file()),
            username: login.map(|l| l.0.to_string()),
            password: login.map(|l| l.1.to_string()),
        };
        let puller = Puller::new(&dir.join(store), &[allowed], 1 << 30).unwrap();
        lab.host().run(|| Ok(puller.pull(&image))).unwrap()
    };
    let pulled = with(Some(("puller", "s3cret-for-the-lab")), "right").unwrap();
    assert_eq!(pulled.layers.len(), 1);
    for (login, store) in [(None, "none"), (Some(("puller", "wrong")), "wrong")] {
        let err = with(login, store).unwrap_err();
        assert!(
            matches!(err, ImageError::Denied(_)) && !err.is_callers_fault(),
            "{store}: {err:?}"
        );
        assert_eq!(
            std::fs::read_dir(dir.join(store).join("sha256"))
                .unwrap()
                .count(),
            0
        );
    }
    // Half a login is refused at the start.
    let half = Registry {
        host: registry.host(),
        insecure: false,
        ca_file: None,
        username: Some("puller".into()),
        password: None,
    };
    assert!(Puller::new(&dir.join("half"), &[half], 1).is_err());
    let _ = std::fs::remove_dir_all(&dir);
}
