//! Secrets that never enter a sandbox: the sandbox holds a placeholder
//! (`sg_secret_...`) in its environment, and the gateway puts the value in
//! its place in the request headers, on connections it terminates, to the
//! hosts the secret names only. A placeholder sent anywhere else is sent as
//! it is and reported (`secret_to_unlisted_host`), as is one sent in the
//! clear to a listed host (`secret_over_plain_http`: the value never
//! travels unencrypted).

use hyper::header::{HeaderMap, HeaderValue};
use sandgate_policy::{DomainName, DomainPattern};

/// What every placeholder starts with.
pub const PLACEHOLDER_PREFIX: &str = "sg_secret_";

/// The headers in which a placeholder is replaced: those that carry
/// credentials. A placeholder in any other header (`Host`, `Origin`,
/// `Referer`, `X-Forwarded-Host`: headers that servers reflect in their
/// answers) is left as it is and reported.
pub const CREDENTIAL_HEADERS: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "cookie",
    "x-api-key",
    "api-key",
    "x-auth-token",
    "private-token",
    "x-goog-api-key",
];

/// A secret of one sandbox.
#[derive(Clone)]
pub struct Secret {
    /// Its name (the environment variable that holds the placeholder).
    pub name: String,
    /// The placeholder the sandbox sees.
    pub placeholder: String,
    /// The value, put in the placeholder's place.
    pub value: String,
    /// The hosts it is for.
    pub hosts: Vec<DomainPattern>,
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Secret")
            .field("name", &self.name)
            .field("hosts", &self.hosts)
            .finish_non_exhaustive()
    }
}

impl Secret {
    /// Whether it is for `name` (normalized).
    pub fn covers(&self, name: &str) -> bool {
        DomainName::parse(name).is_ok_and(|n| self.hosts.iter().any(|h| h.matches(&n)))
    }
}

/// What happened to the placeholders of one request.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Rewrite {
    /// Names of the secrets put in place.
    pub replaced: Vec<String>,
    /// Names of the secrets whose placeholder went to a host the secret
    /// is not for.
    pub unlisted: Vec<String>,
    /// Names of the secrets whose placeholder went in the clear to a host
    /// it is for (left as it is).
    pub plain: Vec<String>,
    /// Names of the secrets whose placeholder was in a header that is no
    /// credential header (left as it is).
    pub elsewhere: Vec<String>,
}

/// Puts the values of `secrets` in place of their placeholders in
/// `headers` of a request for `name`, if the connection is terminated
/// TLS (`terminated`) and the secret is for `name`; says what it did.
pub fn rewrite(
    secrets: &[Secret],
    name: &str,
    terminated: bool,
    headers: &mut HeaderMap,
) -> Rewrite {
    let mut out = Rewrite::default();
    if secrets.is_empty() {
        return out;
    }
    for (header, value) in headers.iter_mut() {
        let credential = CREDENTIAL_HEADERS.contains(&header.as_str());
        let bytes = value.as_bytes();
        if !contains(bytes, PLACEHOLDER_PREFIX.as_bytes()) {
            continue;
        }
        let mut text = bytes.to_vec();
        let mut changed = false;
        for secret in secrets {
            if !contains(&text, secret.placeholder.as_bytes()) {
                continue;
            }
            let note = |list: &mut Vec<String>| {
                if !list.contains(&secret.name) {
                    list.push(secret.name.clone());
                }
            };
            if !secret.covers(name) {
                note(&mut out.unlisted);
            } else if !credential {
                note(&mut out.elsewhere);
            } else if !terminated {
                note(&mut out.plain);
            } else {
                text = replace(
                    &text,
                    secret.placeholder.as_bytes(),
                    secret.value.as_bytes(),
                );
                changed = true;
                note(&mut out.replaced);
            }
        }
        if changed {
            match HeaderValue::from_bytes(&text) {
                Ok(mut v) => {
                    // Never logged, never cached by a proxy's tooling.
                    v.set_sensitive(true);
                    *value = v;
                }
                // Values are checked when stored (no CR, LF, NUL): not
                // reached; the placeholder stays.
                Err(_) => tracing::warn!("gateway: a secret's value is no header value"),
            }
        }
    }
    out
}

