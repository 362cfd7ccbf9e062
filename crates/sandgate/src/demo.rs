//! `sandgate demo`: the main job of the README.
//!
//! Builds a lab (REQUIREMENTS.md section 5), starts a sandgate server in it (API on
//! loopback inside the lab's `host` namespace; runner and DNS service
//! there too), and through the HTTP API: creates organizations of tiers 1
//! to 4 and sandboxes in every mode (the reference's three-entry allow
//! list, block-all, and both together among them; that list once more
//! under gVisor, the `runsc` runtime class), runs the network test
//! of each (TCP probes from the sandbox's namespace to the lab's servers),
//! updates one sandbox live and tests it again; then names bound to
//! connections (an allowed name and another on one shared address) and a
//! secret (its value reaches its host, the placeholder another host,
//! nothing of it is in the sandbox); then the reference's checks in
//! sandboxes of the Debian snapshot (`debian_rows`). Each row sets what REQUIREMENTS.md
//! section 1 says against what was observed; a row is ok when they agree
//! and the server's own `explain` agrees too. The reference's example
//! addresses are data to create and explain, never probed. Then everything
//! is removed. Exit status 0 only if every row is ok.

use crate::client::Client;
use crate::config::Config;
use crate::output::{say, table, Output};
use sandgate_lab::Lab;
use serde::Serialize;
use serde_json::{json, Value};
use std::process::ExitCode;

/// The reference's own allow-list example (data only, never probed).
const SPEC_ALLOW_LIST: &str = "208.80.154.232/32,199.16.156.103/32,192.168.1.0/24";

/// One row of the matrix.
#[derive(Debug, Serialize)]
struct Row {
    sandbox: String,
    mode: String,
    target: String,
    expected: String,
    observed: String,
    ok: bool,
}

fn word(allowed: bool) -> &'static str {
    if allowed {
        "allowed"
    } else {
        "denied"
    }
}

/// What REQUIREMENTS.md section 1 says of the lab's probe targets
/// (`sandgate_lab::probe_targets`: public v4, public v4 B, public v6,
/// private, always denied, a test name, a catalog name), by mode.
fn brief_expects(mode: &str) -> [bool; 7] {
    match mode {
        "open" => [true, true, true, false, false, true, true],
        "restricted" | "allowlist" => [false, false, false, false, false, false, true],
        _ => [false; 7],
    }
}

type Failure = String;

fn api_err(what: &str) -> impl Fn(crate::client::ApiFailure) -> Failure + '_ {
    move |f| format!("{what}: [{}] {}", f.code, f.message)
}

/// The demo's sandboxes: organization tier, name, create body.
fn sandboxes() -> Vec<(u8, &'static str, Value)> {
    vec![
        (1, "tier1-default", json!({})),
        (2, "tier2-default", json!({})),
        (
            3,
            "tier3-spec-allow-list",
            json!({"networkAllowList": SPEC_ALLOW_LIST}),
        ),
        (3, "tier3-block-all", json!({"networkBlockAll": true})),
        (
            3,
            "tier3-block-all-and-list",
            json!({"networkBlockAll": true, "networkAllowList": SPEC_ALLOW_LIST}),
        ),
        (4, "tier4-open", json!({})),
        // The same list under gVisor: the same slot, the same verdicts.
        (
            4,
            "tier4-gvisor-spec-allow-list",
            json!({"networkAllowList": SPEC_ALLOW_LIST, "runtimeClass": "runsc"}),
        ),
        (
            4,
            "tier4-lab-list",
            json!({"networkAllowList": "192.0.2.10/32", "domainAllowList": "example.com"}),
        ),
    ]
}

