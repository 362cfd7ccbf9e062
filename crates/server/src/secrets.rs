//! Secrets of an organization (REQUIREMENTS.md, "Secrets"): stored sealed
//! with the operator's key (ChaCha20-Poly1305, a random nonce each, the
//! organization and the name bound as associated data, so that a sealed
//! value moved to another row does not open), never returned, opened only
//! to hand a sandbox's runner the values of the sandbox's secrets.

use crate::error::ApiError;
use crate::store::SandboxRow;
use crate::AppState;
use axum::http::StatusCode;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};
use sandgate_contract::SandboxSecret;
use sandgate_policy::DomainPattern;
use serde::{Deserialize, Serialize};

/// Bytes of a value, at most.
pub const VALUE_MAX: usize = 8 * 1024;
/// Hosts of a secret, at most.
pub const HOSTS_MAX: usize = 16;
/// Secrets of an organization, at most.
pub const SECRETS_MAX: usize = 256;
/// Secrets of a sandbox, at most.
pub const SANDBOX_SECRETS_MAX: usize = 32;

/// The operator's key that seals secrets at rest.
#[derive(Clone)]
pub struct SecretsKey(LessSafeKeyHolder);

#[derive(Clone)]
struct LessSafeKeyHolder(std::sync::Arc<LessSafeKey>);

impl std::fmt::Debug for SecretsKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretsKey(..)")
    }
}

impl SecretsKey {
    /// The key written in `text`: 64 hexadecimal digits (32 bytes), as
    /// `openssl rand -hex 32` makes them.
    pub fn parse(text: &str) -> Result<SecretsKey, String> {
        let text = text.trim();
        if text.len() != 64 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!(
                "a secrets key is 64 hexadecimal digits (openssl rand -hex 32); this one has {} characters",
                text.len()
            ));
        }
        let bytes: Vec<u8> = (0..32)
            .map(|i| u8::from_str_radix(&text[2 * i..2 * i + 2], 16))
            .collect::<Result<_, _>>()
            .map_err(|_| "a secrets key is 64 hexadecimal digits".to_string())?;
        let key = UnboundKey::new(&CHACHA20_POLY1305, &bytes)
            .map_err(|_| "the secrets key is not a ChaCha20-Poly1305 key".to_string())?;
        Ok(SecretsKey(LessSafeKeyHolder(std::sync::Arc::new(
            LessSafeKey::new(key),
        ))))
    }

    fn aad(organization: &str, name: &str) -> Vec<u8> {
        format!("sandgate-secret\0{organization}\0{name}").into_bytes()
    }

    /// `value` sealed for `organization`'s secret `name`: hexadecimal of
    /// the nonce and the sealed bytes.
    pub fn seal(&self, organization: &str, name: &str, value: &str) -> Result<String, ApiError> {
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| ApiError::internal("no randomness for a nonce"))?;
        let mut sealed = value.as_bytes().to_vec();
        self.0
             .0
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(Self::aad(organization, name)),
                &mut sealed,
            )
            .map_err(|_| ApiError::internal("sealing a secret failed"))?;
        Ok(nonce
            .iter()
            .chain(&sealed)
            .map(|b| format!("{b:02x}"))
            .collect())
    }

    /// The value of a sealed secret.
    pub fn open(&self, organization: &str, name: &str, sealed: &str) -> Result<String, ApiError> {
        let bytes: Vec<u8> = (0..sealed.len() / 2)
            .map(|i| u8::from_str_radix(sealed.get(2 * i..2 * i + 2).unwrap_or("zz"), 16))
            .collect::<Result<_, _>>()
            .map_err(|_| ApiError::internal(format!("the stored secret {name} is damaged")))?;
        if bytes.len() < NONCE_LEN {
            return Err(ApiError::internal(format!(
                "the stored secret {name} is damaged"
            )));
        }
        let (nonce, rest) = bytes.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce)
            .map_err(|_| ApiError::internal(format!("the stored secret {name} is damaged")))?;
        let mut rest = rest.to_vec();
        let plain = self
            .0
             .0
            .open_in_place(nonce, Aad::from(Self::aad(organization, name)), &mut rest)
            .map_err(|_| {
                ApiError::internal(format!(
                    "the stored secret {name} does not open with the operator's secrets key (another key, or a damaged row)"
                ))
            })?;
        String::from_utf8(plain.to_vec())
            .map_err(|_| ApiError::internal(format!("the stored secret {name} is damaged")))
    }
}

