//! `sandgate lab up|down`: the lab of REQUIREMENTS.md section 5, by hand.

use crate::output::{say, Output};
use clap::Subcommand;
use nix::sys::signal::{SigSet, Signal};
use sandgate_lab::{addrs, Lab, LAB_PREFIX};
use sandgate_netns::Netns;
use sandgate_policy::{ErrorCode, PolicyError};
use std::process::ExitCode;

/// The lab subcommands.
#[derive(Debug, Subcommand)]
pub enum LabCommand {
    /// Build a lab and serve it until interrupted (Ctrl-C or SIGTERM), then
    /// remove it.
    Up,
    /// Remove every lab namespace on this machine, live or left over.
    Down,
}

fn lab_error(e: std::io::Error) -> PolicyError {
    PolicyError::new(ErrorCode::InvalidConfig, format!("lab: {e}"))
}

/// Runs a lab subcommand.
pub fn run(cmd: LabCommand, out: &Output) -> ExitCode {
    let result = match cmd {
        LabCommand::Up => up(out),
        LabCommand::Down => down(out),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => out.error(&e),
    }
}

fn up(out: &Output) -> Result<(), PolicyError> {
    // Block the signals before any thread starts, so that every thread
    // inherits the mask and this one receives them.
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGINT);
    signals.add(Signal::SIGTERM);
    signals.thread_block().map_err(|e| lab_error(e.into()))?;
    let lab = Lab::up().map_err(lab_error)?;
    let (host, world) = (
        lab.host().name().to_string(),
        lab.world().name().to_string(),
    );
    if out.json {
        out.print_json(&serde_json::json!({
            "host": host,
            "world": world,
            "servers": [addrs::SERVER4.to_string(), addrs::SERVER6.to_string()],
        }));
    } else {
        say!("lab up: host namespace {host}, world namespace {world}");
        say!(
            "  world servers on {} and {} (TCP echo {}, TCP stream {}, UDP echo {})",
            addrs::SERVER4,
            addrs::SERVER6,
            addrs::TCP_ECHO,
            addrs::TCP_STREAM,
            addrs::UDP_ECHO
        );
        say!("  try: ip netns exec {host} bash");
        say!("  Ctrl-C removes it.");
    }
    let _ = signals.wait();
    drop(lab);
    if !out.json {
        say!("lab down");
    }
    Ok(())
}

fn down(out: &Output) -> Result<(), PolicyError> {
    let names = Netns::list(LAB_PREFIX).map_err(lab_error)?;
    for name in &names {
        Netns::delete_name(name).map_err(lab_error)?;
    }
    if out.json {
        out.print_json(&serde_json::json!({ "removed": names }));
    } else {
        say!("removed {} lab namespaces", names.len());
    }
    Ok(())
}