/// Runs the network test of `sandbox` on `targets` (the server's lab list
/// for `None`) and makes rows against `expected`.
fn test_rows(
    c: &Client,
    sandbox: &str,
    label: &str,
    targets: Option<&[&str]>,
    expected: &[bool],
) -> Result<Vec<Row>, Failure> {
    let body = match targets {
        Some(t) => json!({ "targets": t }),
        None => json!({}),
    };
    let t = c
        .call(
            "POST",
            &format!("/api/sandbox/{sandbox}/network/test"),
            Some(&body),
        )
        .map_err(api_err("network test"))?;
    let mode = t["mode"].as_str().unwrap_or("?").to_string();
    let results = t["results"].as_array().cloned().unwrap_or_default();
    if results.len() != expected.len() {
        return Err(format!(
            "network test of {sandbox}: {} rows for {} expectations",
            results.len(),
            expected.len()
        ));
    }
    Ok(results
        .iter()
        .zip(expected)
        .map(|(r, want)| {
            let observed = r["observed"] == true;
            let server_says = r["expected"] == true;
            Row {
                sandbox: label.to_string(),
                mode: mode.clone(),
                target: r["target"].as_str().unwrap_or("?").to_string(),
                expected: word(*want).to_string(),
                observed: word(observed).to_string(),
                ok: observed == *want && server_says == *want,
            }
        })
        .collect())
}

/// Explains `dest` for `sandbox` (nothing sent) against `want`.
fn explain_row(c: &Client, sandbox: &str, dest: &str, want: bool) -> Result<Row, Failure> {
    let v = c
        .call(
            "GET",
            &format!("/api/sandbox/{sandbox}/network/explain?dest={dest}"),
            None,
        )
        .map_err(api_err("explain"))?;
    let allowed = v["allowed"] == true;
    Ok(Row {
        sandbox: sandbox.to_string(),
        mode: v["mode"].as_str().unwrap_or("?").to_string(),
        target: format!("{dest} (explained, never probed)"),
        expected: word(want).to_string(),
        observed: word(allowed).to_string(),
        ok: allowed == want,
    })
}

/// Creates sandbox `name` with `body`: the answer, and its mode.
fn create(c: &Client, name: &str, mut body: Value) -> Result<(Value, String), Failure> {
    body["name"] = json!(name);
    let made = c
        .call("POST", "/api/sandbox", Some(&body))
        .map_err(api_err("create sandbox"))?;
    let mode = made["effectiveNetwork"]["mode"]
        .as_str()
        .unwrap_or("?")
        .to_string();
    Ok((made, mode))
}

/// A secret's value in the demo: stored through the API, seen by the
/// lab's server only.
const DEMO_SECRET: &str = "demo-secret-value-42";

