//! `sandgate sandbox ...` and `sandgate admin ...`: a client of the API.
//!
//! The server comes from `--api-url` or `SANDGATE_API_URL`; the key from
//! `SANDGATE_API_KEY` or a file (`--api-key-file`), never from an
//! argument of its own (the process list shows arguments to every user of
//! the host). `--json` prints the API's answers
//! as they are; otherwise tables and summaries for people. Exit status: 0,
//! 2 for an error the caller can fix (a 4xx), 1 for the rest; `sandbox
//! exec` exits with the command's own status.

use crate::client::{ApiFailure, Client};
use crate::output::{say, table, Output, EXIT_USAGE};
use clap::{Args, Subcommand};
use serde_json::{json, Map, Value};
use std::process::ExitCode;

/// Where the API is.
#[derive(Debug, Args)]
pub struct ApiArgs {
    /// The server's URL.
    #[arg(
        long,
        global = true,
        env = "SANDGATE_API_URL",
        default_value = "http://127.0.0.1:8080"
    )]
    pub api_url: String,
    /// A file holding the API key (an organization's, or for `admin` the
    /// operator token); without it, `SANDGATE_API_KEY`. The key itself is
    /// never an argument: the process list shows arguments to every user.
    #[arg(
        long,
        global = true,
        env = "SANDGATE_API_KEY_FILE",
        value_name = "FILE"
    )]
    pub api_key_file: Option<std::path::PathBuf>,
}

/// Sandboxes of the key's organization.
#[derive(Debug, Args)]
pub struct SandboxCli {
    #[command(flatten)]
    api: ApiArgs,
    #[command(subcommand)]
    command: SandboxCommand,
}

/// The network settings a create or an update sends.
#[derive(Debug, Args)]
pub struct SettingsArgs {
    /// Comma-separated CIDRs the sandbox may reach.
    #[arg(long)]
    network_allow_list: Option<String>,
    /// Comma-separated domain names and `*.` wildcards.
    #[arg(long)]
    domain_allow_list: Option<String>,
    /// Block all egress (wins over every list).
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    network_block_all: Option<bool>,
    /// Comma-separated CIDRs the sandbox may never reach (wins over every
    /// list and the essential services).
    #[arg(long)]
    network_deny_list: Option<String>,
    /// Comma-separated names and `*.` wildcards the sandbox may never
    /// reach.
    #[arg(long)]
    domain_deny_list: Option<String>,
    /// Whether the essential services are reachable (`false` leaves the
    /// allow lists the only source of truth).
    #[arg(long, value_name = "BOOL")]
    essential_services: Option<bool>,
    /// What the sandbox may send, Mbit/s, within its tier's maximum
    /// (`default`: the tier's default).
    #[arg(long, value_name = "MBPS|default", value_parser = parse_budget)]
    egress_mbps: Option<Budget>,
    /// What the sandbox may send and receive in all each period, MiB,
    /// within its tier's maximum (`default`: the tier's default; the
    /// period is the operator's).
    #[arg(long = "transfer-quota-mib", value_name = "MIB|default", value_parser = parse_budget)]
    transfer_quota_mib: Option<Budget>,
    /// Connections the sandbox may have at once, within its tier's fair
    /// share (`default`: the tier's).
    #[arg(long, value_name = "N|default", value_parser = parse_budget)]
    max_connections: Option<Budget>,
    /// New connections the sandbox may open a second, within its tier's
    /// fair share (`default`: the tier's).
    #[arg(long, value_name = "N|default", value_parser = parse_budget)]
    new_connections_per_second: Option<Budget>,
    /// Whether what the sandbox is refused opens access requests for its
    /// owner to approve or deny (tier 3/4).
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    network_approvals: Option<bool>,
    /// How long a refused DNS query waits for an approval, 0 to 60
    /// seconds.
    #[arg(long, value_name = "SECONDS")]
    approval_hold_seconds: Option<u32>,
    /// Methods and paths per host, as JSON (`[]` removes them), e.g.
    /// `[{"host":"api.example.com","methods":["GET"],"paths":["/repos/**"]}]`.
    #[arg(long, value_name = "JSON", value_parser = crate::policy_cmd::parse_http_rules)]
    http_rules: Option<Vec<sandgate_policy::HttpRuleRequest>>,
}

/// A budget given on the command line.
#[derive(Debug, Clone, Copy)]
enum Budget {
    /// The tier's.
    Default,
    /// A limit (megabits a second, connections, connections a second).
    Limit(u32),
}

impl Budget {
    fn json(self) -> Value {
        match self {
            Budget::Default => Value::Null,
            Budget::Limit(v) => json!(v),
        }
    }
}

fn parse_budget(s: &str) -> Result<Budget, String> {
    if s == "default" {
        return Ok(Budget::Default);
    }
    s.parse()
        .map(Budget::Limit)
        .map_err(|_| format!("{s:?}: give a whole number or \"default\""))
}

impl SettingsArgs {
    fn into_json(self, into: &mut Map<String, Value>) {
        if let Some(v) = self.network_allow_list {
            into.insert("networkAllowList".into(), json!(v));
        }
        if let Some(v) = self.domain_allow_list {
            into.insert("domainAllowList".into(), json!(v));
        }
        if let Some(v) = self.network_block_all {
            into.insert("networkBlockAll".into(), json!(v));
        }
        if let Some(v) = self.network_deny_list {
            into.insert("networkDenyList".into(), json!(v));
        }
        if let Some(v) = self.domain_deny_list {
            into.insert("domainDenyList".into(), json!(v));
        }
        if let Some(v) = self.essential_services {
            into.insert("essentialServices".into(), json!(v));
        }
        if let Some(v) = self.network_approvals {
            into.insert("networkApprovals".into(), json!(v));
        }
        if let Some(v) = self.approval_hold_seconds {
            into.insert("approvalHoldSeconds".into(), json!(v));
        }
        if let Some(v) = self.http_rules {
            into.insert("httpRules".into(), json!(v));
        }
        for (field, budget) in [
            ("egressMbps", self.egress_mbps),
            ("transferQuotaMiB", self.transfer_quota_mib),
            ("maxConnections", self.max_connections),
            ("newConnectionsPerSecond", self.new_connections_per_second),
        ] {
            if let Some(b) = budget {
                into.insert(field.into(), b.json());
            }
        }
    }
}

fn parse_env(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("{s:?}: give NAME=value"))
}

