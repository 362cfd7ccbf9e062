//! A small client of sandgate's HTTP API, for the CLI and the demo.

use serde_json::Value;
use std::time::Duration;

/// A failed call: the API's error (status, code, message), or no answer
/// at all (status 0, code `unreachable`).
#[derive(Debug, Clone)]
pub struct ApiFailure {
    /// The HTTP status (0: no answer).
    pub status: u16,
    /// The API's error code.
    pub code: String,
    /// The API's message.
    pub message: String,
    /// The whole error body, when there is one.
    pub body: Value,
}

/// A client of one server, with one key.
#[derive(Debug, Clone)]
pub struct Client {
    base: String,
    key: Option<String>,
    agent: ureq::Agent,
}

impl Client {
    /// A client of the server at `base` (`http://host:port`) using `key`.
    pub fn new(base: &str, key: Option<&str>) -> Client {
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(3700)))
            .build()
            .into();
        Client {
            base: base.trim_end_matches('/').to_string(),
            key: key.map(str::to_string),
            agent,
        }
    }

    /// The same server with another key.
    #[cfg(feature = "lab")]
    pub fn with_key(&self, key: &str) -> Client {
        Client {
            key: Some(key.to_string()),
            ..self.clone()
        }
    }

    /// Reads the server-sent events at `path` (GET), handing each event's
    /// JSON data to `each` until it returns `false` or the stream ends.
    pub fn events(
        &self,
        path: &str,
        mut each: impl FnMut(Value) -> bool,
    ) -> Result<(), ApiFailure> {
        use std::io::BufRead;
        let url = format!("{}{path}", self.base);
        let mut r = self.agent.get(&url).header("Accept", "text/event-stream");
        if let Some(k) = &self.key {
            r = r.header("Authorization", format!("Bearer {k}"));
        }
        let mut response = r.call().map_err(|e| self.unreachable(e))?;
        let status = response.status().as_u16();
        if !(200..300).contains(&status) {
            let text = response.body_mut().read_to_string().unwrap_or_default();
            let value: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
            return Err(failure(status, &text, value));
        }
        let reader = std::io::BufReader::new(response.body_mut().as_reader());
        for line in reader.lines() {
            let Ok(line) = line else { break };
            if let Some(data) = line.strip_prefix("data:") {
                if let Ok(v) = serde_json::from_str(data.trim()) {
                    if !each(v) {
                        break;
                    }
                }
            }
        }
        Ok(())
    }

    /// `method path` with an optional JSON body: the JSON answer (`null`
    /// for none), or the failure.
    pub fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, ApiFailure> {
        let url = format!("{}{path}", self.base);
        let auth = self.key.as_ref().map(|k| format!("Bearer {k}"));
        let result = match method {
            "GET" | "DELETE" => {
                let mut r = if method == "GET" {
                    self.agent.get(&url)
                } else {
                    self.agent.delete(&url)
                };
                if let Some(a) = &auth {
                    r = r.header("Authorization", a);
                }
                r.call()
            }
            _ => {
                let mut r = match method {
                    "PUT" => self.agent.put(&url),
                    _ => self.agent.post(&url),
                };
                if let Some(a) = &auth {
                    r = r.header("Authorization", a);
                }
                match body {
                    Some(b) => r.send_json(b),
                    None => r.send_empty(),
                }
            }
        };
        self.answer(result)
    }

    /// The JSON answer of a request sent (`null` for none), or the
    /// failure.
    fn answer(
        &self,
        sent: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> Result<Value, ApiFailure> {
        let mut response = sent.map_err(|e| self.unreachable(e))?;
        let status = response.status().as_u16();
        let text = response.body_mut().read_to_string().unwrap_or_default();
        let value: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        if (200..300).contains(&status) {
            return Ok(value);
        }
        Err(failure(status, &text, value))
    }

    /// `PUT path` with the file `file` as the body (`content_type`), sent
    /// as it is read: the JSON answer, or the failure.
    pub fn upload(
        &self,
        path: &str,
        file: std::fs::File,
        content_type: &str,
    ) -> Result<Value, ApiFailure> {
        let url = format!("{}{path}", self.base);
        let mut r = self.agent.put(&url).header("Content-Type", content_type);
        if let Some(k) = &self.key {
            r = r.header("Authorization", format!("Bearer {k}"));
        }
        let mut reader = std::io::BufReader::new(file);
        self.answer(r.send(ureq::SendBody::from_reader(&mut reader)))
    }

    /// The failure of a call the server did not answer.
    fn unreachable(&self, e: ureq::Error) -> ApiFailure {
        ApiFailure {
            status: 0,
            code: "unreachable".into(),
            message: format!("no answer from {}: {e}", self.base),
            body: Value::Null,
        }
    }
}

/// The failure an error answer (`status`, its `text` and its JSON
/// `value`) stands for: the API's code and message where it gave them.
fn failure(status: u16, text: &str, value: Value) -> ApiFailure {
    ApiFailure {
        status,
        code: value["error"]["code"]
            .as_str()
            .unwrap_or("http_error")
            .to_string(),
        message: value["error"]["message"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| format!("HTTP {status}: {text}")),
        body: value,
    }
}
