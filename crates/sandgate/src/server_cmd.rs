//! `sandgate server`: the API, the runner and the DNS service in one
//! process, on the embedded SQLite store; or the API alone, over a
//! `sandgate runner` (`--runner-url`), on SQLite or on a PostgreSQL
//! database that several replicas share (`--database`).

use crate::config::Config;
use crate::output::{say, Output};
use sandgate_dns::Upstream;
use sandgate_runner::RunnerConfig;
use sandgate_server::{Server, ServerConfig};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// How to run the server.
#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("remote").args(["runner_url", "runners"])))]
pub struct ServerArgs {
    /// Address the API listens on.
    #[arg(long, env = "SANDGATE_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// The store, the runtime's snapshots and sandboxes, the dataplane's
    /// state.
    #[arg(long, env = "SANDGATE_DATA_DIR", default_value = "/var/lib/sandgate")]
    pub data_dir: PathBuf,
    /// The store's database: `postgres://USER@/DB?host=/run/postgresql`
    /// (a Unix socket) or `postgres://USER:PASSWORD@HOST/DB`, which every
    /// API replica names alike (default: SQLite in the data directory, one
    /// server). Give a password in `SANDGATE_DATABASE_URL` (an environment
    /// file), never on the command line.
    #[arg(long, env = "SANDGATE_DATABASE_URL", value_name = "URL", value_parser = parse_database)]
    pub database: Option<String>,
    /// A file holding the operator's token for the admin routes (or
    /// `SANDGATE_ADMIN_TOKEN`; never on the command line, where every local
    /// user could read it). At least 16 characters.
    #[arg(long, value_name = "FILE")]
    pub admin_token_file: Option<PathBuf>,
    /// A file holding the key that seals secrets at rest: 64 hexadecimal
    /// digits (`openssl rand -hex 32 > key; chmod 600 key`). Without it the
    /// server stores no secrets. Keep it apart from the store's backups.
    #[arg(long, value_name = "FILE", env = "SANDGATE_SECRETS_KEY_FILE")]
    pub secrets_key_file: Option<PathBuf>,
    /// Drive the `sandgate runner` at this URL (`https://` with
    /// `--runner-ca`, or `http://` to a loopback address) instead of a
    /// runner in this process: the API then needs no privilege. The
    /// runner's flags below are then the runner's.
    #[arg(long, value_name = "URL", requires = "runner_token_file")]
    pub runner_url: Option<String>,
    /// Drive several `sandgate runner`s, each named (repeat the flag, one
    /// per runner, in the order placement prefers on a tie): new
    /// sandboxes go to the one with the most free slots. Each must answer
    /// at the server's start; one that stops answering later has its
    /// sandboxes shown `unreachable` until it is back.
    #[arg(long = "runner", value_name = "NAME=URL", requires = "runner_token_file", value_parser = parse_runner)]
    pub runners: Vec<(String, String)>,
    /// The file holding the runners' token.
    #[arg(long, value_name = "FILE", requires = "remote")]
    pub runner_token_file: Option<PathBuf>,
    /// Take runners that register themselves (`sandgate runner --api`,
    /// with a token of `sandgate admin runner token NAME`). Without
    /// `--runner` or `--runner-url`, the server has no runner of its own
    /// (it needs no privilege) until one registers.
    #[arg(long)]
    pub register_runners: bool,
    /// The CA (PEM) that signed the runners' certificates: the only roots
    /// an `https://` runner is checked against.
    #[arg(long, value_name = "FILE")]
    pub runner_ca: Option<PathBuf>,
    /// This host's runner.
    #[command(flatten)]
    pub host: HostArgs,
    /// What `network test` probes when asked for nothing (`host:port`,
    /// repeatable; default: the reference's checks).
    #[arg(long = "probe-target", value_name = "HOST:PORT")]
    pub probe_targets: Vec<String>,
    /// Commands and network tests one organization may run at once (each
    /// holds a thread for its length); one more is answered 429 with
    /// `Retry-After`.
    #[arg(long, value_name = "N", default_value_t = 32, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub execs_per_org: u16,
    /// Its logs.
    #[command(flatten)]
    pub log: LogArgs,
}