/// What to do with sandboxes.
#[derive(Debug, Subcommand)]
pub enum SandboxCommand {
    /// Create a sandbox; it is running, its policy enforced, when this
    /// returns.
    Create {
        /// Its name (default: its id).
        #[arg(long)]
        name: Option<String>,
        /// The snapshot (default `busybox`).
        #[arg(long)]
        snapshot: Option<String>,
        /// An environment variable of every exec (repeatable).
        #[arg(long, value_parser = parse_env, value_name = "NAME=VALUE")]
        env: Vec<(String, String)>,
        /// How many to create, one after the other, with the same
        /// settings (for 2 or more, named NAME-1, NAME-2, ... when a
        /// name is given);
        /// progress on standard error; the first refusal stops there.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=100))]
        count: u16,
        /// A secret of the organization it holds (repeatable): its
        /// environment has the secret's name holding a placeholder, which
        /// the gateway replaces in requests to the secret's hosts.
        #[arg(long = "secret", value_name = "NAME")]
        secrets: Vec<String>,
        /// The OCI runtime it runs under, among those its tier allows:
        /// `runc`, or `runsc` (gVisor: a kernel of its own between the
        /// sandbox and the host's). Default: the tier's first.
        #[arg(long, value_name = "runc|runsc", value_parser = str::parse::<sandgate_policy::RuntimeClass>)]
        runtime_class: Option<sandgate_policy::RuntimeClass>,
        #[command(flatten)]
        settings: SettingsArgs,
    },
    /// List the organization's sandboxes.
    List,
    /// Show one sandbox, its settings and its effective network.
    Get {
        /// Id or name.
        sandbox: String,
    },
    /// Delete a sandbox.
    Delete {
        /// Id or name.
        sandbox: String,
    },
    /// Run a command in a sandbox; exits with the command's status.
    Exec {
        /// Id or name.
        sandbox: String,
        /// Working directory.
        #[arg(long)]
        cwd: Option<String>,
        /// An environment variable (repeatable).
        #[arg(long, value_parser = parse_env, value_name = "NAME=VALUE")]
        env: Vec<(String, String)>,
        /// Seconds before the command and its children are killed.
        #[arg(long)]
        timeout: Option<f64>,
        /// The command, run by /bin/sh -c.
        #[arg(trailing_var_arg = true, required = true)]
        command: Vec<String>,
    },
    /// Network settings, tests and explanations.
    #[command(subcommand)]
    Network(NetworkCommand),
}

/// A sandbox's network.
#[derive(Debug, Subcommand)]
pub enum NetworkCommand {
    /// Change the network settings: what is given replaces, the rest is
    /// kept; in force when this returns.
    Update {
        /// Id or name.
        sandbox: String,
        #[command(flatten)]
        settings: SettingsArgs,
    },
    /// Probe destinations from inside the sandbox's network namespace and
    /// compare with what the policy expects.
    Test {
        /// Id or name.
        sandbox: String,
        /// `host:port` (repeatable; default: the server's list).
        #[arg(long = "target")]
        targets: Vec<String>,
    },
    /// The sandbox's recent network events (denied connections, refused
    /// DNS queries); with `--follow`, then new ones as they happen.
    Events {
        /// Id or name.
        sandbox: String,
        /// Keep printing new events until interrupted.
        #[arg(long)]
        follow: bool,
    },
    /// The sandbox's flow log: each connection, allowed or denied,
    /// relayed by the kernel or the gateway, with its name and bytes; with
    /// `--follow`, then each flow as it opens and again as it ends.
    Flows {
        /// Id or name.
        sandbox: String,
        /// Keep printing new records until interrupted.
        #[arg(long)]
        follow: bool,
        /// Only flows still open or ended at or after this time
        /// (milliseconds since the Unix epoch).
        #[arg(long, value_name = "MS")]
        since: Option<u64>,
        /// At most this many records, the latest (1 to 1000; default 100).
        #[arg(long)]
        limit: Option<u32>,
    },
    /// Whether the sandbox may reach a destination, and by which rule
    /// (nothing is sent).
    Explain {
        /// Id or name.
        sandbox: String,
        /// An address or a name, optionally with `:port`.
        destination: String,
    },
    /// Give the sandbox time-bounded access to a CIDR, an address or a
    /// name (in force when this returns; it ends by itself).
    Grant {
        /// Id or name.
        sandbox: String,
        /// A CIDR, an address, a name or a `*.` wildcard.
        target: String,
        /// How long, in seconds (1 to 604800).
        #[arg(long = "ttl", value_name = "SECONDS")]
        ttl_seconds: u64,
        /// Why, for whoever reads the list later.
        #[arg(long)]
        reason: Option<String>,
    },
    /// The sandbox's grants in force, with the time each has left.
    Grants {
        /// Id or name.
        sandbox: String,
    },
    /// What the sandbox has used of its transfer quota this period.
    Usage {
        /// Id or name.
        sandbox: String,
    },
    /// Revoke a grant (its connections stop when this returns).
    Revoke {
        /// Id or name.
        sandbox: String,
        /// The grant's id (`gr-...`).
        grant: String,
    },
    /// The sandbox's access requests (what it was refused, with
    /// `networkApprovals`); with `--follow`, then each change as it
    /// happens.
    Requests {
        /// Id or name.
        sandbox: String,
        /// Keep printing requests as they open, count and are decided.
        #[arg(long)]
        follow: bool,
        /// Only those in this state.
        #[arg(long, value_parser = ["pending", "approved", "denied"])]
        state: Option<String>,
    },
    /// Approve an access request: a grant for `--ttl` seconds, or without
    /// it, the target added to the allow list (in force when this
    /// returns; a DNS query held for it is answered then).
    Approve {
        /// Id or name.
        sandbox: String,
        /// The request's id (`ar-...`).
        request: String,
        /// A grant for this many seconds (1 to 604800) instead of a
        /// permanent list entry.
        #[arg(long = "ttl", value_name = "SECONDS")]
        ttl_seconds: Option<u64>,
    },
    /// Deny an access request (it is not asked again; attempts are still
    /// counted).
    Deny {
        /// Id or name.
        sandbox: String,
        /// The request's id (`ar-...`).
        request: String,
    },
}

/// Operator commands (the operator token as the key).
#[derive(Debug, Args)]
pub struct AdminCli {
    #[command(flatten)]
    api: ApiArgs,
    #[command(subcommand)]
    command: AdminCommand,
}