/// Names bound to connections, and a secret: an allowed name and another
/// name on the one address they share (the lab's CDN stand-in), asked
/// from inside the sandbox (busybox's `nc`), and a secret sent over TLS
/// from the sandbox's network namespace (what reaches the lab's server,
/// which echoes the headers it got): the value for its host, the
/// placeholder for another. The sandbox and the secret are removed after.
fn gateway_rows(
    c: &Client,
    runner: &sandgate_runner::RunnerConfig,
    lab_ca: &str,
    progress: &(dyn Fn(&str) + Sync),
) -> Result<Vec<Row>, Failure> {
    const NAME: &str = "tier4-names-and-secret";
    const SHARED: &str = "198.51.100.10";
    progress("creating tier4-names-and-secret, with a secret for api.example.com");
    c.call(
        "POST",
        "/api/secrets",
        Some(&json!({"name": "API_TOKEN", "value": DEMO_SECRET, "hosts": ["api.example.com"]})),
    )
    .map_err(api_err("store a secret"))?;
    let (made, mode) = create(
        c,
        NAME,
        json!({"domainAllowList": "api.example.com,www.example.net", "secrets": ["API_TOKEN"]}),
    )?;
    let id = made["id"].as_str().unwrap_or_default().to_string();
    let placeholder = made["env"]["API_TOKEN"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let run = |command: &str| -> Result<String, Failure> {
        let r = c
            .call(
                "POST",
                &format!("/api/sandbox/{NAME}/process/execute"),
                Some(&json!({"command": command, "timeout": 20})),
            )
            .map_err(api_err("exec"))?;
        Ok(r["stdout"].as_str().unwrap_or_default().to_string())
    };
    let row = |target: &str, expected: &str, observed: &str| Row {
        sandbox: NAME.into(),
        mode: mode.clone(),
        target: target.into(),
        expected: expected.into(),
        observed: observed.into(),
        ok: expected == observed,
    };
    let mut rows = Vec::new();
    // Its DNS answers bind the names to the shared address, for it.
    run("nslookup api.example.com >/dev/null; nslookup www.example.net >/dev/null")?;
    for (name, want) in [
        ("api.example.com", "allowed"),
        ("other.example.com", "denied"),
    ] {
        let got = run(&format!(
            "(printf 'GET / HTTP/1.1\\r\\nHost: {name}\\r\\nConnection: close\\r\\n\\r\\n'; sleep 2) | nc -w 5 {SHARED} 80 2>&1"
        ))?;
        // Another name is reset by the gateway: no answer at all.
        let said = if got.contains(&format!("host={name}")) {
            "allowed"
        } else {
            "denied"
        };
        rows.push(row(
            &format!("http://{SHARED}/ as {name} (one address)"),
            want,
            said,
        ));
    }
    let ns = sandgate_testkit::slot_netns(&runner.data_dir, &runner.instance, &id)
        .map_err(|e| format!("the sandbox's namespace: {e}"))?;
    let gateway_ca = run("cat /etc/sandgate/ca.pem")?;
    let roots = [gateway_ca, lab_ca.to_string()];
    let sent = |host: &str| -> Result<&'static str, Failure> {
        let got = sandgate_testkit::https_request(
            &ns,
            &roots,
            SHARED
                .parse()
                .map_err(|_| "the shared address".to_string())?,
            (host, "/echo-headers"),
            &[format!("Authorization: Bearer {placeholder}")],
        )
        .map_err(|e| format!("https to {host}: {e}"))?;
        Ok(
            if got.contains(&format!("authorization: Bearer {DEMO_SECRET}")) {
                "the value"
            } else if got.contains(&format!("authorization: Bearer {placeholder}")) {
                "the placeholder"
            } else {
                "no answer"
            },
        )
    };
    rows.push(row(
        "$API_TOKEN to https://api.example.com (its host): the server got",
        "the value",
        sent("api.example.com")?,
    ));
    rows.push(row(
        "$API_TOKEN to https://www.example.net (another): the server got",
        "the placeholder",
        sent("www.example.net")?,
    ));
    let inside = run("env; cat /proc/*/environ")?;
    rows.push(row(
        "the secret's value inside the sandbox (environment)",
        "absent",
        if inside.contains(DEMO_SECRET) {
            "present"
        } else {
            "absent"
        },
    ));
    c.call("DELETE", &format!("/api/sandbox/{NAME}"), None)
        .map_err(api_err("delete"))?;
    c.call("DELETE", "/api/secrets/API_TOKEN", None)
        .map_err(api_err("delete the secret"))?;
    Ok(rows)
}

/// What the demo's Debian sandboxes start from: the tarball built from
/// Debian's packages, the lab CA's certificate and the lab archive's key
/// (what a user of a mirror of their own would trust), or why there is
/// none.
type DebianSetup = Result<(std::path::PathBuf, (String, String)), String>;

