//! `sandgate policy ...`: the operator's dry-run commands.
//!
//! They run the same code as the API will (the policy crate), so they are
//! also how the policy is tested from outside.

use crate::config::Config;
use crate::output::{say, Output};
use clap::{Args, Subcommand};
use sandgate_policy::{
    CompiledPolicy, Destination, EffectivePolicy, PolicyError, SettingsRequest, StoredSettings,
    Tier,
};
use serde::Serialize;
use std::process::ExitCode;

/// The policy subcommands.
#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Resolve a tier and sandbox settings into the effective policy.
    Resolve(SettingsArgs),
    /// Whether a destination would be allowed, and by which rule.
    Explain {
        #[command(flatten)]
        settings: SettingsArgs,
        /// `ADDRESS_OR_NAME[:PORT]`; IPv6 with a port as `[2001:db8::1]:443`.
        #[arg(long, value_name = "DEST")]
        dest: String,
    },
    /// Show the essential-services catalog in effect (usual dotted names).
    Catalog,
}

/// A tier and the sandbox's network settings.
#[derive(Debug, Args)]
pub struct SettingsArgs {
    /// The organization's billing tier.
    #[arg(long)]
    tier: Tier,
    /// `networkAllowList`: comma-separated CIDRs or addresses.
    #[arg(long, value_name = "LIST")]
    network_allow_list: Option<String>,
    /// `domainAllowList`: comma-separated names or `*.` wildcards.
    #[arg(long, value_name = "LIST")]
    domain_allow_list: Option<String>,
    /// `networkBlockAll`: no egress at all.
    #[arg(long)]
    network_block_all: bool,
    /// `networkDenyList`: comma-separated CIDRs or addresses.
    #[arg(long, value_name = "LIST")]
    network_deny_list: Option<String>,
    /// `domainDenyList`: comma-separated names or `*.` wildcards.
    #[arg(long, value_name = "LIST")]
    domain_deny_list: Option<String>,
    /// `essentialServices: false`: the catalog off.
    #[arg(long)]
    no_essential_services: bool,
    /// `egressMbps`: the egress bandwidth asked for, Mbit/s.
    #[arg(long, value_name = "MBPS")]
    egress_mbps: Option<u32>,
    /// `transferQuotaMiB`: the transfer quota asked for, MiB a period.
    #[arg(long, value_name = "MIB")]
    transfer_quota_mib: Option<u32>,
    /// `maxConnections`: connections at once asked for.
    #[arg(long, value_name = "N")]
    max_connections: Option<u32>,
    /// `newConnectionsPerSecond`: new connections a second asked for.
    #[arg(long, value_name = "N")]
    new_connections_per_second: Option<u32>,
    /// `networkApprovals`: what is refused opens access requests.
    #[arg(long)]
    network_approvals: bool,
    /// `approvalHoldSeconds`: how long a refused DNS query waits.
    #[arg(long, value_name = "SECONDS")]
    approval_hold_seconds: Option<u32>,
    /// `httpRules`, as JSON: `[{"host", "methods"?, "paths"?}]`.
    #[arg(long, value_name = "JSON", value_parser = parse_http_rules)]
    http_rules: Option<Vec<sandgate_policy::HttpRuleRequest>>,
    /// Treat the lists as settings already stored (as after a tier change):
    /// no tier refusal and no entry limit, so inactive settings show.
    #[arg(long)]
    stored: bool,
}

impl SettingsArgs {
    fn resolve(&self, config: &Config) -> Result<EffectivePolicy, PolicyError> {
        let policy = &config.policy;
        let settings = if self.stored {
            // Stored settings were valid when set; limits apply to requests.
            policy.stored_settings(&StoredSettings {
                network_block_all: self.network_block_all,
                network_allow_list: self.network_allow_list.as_deref().unwrap_or_default(),
                domain_allow_list: self.domain_allow_list.as_deref().unwrap_or_default(),
                network_deny_list: self.network_deny_list.as_deref().unwrap_or_default(),
                domain_deny_list: self.domain_deny_list.as_deref().unwrap_or_default(),
                essential_services: !self.no_essential_services,
                egress_mbps: self.egress_mbps,
                transfer_quota_mib: self.transfer_quota_mib,
                max_connections: self.max_connections,
                new_connections_per_second: self.new_connections_per_second,
                network_approvals: self.network_approvals,
                approval_hold_seconds: sandgate_policy::check_hold(
                    self.approval_hold_seconds.unwrap_or(0),
                )?,
                http_rules: &sandgate_policy::HttpRules::parse(
                    self.http_rules.as_deref().unwrap_or_default(),
                    usize::MAX,
                )?
                .to_stored(),
            })?
        } else {
            policy.settings_for_create(
                self.tier,
                &SettingsRequest {
                    network_block_all: Some(self.network_block_all),
                    network_allow_list: self.network_allow_list.as_deref(),
                    domain_allow_list: self.domain_allow_list.as_deref(),
                    network_deny_list: self.network_deny_list.as_deref(),
                    domain_deny_list: self.domain_deny_list.as_deref(),
                    essential_services: Some(!self.no_essential_services),
                    egress_mbps: self.egress_mbps.map(Some),
                    transfer_quota_mib: self.transfer_quota_mib.map(Some),
                    max_connections: self.max_connections.map(Some),
                    new_connections_per_second: self.new_connections_per_second.map(Some),
                    network_approvals: Some(self.network_approvals),
                    approval_hold_seconds: self.approval_hold_seconds,
                    http_rules: self.http_rules.as_deref(),
                },
            )?
        };
        policy.resolve(self.tier, &settings)
    }
}