/// What the operator manages.
#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// Organizations, their tiers and keys.
    #[command(subcommand)]
    Org(OrgCommand),
    /// The runners behind the API.
    #[command(subcommand)]
    Runner(RunnerCommand),
}

/// Runners.
#[derive(Debug, Subcommand)]
pub enum RunnerCommand {
    /// List the runners: their state, slots and sandboxes.
    List,
    /// Issue a runner a token to register with (shown once; another one
    /// issued under the name replaces it): give it to `sandgate runner
    /// --api URL --name NAME --token-file F` on the runner's host.
    Token {
        /// Runner name: 1 to 63 lowercase letters, digits and dashes.
        name: String,
        /// A label of the runner (repeat for several), by which the
        /// tiers' placement picks it (the operator's configuration:
        /// `[placement.tiers."4"] labels = {pool = "dedicated"}`).
        #[arg(long = "label", value_name = "NAME=VALUE", value_parser = parse_label)]
        labels: Vec<(String, String)>,
    },
    /// Drain a runner: no new sandbox is placed there (its own run on).
    /// `--undo` takes it back into placement.
    Drain {
        /// Runner name.
        name: String,
        /// End the drain.
        #[arg(long)]
        undo: bool,
    },
}

/// Organizations.
#[derive(Debug, Subcommand)]
pub enum OrgCommand {
    /// Create an organization.
    Create {
        /// Its name.
        name: String,
        /// Its tier.
        #[arg(long)]
        tier: u8,
    },
    /// List organizations.
    List,
    /// Change an organization's tier; its running sandboxes follow before
    /// this returns.
    Tier {
        /// Organization id.
        organization: String,
        /// The new tier.
        tier: u8,
    },
    /// Give an organization a known egress address (an address of the
    /// host, each family optional): its sandboxes' connections leave from
    /// it. `--clear` takes it away (the host's own address again).
    EgressAddress {
        /// Organization id.
        organization: String,
        /// The IPv4 address.
        #[arg(long, conflicts_with = "clear")]
        ipv4: Option<String>,
        /// The IPv6 address.
        #[arg(long, conflicts_with = "clear")]
        ipv6: Option<String>,
        /// Remove it.
        #[arg(long, required_unless_present_any = ["ipv4", "ipv6"])]
        clear: bool,
    },
    /// Issue an API key (shown once).
    Key {
        /// Organization id.
        organization: String,
        /// What the key may do (repeat for several): sandboxes:read,
        /// sandboxes:write, sandboxes:exec, network:write, secrets:write.
        /// Without any, every scope.
        #[arg(long = "scope", value_name = "SCOPE")]
        scopes: Vec<String>,
    },
    /// Revoke an API key.
    Revoke {
        /// Organization id.
        organization: String,
        /// Key id.
        key: String,
    },
}

fn failure(out: &Output, f: &ApiFailure) -> ExitCode {
    if out.json {
        let body = if f.body.is_null() {
            json!({"error": {"code": f.code, "message": f.message}})
        } else {
            f.body.clone()
        };
        out.print_json(&body);
    } else {
        eprintln!("error [{}]: {}", f.code, f.message);
        if let Some(problems) = f.body["error"]["problems"].as_array() {
            for p in problems.iter().skip(1) {
                eprintln!("  - {}", p["message"].as_str().unwrap_or_default());
            }
        }
    }
    if (400..500).contains(&f.status) {
        ExitCode::from(EXIT_USAGE)
    } else {
        ExitCode::FAILURE
    }
}

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or("-")
}

/// A sandbox for people.
fn print_sandbox(v: &Value) {
    let e = &v["effectiveNetwork"];
    say!("sandbox   {} ({})", s(&v["name"]), s(&v["id"]));
    say!("state     {}", s(&v["state"]));
    say!("runtime   {}", s(&v["runtimeClass"]));
    say!("mode      {} (tier {})", s(&e["mode"]), e["tier"]);
    say!(
        "settings  networkBlockAll={} networkAllowList={} domainAllowList={}",
        v["networkBlockAll"],
        v["networkAllowList"].as_str().unwrap_or("(none)"),
        v["domainAllowList"].as_str().unwrap_or("(none)")
    );
    say!(
        "essential services {}",
        if e["essentialServices"] == true {
            "reachable"
        } else {
            "not reachable"
        }
    );
    if let Some(mbps) = e["budgets"]["egressMbps"].as_u64() {
        say!("egress    at most {mbps} Mbit/s");
    }
    if let Some(mib) = e["budgets"]["transferQuotaMiB"].as_u64() {
        say!(
            "transfer  at most {mib} MiB every {} s",
            e["budgets"]["transferPeriodSeconds"]
        );
    }
    if v.get("maxConnections").is_some() || v.get("newConnectionsPerSecond").is_some() {
        say!(
            "connections at most {} at once, {} new a second",
            e["fairShares"]["connections"],
            e["fairShares"]["newConnectionsPerSecond"]
        );
    }
    for addr in ["ipv4", "ipv6"]
        .iter()
        .filter_map(|f| e["egressAddress"][f].as_str())
    {
        say!("leaves from {addr}");
    }
    for i in e["inactive"].as_array().into_iter().flatten() {
        say!(
            "inactive  {} = {}: {}",
            s(&i["setting"]),
            s(&i["value"]),
            s(&i["message"])
        );
    }
}