/// The reference's checks (`curl -I`, `apt update`, `npm ping`,
/// `pip install --dry-run requests`) in a sandbox of the Debian snapshot,
/// in restricted mode and in allowlist mode (a lab address listed):
/// `curl -I` to the listed address and to one no list names, and the
/// package services under the catalog's names (the lab's stand-ins,
/// `sandgate_lab::mirrors`). The snapshot is uploaded through the API and
/// removed after, with the sandboxes. When it could not be built (no
/// Debian mirror), one row says so and the rest of the demo runs.
fn debian_rows(
    admin: &Client,
    (tier2, tier3): (&Client, &Client),
    debian: &DebianSetup,
    progress: &(dyn Fn(&str) + Sync),
) -> Result<Vec<Row>, Failure> {
    let (tarball, trust) = match debian {
        Ok(setup) => setup,
        Err(why) => {
            progress(&format!(
                "the Debian snapshot could not be built, its checks are skipped: {why}"
            ));
            return Ok(vec![Row {
                sandbox: "tier2/3-debian-*".into(),
                mode: "-".into(),
                target: "the reference's checks in a Debian sandbox".into(),
                expected: "run, or skipped without a Debian mirror".into(),
                observed: format!("skipped: {why}"),
                ok: true,
            }]);
        }
    };
    progress("uploading the Debian snapshot (python3, pip, curl, node, npm)");
    let file = std::fs::File::open(tarball).map_err(|e| format!("{}: {e}", tarball.display()))?;
    admin
        .upload("/api/snapshots/debian", file, "application/x-tar")
        .map_err(api_err("upload the Debian snapshot"))?;
    const TRUST: &str = "/root/trusted.pem";
    let listed = sandgate_lab::addrs::SERVER4_B;
    let unlisted = sandgate_lab::addrs::SERVER6_B;
    let sandboxes = [
        (
            "tier2-debian-restricted",
            tier2,
            json!({"snapshot": "debian"}),
        ),
        (
            "tier3-debian-allowlist",
            tier3,
            json!({"snapshot": "debian", "networkAllowList": format!("{listed}/32")}),
        ),
    ];
    let mut rows = Vec::new();
    for (name, c, body) in sandboxes.clone() {
        progress(&format!("creating {name} from the Debian snapshot"));
        let (_, mode) = create(c, name, body)?;
        // The system bundle of a sandbox is read-only (its processes
        // cannot trust another CA behind each other's backs): the checks
        // are pointed at a bundle of their own, as a user of a mirror with
        // a CA of its own would.
        let env: serde_json::Map<String, Value> = [
            "SSL_CERT_FILE",
            "CURL_CA_BUNDLE",
            "REQUESTS_CA_BUNDLE",
            "PIP_CERT",
            "NODE_EXTRA_CA_CERTS",
        ]
        .iter()
        .map(|k| (k.to_string(), json!(TRUST)))
        .collect();
        let exec = |command: &str| {
            c.call(
                "POST",
                &format!("/api/sandbox/{name}/process/execute"),
                Some(&json!({"command": command, "timeout": 120, "env": env})),
            )
            .map_err(api_err("exec"))
        };
        let setup = exec(&format!(
            "set -e\ncat /etc/ssl/certs/ca-certificates.crt - > {TRUST} <<'EOF'\n{}\nEOF\n\
             cat > /etc/apt/trusted.gpg.d/sandgate-lab.asc <<'EOF'\n{}\nEOF",
            trust.0.trim(),
            trust.1.trim()
        ))?;
        if setup["exitCode"] != 0 {
            return Err(format!(
                "{name}: trusting the lab's CA and archive key: exit {}: {}",
                setup["exitCode"], setup["result"]
            ));
        }
        let allowlist = mode == "allowlist";
        let checks = [
            (
                format!("curl -I https://{listed} (listed)"),
                format!("curl -sS -I --max-time 5 https://{listed}/"),
                allowlist,
            ),
            (
                format!("curl -I https://[{unlisted}] (no list names it)"),
                format!("curl -sS -I --max-time 5 'https://[{unlisted}]/'"),
                false,
            ),
            ("apt update".to_string(), "apt update".to_string(), true),
            ("npm ping".to_string(), "npm ping".to_string(), true),
            (
                "pip install --dry-run requests".to_string(),
                "pip install --dry-run requests".to_string(),
                true,
            ),
        ];
        for (target, command, want) in checks {
            progress(&format!("{name}: {target}"));
            let r = exec(&command)?;
            let passed = r["exitCode"] == 0;
            // curl fails as a denial does: no connection (7), or none in
            // time (28); any other failure (a certificate, say) is not one.
            let denial = !command.starts_with("curl")
                || [7, 28].contains(&r["exitCode"].as_i64().unwrap_or(0));
            if passed != want || !(passed || denial) {
                progress(&format!(
                    "{name}: {command}: {}",
                    r["result"].as_str().unwrap_or_default()
                ));
            }
            let said = if passed { "passes" } else { "fails" };
            let last = r["result"]
                .as_str()
                .unwrap_or_default()
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .unwrap_or_default()
                .chars()
                .take(100)
                .collect::<String>();
            let ok = passed == want && (passed || denial);
            rows.push(Row {
                sandbox: name.into(),
                mode: mode.clone(),
                target,
                expected: if want { "passes" } else { "fails" }.into(),
                observed: if ok {
                    said.to_string()
                } else {
                    format!("{said}: {last}")
                },
                ok,
            });
        }
    }
    for (name, c, _) in sandboxes {
        c.call("DELETE", &format!("/api/sandbox/{name}"), None)
            .map_err(api_err("delete"))?;
    }
    admin
        .call("DELETE", "/api/snapshots/debian", None)
        .map_err(api_err("delete the Debian snapshot"))?;
    Ok(rows)
}