/// The runner of this host: where it keeps its state and how it reaches
/// the network.
#[derive(Debug, clap::Args)]
pub struct HostArgs {
    /// Prefix of the slots' namespace names (one per server on a host).
    #[arg(long, default_value = "sg")]
    pub instance: String,
    /// The network namespace the dataplane and the DNS service work in
    /// (default: the server's own).
    #[arg(long)]
    pub host_netns: Option<String>,
    /// Upstream DNS resolvers (default: those of /etc/resolv.conf).
    #[arg(long = "upstream", value_name = "ADDR:PORT")]
    pub upstream: Vec<SocketAddr>,
    /// Prepared network slots kept ready.
    #[arg(long, default_value_t = 4)]
    pub warm_pool: usize,
    /// Let the host go on forwarding traffic that is no sandbox's (by
    /// default sandgate's ruleset drops it: a sandbox host is not a router
    /// for anything else).
    #[arg(long, env = "SANDGATE_FORWARD_OTHER")]
    pub forward_other: bool,
    /// Whether established TCP and UDP flows of sandboxes are forwarded by
    /// the TC-BPF fast path, past netfilter: `auto` (where the kernel can
    /// run it; the log says when it cannot), `on` (refuse to start
    /// without it; `--fast-path` alone) or `off` (docs/DATAPLANE.md, "The
    /// fast path").
    #[arg(
        long,
        env = "SANDGATE_FAST_PATH",
        value_name = "auto|on|off",
        default_value = "auto",
        num_args = 0..=1,
        default_missing_value = "on"
    )]
    pub fast_path: sandgate_runner::FastPathMode,
    /// The TCP ports on which a sandbox's connections to an address
    /// admitted by name go through the name-checking gateway (TLS server
    /// name, HTTP Host), comma-separated, or `none`.
    #[arg(long, value_name = "PORTS", default_value = "80,443", value_parser = parse_ports)]
    pub name_checked_ports: PortList,
    /// Let QUIC (UDP 443) reach addresses admitted by name. Refused by
    /// default: the gateway cannot read a QUIC connection's name, and
    /// browsers and HTTP/3 clients fall back to TCP.
    #[arg(long)]
    pub allow_quic_to_names: bool,
    /// The CA certificates (PEM) a destination's certificate must chain
    /// to when the gateway terminates a sandbox's TLS (names with HTTP
    /// rules).
    #[arg(
        long,
        value_name = "FILE",
        default_value = "/etc/ssl/certs/ca-certificates.crt"
    )]
    pub tls_roots: std::path::PathBuf,
}

fn parse_database(url: &str) -> Result<String, String> {
    sandgate_server::store::Backend::of(url).map(|_| url.to_string())
}

/// A list of ports (`80,443`), or none (`none`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortList(pub Vec<u16>);

fn parse_ports(text: &str) -> Result<PortList, String> {
    if text.trim() == "none" {
        return Ok(PortList(Vec::new()));
    }
    text.split(',')
        .map(|p| match p.trim().parse::<u16>() {
            Ok(0) | Err(_) => Err(format!(
                "{p:?} is not a port (1-65535); give ports separated by commas, or `none`"
            )),
            Ok(n) => Ok(n),
        })
        .collect::<Result<Vec<u16>, String>>()
        .map(PortList)
}

impl HostArgs {
    /// The runner's configuration, its files under `data_dir/runner`.
    pub fn runner_config(&self, data_dir: &std::path::Path) -> std::io::Result<RunnerConfig> {
        let timeout = Duration::from_secs(2);
        let upstream = if self.upstream.is_empty() {
            Upstream::system(timeout)?
        } else {
            Upstream {
                servers: self.upstream.clone(),
                timeout,
            }
        };
        let mut runner = RunnerConfig::new(data_dir.join("runner"), &self.instance, upstream);
        runner.host_netns = self.host_netns.clone();
        runner.warm_pool = self.warm_pool;
        runner.forward_other = self.forward_other;
        runner.fast_path = self.fast_path;
        runner.name_checked_ports = self.name_checked_ports.0.clone();
        runner.deny_quic_to_names = !self.allow_quic_to_names;
        runner.tls_roots = self.tls_roots.clone();
        Ok(runner)
    }
}