/// A new secret, as sent.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewSecret {
    /// Its name: an environment variable's (`A-Z`, `0-9`, `_`, not
    /// starting with a digit), at most 64 characters.
    pub name: String,
    /// Its value: at most 8 KiB, no control character but tab (it goes
    /// in a header).
    pub value: String,
    /// The hosts it is for: names and `*.` wildcards, 1 to 16.
    pub hosts: Vec<String>,
}

impl std::fmt::Debug for NewSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewSecret")
            .field("name", &self.name)
            .field("hosts", &self.hosts)
            .finish_non_exhaustive()
    }
}

/// A secret as shown: never its value.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretView {
    /// Its name.
    pub name: String,
    /// The hosts it is for, canonical.
    pub hosts: Vec<String>,
    /// When it was stored.
    pub created_at: String,
}

/// A secret a sandbox holds: its name and placeholder (kept with the
/// sandbox, as JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Held {
    /// The secret's name.
    pub name: String,
    /// The sandbox's placeholder for it.
    pub placeholder: String,
}

fn invalid(code: &'static str, message: String) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, code, message)
}

/// Checks a new secret's fields; its hosts, canonical.
pub fn check(new: &NewSecret) -> Result<Vec<String>, ApiError> {
    let name_ok = !new.name.is_empty()
        && new.name.len() <= 64
        && new
            .name
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
        && !new.name.as_bytes()[0].is_ascii_digit();
    if !name_ok {
        return Err(invalid(
            "invalid_secret_name",
            format!(
                "secret name {:?}: upper-case letters, digits and '_', not starting with a digit, at most 64 (it names an environment variable)",
                new.name.chars().take(80).collect::<String>()
            ),
        ));
    }
    if new.value.is_empty() || new.value.len() > VALUE_MAX {
        return Err(invalid(
            "invalid_secret_value",
            format!("the value of secret {}: 1 to {VALUE_MAX} bytes", new.name),
        ));
    }
    if new
        .value
        .bytes()
        .any(|b| (b.is_ascii_control() && b != b'\t') || b == 0x7f)
    {
        return Err(invalid(
            "invalid_secret_value",
            format!(
                "the value of secret {} has a line break or another control character; it is put in request headers, which cannot hold them",
                new.name
            ),
        ));
    }
    if new.hosts.is_empty() || new.hosts.len() > HOSTS_MAX {
        return Err(invalid(
            "invalid_secret_hosts",
            format!("secret {}: give 1 to {HOSTS_MAX} hosts it is for", new.name),
        ));
    }
    let mut hosts = Vec::new();
    for h in &new.hosts {
        let pattern = DomainPattern::parse(&h.trim().to_ascii_lowercase()).map_err(|why| {
            invalid(
                "invalid_secret_hosts",
                format!("secret {}: host {h:?} {why}", new.name),
            )
        })?;
        let canonical = pattern.to_string();
        if !hosts.contains(&canonical) {
            hosts.push(canonical);
        }
    }
    Ok(hosts)
}

/// The operator's key, or 503 `secrets_not_configured`.
pub fn key(st: &AppState) -> Result<&SecretsKey, ApiError> {
    st.secrets_key.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "secrets_not_configured",
            "this server stores no secrets: its operator has given it no secrets key (sandgate server --secrets-key-file)",
        )
    })
}

/// A new placeholder: `sg_secret_` and 32 random hexadecimal digits.
pub fn placeholder() -> Result<String, ApiError> {
    let mut bytes = [0u8; 16];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| ApiError::internal("no randomness for a placeholder"))?;
    Ok(format!(
        "{}{}",
        sandgate_gateway::secrets::PLACEHOLDER_PREFIX,
        bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
    ))
}