/// The shell command of `sandbox exec`'s words: one word is a command line
/// as it is (`exec web -- 'ls | wc -l'`); several are quoted one by one, so
/// that `exec web -- ls "a b"` lists one file named `a b`.
fn shell_command(words: &[String]) -> String {
    if let [one] = words {
        return one.clone();
    }
    words
        .iter()
        .map(|w| {
            let plain = !w.is_empty()
                && w.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_./=:,@%+".contains(&b));
            if plain {
                w.clone()
            } else {
                format!("'{}'", w.replace('\'', "'\\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// One table row per element of the JSON array `v`.
fn rows(v: &Value, cells: impl Fn(&Value) -> Vec<String>) -> Vec<Vec<String>> {
    v.as_array().into_iter().flatten().map(cells).collect()
}

/// The client of `api`: its key read from `--api-key-file`, else from
/// `SANDGATE_API_KEY` (a file that cannot be read is the caller's to fix).
fn client(api: &ApiArgs) -> Result<Client, ApiFailure> {
    let key = match &api.api_key_file {
        Some(file) => {
            let text = std::fs::read_to_string(file).map_err(|e| ApiFailure {
                status: 400,
                code: "invalid_api_key_file".into(),
                message: format!("the API key file {}: {e}", file.display()),
                body: Value::Null,
            })?;
            Some(text.trim().to_string())
        }
        None => std::env::var("SANDGATE_API_KEY").ok(),
    };
    Ok(Client::new(
        &api.api_url,
        key.as_deref().filter(|k| !k.is_empty()),
    ))
}

fn path_part(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The columns of a list of sandboxes, and a sandbox's row.
const SANDBOX_COLUMNS: [&str; 5] = ["ID", "NAME", "STATE", "MODE", "CREATED"];

fn sandbox_row(v: &Value) -> Vec<String> {
    vec![
        s(&v["id"]).to_string(),
        s(&v["name"]).to_string(),
        s(&v["state"]).to_string(),
        s(&v["effectiveNetwork"]["mode"]).to_string(),
        s(&v["createdAt"]).to_string(),
    ]
}

/// Creates `count` sandboxes of `body` one after the other, saying how
/// far it got on standard error; stops at the first refusal (those made
/// stay, and are said).
fn create_many(
    c: &Client,
    out: &Output,
    body: Map<String, Value>,
    name: Option<&str>,
    count: u16,
) -> Result<ExitCode, ApiFailure> {
    let started = std::time::Instant::now();
    let mut made = Vec::new();
    for i in 1..=count {
        let mut one = body.clone();
        if let Some(n) = name {
            one.insert("name".into(), json!(format!("{n}-{i}")));
        }
        let label = format!("[{i}/{count}] creating");
        match crate::output::progress(&label, || {
            c.call("POST", "/api/sandbox", Some(&Value::Object(one)))
        }) {
            Ok(v) => {
                eprintln!("[{i}/{count}] created {} ({})", s(&v["name"]), s(&v["id"]));
                made.push(v);
            }
            Err(f) => {
                eprintln!(
                    "stopped after {} of {count} sandboxes (those are kept)",
                    made.len()
                );
                return Err(f);
            }
        }
    }
    eprintln!(
        "created {count} sandboxes in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    if out.json {
        out.print_json(&Value::Array(made));
    } else {
        let rows = made.iter().map(sandbox_row).collect();
        table(&SANDBOX_COLUMNS, rows);
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs `sandgate sandbox ...`.
pub fn sandbox(cli: SandboxCli, out: &Output) -> ExitCode {
    let c = match client(&cli.api) {
        Ok(c) => c,
        Err(f) => return failure(out, &f),
    };
    let result = match cli.command {
        SandboxCommand::Create {
            name,
            snapshot,
            env,
            count,
            secrets,
            runtime_class,
            settings,
        } => {
            let mut body = Map::new();
            if !secrets.is_empty() {
                body.insert("secrets".into(), json!(secrets));
            }
            if let Some(class) = runtime_class {
                body.insert("runtimeClass".into(), json!(class));
            }
            if let Some(n) = &name {
                body.insert("name".into(), json!(n));
            }
            if let Some(s) = snapshot {
                body.insert("snapshot".into(), json!(s));
            }
            if !env.is_empty() {
                body.insert(
                    "env".into(),
                    json!(env
                        .into_iter()
                        .collect::<std::collections::BTreeMap<String, String>>()),
                );
            }
            settings.into_json(&mut body);
            if count == 1 {
                crate::output::progress("creating the sandbox", || {
                    c.call("POST", "/api/sandbox", Some(&Value::Object(body)))
                })
                .map(|v| {
                    if out.json {
                        out.print_json(&v)
                    } else {
                        print_sandbox(&v)
                    }
                    ExitCode::SUCCESS
                })
            } else {
                create_many(&c, out, body, name.as_deref(), count)
            }
        }
        SandboxCommand::List => c.call("GET", "/api/sandbox", None).map(|v| {
            if out.json {
                out.print_json(&v);
            } else {
                let rows = rows(&v, sandbox_row);
                table(&SANDBOX_COLUMNS, rows);
            }
            ExitCode::SUCCESS
        }),
        SandboxCommand::Get { sandbox } => c
            .call(
                "GET",
                &format!("/api/sandbox/{}", path_part(&sandbox)),
                None,
            )
            .map(|v| {
                if out.json {
                    out.print_json(&v)
                } else {
                    print_sandbox(&v)
                }
                ExitCode::SUCCESS
            }),
        SandboxCommand::Delete { sandbox } => c
            .call(
                "DELETE",
                &format!("/api/sandbox/{}", path_part(&sandbox)),
                None,
            )
            .map(|_| {
                if out.json {
                    out.print_json(&json!({"deleted": sandbox}))
                } else {
                    say!("deleted {sandbox}")
                }
                ExitCode::SUCCESS
            }),
        SandboxCommand::Exec {
            sandbox,
            cwd,
            env,
            timeout,
            command,
        } => {
            let mut body = json!({"command": shell_command(&command)});
            if let Some(cwd) = cwd {
                body["cwd"] = json!(cwd);
            }
            if !env.is_empty() {
                body["env"] = json!(env
                    .into_iter()
                    .collect::<std::collections::BTreeMap<String, String>>());
            }
            if let Some(t) = timeout {
                body["timeout"] = json!(t);
            }
            c.call(
                "POST",
                &format!("/api/sandbox/{}/process/execute", path_part(&sandbox)),
                Some(&body),
            )
            .map(|v| {
                if out.json {
                    out.print_json(&v);
                } else {
                    print!("{}", v["stdout"].as_str().unwrap_or_default());
                    eprint!("{}", v["stderr"].as_str().unwrap_or_default());
                    if v["timedOut"] == true {
                        eprintln!("sandgate: the command timed out and was killed");
                    }
                }
                // 0 only for a command that said 0.
                let code = v["exitCode"]
                    .as_i64()
                    .filter(|c| (0..=255).contains(c))
                    .unwrap_or(1);
                ExitCode::from(u8::try_from(code.clamp(0, 255)).unwrap_or(1))
            })
        }
        SandboxCommand::Network(n) => network(&c, n, out),
    };
    result.unwrap_or_else(|f| failure(out, &f))
}

fn network(c: &Client, cmd: NetworkCommand, out: &Output) -> Result<ExitCode, ApiFailure> {
    match cmd {
        NetworkCommand::Update { sandbox, settings } => {
            let mut body = Map::new();
            settings.into_json(&mut body);
            let v = c.call(
                "POST",
                &format!("/api/sandbox/{}/network-settings", path_part(&sandbox)),
                Some(&Value::Object(body)),
            )?;
            if out.json {
                out.print_json(&v)
            } else {
                print_sandbox(&v)
            }
            Ok(ExitCode::SUCCESS)
        }
        NetworkCommand::Test { sandbox, targets } => {
            let body = if targets.is_empty() {
                json!({})
            } else {
                json!({"targets": targets})
            };
            let v = c.call(
                "POST",
                &format!("/api/sandbox/{}/network/test", path_part(&sandbox)),
                Some(&body),
            )?;
            if out.json {
                out.print_json(&v);
            } else {
                let word = |b: &Value| if *b == true { "allowed" } else { "denied" };
                let rows = rows(&v["results"], |r| {
                    vec![
                        s(&r["target"]).to_string(),
                        word(&r["expected"]).to_string(),
                        word(&r["observed"]).to_string(),
                        if r["ok"] == true { "ok" } else { "MISMATCH" }.to_string(),
                        s(&r["reason"]).to_string(),
                        s(&r["detail"]).to_string(),
                    ]
                });
                say!("sandbox {} ({} mode)", s(&v["sandbox"]), s(&v["mode"]));
                table(
                    &["TARGET", "EXPECTED", "OBSERVED", "", "REASON", "DETAIL"],
                    rows,
                );
            }
            Ok(if v["ok"] == true {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        NetworkCommand::Events { sandbox, follow } => {
            let path = format!(
                "/api/sandbox/{}/network/events?follow={follow}",
                path_part(&sandbox)
            );
            c.events(&path, |e| {
                if out.json {
                    // One event per line, as it comes.
                    say!("{e}");
                } else {
                    let to = match (e["destination"].as_str(), e["port"].as_u64()) {
                        (Some(d), Some(p)) if d.contains(':') => format!("[{d}]:{p}"),
                        (Some(d), Some(p)) => format!("{d}:{p}"),
                        (Some(d), None) => d.to_string(),
                        _ => String::new(),
                    };
                    say!(
                        "{}  {:<10}  {:<5}  {:<28}  {} {}",
                        e["timeMs"],
                        s(&e["kind"]),
                        s(&e["protocol"]),
                        s(&e["reason"]),
                        to,
                        e["domain"].as_str().unwrap_or_default()
                    );
                }
                true
            })?;
            Ok(ExitCode::SUCCESS)
        }
        NetworkCommand::Flows {
            sandbox,
            follow,
            since,
            limit,
        } => {
            let mut path = format!(
                "/api/sandbox/{}/network/flows?follow={follow}",
                path_part(&sandbox)
            );
            if let Some(since) = since {
                path.push_str(&format!("&since={since}"));
            }
            if let Some(limit) = limit {
                path.push_str(&format!("&limit={limit}"));
            }
            if follow {
                c.events(&path, |f| {
                    if let Some(lost) = f["lost"].as_u64() {
                        eprintln!("({lost} records missed: this client fell behind)");
                    } else if out.json {
                        // One record per line, as it comes.
                        say!("{f}");
                    } else {
                        flow_line(&f);
                    }
                    true
                })?;
                return Ok(ExitCode::SUCCESS);
            }
            let v = c.call("GET", &path, None)?;
            if out.json {
                out.print_json(&v);
            } else {
                for f in v["flows"].as_array().into_iter().flatten() {
                    flow_line(f);
                }
                if let Some(n) = v["dropped"].as_u64().filter(|n| *n > 0) {
                    say!("({n} records dropped: the log is bounded, and a flood of refusals is counted, not logged)");
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        NetworkCommand::Grant {
            sandbox,
            target,
            ttl_seconds,
            reason,
        } => {
            let mut body = json!({"target": target, "ttlSeconds": ttl_seconds});
            if let Some(r) = reason {
                body["reason"] = json!(r);
            }
            let v = c.call(
                "POST",
                &format!("/api/sandbox/{}/network/grants", path_part(&sandbox)),
                Some(&body),
            )?;
            if out.json {
                out.print_json(&v);
            } else {
                grant_line(&v);
            }
            Ok(ExitCode::SUCCESS)
        }
        NetworkCommand::Grants { sandbox } => {
            let v = c.call(
                "GET",
                &format!("/api/sandbox/{}/network/grants", path_part(&sandbox)),
                None,
            )?;
            if out.json {
                out.print_json(&v);
            } else {
                for g in v["grants"].as_array().into_iter().flatten() {
                    grant_line(g);
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        NetworkCommand::Usage { sandbox } => {
            let v = c.call(
                "GET",
                &format!("/api/sandbox/{}/network/usage", path_part(&sandbox)),
                None,
            )?;
            if out.json {
                out.print_json(&v);
            } else {
                let t = &v["transfer"];
                match (t["usedBytes"].as_u64(), t["quotaBytes"].as_u64()) {
                    (Some(used), Some(quota)) => say!(
                        "transfer  {:.1} of {:.1} MiB this period{}, until {}",
                        used as f64 / 1048576.0,
                        quota as f64 / 1048576.0,
                        if t["spent"] == true { " (spent)" } else { "" },
                        s(&t["periodEnd"])
                    ),
                    _ => say!("transfer  no quota"),
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        NetworkCommand::Revoke { sandbox, grant } => {
            c.call(
                "DELETE",
                &format!(
                    "/api/sandbox/{}/network/grants/{}",
                    path_part(&sandbox),
                    path_part(&grant)
                ),
                None,
            )?;
            if out.json {
                out.print_json(&json!({"revoked": grant}));
            } else {
                say!("revoked {grant}");
            }
            Ok(ExitCode::SUCCESS)
        }
        NetworkCommand::Requests {
            sandbox,
            follow,
            state,
        } => {
            let mut path = format!("/api/sandbox/{}/network/requests", path_part(&sandbox));
            let mut query = Vec::new();
            if let Some(state) = state {
                query.push(format!("state={state}"));
            }
            if follow {
                query.push("follow=true".into());
            }
            if !query.is_empty() {
                path = format!("{path}?{}", query.join("&"));
            }
            let print = |r: &Value| {
                if out.json {
                    say!("{r}");
                } else {
                    request_line(r);
                }
            };
            if follow {
                c.events(&path, |r| {
                    print(&r);
                    true
                })?;
            } else {
                let v = c.call("GET", &path, None)?;
                if out.json {
                    out.print_json(&v);
                } else {
                    v["requests"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .for_each(print);
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        NetworkCommand::Approve {
            sandbox,
            request,
            ttl_seconds,
        } => {
            let body = match ttl_seconds {
                Some(ttl) => json!({"ttlSeconds": ttl}),
                None => json!({}),
            };
            decide_request(c, out, &sandbox, &request, "approve", &body)
        }
        NetworkCommand::Deny { sandbox, request } => {
            decide_request(c, out, &sandbox, &request, "deny", &json!({}))
        }
        NetworkCommand::Explain {
            sandbox,
            destination,
        } => {
            let v = c.call(
                "GET",
                &format!(
                    "/api/sandbox/{}/network/explain?dest={}",
                    path_part(&sandbox),
                    path_part(&destination)
                ),
                None,
            )?;
            if out.json {
                out.print_json(&v);
            } else {
                let verdict = if v["allowed"] == true {
                    "allowed"
                } else {
                    "denied"
                };
                say!(
                    "{} -> {verdict} [{}]: {}",
                    s(&v["destination"]),
                    s(&v["reason"]),
                    s(&v["rule"])
                );
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `POST .../requests/{request}/{action}` (`approve`, `deny`) with
/// `body`, and the request as decided, printed.
fn decide_request(
    c: &Client,
    out: &Output,
    sandbox: &str,
    request: &str,
    action: &str,
    body: &Value,
) -> Result<ExitCode, ApiFailure> {
    let v = c.call(
        "POST",
        &format!(
            "/api/sandbox/{}/network/requests/{}/{action}",
            path_part(sandbox),
            path_part(request)
        ),
        Some(body),
    )?;
    if out.json {
        out.print_json(&v);
    } else {
        request_line(&v);
    }
    Ok(ExitCode::SUCCESS)
}

/// One access request, for people: id, state, target, attempts and how
/// it was approved.
fn request_line(r: &Value) {
    let how = match (s(&r["state"]), r["grantId"].as_str()) {
        ("approved", Some(g)) => format!("by grant {g}"),
        ("approved", None) => "in the allow list".to_string(),
        _ => String::new(),
    };
    let port = r["port"]
        .as_u64()
        .map(|p| format!(" port {p}"))
        .unwrap_or_default();
    say!(
        "{}  {:<8}  {:<7}  {:<32}  {} attempt(s){port}  {how}",
        s(&r["id"]),
        s(&r["state"]),
        s(&r["kind"]),
        s(&r["target"]),
        r["attempts"]
    );
}

/// One record of a flow log, on a line: id, start, end (`open` while
/// open), protocol, verdict, reason, source, destination, name (and from
/// where), bytes out and in, and who carried it.
fn flow_line(f: &Value) {
    let at = |addr: &Value, port: &Value| match (addr.as_str(), port.as_u64()) {
        (Some(a), Some(p)) if a.contains(':') => format!("[{a}]:{p}"),
        (Some(a), Some(p)) => format!("{a}:{p}"),
        (Some(a), None) => a.to_string(),
        _ => String::new(),
    };
    let name = match (f["name"].as_str(), f["nameSource"].as_str()) {
        (Some(n), Some(from)) => format!("{n} ({from})"),
        (Some(n), None) => n.to_string(),
        _ => "-".to_string(),
    };
    let end = f["endMs"]
        .as_u64()
        .map_or_else(|| "open".to_string(), |e| e.to_string());
    say!(
        "{:>5}  {}  {:<13}  {:<6}  {:<7}  {:<32}  {} -> {}  {}  out {} in {}  {}",
        f["id"],
        f["startMs"],
        end,
        s(&f["protocol"]),
        s(&f["verdict"]),
        s(&f["reason"]),
        at(&f["source"], &f["sourcePort"]),
        at(&f["destination"], &f["port"]),
        name,
        f["bytesOut"],
        f["bytesIn"],
        s(&f["via"]),
    );
}

/// One grant, for people: id, target, time left, end and reason.
fn grant_line(g: &Value) {
    say!(
        "{}  {:<32}  {:>7}s left  until {}  {}",
        s(&g["id"]),
        s(&g["target"]),
        g["secondsLeft"],
        s(&g["expiresAt"]),
        g["reason"].as_str().unwrap_or_default()
    );
}

/// Runs `sandgate admin runner ...`.
fn runner_admin(c: &Client, cmd: RunnerCommand, out: &Output) -> Result<(), ApiFailure> {
    let line = |r: &Value| {
        let slots = match (r["used"].as_u64(), r["slots"].as_u64()) {
            (Some(used), Some(slots)) => format!("{used}/{slots}"),
            _ => "-".into(),
        };
        vec![
            s(&r["name"]).to_string(),
            s(&r["state"]).to_string(),
            slots,
            r["sandboxes"].to_string(),
        ]
    };
    let header = ["NAME", "STATE", "SLOTS USED", "SANDBOXES"];
    let v = match cmd {
        RunnerCommand::List => c.call("GET", "/api/admin/runners", None)?,
        RunnerCommand::Token { name, labels } => {
            let labels: std::collections::BTreeMap<String, String> = labels.into_iter().collect();
            let v = c.call(
                "POST",
                "/api/admin/runners",
                Some(&json!({ "name": name, "labels": labels })),
            )?;
            if out.json {
                out.print_json(&v);
            } else {
                say!("{}", s(&v["token"]));
            }
            return Ok(());
        }
        RunnerCommand::Drain { name, undo } => c.call(
            "PUT",
            &format!("/api/admin/runners/{}/draining", path_part(&name)),
            Some(&json!({"draining": !undo})),
        )?,
    };
    if out.json {
        out.print_json(&v);
    } else if v.is_array() {
        table(&header, rows(&v, line));
    } else {
        table(&header, vec![line(&v)]);
    }
    Ok(())
}

/// Runs `sandgate admin ...`.
pub fn admin(cli: AdminCli, out: &Output) -> ExitCode {
    let c = match client(&cli.api) {
        Ok(c) => c,
        Err(f) => return failure(out, &f),
    };
    let cmd = match cli.command {
        AdminCommand::Org(cmd) => cmd,
        AdminCommand::Runner(cmd) => {
            return match runner_admin(&c, cmd, out) {
                Ok(()) => ExitCode::SUCCESS,
                Err(f) => failure(out, &f),
            }
        }
    };
    let org_line = |v: &Value| {
        let egress: Vec<&str> = ["ipv4", "ipv6"]
            .iter()
            .filter_map(|f| v["egressAddress"][f].as_str())
            .collect();
        if egress.is_empty() {
            say!("{}  {}  tier {}", s(&v["id"]), s(&v["name"]), v["tier"]);
        } else {
            say!(
                "{}  {}  tier {}  egress {}",
                s(&v["id"]),
                s(&v["name"]),
                v["tier"],
                egress.join(" ")
            );
        }
    };
    let result = match cmd {
        OrgCommand::Create { name, tier } => c
            .call(
                "POST",
                "/api/admin/organizations",
                Some(&json!({"name": name, "tier": tier})),
            )
            .map(|v| {
                if out.json {
                    out.print_json(&v)
                } else {
                    org_line(&v)
                }
            }),
        OrgCommand::List => c.call("GET", "/api/admin/organizations", None).map(|v| {
            if out.json {
                out.print_json(&v);
            } else {
                let rows = rows(&v, |o| {
                    vec![
                        s(&o["id"]).to_string(),
                        s(&o["name"]).to_string(),
                        o["tier"].to_string(),
                    ]
                });
                table(&["ID", "NAME", "TIER"], rows);
            }
        }),
        OrgCommand::Tier { organization, tier } => c
            .call(
                "PUT",
                &format!("/api/admin/organizations/{}/tier", path_part(&organization)),
                Some(&json!({"tier": tier})),
            )
            .map(|v| {
                if out.json {
                    out.print_json(&v)
                } else {
                    org_line(&v["organization"]);
                    say!("{} running sandboxes re-applied", v["reapplied"]);
                }
            }),
        OrgCommand::EgressAddress {
            organization,
            ipv4,
            ipv6,
            clear,
        } => {
            let path = format!(
                "/api/admin/organizations/{}/egress-address",
                path_part(&organization)
            );
            let answer = if clear {
                c.call("DELETE", &path, None)
            } else {
                let mut body = serde_json::Map::new();
                for (field, value) in [("ipv4", ipv4), ("ipv6", ipv6)] {
                    if let Some(v) = value {
                        body.insert(field.into(), json!(v));
                    }
                }
                c.call("PUT", &path, Some(&Value::Object(body)))
            };
            answer.map(|v| {
                if out.json {
                    out.print_json(&v)
                } else {
                    org_line(&v["organization"]);
                    say!("{} running sandboxes re-applied", v["reapplied"]);
                }
            })
        }
        OrgCommand::Key {
            organization,
            scopes,
        } => c
            .call(
                "POST",
                &format!("/api/admin/organizations/{}/keys", path_part(&organization)),
                (!scopes.is_empty())
                    .then(|| json!({ "scopes": scopes }))
                    .as_ref(),
            )
            .map(|v| {
                if out.json {
                    out.print_json(&v)
                } else {
                    say!("{}", s(&v["key"]));
                    let scopes: Vec<&str> = v["scopes"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|x| x.as_str())
                        .collect();
                    eprintln!(
                        "key {} of {} ({}): shown once, keep it now",
                        s(&v["id"]),
                        s(&v["organizationId"]),
                        scopes.join(", ")
                    );
                }
            }),
        OrgCommand::Revoke { organization, key } => c
            .call(
                "DELETE",
                &format!(
                    "/api/admin/organizations/{}/keys/{}",
                    path_part(&organization),
                    path_part(&key)
                ),
                None,
            )
            .map(|_| {
                if out.json {
                    out.print_json(&json!({"revoked": key}))
                } else {
                    say!("revoked {key}")
                }
            }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => failure(out, &f),
    }
}

/// `NAME=VALUE` of `--label`.
fn parse_label(v: &str) -> Result<(String, String), String> {
    let (k, value) = v
        .split_once('=')
        .ok_or_else(|| format!("{v:?}: give NAME=VALUE"))?;
    Ok((k.to_string(), value.to_string()))
}

/// Snapshots sandboxes start from.
#[derive(Debug, Args)]
pub struct SnapshotCli {
    #[command(flatten)]
    api: ApiArgs,
    #[command(subcommand)]
    command: SnapshotCommand,
}

/// What to do with snapshots.
#[derive(Debug, Subcommand)]
pub enum SnapshotCommand {
    /// Make a snapshot on every runner (operator token), from an OCI
    /// image (`--image`: each runner pulls it from a registry the operator
    /// configured, `[[images.registries]]`) or a root filesystem tar
    /// archive (`--file`: what `docker export` writes, plain or gzip), or
    /// Debian's own packages (`--debian`: apt, python3 with pip, curl,
    /// node with npm; built here with `mmdebstrap` from Debian's mirror,
    /// once, then taken from the cache,
    /// `SANDGATE_CACHE` or /var/cache/sandgate). A snapshot of that name is
    /// replaced, unless a sandbox uses it.
    #[command(group(clap::ArgGroup::new("source").required(true).args(["image", "file", "debian"])))]
    Create {
        /// Its name (what `sandbox create --snapshot` names).
        name: String,
        /// The image: `python:3.12-slim`, `registry.example.com/team/tool:1.2`,
        /// or pinned, `...@sha256:...`.
        #[arg(long)]
        image: Option<String>,
        /// A root filesystem tar archive, plain or gzip.
        #[arg(long, value_name = "PATH")]
        file: Option<std::path::PathBuf>,
        /// A Debian root filesystem, built from Debian's packages.
        #[arg(long)]
        debian: bool,
        /// With `--debian`: the release.
        #[arg(long, requires = "debian", default_value = sandgate_images::debian::SUITE)]
        suite: String,
        /// With `--debian`: more packages, beyond the default ones.
        #[arg(
            long,
            requires = "debian",
            value_delimiter = ',',
            value_name = "PACKAGE,..."
        )]
        include: Vec<String>,
    },
    /// List the snapshots and the runners that hold each.
    List,
    /// Remove a snapshot from every runner (operator token); refused
    /// while a sandbox uses it.
    Delete {
        /// Its name.
        name: String,
    },
}

/// The archive a snapshot is made of: `file`, or else the Debian root
/// filesystem of `suite` with the default packages and `include`, built
/// here (once, then from the cache).
fn archive(
    file: Option<std::path::PathBuf>,
    suite: &str,
    include: &[String],
    quiet: bool,
) -> Result<std::fs::File, ApiFailure> {
    let failed = |status: u16, code: &str, message: String| ApiFailure {
        status,
        code: code.into(),
        message,
        body: Value::Null,
    };
    if let Some(path) = file {
        return std::fs::File::open(&path).map_err(|e| {
            failed(
                400,
                "invalid_file",
                format!("the archive {}: {e}", path.display()),
            )
        });
    }
    if !quiet {
        eprintln!("building the Debian root filesystem ({suite}; once, then from the cache)");
    }
    let extra: Vec<&str> = include.iter().map(String::as_str).collect();
    let tarball = sandgate_images::debian::rootfs_tarball(suite, &extra).map_err(|e| {
        let message = format!("the Debian root filesystem: {e}");
        if e.kind() == std::io::ErrorKind::InvalidInput {
            failed(400, "invalid_package", message)
        } else {
            failed(0, "debian_build_failed", message)
        }
    })?;
    std::fs::File::open(&tarball).map_err(|e| {
        failed(
            0,
            "debian_build_failed",
            format!("{}: {e}", tarball.display()),
        )
    })
}

/// Runs `sandgate snapshot ...`.
pub fn snapshot(cli: SnapshotCli, out: &Output) -> ExitCode {
    let c = match client(&cli.api) {
        Ok(c) => c,
        Err(f) => return failure(out, &f),
    };
    let deleted = match &cli.command {
        SnapshotCommand::Delete { name } => Some(name.clone()),
        _ => None,
    };
    let result = match cli.command {
        SnapshotCommand::Create {
            name,
            image: Some(image),
            ..
        } => c.call(
            "POST",
            "/api/snapshots",
            Some(&json!({"name": name, "image": image})),
        ),
        SnapshotCommand::Create {
            name,
            file,
            suite,
            include,
            ..
        } => archive(file, &suite, &include, out.json).and_then(|f| {
            c.upload(
                &format!("/api/snapshots/{}", path_part(&name)),
                f,
                "application/x-tar",
            )
        }),
        SnapshotCommand::List => c.call("GET", "/api/snapshots", None),
        SnapshotCommand::Delete { name } => c.call(
            "DELETE",
            &format!("/api/snapshots/{}", path_part(&name)),
            None,
        ),
    };
    let runners = |v: &Value| {
        v["runners"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect::<Vec<_>>()
            .join(",")
    };
    match result {
        Ok(v) if out.json => {
            out.print_json(&v);
            ExitCode::SUCCESS
        }
        Ok(v) if v.is_array() => {
            let cells = |v: &Value| vec![s(&v["name"]).to_string(), runners(v)];
            table(&["NAME", "RUNNERS"], rows(&v, cells));
            ExitCode::SUCCESS
        }
        Ok(v) => {
            match deleted {
                Some(name) => say!("snapshot {name} deleted"),
                None if v["image"].is_null() => say!(
                    "snapshot {} made from the archive on {}",
                    s(&v["name"]),
                    runners(&v)
                ),
                None => say!(
                    "snapshot {} made from {} ({}, {} layers) on {}",
                    s(&v["name"]),
                    s(&v["image"]),
                    s(&v["digest"]),
                    v["layers"],
                    runners(&v)
                ),
            }
            ExitCode::SUCCESS
        }
        Err(f) => failure(out, &f),
    }
}

/// Secrets of the key's organization.
#[derive(Debug, Args)]
pub struct SecretCli {
    #[command(flatten)]
    api: ApiArgs,
    #[command(subcommand)]
    command: SecretCommand,
}

/// What to do with secrets.
#[derive(Debug, Subcommand)]
pub enum SecretCommand {
    /// Store a secret: its value is read from standard input (or
    /// `--value-file`), never from an argument, and never shown again.
    Create {
        /// Its name, the environment variable a sandbox holding it sees
        /// (`A-Z`, `0-9`, `_`).
        name: String,
        /// A host it is for: a name or a `*.` wildcard (repeatable).
        #[arg(long = "host", value_name = "HOST", required = true)]
        hosts: Vec<String>,
        /// Read the value from this file instead of standard input.
        #[arg(long, value_name = "FILE")]
        value_file: Option<std::path::PathBuf>,
    },
    /// List the secrets: names and hosts, never values.
    List,
    /// Remove a secret (refused while a sandbox holds it).
    Delete {
        /// Its name.
        name: String,
    },
}

/// The value of a secret: the file's, or standard input's, without its
/// final line break.
fn secret_value(file: Option<&std::path::Path>) -> Result<String, ApiFailure> {
    use std::io::Read;
    let mut text = String::new();
    let read = match file {
        Some(f) => std::fs::File::open(f).and_then(|mut f| f.read_to_string(&mut text)),
        None => std::io::stdin().read_to_string(&mut text),
    };
    read.map_err(|e| ApiFailure {
        status: 400,
        code: "invalid_secret_value".into(),
        message: format!("reading the secret's value: {e}"),
        body: Value::Null,
    })?;
    let trimmed = text.strip_suffix('\n').unwrap_or(&text);
    Ok(trimmed.strip_suffix('\r').unwrap_or(trimmed).to_string())
}

/// Runs a secret subcommand.
pub fn secret(cli: SecretCli, out: &Output) -> ExitCode {
    let c = match client(&cli.api) {
        Ok(c) => c,
        Err(f) => return failure(out, &f),
    };
    let result = match cli.command {
        SecretCommand::Create {
            name,
            hosts,
            value_file,
        } => secret_value(value_file.as_deref()).and_then(|value| {
            c.call(
                "POST",
                "/api/secrets",
                Some(&json!({"name": name, "value": value, "hosts": hosts})),
            )
        }),
        SecretCommand::List => c.call("GET", "/api/secrets", None),
        SecretCommand::Delete { name } => c.call(
            "DELETE",
            &format!("/api/secrets/{}", path_part(&name)),
            None,
        ),
    };
    match result {
        Ok(v) if out.json => {
            out.print_json(&v);
            ExitCode::SUCCESS
        }
        Ok(v) if v.is_array() => {
            let cells = |s: &Value| {
                vec![
                    s["name"].as_str().unwrap_or_default().to_string(),
                    s["hosts"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(Value::as_str)
                        .collect::<Vec<_>>()
                        .join(","),
                    s["createdAt"].as_str().unwrap_or_default().to_string(),
                ]
            };
            table(&["NAME", "HOSTS", "CREATED"], rows(&v, cells));
            ExitCode::SUCCESS
        }
        Ok(v) => {
            if let Some(name) = v["name"].as_str() {
                say!("secret {name} stored (its value is not shown again)");
            }
            ExitCode::SUCCESS
        }
        Err(f) => failure(out, &f),
    }
}