/// A secret from `file` (trimmed): at least 16 characters.
pub fn read_secret(file: &std::path::Path, what: &str) -> std::io::Result<String> {
    let secret = std::fs::read_to_string(file)
        .map_err(|e| std::io::Error::new(e.kind(), format!("{what} ({}): {e}", file.display())))?
        .trim()
        .to_string();
    check_secret(&secret, what)?;
    Ok(secret)
}

fn check_secret(secret: &str, what: &str) -> std::io::Result<()> {
    if secret.len() < 16 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{what} must be at least 16 characters"),
        ));
    }
    Ok(())
}

/// The server's configuration from the arguments and the operator's file.
pub fn server_config(args: &ServerArgs, config: &Config) -> std::io::Result<ServerConfig> {
    let mut runner = args.host.runner_config(&args.data_dir)?;
    config.apply_images(&mut runner);
    let mut cfg = ServerConfig::new(
        args.data_dir.join("store"),
        runner,
        config.policy.clone(),
        config.catalog.clone(),
    );
    let token = match &args.admin_token_file {
        Some(file) => Some(read_secret(file, "the operator token")?),
        None => std::env::var("SANDGATE_ADMIN_TOKEN").ok(),
    };
    if let Some(t) = &token {
        check_secret(t, "the operator token")?;
    }
    cfg.admin_token = token;
    if let Some(file) = &args.secrets_key_file {
        let text = std::fs::read_to_string(file).map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("the secrets key ({}): {e}", file.display()),
            )
        })?;
        let key = sandgate_server::secrets::SecretsKey::parse(&text).map_err(|e| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("the secrets key ({}): {e}", file.display()),
            )
        })?;
        cfg.secrets_key = Some(key);
    }
    cfg.database = args.database.clone();
    cfg.execs_per_org = usize::from(args.execs_per_org);
    cfg.placement = config.placement.clone();
    if !args.probe_targets.is_empty() {
        cfg.probe_targets = args.probe_targets.clone();
    }
    Ok(cfg)
}

/// How a process logs.
#[derive(Debug, clap::Args)]
pub struct LogArgs {
    /// The form of the log lines on standard error: `human`, or `json`
    /// (one object a line, with the fields of its spans: a request's
    /// `id`, `method` and `path`).
    #[arg(long, env = "SANDGATE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Human)]
    pub log_format: LogFormat,
}

/// See [`LogArgs::log_format`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Lines for people.
    Human,
    /// One JSON object a line.
    Json,
}