/// Puts the placeholders of `replaced` (names of `secrets`) back where
/// their values are in `headers` (of a response).
pub fn unrewrite(secrets: &[Secret], replaced: &[String], headers: &mut HeaderMap) {
    let put: Vec<&Secret> = secrets
        .iter()
        .filter(|s| replaced.contains(&s.name))
        .collect();
    if put.is_empty() {
        return;
    }
    for value in headers.values_mut() {
        let mut text = value.as_bytes().to_vec();
        let mut changed = false;
        for secret in &put {
            if contains(&text, secret.value.as_bytes()) {
                text = replace(
                    &text,
                    secret.value.as_bytes(),
                    secret.placeholder.as_bytes(),
                );
                changed = true;
            }
        }
        if changed {
            if let Ok(v) = HeaderValue::from_bytes(&text) {
                *value = v;
            }
        }
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

fn replace(haystack: &[u8], needle: &[u8], with: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(haystack.len() + with.len());
    let mut i = 0;
    while i < haystack.len() {
        if haystack[i..].starts_with(needle) {
            out.extend_from_slice(with);
            i += needle.len();
        } else {
            out.push(haystack[i]);
            i += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(name: &str, placeholder: &str, value: &str, hosts: &[&str]) -> Secret {
        Secret {
            name: name.into(),
            placeholder: placeholder.into(),
            value: value.into(),
            hosts: hosts
                .iter()
                .map(|h| DomainPattern::parse(h).unwrap())
                .collect(),
        }
    }

    #[test]
    fn placeholders_are_replaced_for_listed_hosts_over_terminated_tls_only() {
        let secrets = [
            secret("GH", "sg_secret_aaaa", "ghp_real", &["api.github.example"]),
            secret("NPM", "sg_secret_bbbb", "npm_real", &["*.npm.example"]),
        ];
        let headers = || {
            let mut h = HeaderMap::new();
            h.insert("authorization", "Bearer sg_secret_aaaa".parse().unwrap());
            h.insert(
                "x-api-key",
                "sg_secret_bbbb;sg_secret_bbbb".parse().unwrap(),
            );
            h.insert("x-plain", "nothing here".parse().unwrap());
            h
        };
        let mut h = headers();
        let r = rewrite(&secrets, "api.github.example", true, &mut h);
        assert_eq!(h["authorization"], "Bearer ghp_real");
        assert!(h["authorization"].is_sensitive());
        assert_eq!(h["x-api-key"], "sg_secret_bbbb;sg_secret_bbbb");
        assert_eq!(r.replaced, ["GH"]);
        assert_eq!(r.unlisted, ["NPM"]);
        let mut h = headers();
        let r = rewrite(&secrets, "registry.npm.example", true, &mut h);
        assert_eq!(h["x-api-key"], "npm_real;npm_real");
        assert_eq!(h["authorization"], "Bearer sg_secret_aaaa");
        assert_eq!(
            (r.replaced, r.unlisted),
            (vec!["NPM".to_string()], vec!["GH".to_string()])
        );
        // In the clear, to the listed host: left as it is, and said.
        let mut h = headers();
        let r = rewrite(&secrets, "api.github.example", false, &mut h);
        assert_eq!(h["authorization"], "Bearer sg_secret_aaaa");
        assert_eq!(r.plain, ["GH"]);
        assert!(r.replaced.is_empty());
        // Never in a header that is no credential's (a server may
        // reflect it), such as Host or Origin.
        let mut h = HeaderMap::new();
        h.insert("origin", "https://sg_secret_aaaa.example".parse().unwrap());
        h.insert("authorization", "Bearer sg_secret_aaaa".parse().unwrap());
        let r = rewrite(&secrets, "api.github.example", true, &mut h);
        assert_eq!(h["origin"], "https://sg_secret_aaaa.example");
        assert_eq!(
            (r.replaced, r.elsewhere),
            (vec!["GH".to_string()], vec!["GH".to_string()])
        );
        // A value the server sends back goes back as the placeholder.
        let mut answer = HeaderMap::new();
        answer.insert("x-echo", "Bearer ghp_real".parse().unwrap());
        unrewrite(&secrets, &["GH".to_string()], &mut answer);
        assert_eq!(answer["x-echo"], "Bearer sg_secret_aaaa");
    }
}
