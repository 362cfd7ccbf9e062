//! The world's stand-ins of the essential services a Debian sandbox uses
//! (the catalog's names all answer at [`crate::addrs::SERVER4`], so these
//! are served by path, over HTTP and HTTPS):
//!
//! - **An apt archive**: `/debian/dists/<suite>/` and
//!   `/debian-security/dists/<suite>/` for the Debian snapshot's suites
//!   ([`SUITES`]), each an `InRelease` signed with the lab's archive key
//!   ([`apt_key`]) over an empty `main` index. A sandbox that trusts the
//!   key (as it trusts the lab's CA) runs `apt update` with its own,
//!   unchanged sources.
//! - **A Python simple index** (PEP 503): `/simple/<project>/` lists one
//!   wheel of that project, version [`WHEEL_VERSION`], with its SHA-256;
//!   `/packages/<wheel>` is that wheel, made by the lab (metadata only).
//!   `pip install --dry-run <project>` resolves and fetches it.
//! - **An npm registry's ping**: `/-/ping` answers `{}` (`npm ping`).

use sha2::{Digest, Sha256};
use std::io::{self, Write};
use std::process::Command;
use std::sync::OnceLock;

/// The version of every wheel the Python stand-in offers.
pub const WHEEL_VERSION: &str = "1.0";

/// The suites the apt stand-in serves: the Debian snapshot's release, its
/// updates and its security suite.
pub fn suites() -> [String; 3] {
    let s = sandgate_images::debian::SUITE;
    [
        s.to_string(),
        format!("{s}-updates"),
        format!("{s}-security"),
    ]
}

/// What the stand-ins answer: status, media type, body.
pub type Answer = (u16, &'static str, Vec<u8>);

/// The stand-ins' answer to `path` (its query ignored), or `None` when
/// the path is none of theirs.
pub fn answer(path: &str) -> Option<Answer> {
    let path = path.split('?').next().unwrap_or(path);
    if path == "/-/ping" {
        return Some((200, "application/json", b"{}".to_vec()));
    }
    if let Some(project) = path
        .strip_prefix("/simple/")
        .map(|p| p.trim_end_matches('/'))
    {
        return Some(match Wheel::of(project) {
            Some(w) => (200, "text/html", w.index().into_bytes()),
            None => not_found(),
        });
    }
    if let Some(file) = path.strip_prefix("/packages/") {
        let project = file
            .strip_suffix(&format!("-{WHEEL_VERSION}-py3-none-any.whl"))
            .map(|p| p.replace('_', "-"));
        return Some(match project.as_deref().and_then(Wheel::of) {
            Some(w) if w.file_name() == file => (200, "application/octet-stream", w.bytes),
            _ => not_found(),
        });
    }
    let dists = ["/debian/dists/", "/debian-security/dists/"]
        .iter()
        .find_map(|prefix| path.strip_prefix(prefix))?;
    let (suite, file) = dists.split_once('/')?;
    Some(apt_file(suite, file).unwrap_or_else(not_found))
}

fn not_found() -> Answer {
    (404, "text/plain", b"not found\n".to_vec())
}

/// The lab's apt archive: its key and the signed `InRelease` of each
/// suite, made once a process (with `gpg`, whose home and agent are gone
/// after).
struct Archive {
    key: String,
    in_release: Vec<(String, String)>,
}

fn archive() -> Result<&'static Archive, &'static str> {
    static ARCHIVE: OnceLock<Result<Archive, String>> = OnceLock::new();
    ARCHIVE
        .get_or_init(|| make_archive().map_err(|e| e.to_string()))
        .as_ref()
        .map_err(String::as_str)
}

/// The lab's archive key (an ASCII-armoured OpenPGP public key), for a
/// sandbox to trust (`/etc/apt/trusted.gpg.d/*.asc`).
pub fn apt_key() -> io::Result<&'static str> {
    archive()
        .map(|a| a.key.as_str())
        .map_err(|e| io::Error::other(format!("the lab's apt archive: {e}")))
}

/// Debian's name of this machine's architecture.
fn debian_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "i386",
        other => other,
    }
}

fn apt_file(suite: &str, file: &str) -> Option<Answer> {
    let archive = match archive() {
        Ok(a) => a,
        Err(e) => return Some((503, "text/plain", format!("{e}\n").into_bytes())),
    };
    let (_, signed) = archive.in_release.iter().find(|(s, _)| s == suite)?;
    if file == "InRelease" {
        return Some((200, "text/plain", signed.clone().into_bytes()));
    }
    // The one index the Release names: empty.
    (file == format!("main/binary-{}/Packages", debian_arch()))
        .then(|| (200, "text/plain", Vec::new()))
}

fn release(suite: &str) -> String {
    let empty = format!("{:x}", Sha256::digest(b""));
    format!(
        "Origin: sandgate lab\nLabel: sandgate lab\nSuite: {suite}\nCodename: {suite}\nDate: {}\nArchitectures: {arch}\nComponents: main\nDescription: the lab's stand-in of a Debian archive: no packages\nSHA256:\n {empty} 0 main/binary-{arch}/Packages\n",
        httpdate::fmt_http_date(std::time::SystemTime::now()),
        arch = debian_arch(),
    )
}