/// Sends the logs to standard error in `args`' form, at `SANDGATE_LOG`'s
/// level (`info` by default; the `tracing` directives, e.g.
/// `sandgate_dns=debug`).
pub fn init_logging(args: &LogArgs) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SANDGATE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // Already set (a test that runs the server twice): keep that one.
    let _ = match args.log_format {
        LogFormat::Human => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// Runs the server until SIGINT or SIGTERM.
pub fn run(args: ServerArgs, config: &Config, out: &Output) -> ExitCode {
    init_logging(&args.log);
    let failed = |what: &str, e: &dyn std::fmt::Display| {
        eprintln!("sandgate server: {what}: {e}");
        ExitCode::FAILURE
    };
    let cfg = match server_config(&args, config) {
        Ok(c) => c,
        Err(e) => return failed("configuration", &e),
    };
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => return failed("runtime", &e),
    };
    // The runners apart from this process: named, or the one.
    let named: Vec<(String, String)> = match &args.runner_url {
        Some(url) => vec![(sandgate_server::fleet::MAIN.to_string(), url.clone())],
        None => args.runners.clone(),
    };
    let remote = match &args.runner_token_file {
        Some(file) if !named.is_empty() => {
            let token = match read_secret(file, "the runner's token") {
                Ok(t) => t,
                Err(e) => return failed("configuration", &e),
            };
            let ca = match args.runner_ca.as_ref().map(std::fs::read).transpose() {
                Ok(ca) => ca,
                Err(e) => return failed("configuration", &format!("--runner-ca: {e}")),
            };
            let mut runners: Vec<(String, std::sync::Arc<dyn sandgate_contract::Runner>)> =
                Vec::new();
            for (name, url) in named {
                match sandgate_remote::RemoteRunner::connect_with(
                    &url,
                    &token,
                    ca.as_deref(),
                    cfg.policy.clone(),
                ) {
                    Ok(r) => runners.push((name, std::sync::Arc::new(r))),
                    Err(e) => return failed(&format!("the runner {name}"), &e),
                }
            }
            match sandgate_server::fleet::Fleet::new(runners) {
                Ok(fleet) => Some(fleet),
                Err(e) => return failed("configuration", &format!("--runner: {e}")),
            }
        }
        _ => None,
    };
    let mut cfg = cfg;
    let mut remote = remote;
    if args.register_runners {
        let ca = match args.runner_ca.as_ref().map(std::fs::read).transpose() {
            Ok(ca) => ca,
            Err(e) => return failed("configuration", &format!("--runner-ca: {e}")),
        };
        let policy = cfg.policy.clone();
        cfg.connector = Some(sandgate_server::registry::Connector(std::sync::Arc::new(
            move |url: &str, token: &str| {
                sandgate_remote::RemoteRunner::connect_with(
                    url,
                    token,
                    ca.as_deref(),
                    policy.clone(),
                )
                .map(|r| std::sync::Arc::new(r) as std::sync::Arc<dyn sandgate_contract::Runner>)
            },
        )));
        // No runner of its own: those that register only.
        if remote.is_none() {
            remote = Some(sandgate_server::fleet::Fleet::empty());
        }
    }
    let result = rt.block_on(async {
        let (server, report) = match remote {
            Some(fleet) => Server::with_fleet(cfg, fleet).await?,
            None => Server::start(cfg).await?,
        };
        let listener = tokio::net::TcpListener::bind(args.listen).await?;
        let addr = listener.local_addr()?;
        if out.json {
            out.print_json(&serde_json::json!({
                "listening": addr.to_string(),
                "restored": { "running": report.running, "died": report.died, "lost": report.lost, "removed": report.removed },
            }));
        } else {
            say!(
                "sandgate server listening on http://{addr} ({} sandboxes running again, {} whose init died, {} lost, {} left-overs removed)",
                report.running.len(),
                report.died.len(),
                report.lost.len(),
                report.removed.len()
            );
        }
        server.serve(listener, shutdown()).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => failed("stopped", &e),
    }
}

/// Completes on SIGINT or SIGTERM.
pub async fn shutdown() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = int.recv() => {}
        _ = term.recv() => {}
    }
}

/// `NAME=URL` of `--runner`.
fn parse_runner(v: &str) -> Result<(String, String), String> {
    let (name, url) = v
        .split_once('=')
        .ok_or_else(|| format!("{v:?}: give NAME=URL"))?;
    sandgate_server::fleet::check_name(name)?;
    Ok((name.to_string(), url.to_string()))
}

#[cfg(test)]
mod tests {
    use super::HostArgs;
    use clap::Parser;
    use sandgate_runner::FastPathMode;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        host: HostArgs,
    }

    fn fast_path(args: &[&str]) -> Result<FastPathMode, String> {
        let argv = std::iter::once("sandgate").chain(args.iter().copied());
        Cli::try_parse_from(argv)
            .map(|c| c.host.fast_path)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn the_fast_path_switch_is_auto_unless_told_and_refuses_other_words() {
        // The environment variable, if a run sets it, would be the default.
        if std::env::var_os("SANDGATE_FAST_PATH").is_none() {
            assert_eq!(fast_path(&[]), Ok(FastPathMode::Auto));
        }
        assert_eq!(fast_path(&["--fast-path"]), Ok(FastPathMode::On));
        assert_eq!(fast_path(&["--fast-path", "on"]), Ok(FastPathMode::On));
        assert_eq!(fast_path(&["--fast-path=off"]), Ok(FastPathMode::Off));
        assert_eq!(fast_path(&["--fast-path", "auto"]), Ok(FastPathMode::Auto));
        let refused = fast_path(&["--fast-path=maybe"]).unwrap_err();
        assert!(
            refused.contains("the fast path is auto, on or off, not \"maybe\""),
            "{refused}"
        );
    }
}