/// `--http-rules`: a JSON array of rules, unknown fields refused (the
/// rules themselves are checked by the policy, with the API's messages).
pub fn parse_http_rules(s: &str) -> Result<Vec<sandgate_policy::HttpRuleRequest>, String> {
    serde_json::from_str(s).map_err(|e| {
        format!("{e}; give a JSON array such as [{{\"host\":\"api.example.com\",\"methods\":[\"GET\"],\"paths\":[\"/repos/**\"]}}]")
    })
}

/// Runs a policy subcommand.
pub fn run(cmd: PolicyCommand, config: &Config, out: &Output) -> ExitCode {
    let result = match cmd {
        PolicyCommand::Resolve(args) => args.resolve(config).map(|p| print_policy(&p, out)),
        PolicyCommand::Explain { settings, dest } => {
            explain(&settings, &dest, config).map(|e| print_explanation(&e, out))
        }
        PolicyCommand::Catalog => {
            print_catalog(config, out);
            Ok(())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => out.error(&e),
    }
}

/// The answer of `explain`, with what was asked.
#[derive(Debug, Serialize)]
struct Explanation {
    allowed: bool,
    reason: String,
    rule: String,
    destination: String,
    mode: &'static str,
}

fn explain(args: &SettingsArgs, dest: &str, config: &Config) -> Result<Explanation, PolicyError> {
    let policy = args.resolve(config)?;
    let destination: Destination = dest.parse()?;
    let mode = policy.mode.as_str();
    let compiled = CompiledPolicy::new(policy, &config.catalog, &config.policy);
    let verdict = compiled.explain(&destination);
    Ok(Explanation {
        allowed: verdict.allowed,
        reason: verdict.reason.code(),
        rule: verdict.rule,
        destination: destination.to_string(),
        mode,
    })
}

fn print_policy(policy: &EffectivePolicy, out: &Output) {
    if out.json {
        return out.print_json(policy);
    }
    let or_none = |s: String| if s.is_empty() { "(none)".into() } else { s };
    say!("mode:               {} (tier {})", policy.mode, policy.tier);
    say!(
        "networkAllowList:   {}",
        or_none(policy.network_allow_list.to_string())
    );
    say!(
        "domainAllowList:    {}",
        or_none(policy.domain_allow_list.to_string())
    );
    if !policy.network_deny_list.is_empty() {
        say!("networkDenyList:    {}", policy.network_deny_list);
    }
    if !policy.domain_deny_list.is_empty() {
        say!("domainDenyList:     {}", policy.domain_deny_list);
    }
    if !policy.http_rules.is_empty() {
        say!("httpRules:          {}", policy.http_rules.to_stored());
    }
    say!(
        "essential services: {}",
        if policy.essential_services {
            "reachable"
        } else {
            "not reachable"
        }
    );
    if let Some(mbps) = policy.budgets.egress_mbps {
        say!("egress bandwidth:   {mbps} Mbit/s");
    }
    if let (Some(mib), Some(period)) = (
        policy.budgets.transfer_quota_mib,
        policy.budgets.transfer_period_seconds,
    ) {
        say!("transfer quota:     {mib} MiB every {period} s");
    }
    say!(
        "connections:        {} at once, {} new a second",
        policy.fair_shares.connections,
        policy.fair_shares.new_connections_per_second
    );
    if let Some(a) = &policy.approvals {
        say!(
            "approvals:          refusals open access requests; a refused query waits {} s",
            a.hold_seconds
        );
    }
    for i in &policy.inactive {
        say!(
            "inactive:           {} = {} ({}: {})",
            i.setting,
            i.value,
            i.reason,
            i.message
        );
    }
}

fn print_explanation(e: &Explanation, out: &Output) {
    if out.json {
        return out.print_json(e);
    }
    let word = if e.allowed { "ALLOWED" } else { "DENIED" };
    say!("{word} {} ({} mode): {}", e.destination, e.mode, e.reason);
    say!("  {}", e.rule);
}

fn print_catalog(config: &Config, out: &Output) {
    #[derive(Serialize)]
    struct Row<'a> {
        id: &'a str,
        title: &'a str,
        hosts: Vec<String>,
    }
    let rows: Vec<Row> = config
        .catalog
        .categories()
        .iter()
        .map(|c| Row {
            id: &c.id,
            title: &c.title,
            hosts: c.hosts.iter().map(ToString::to_string).collect(),
        })
        .collect();
    if out.json {
        return out.print_json(&rows);
    }
    for row in rows {
        say!("{} ({}): {} names", row.id, row.title, row.hosts.len());
        for h in row.hosts {
            say!("  {h}");
        }
    }
}