fn make_archive() -> io::Result<Archive> {
    let home = std::env::temp_dir().join(format!("sandgate-lab-gpg-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&home);
    std::fs::create_dir(&home)?;
    std::fs::set_permissions(&home, std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
    let gpg = |args: &[&str], input: Option<&str>| -> io::Result<String> {
        let mut child = Command::new("gpg")
            .env("GNUPGHOME", &home)
            .args([
                "--batch",
                "--quiet",
                "--pinentry-mode",
                "loopback",
                "--passphrase",
                "",
            ])
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()?;
        if let (Some(mut stdin), Some(text)) = (child.stdin.take(), input) {
            stdin.write_all(text.as_bytes())?;
        }
        let out = child.wait_with_output()?;
        if !out.status.success() {
            return Err(io::Error::other(format!(
                "gpg {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        String::from_utf8(out.stdout).map_err(|e| io::Error::other(e.to_string()))
    };
    let made = (|| {
        gpg(
            &[
                "--quick-gen-key",
                "sandgate lab archive <archive@lab.invalid>",
                "ed25519",
                "sign",
                "never",
            ],
            None,
        )?;
        let key = gpg(&["--armor", "--export"], None)?;
        let in_release = suites()
            .into_iter()
            .map(|s| {
                let signed = gpg(
                    &["--clearsign", "--digest-algo", "SHA256"],
                    Some(&release(&s)),
                )?;
                Ok((s, signed))
            })
            .collect::<io::Result<_>>()?;
        Ok(Archive { key, in_release })
    })();
    // The agent gpg started goes with the home.
    let _ = Command::new("gpgconf")
        .env("GNUPGHOME", &home)
        .args(["--kill", "all"])
        .output();
    let _ = std::fs::remove_dir_all(&home);
    made
}

/// A wheel of a project, made by the lab: metadata only.
struct Wheel {
    project: String,
    bytes: Vec<u8>,
}

impl Wheel {
    /// The wheel of `project` (a normalized name, PEP 503), or `None` for
    /// a name that is not one.
    fn of(project: &str) -> Option<Wheel> {
        let valid = !project.is_empty()
            && project.len() <= 64
            && project
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !valid {
            return None;
        }
        let dist = format!("{}-{WHEEL_VERSION}.dist-info", project.replace('-', "_"));
        let files = [
            (
                format!("{dist}/METADATA"),
                format!("Metadata-Version: 2.1\nName: {project}\nVersion: {WHEEL_VERSION}\nSummary: the sandgate lab's stand-in\n"),
            ),
            (
                format!("{dist}/WHEEL"),
                "Wheel-Version: 1.0\nGenerator: sandgate-lab\nRoot-Is-Purelib: true\nTag: py3-none-any\n".to_string(),
            ),
        ];
        let mut record = String::new();
        let mut zip = zip::ZipWriter::new(io::Cursor::new(Vec::new()));
        let options = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored);
        for (name, text) in &files {
            zip.start_file(name.as_str(), options).ok()?;
            zip.write_all(text.as_bytes()).ok()?;
            use base64::Engine;
            let digest = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .encode(Sha256::digest(text.as_bytes()));
            record.push_str(&format!("{name},sha256={digest},{}\n", text.len()));
        }
        record.push_str(&format!("{dist}/RECORD,,\n"));
        zip.start_file(format!("{dist}/RECORD"), options).ok()?;
        zip.write_all(record.as_bytes()).ok()?;
        let bytes = zip.finish().ok()?.into_inner();
        Some(Wheel {
            project: project.to_string(),
            bytes,
        })
    }

    fn file_name(&self) -> String {
        format!(
            "{}-{WHEEL_VERSION}-py3-none-any.whl",
            self.project.replace('-', "_")
        )
    }

    /// The project's page of the simple index: one link, relative, with
    /// the wheel's SHA-256.
    fn index(&self) -> String {
        let file = self.file_name();
        format!(
            "<!DOCTYPE html>\n<html><body>\n<a href=\"../../packages/{file}#sha256={:x}\">{file}</a>\n</body></html>\n",
            Sha256::digest(&self.bytes)
        )
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_simple_index_links_a_wheel_with_its_hash() {
        let (status, kind, page) = answer("/simple/requests/").unwrap();
        assert_eq!((status, kind), (200, "text/html"));
        let page = String::from_utf8(page).unwrap();
        let (_, href) = page.split_once("href=\"../../packages/").unwrap();
        let (file, rest) = href.split_once('#').unwrap();
        assert_eq!(file, "requests-1.0-py3-none-any.whl");
        let (_, wheel) = {
            let (s, _, b) = answer(&format!("/packages/{file}")).unwrap();
            (s, b)
        };
        let hash = rest
            .strip_prefix("sha256=")
            .unwrap()
            .split('"')
            .next()
            .unwrap();
        assert_eq!(hash, format!("{:x}", Sha256::digest(&wheel)));
        let mut z = zip::ZipArchive::new(io::Cursor::new(wheel)).unwrap();
        let mut meta = String::new();
        io::Read::read_to_string(
            &mut z.by_name("requests-1.0.dist-info/METADATA").unwrap(),
            &mut meta,
        )
        .unwrap();
        assert!(meta.contains("Name: requests\n"), "{meta}");
        for bad in [
            "/simple/../x/",
            "/simple/A/",
            "/packages/x-2.0-py3-none-any.whl",
        ] {
            assert_eq!(answer(bad).unwrap().0, 404, "{bad}");
        }
        assert_eq!(answer("/-/ping?write=true").unwrap().2, b"{}");
        assert!(answer("/elsewhere").is_none());
    }
}
