//! The runner's side of registration: a heartbeat to its API every
//! [`BEAT`], with the token the operator issued it (see the server's
//! `registry`): the URL the API reaches it at, the token the API calls it
//! with ([`crate::call_token`]), its slots. The first one the API takes
//! makes the runner a member of its fleet.

use crate::client::check_base;
use sandgate_contract::{Runner, RunnerError};
use std::sync::Arc;
use std::time::Duration;

/// How often a runner sends its heartbeat.
pub const BEAT: Duration = Duration::from_secs(3);

/// What a runner registers with.
#[derive(Clone)]
pub struct Registration {
    /// The API's URL (`https://`, or `http://` to a loopback address).
    pub api: String,
    /// The PEM of the CA that signed the API's certificate (an
    /// `https://` API): the only roots it is checked against.
    pub api_ca: Option<Vec<u8>>,
    /// The token the operator issued it.
    pub token: String,
    /// The name that token was issued under.
    pub name: String,
    /// The URL the API reaches the runner at.
    pub url: String,
    /// The token the API calls the runner with.
    pub call_token: String,
}

impl std::fmt::Debug for Registration {
    /// Its API, name and URL; never a token.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registration")
            .field("api", &self.api)
            .field("name", &self.name)
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

/// Sends `runner`'s heartbeat to its API from a thread of its own, for
/// the life of the process. The API's URL is checked first.
pub fn start(reg: Registration, runner: Arc<dyn Runner>) -> Result<(), RunnerError> {
    check_base(&reg.api, reg.api_ca.is_some())?;
    let agent = crate::client::agent(reg.api_ca.as_deref())?;
    let url = format!("{}/api/runners/heartbeat", reg.api.trim_end_matches('/'));
    std::thread::spawn(move || {
        // Said once when it fails, once when it is taken again.
        let mut failing = true;
        loop {
            let capacity = runner.capacity().unwrap_or_default();
            let sent = agent
                .post(&url)
                .config()
                .timeout_global(Some(3 * BEAT))
                .build()
                .header("Authorization", &format!("Bearer {}", reg.token.trim()))
                .send_json(serde_json::json!({
                    "name": reg.name,
                    "url": reg.url,
                    "callToken": reg.call_token,
                    "slots": capacity.slots,
                    "used": capacity.used,
                }));
            let taken = match sent {
                Ok(r) if r.status().is_success() => Ok(()),
                Ok(mut r) => Err(format!(
                    "{}: {}",
                    r.status(),
                    r.body_mut().read_to_string().unwrap_or_default()
                )),
                Err(e) => Err(e.to_string()),
            };
            match taken {
                Ok(()) if failing => {
                    failing = false;
                    tracing::info!(api = %reg.api, name = %reg.name, "registered with the API");
                }
                Ok(()) => {}
                Err(why) if !failing => {
                    failing = true;
                    tracing::warn!(api = %reg.api, name = %reg.name, error = %why, "the API does not take the heartbeat; the runner keeps enforcing what it was last told");
                }
                Err(why) => {
                    tracing::debug!(api = %reg.api, error = %why, "heartbeat");
                }
            }
            std::thread::sleep(BEAT);
        }
    });
    Ok(())
}
