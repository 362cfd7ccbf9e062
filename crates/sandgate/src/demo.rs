//! `sandgate demo`: the main job of the README.
//!
//! Until the lab exists, the demo runs the reference's policy examples
//! through the policy engine: sandboxes of organizations of tiers 1 to 4 in
//! every mode (the reference's three-entry allow list, block-all, and both
//! together among them), each with destinations whose expected outcome
//! BRIEF section 1 fixes, and prints the matrix of expected against what
//! `explain` answers. Nothing is sent anywhere: the reference's example
//! addresses are data. Exit status 0 only if every row is ok.

use crate::config::Config;
use crate::output::{say, Output};
use sandgate_policy::{CompiledPolicy, Destination, PolicyError, SettingsRequest, Tier};
use serde::Serialize;
use std::process::ExitCode;

/// The reference's own allow-list example (data only, never probed).
const SPEC_ALLOW_LIST: &str = "208.80.154.232/32,199.16.156.103/32,192.168.1.0/24";

struct Scenario {
    sandbox: &'static str,
    tier: Tier,
    request: SettingsRequest<'static>,
    /// Destinations and whether BRIEF section 1 says they are reachable.
    checks: Vec<(String, bool)>,
}

/// One row of the matrix.
#[derive(Debug, Serialize)]
struct Row {
    sandbox: &'static str,
    mode: String,
    target: String,
    expected: &'static str,
    observed: &'static str,
    ok: bool,
}

fn word(allowed: bool) -> &'static str {
    if allowed {
        "allowed"
    } else {
        "denied"
    }
}

fn scenarios(config: &Config) -> Vec<Scenario> {
    // Catalog names come from the catalog itself, never spelled here.
    let essential = config
        .catalog
        .names()
        .find(|(_, p)| !p.is_wildcard())
        .map(|(_, p)| p.base().to_string())
        .unwrap_or_else(|| "essential-service.example".into());
    let e = |s: &str| s.to_string();
    let req = |nal, dal, block| SettingsRequest {
        network_block_all: block,
        network_allow_list: nal,
        domain_allow_list: dal,
    };
    vec![
        Scenario {
            sandbox: "tier1-default",
            tier: 1,
            request: req(None, None, None),
            checks: vec![
                (essential.clone(), true),
                (e("www.example.com"), false),
                (e("192.0.2.10:443"), false),
                (e("169.254.169.254:80"), false),
            ],
        },
        Scenario {
            sandbox: "tier3-open",
            tier: 3,
            request: req(None, None, None),
            checks: vec![
                (e("192.0.2.10:443"), true),
                (e("[2001:db8::10]:443"), true),
                (e("www.example.com"), true),
                (e("10.0.0.1:22"), false),
                (e("169.254.169.254:80"), false),
                (e("127.0.0.1:8080"), false),
            ],
        },
        Scenario {
            sandbox: "tier3-spec-allow-list",
            tier: 3,
            request: req(Some(SPEC_ALLOW_LIST), None, None),
            checks: vec![
                (e("208.80.154.232:443"), true),
                (e("199.16.156.103:443"), true),
                (e("192.168.1.77:80"), true),
                (e("192.168.2.1:80"), false),
                (e("192.0.2.10:443"), false),
                (essential.clone(), true),
                (e("www.example.com"), false),
                (e("198.51.100.9:53"), true),
            ],
        },
        Scenario {
            sandbox: "tier4-domains",
            tier: 4,
            request: req(None, Some("*.example.com, example.net"), None),
            checks: vec![
                (e("api.example.com"), true),
                (e("a.b.example.com"), true),
                (e("example.com"), false),
                (e("example.net"), true),
                (e("www.example.net"), false),
                (essential.clone(), true),
            ],
        },
        Scenario {
            sandbox: "tier3-block-all",
            tier: 3,
            request: req(None, None, Some(true)),
            checks: vec![
                (essential.clone(), false),
                (e("192.0.2.10:443"), false),
                (e("198.51.100.9:53"), false),
            ],
        },
        Scenario {
            sandbox: "tier3-block-all-and-list",
            tier: 3,
            request: req(Some(SPEC_ALLOW_LIST), None, Some(true)),
            checks: vec![(e("208.80.154.232:443"), false), (essential, false)],
        },
    ]
}

/// Runs the demo and prints the matrix.
pub fn run(config: &Config, out: &Output) -> ExitCode {
    let mut rows = Vec::new();
    for s in scenarios(config) {
        match run_scenario(&s, config) {
            Ok(mut r) => rows.append(&mut r),
            Err(e) => return out.error(&e),
        }
    }
    // The reference's refusal: a tier-2 organization may not set a list.
    let refused = config.policy.settings_for_create(
        2,
        &SettingsRequest {
            network_allow_list: Some(SPEC_ALLOW_LIST),
            ..Default::default()
        },
    );
    let refusal_ok = matches!(&refused, Err(e) if e.http_status() == 403);
    rows.push(Row {
        sandbox: "tier2-asks-for-list",
        mode: "refused".into(),
        target: "create with networkAllowList".into(),
        expected: "network_restricted_by_tier",
        observed: match &refused {
            Err(e) if e.http_status() == 403 => "network_restricted_by_tier",
            Err(_) => "other error",
            Ok(_) => "accepted",
        },
        ok: refusal_ok,
    });
    let all_ok = rows.iter().all(|r| r.ok);
    if out.json {
        out.print_json(&rows);
    } else {
        print_table(&rows);
        let bad = rows.iter().filter(|r| !r.ok).count();
        say!("{} rows, {} mismatches", rows.len(), bad);
    }
    if all_ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Prints the rows as a table sized to its contents.
fn print_table(rows: &[Row]) {
    let header = ["sandbox", "mode", "target", "expected", "observed", "ok"];
    let cells: Vec<[&str; 6]> = rows
        .iter()
        .map(|r| {
            [
                r.sandbox,
                r.mode.as_str(),
                r.target.as_str(),
                r.expected,
                r.observed,
                if r.ok { "ok" } else { "MISMATCH" },
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &cells {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    for row in std::iter::once(&header).chain(&cells) {
        let line: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        say!("{}", line.join("  ").trim_end());
    }
}

fn run_scenario(s: &Scenario, config: &Config) -> Result<Vec<Row>, PolicyError> {
    let settings = config.policy.settings_for_create(s.tier, &s.request)?;
    let policy = config.policy.resolve(s.tier, &settings)?;
    let mode = policy.mode.to_string();
    let compiled = CompiledPolicy::new(policy, &config.catalog, &config.policy);
    let mut rows = Vec::new();
    for (target, expected) in &s.checks {
        let dest: Destination = target.parse()?;
        let verdict = compiled.explain(&dest);
        rows.push(Row {
            sandbox: s.sandbox,
            mode: mode.clone(),
            target: target.clone(),
            expected: word(*expected),
            observed: word(verdict.allowed),
            ok: verdict.allowed == *expected,
        });
    }
    Ok(rows)
}
