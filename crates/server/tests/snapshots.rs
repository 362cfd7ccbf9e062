//! Snapshots from OCI images through the API (docs/REQUIREMENTS.md,
//! "Snapshots from images"): the operator makes one from an image in a
//! registry of the lab's world (Debian's `docker-registry`), the runner
//! pulls it from its own namespace, and a sandbox starts from it; what is
//! in use stays, and what is refused says why.

#![allow(clippy::unwrap_used)]

mod common;

use common::{Api, ADMIN};
use sandgate_lab::registry::LabRegistry;
use sandgate_lab::Lab;
use serde_json::json;
use std::path::Path;

/// `dir` as a gzip tar archive (the entries relative to it).
fn tar_of(dir: &Path) -> Vec<u8> {
    let out = std::process::Command::new("tar")
        .arg("-C")
        .arg(dir)
        .args(["-czf", "-", "."])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

#[test]
fn the_operator_makes_snapshots_from_images_that_sandboxes_start_from() {
    let lab = Lab::up().unwrap();
    let registry = LabRegistry::start(&lab).unwrap();
    let host = registry.host();
    let api = Api::start_in(lab, |_, cfg| {
        cfg.runner.registries = vec![sandgate_images::Registry {
            host: registry.host(),
            insecure: false,
            ca_file: Some(registry.ca_file()),
            username: None,
            password: None,
        }];
    });
    // An image of two layers: the busybox root, and one of its own.
    let base = tar_of(&api.runtime_dir().join("snapshots/busybox/rootfs"));
    let own = api.runtime_dir().join("own-layer");
    std::fs::create_dir_all(own.join("etc")).unwrap();
    std::fs::write(own.join("etc/app.conf"), "from the image\n").unwrap();
    let own = tar_of(&own);
    registry
        .push(api.lab(), "team/app:1", &[base, own])
        .unwrap();
    let image = format!("{host}/team/app:1");
    let (_, k) = api.organization("acme", 3);

    // An organization's key cannot make one; the operator can.
    let (s, e) = api.post("/api/snapshots", &k, json!({"name": "app", "image": image}));
    assert_eq!(
        (s, e["error"]["code"].as_str()),
        (403, Some("forbidden")),
        "{e}"
    );
    let (s, made) = api.post(
        "/api/snapshots",
        ADMIN,
        json!({"name": "app", "image": image}),
    );
    assert_eq!(s, 201, "{made}");
    assert_eq!(made["image"], image.as_str(), "{made}");
    assert_eq!(
        (made["layers"].as_u64(), made["runners"].clone()),
        (Some(2), json!(["main"]))
    );
    assert!(
        made["digest"].as_str().unwrap().starts_with("sha256:"),
        "{made}"
    );
    // Listed, for a key and the operator.
    for key in [k.as_str(), ADMIN] {
        let (s, list) = api.get("/api/snapshots", key);
        assert_eq!(s, 200, "{list}");
        assert!(
            list.as_array()
                .unwrap()
                .contains(&json!({"name": "app", "runners": ["main"]})),
            "{list}"
        );
    }

    // A sandbox starts from it.
    let v = api.sandbox(&k, json!({"name": "a", "snapshot": "app"}));
    assert_eq!(v["snapshot"], "app", "{v}");
    let r = api.exec(&k, "a", "cat /etc/app.conf");
    assert_eq!(r["stdout"], "from the image\n", "{r}");
    // In use: neither replaced nor removed.
    let (s, e) = api.post(
        "/api/snapshots",
        ADMIN,
        json!({"name": "app", "image": image}),
    );
    assert_eq!(
        (s, e["error"]["code"].as_str()),
        (409, Some("snapshot_in_use")),
        "{e}"
    );
    let (s, e) = api.delete("/api/snapshots/app", ADMIN);
    assert_eq!(
        (s, e["error"]["code"].as_str()),
        (409, Some("snapshot_in_use")),
        "{e}"
    );

    // Refusals, each with its reason.
    for (body, status, code) in [
        // A registry the operator did not configure: no pull is tried.
        (
            json!({"name": "x", "image": "python:3.12-slim"}),
            400,
            "registry_not_allowed",
        ),
        (
            json!({"name": "x", "image": format!("{}:5000/team/app:1", sandgate_lab::addrs::SERVER4_B)}),
            400,
            "registry_not_allowed",
        ),
        (
            json!({"name": "x", "image": format!("{host}/team/app:absent")}),
            404,
            "not_found",
        ),
        (
            json!({"name": "x", "image": format!("{host}/team/nothing:1")}),
            404,
            "not_found",
        ),
        (
            json!({"name": "x", "image": "Not A Reference"}),
            422,
            "invalid_image",
        ),
        (
            json!({"name": "x", "image": format!("{host}/team/app@sha256:zz")}),
            400,
            "invalid_image",
        ),
        (json!({"name": "../x", "image": image}), 400, "invalid_name"),
        // The built-in snapshot is never replaced; a name the runtime
        // keeps for building is none.
        (json!({"name": "busybox", "image": image}), 409, "conflict"),
        (
            json!({"name": "x.building", "image": image}),
            400,
            "invalid_request",
        ),
        (
            json!({"name": "x", "image": image, "tag": "1"}),
            422,
            "invalid_request",
        ),
    ] {
        let (s, e) = api.post("/api/snapshots", ADMIN, body.clone());
        assert_eq!(
            (s, e["error"]["code"].as_str()),
            (status, Some(code)),
            "{body}: {e}"
        );
        assert!(!e["error"]["message"].as_str().unwrap().is_empty());
    }
    let (_, list) = api.get("/api/snapshots", ADMIN);
    assert!(!list.to_string().contains("\"x\""), "{list}");

    // Once its sandbox is gone, it goes; the built-in one stays.
    let (s, _) = api.delete("/api/sandbox/a", &k);
    assert_eq!(s, 204);
    let (s, e) = api.delete("/api/snapshots/app", ADMIN);
    assert_eq!(s, 204, "{e}");
    let (s, e) = api.delete("/api/snapshots/app", ADMIN);
    assert_eq!(
        (s, e["error"]["code"].as_str()),
        (404, Some("not_found")),
        "{e}"
    );
    let (s, e) = api.delete("/api/snapshots/busybox", ADMIN);
    assert_eq!(
        (s, e["error"]["code"].as_str()),
        (409, Some("conflict")),
        "{e}"
    );
    let (s, e) = api.post("/api/sandbox", &k, json!({"name": "b", "snapshot": "app"}));
    assert_eq!(s, 404, "{e}");
    // Its layers went with it (no other snapshot used them).
    let blobs = api.runtime_dir().join("../images/sha256");
    assert_eq!(std::fs::read_dir(&blobs).unwrap().count(), 0);
    drop(api);
    drop(registry);
}

#[test]
fn the_operator_uploads_a_root_filesystem_archive_as_a_snapshot() {
    use common::Send;
    let api = Api::start_with(|cfg| cfg.snapshot_upload_limit = 8 << 20);
    // `docker export`'s shape: the busybox root and a file of its own.
    let root = api.runtime_dir().join("export");
    let status = std::process::Command::new("cp")
        .arg("-a")
        .arg(api.runtime_dir().join("snapshots/busybox/rootfs"))
        .arg(&root)
        .status()
        .unwrap();
    assert!(status.success());
    std::fs::write(root.join("etc/app.conf"), "from the archive\n").unwrap();
    let archive = tar_of(&root);
    let (_, k) = api.organization("acme", 3);
    let put = |key: &str, kind: &str, body: Vec<u8>| {
        api.call(
            "PUT",
            "/api/snapshots/exported",
            Some(key),
            Send::Raw(kind, body),
        )
    };

    // An organization's key cannot; the operator can.
    let (s, e) = put(&k, "application/gzip", archive.clone());
    assert_eq!(
        (s, e["error"]["code"].as_str()),
        (403, Some("forbidden")),
        "{e}"
    );
    let (s, v) = put(ADMIN, "application/gzip", archive.clone());
    assert_eq!(s, 201, "{v}");
    assert_eq!(v, json!({"name": "exported", "runners": ["main"]}));
    api.sandbox(&k, json!({"name": "a", "snapshot": "exported"}));
    let r = api.exec(&k, "a", "cat /etc/app.conf");
    assert_eq!(r["stdout"], "from the archive\n", "{r}");
    // In use: not replaced.
    let (s, e) = put(ADMIN, "application/gzip", archive.clone());
    assert_eq!(
        (s, e["error"]["code"].as_str()),
        (409, Some("snapshot_in_use")),
        "{e}"
    );

    // Refusals, with nothing made: another media type, too large, empty,
    // not an archive, an archive with an entry out of its root.
    let mut escaping = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_old();
    h.as_old_mut().name[..12].copy_from_slice(b"../../escape");
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_size(1);
    h.set_cksum();
    escaping.append(&h, &b"x"[..]).unwrap();
    let escaping = escaping.into_inner().unwrap();
    for (kind, body, status, code) in [
        (
            "application/json",
            archive.clone(),
            415,
            "unsupported_media_type",
        ),
        (
            "application/gzip",
            vec![0x1f; 9 << 20],
            413,
            "payload_too_large",
        ),
        ("application/x-tar", Vec::new(), 422, "invalid_request"),
        (
            "application/x-tar",
            b"not an archive at all".repeat(100),
            422,
            "invalid_request",
        ),
        ("application/x-tar", escaping, 422, "invalid_request"),
    ] {
        let path = "/api/snapshots/refused";
        let (s, e) = api.call("PUT", path, Some(ADMIN), Send::Raw(kind, body));
        assert_eq!(
            (s, e["error"]["code"].as_str()),
            (status, Some(code)),
            "{kind}: {e}"
        );
    }
    let (_, list) = api.get("/api/snapshots", ADMIN);
    assert!(!list.to_string().contains("refused"), "{list}");
    for outside in ["snapshots/escape", "escape"] {
        assert!(!api.runtime_dir().join(outside).exists(), "{outside}");
    }
}