/// The demo's requests, made from inside the lab's host namespace;
/// `essential` is a name of the catalog (the lab answers it).
fn scenario(
    admin: &Client,
    (runner, lab_ca): (&sandgate_runner::RunnerConfig, &str),
    (essential, debian): (Option<&str>, &DebianSetup),
    progress: &(dyn Fn(&str) + Sync),
) -> Result<Vec<Row>, Failure> {
    let mut rows = Vec::new();
    let mut keys = std::collections::BTreeMap::new();
    for tier in 1..=4u8 {
        let org = admin
            .call(
                "POST",
                "/api/admin/organizations",
                Some(&json!({"name": format!("tier{tier}-org"), "tier": tier})),
            )
            .map_err(api_err("create organization"))?;
        let id = org["id"].as_str().unwrap_or_default().to_string();
        let key = admin
            .call("POST", &format!("/api/admin/organizations/{id}/keys"), None)
            .map_err(api_err("issue key"))?;
        keys.insert(
            tier,
            admin.with_key(key["key"].as_str().unwrap_or_default()),
        );
    }
    let key = |tier: u8| {
        keys.get(&tier)
            .ok_or_else(|| format!("no key for tier {tier}"))
    };

    // The reference's refusal: a tier-2 organization may not set a list.
    let refused = key(2)?.call(
        "POST",
        "/api/sandbox",
        Some(&json!({"name": "tier2-asks-for-list", "networkAllowList": SPEC_ALLOW_LIST})),
    );
    let code = match &refused {
        Err(f) => f.code.clone(),
        Ok(_) => "created".into(),
    };
    rows.push(Row {
        sandbox: "tier2-asks-for-list".into(),
        mode: "refused".into(),
        target: "create with networkAllowList".into(),
        expected: "network_restricted_by_tier".into(),
        observed: code.clone(),
        ok: code == "network_restricted_by_tier",
    });

    for (tier, name, body) in sandboxes() {
        progress(&format!("creating {name} (tier {tier})"));
        let c = key(tier)?;
        let (_, mode) = create(c, name, body.clone())?;
        if name == "tier4-lab-list" {
            let targets = ["192.0.2.10:7", "198.51.100.10:7", "example.com:7"];
            rows.extend(test_rows(
                c,
                name,
                name,
                Some(&targets),
                &[true, false, true],
            )?);
            progress("updating tier4-lab-list live");
            c.call(
                "POST",
                &format!("/api/sandbox/{name}/network-settings"),
                Some(&json!({"networkAllowList": "198.51.100.0/24", "domainAllowList": ""})),
            )
            .map_err(api_err("update"))?;
            let label = format!("{name} (after update)");
            rows.extend(test_rows(
                c,
                name,
                &label,
                Some(&targets),
                &[false, true, false],
            )?);
            continue;
        }
        rows.extend(test_rows(c, name, name, None, &brief_expects(&mode))?);
        if name.contains("spec-allow-list") || name.contains("and-list") {
            let allowed = mode == "allowlist";
            rows.push(explain_row(c, name, "208.80.154.232:443", allowed)?);
            rows.push(explain_row(c, name, "192.168.1.77:80", allowed)?);
            rows.push(explain_row(c, name, "192.168.2.1:80", false)?);
        }
        if body["runtimeClass"] == "runsc" {
            let exec = |command: &str| {
                c.call(
                    "POST",
                    &format!("/api/sandbox/{name}/process/execute"),
                    Some(&json!({ "command": command })),
                )
                .map(|r| r["stdout"].as_str().unwrap_or_default().trim().to_string())
                .map_err(api_err("exec"))
            };
            let out = exec("dmesg | head -1")?;
            rows.push(Row {
                sandbox: name.into(),
                mode: mode.clone(),
                target: "whose kernel answers".into(),
                expected: "gVisor's".into(),
                ok: out.contains("gVisor"),
                observed: out,
            });
            // From inside, through gVisor's sockets (the network test
            // probes from the slot's namespace): an essential service by
            // name (the catalog's), and example.com's address (a name not
            // listed, so never admitted).
            let unlisted = sandgate_lab::addrs::SERVER4_B.to_string();
            let targets = essential
                .map(|n| (n, true))
                .into_iter()
                .chain([(unlisted.as_str(), false)]);
            let port = sandgate_lab::addrs::TCP_ECHO;
            for (target, want) in targets {
                let out = exec(&format!("echo sandgate | nc -w 2 {target} {port}"))?;
                let reached = out == "sandgate";
                rows.push(Row {
                    sandbox: name.into(),
                    mode: mode.clone(),
                    target: format!("{target}:{port} from a program inside"),
                    expected: word(want).into(),
                    observed: word(reached).into(),
                    ok: reached == want,
                });
            }
        }
        if mode == "blocked" {
            let r = c
                .call(
                    "POST",
                    &format!("/api/sandbox/{name}/process/execute"),
                    Some(&json!({"command": "echo exec works without network"})),
                )
                .map_err(api_err("exec"))?;
            let out = r["stdout"].as_str().unwrap_or_default().trim().to_string();
            rows.push(Row {
                sandbox: name.into(),
                mode: mode.clone(),
                target: "exec".into(),
                expected: "exec works without network".into(),
                ok: out == "exec works without network",
                observed: out,
            });
        }
    }

    rows.extend(gateway_rows(key(4)?, runner, lab_ca, progress)?);
    rows.extend(debian_rows(admin, (key(2)?, key(3)?), debian, progress)?);

    progress("deleting the sandboxes");
    for (tier, name, _) in sandboxes() {
        key(tier)?
            .call("DELETE", &format!("/api/sandbox/{name}"), None)
            .map_err(api_err("delete"))?;
    }
    let mut left = 0;
    for tier in 1..=4 {
        let list = key(tier)?
            .call("GET", "/api/sandbox", None)
            .map_err(api_err("list"))?;
        left += list.as_array().map_or(0, Vec::len);
    }
    rows.push(Row {
        sandbox: "all".into(),
        mode: "-".into(),
        target: "sandboxes left after delete".into(),
        expected: "0".into(),
        observed: left.to_string(),
        ok: left == 0,
    });
    Ok(rows)
}

