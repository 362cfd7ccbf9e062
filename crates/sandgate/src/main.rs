//! `sandgate`: one binary for the server, the API client and the
//! operator's commands.
//!
//! Exit status: 0 on success, 2 for input the user can fix (bad lists, an
//! unknown tier, a bad destination, a bad configuration file), 1 for
//! anything else. With `--json`, errors are printed on standard output as
//! `{"error": {"code", "message", ...}}`, the shape the API uses.

mod api_cmd;
mod client;
mod config;
#[cfg(feature = "lab")]
mod demo;
#[cfg(feature = "lab")]
mod lab_cmd;
mod output;
mod policy_cmd;
mod runner_cmd;
mod server_cmd;

use clap::{CommandFactory, Parser, Subcommand};

use std::path::PathBuf;
use std::process::ExitCode;

/// sandgate: sandboxes whose network egress is enforced in the kernel.
#[derive(Debug, Parser)]
#[command(name = "sandgate", version, about)]
struct Cli {
    /// Operator configuration file (TOML).
    #[arg(long, global = true, env = "SANDGATE_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,

    /// Print machine-readable JSON instead of text for people.
    #[arg(long, global = true)]
    json: bool,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Dry-run the egress policy: resolve settings, explain destinations,
    /// show the essential-services catalog. Sends nothing.
    #[command(subcommand)]
    Policy(policy_cmd::PolicyCommand),
    /// The lab of network namespaces that tests and the demo run in.
    #[cfg(feature = "lab")]
    #[command(subcommand)]
    Lab(lab_cmd::LabCommand),
    /// Run the API, the runner and the DNS service on this host (or the
    /// API alone, over a `sandgate runner`).
    Server(server_cmd::ServerArgs),
    /// Run this host's runner alone, for a `sandgate server --runner-url`
    /// (the runner needs root; the API then does not).
    Runner(runner_cmd::RunnerArgs),
    /// Sandboxes of an organization, through the API.
    Sandbox(api_cmd::SandboxCli),
    /// Secrets of an organization, through the API: stored sealed, given
    /// to sandboxes as placeholders.
    Secret(api_cmd::SecretCli),
    /// Snapshots sandboxes start from, made from OCI images, through the
    /// API (made and removed with the operator token).
    Snapshot(api_cmd::SnapshotCli),
    /// Organizations, tiers and keys, through the API (operator token).
    Admin(api_cmd::AdminCli),
    /// Run the main job: a lab, a server in it, organizations of every
    /// tier and sandboxes in every mode, probed; prints expected against
    /// observed.
    #[cfg(feature = "lab")]
    Demo,
    /// Print the completion script of a shell for sandgate (e.g. `sandgate
    /// completions bash > /etc/bash_completion.d/sandgate`).
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write sandgate's manual pages (one per command, section 1) into a
    /// directory, or print the main page (roff, for `man -l -`).
    Man {
        /// The directory to write `sandgate.1`, `sandgate-sandbox.1`, ...
        /// into (made if missing).
        #[arg(long, value_name = "DIR")]
        out_dir: Option<PathBuf>,
    },
}

/// Writes what `write` produces to standard output or `out_dir`; an I/O
/// error is the host's (1).
fn emit(write: impl FnOnce() -> std::io::Result<()>, what: &str) -> ExitCode {
    match write() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: writing {what}: {e}");
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return output::argument_error(e),
    };
    // Generated from the command line's own definition; no configuration.
    match &cli.command {
        Command::Completions { shell } => {
            return emit(
                || {
                    let mut out = std::io::stdout();
                    clap_complete::generate(*shell, &mut Cli::command(), "sandgate", &mut out);
                    std::io::Write::flush(&mut out)
                },
                "the completion script",
            )
        }
        Command::Man { out_dir } => {
            return emit(
                || match out_dir {
                    Some(dir) => {
                        std::fs::create_dir_all(dir)?;
                        clap_mangen::generate_to(Cli::command(), dir)
                    }
                    None => clap_mangen::Man::new(Cli::command()).render(&mut std::io::stdout()),
                },
                "the manual pages",
            )
        }
        _ => {}
    }
    let out = output::Output::new(cli.json);
    let config = match config::Config::load(cli.config.as_deref()) {
        Ok(c) => c,
        Err(e) => return out.error(&e),
    };
    match cli.command {
        Command::Policy(cmd) => policy_cmd::run(cmd, &config, &out),
        #[cfg(feature = "lab")]
        Command::Lab(cmd) => lab_cmd::run(cmd, &out),
        Command::Server(args) => server_cmd::run(args, &config, &out),
        Command::Runner(args) => runner_cmd::run(args, &config, &out),
        Command::Sandbox(cli) => api_cmd::sandbox(cli, &out),
        Command::Secret(cli) => api_cmd::secret(cli, &out),
        Command::Snapshot(cli) => api_cmd::snapshot(cli, &out),
        Command::Admin(cli) => api_cmd::admin(cli, &out),
        #[cfg(feature = "lab")]
        Command::Demo => demo::run(&config, &out),
        Command::Completions { .. } | Command::Man { .. } => {
            unreachable!("answered above, before the configuration is read")
        }
    }
}
