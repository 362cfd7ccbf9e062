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
mod demo;
mod lab_cmd;
mod output;
mod policy_cmd;
mod runner_cmd;
mod server_cmd;

use clap::{Parser, Subcommand};

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
    /// Organizations, tiers and keys, through the API (operator token).
    Admin(api_cmd::AdminCli),
    /// Run the main job: a lab, a server in it, organizations of every
    /// tier and sandboxes in every mode, probed; prints expected against
    /// observed.
    Demo,
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return output::argument_error(e),
    };
    let out = output::Output::new(cli.json);
    let config = match config::Config::load(cli.config.as_deref()) {
        Ok(c) => c,
        Err(e) => return out.error(&e),
    };
    match cli.command {
        Command::Policy(cmd) => policy_cmd::run(cmd, &config, &out),
        Command::Lab(cmd) => lab_cmd::run(cmd, &out),
        Command::Server(args) => server_cmd::run(args, &config, &out),
        Command::Runner(args) => runner_cmd::run(args, &config, &out),
        Command::Sandbox(cli) => api_cmd::sandbox(cli, &out),
        Command::Admin(cli) => api_cmd::admin(cli, &out),
        Command::Demo => demo::run(&config, &out),
    }
}