/// Runs the demo and prints the matrix.
pub fn run(config: &Config, out: &Output) -> ExitCode {
    let quiet = out.json;
    let progress = move |m: &str| {
        if !quiet {
            eprintln!("demo: {m}");
        }
    };
    match demo(config, &progress) {
        Ok(rows) => {
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
        Err(e) => {
            if out.json {
                out.print_json(&json!({"error": {"code": "demo_failed", "message": e}}));
            } else {
                eprintln!("demo failed: {e}");
            }
            ExitCode::FAILURE
        }
    }
}

fn demo(config: &Config, progress: &(dyn Fn(&str) + Sync)) -> Result<Vec<Row>, Failure> {
    progress("building the lab");
    let lab = Lab::up().map_err(|e| format!("lab: {e}"))?;
    // A directory of its own, made here (not one left by someone else),
    // for root only.
    let dir = std::env::temp_dir().join(format!(
        "sandgate-demo-{}-{:x}",
        lab.tag(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0)
    ));
    std::fs::create_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))
        .map_err(|e| e.to_string())?;
    // The lab's configuration (the lab's resolver, the host namespace, the
    // lab's stand-ins for the private and always-denied ranges: the lab
    // never sends to the real ones), with the operator's catalog.
    let token = format!("demo-{}-{}", std::process::id(), lab.tag());
    let mut cfg = sandgate_testkit::lab_server_config(&lab, &dir, 2, &token);
    // Every tier may ask for gVisor (runc stays the default).
    let mut policy = sandgate_lab::lab_policy_repr(None);
    policy.runtime_classes = Some(vec![
        sandgate_policy::RuntimeClass::Runc,
        sandgate_policy::RuntimeClass::Runsc,
    ]);
    cfg.policy = sandgate_policy::PolicyConfig::from_repr(policy)
        .map_err(|e| format!("the demo's policy: {e}"))?;
    cfg.catalog = config.catalog.clone();
    cfg.probe_targets = sandgate_lab::probe_targets(&config.catalog);
    let runner_cfg = cfg.runner.clone();
    let essential = sandgate_lab::catalog_name(&config.catalog);
    // Built here, in this machine's namespaces (the lab's have no way to
    // Debian's mirror): once, then from the cache.
    progress("building the Debian snapshot (once, then from the cache)");
    let debian: DebianSetup = sandgate_lab::debian::rootfs_tarball()
        .map_err(|e| e.to_string())
        .and_then(|tarball| {
            let key = sandgate_lab::mirrors::apt_key().map_err(|e| e.to_string())?;
            Ok((tarball, (lab.ca_pem().to_string(), key.to_string())))
        });
    let result = (|| {
        progress("starting the server in the lab's host namespace");
        // The API listens on loopback inside the lab's host namespace.
        let mut server = sandgate_testkit::InProcess::start(cfg, Some(lab.host()))
            .map_err(|e| format!("server: {e}"))?;
        let admin = Client::new(&server.base, Some(&token));
        let rows = lab
            .host()
            .run(|| {
                Ok(scenario(
                    &admin,
                    (&runner_cfg, lab.ca_pem()),
                    (essential.as_deref(), &debian),
                    progress,
                ))
            })
            .map_err(|e| e.to_string())
            .and_then(|r| r);
        server.stop();
        rows
    })();
    // Whatever a failure left: the runtime's sandboxes (the lab's drop
    // removes the slots' namespaces).
    let _ = sandgate_runner::purge_runtime(&runner_cfg);
    let _ = std::fs::remove_dir_all(&dir);
    progress("removing the lab");
    drop(lab);
    result
}

/// Prints the rows as a table.
fn print_table(rows: &[Row]) {
    let cells = rows
        .iter()
        .map(|r| {
            vec![
                r.sandbox.clone(),
                r.mode.clone(),
                r.target.clone(),
                r.expected.clone(),
                r.observed.clone(),
                if r.ok { "ok" } else { "MISMATCH" }.to_string(),
            ]
        })
        .collect();
    table(
        &["sandbox", "mode", "target", "expected", "observed", "ok"],
        cells,
    );
}