/// The secrets `names` of organization `org_id` for a new sandbox: what
/// it keeps (each with a new placeholder) and what its runner gets (with
/// the values). A name the organization lacks is 400 `unknown_secret`.
pub async fn hold(
    st: &AppState,
    org_id: &str,
    names: &[String],
) -> Result<(Vec<Held>, Vec<SandboxSecret>), ApiError> {
    if names.is_empty() {
        return Ok((Vec::new(), Vec::new()));
    }
    if names.len() > SANDBOX_SECRETS_MAX {
        return Err(ApiError::invalid(format!(
            "secrets: at most {SANDBOX_SECRETS_MAX} per sandbox"
        )));
    }
    let key = key(st)?;
    let (mut held, mut given) = (Vec::new(), Vec::new());
    for name in names {
        if held.iter().any(|h: &Held| &h.name == name) {
            continue;
        }
        let h = Held {
            name: name.clone(),
            placeholder: placeholder()?,
        };
        given.push(
            give(st, key, org_id, h.clone(), || {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "unknown_secret",
                    format!(
                        "secrets: the organization has no secret {:?}; store it first (POST /api/secrets)",
                        name.chars().take(80).collect::<String>()
                    ),
                )
            })
            .await?,
        );
        held.push(h);
    }
    Ok((held, given))
}

/// What sandbox `row`'s runner must hold of its secrets: each with its
/// value, opened now. A secret removed since (it cannot be while in use)
/// or a value that does not open is an error: the runner is not given a
/// sandbox with a secret it cannot honour.
pub async fn for_runner(st: &AppState, row: &SandboxRow) -> Result<Vec<SandboxSecret>, ApiError> {
    let held = held(row);
    if held.is_empty() {
        return Ok(Vec::new());
    }
    let key = key(st)?;
    let mut out = Vec::new();
    for h in held {
        let missing = || {
            ApiError::internal(format!(
                "sandbox {} holds secret {}, which is not stored",
                row.id, h.name
            ))
        };
        out.push(give(st, key, &row.organization_id, h.clone(), missing).await?);
    }
    Ok(out)
}

/// Secret `held` of organization `org_id` as a runner gets it: its stored
/// hosts and its value, opened with `key`; `missing` if it is not stored.
async fn give(
    st: &AppState,
    key: &SecretsKey,
    org_id: &str,
    held: Held,
    missing: impl FnOnce() -> ApiError,
) -> Result<SandboxSecret, ApiError> {
    let stored = st
        .store
        .secret(org_id, &held.name)
        .await?
        .ok_or_else(missing)?;
    Ok(SandboxSecret {
        value: key.open(org_id, &held.name, &stored.sealed)?,
        name: held.name,
        placeholder: held.placeholder,
        hosts: stored.hosts,
    })
}

/// The secrets sandbox `row` holds (none if its record of them cannot be
/// read: said in the log).
pub fn held(row: &SandboxRow) -> Vec<Held> {
    read_held(row).unwrap_or_else(|e| {
        tracing::error!(sandbox = %row.id, error = %e.message, "a sandbox's stored secrets are not readable");
        Vec::new()
    })
}

/// The secrets sandbox `row` holds, or why its record of them cannot be
/// read.
pub fn read_held(row: &SandboxRow) -> Result<Vec<Held>, ApiError> {
    if row.secrets.is_empty() {
        return Ok(Vec::new());
    }
    serde_json::from_str(&row.secrets)
        .map_err(|e| ApiError::internal(format!("the stored secrets of sandbox {}: {e}", row.id)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_value_opens_with_its_key_for_its_row_only() {
        let key = SecretsKey::parse(&"ab".repeat(32)).unwrap();
        let sealed = key.seal("org-1", "GH_TOKEN", "ghp_value").unwrap();
        assert!(!sealed.contains("ghp_value"));
        assert_ne!(sealed, key.seal("org-1", "GH_TOKEN", "ghp_value").unwrap());
        assert_eq!(key.open("org-1", "GH_TOKEN", &sealed).unwrap(), "ghp_value");
        assert!(key.open("org-2", "GH_TOKEN", &sealed).is_err());
        assert!(key.open("org-1", "OTHER", &sealed).is_err());
        let other = SecretsKey::parse(&"cd".repeat(32)).unwrap();
        assert!(other.open("org-1", "GH_TOKEN", &sealed).is_err());
        assert!(SecretsKey::parse("short").is_err());
        assert!(SecretsKey::parse(&"zz".repeat(32)).is_err());
    }
}
