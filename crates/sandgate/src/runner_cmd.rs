//! `sandgate runner`: this host's runner (slots, the kernel's rules, the
//! DNS service, the runtime) alone, served to a `sandgate server
//! --runner-url`: over TLS with its certificate (`--tls-cert`,
//! `--tls-key`) on any address, or in plain HTTP on a loopback address.
//! The runner needs root; the API then does not.

use crate::config::Config;
use crate::output::{say, Output};
use crate::server_cmd::{init_logging, read_secret, shutdown, HostArgs, LogArgs};
use sandgate_contract::Runner;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

/// How to run the runner.
#[derive(Debug, clap::Args)]
pub struct RunnerArgs {
    /// Address the runner listens on: any with `--tls-cert`, a loopback
    /// address without (its API then reaches it over plain HTTP).
    #[arg(long, env = "SANDGATE_RUNNER_LISTEN", default_value = "127.0.0.1:8181")]
    pub listen: SocketAddr,
    /// The runner's certificate chain (PEM), signed by the CA its APIs
    /// are given (`sandgate server --runner-ca`), for the name or address
    /// they reach it at: the runner then serves over TLS.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The key of that certificate (PEM; readable by root only).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// The runtime's snapshots and sandboxes, the dataplane's state (in
    /// `<data-dir>/runner`).
    #[arg(long, env = "SANDGATE_DATA_DIR", default_value = "/var/lib/sandgate")]
    pub data_dir: PathBuf,
    /// A file holding the token its API sends (at least 16 characters);
    /// with `--api`, the token the operator issued it to register with
    /// (`sandgate admin runner token NAME`).
    #[arg(long, value_name = "FILE")]
    pub token_file: PathBuf,
    /// Register with the API at this URL (`https://`, or `http://` to a
    /// loopback address), sending a heartbeat every few seconds: the API
    /// (started with `--register-runners`) then places sandboxes here.
    #[arg(long, value_name = "URL", requires = "name")]
    pub api: Option<String>,
    /// The name its token was issued under.
    #[arg(long, value_name = "NAME", requires = "api")]
    pub name: Option<String>,
    /// The URL the API reaches this runner at (default: the scheme and
    /// the address it listens on).
    #[arg(long, value_name = "URL", requires = "api")]
    pub advertise: Option<String>,
    /// The CA (PEM) that signed an `https://` API's certificate: the only
    /// roots it is checked against.
    #[arg(long, value_name = "FILE", requires = "api")]
    pub api_ca: Option<PathBuf>,
    /// This host's runner.
    #[command(flatten)]
    pub host: HostArgs,
    /// Its logs.
    #[command(flatten)]
    pub log: LogArgs,
}

/// Runs the runner until SIGINT or SIGTERM.
pub fn run(args: RunnerArgs, config: &Config, out: &Output) -> ExitCode {
    init_logging(&args.log);
    let failed = |what: &str, e: &dyn std::fmt::Display| {
        eprintln!("sandgate runner: {what}: {e}");
        ExitCode::FAILURE
    };
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => {
            let read = |path: &PathBuf| {
                std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))
            };
            match read(cert)
                .and_then(|c| Ok((c, read(key)?)))
                .and_then(|(c, k)| sandgate_remote::service::tls_config(&c, &k))
            {
                Ok(tls) => Some(tls),
                Err(e) => return failed("configuration", &e),
            }
        }
        _ => None,
    };
    if tls.is_none() && !args.listen.ip().is_loopback() {
        return failed(
            "configuration",
            &format!(
                "--listen {}: without --tls-cert a runner listens on a loopback address only (its token and the policies would cross the network in the clear)",
                args.listen
            ),
        );
    }
    let token = match read_secret(&args.token_file, "the runner's token") {
        Ok(t) => t,
        Err(e) => return failed("configuration", &e),
    };
    let mut runner_cfg = match args.host.runner_config(&args.data_dir) {
        Ok(c) => c,
        Err(e) => return failed("configuration", &e),
    };
    config.apply_images(&mut runner_cfg);
    let policy = Arc::new(config.policy.clone());
    if runner_cfg.warm_disk.is_none() {
        runner_cfg.warm_disk = sandgate_runner::usual_disk(&policy);
    }
    let runner = match sandgate_runner::Runner::start(
        runner_cfg,
        policy,
        Arc::new(config.catalog.clone()),
    ) {
        Ok(r) => Arc::new(r),
        Err(e) => return failed("starting", &e),
    };
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => return failed("runtime", &e),
    };
    // Registered, it is called with a token of its own, derived from the
    // one it registers with (the same at each start).
    let call_token = match &args.api {
        Some(_) => sandgate_remote::call_token(&token),
        None => token.clone(),
    };
    let api_ca = match args.api_ca.as_ref().map(std::fs::read).transpose() {
        Ok(ca) => ca,
        Err(e) => return failed("configuration", &format!("--api-ca: {e}")),
    };
    let served: Arc<dyn Runner> = runner;
    let beating = served.clone();
    let result = rt.block_on(async {
        let router = sandgate_remote::service::router(served, &call_token)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string()))?;
        let listener = std::net::TcpListener::bind(args.listen)?;
        let addr = listener.local_addr()?;
        let scheme = if tls.is_some() { "https" } else { "http" };
        if let (Some(api), Some(name)) = (&args.api, &args.name) {
            let url = args
                .advertise
                .clone()
                .unwrap_or_else(|| format!("{scheme}://{addr}"));
            sandgate_remote::heartbeat::start(
                sandgate_remote::heartbeat::Registration {
                    api: api.clone(),
                    api_ca,
                    token: token.clone(),
                    name: name.clone(),
                    url,
                    call_token: call_token.clone(),
                },
                beating,
            )
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string()))?;
        }
        if out.json {
            out.print_json(
                &serde_json::json!({ "listening": addr.to_string(), "tls": tls.is_some() }),
            );
        } else {
            say!("sandgate runner listening on {scheme}://{addr}");
        }
        sandgate_remote::service::serve(router, listener, tls, shutdown()).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => failed("stopped", &e),
    }
}
