//! The operator's dry-run commands, run as a user runs them: the real
//! binary, its output and its exit status.

#![allow(clippy::unwrap_used)]

use serde_json::Value;
use std::process::{Command, Output};

fn sandgate(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sandgate"))
        .args(args)
        .env_remove("SANDGATE_CONFIG")
        .output()
        .expect("run sandgate")
}

/// Runs with `--json`; returns (exit code, parsed standard output).
fn json(args: &[&str]) -> (i32, Value) {
    let mut all = args.to_vec();
    all.push("--json");
    let out = sandgate(&all);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let value = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!(
            "{args:?}: not JSON ({e}): {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code().unwrap_or(-1), value)
}

#[test]
fn resolve_prints_the_effective_policy() {
    let (code, v) = json(&[
        "policy",
        "resolve",
        "--tier",
        "3",
        "--network-allow-list",
        " 192.0.2.1 ,2001:DB8::/32,192.0.2.1/32",
        "--domain-allow-list",
        "*.Example.com.",
    ]);
    assert_eq!(code, 0);
    assert_eq!(v["mode"], "allowlist");
    assert_eq!(
        v["networkAllowList"],
        serde_json::json!(["192.0.2.1/32", "2001:db8::/32"])
    );
    assert_eq!(v["domainAllowList"], serde_json::json!(["*.example.com"]));
    assert_eq!(v["essentialServices"], true);
    assert_eq!(v["inactive"], serde_json::json!([]));

    let (code, v) = json(&["policy", "resolve", "--tier", "4"]);
    assert_eq!((code, v["mode"].as_str()), (0, Some("open")));
    assert!(v.get("budgets").is_none(), "{v}");
    let (code, v) = json(&["policy", "resolve", "--tier", "1", "--egress-mbps", "25"]);
    assert_eq!((code, v["budgets"]["egressMbps"].as_u64()), (0, Some(25)));
    let (code, v) = json(&["policy", "resolve", "--tier", "1", "--max-connections", "9"]);
    assert_eq!(
        (code, v["fairShares"]["connections"].as_u64()),
        (0, Some(9))
    );
    let (code, v) = json(&[
        "policy",
        "resolve",
        "--tier",
        "3",
        "--domain-allow-list",
        "*.example.com",
        "--network-approvals",
        "--approval-hold-seconds",
        "15",
    ]);
    assert_eq!(
        (code, v["approvals"]["holdSeconds"].as_u64()),
        (0, Some(15)),
        "{v}"
    );
    let (code, v) = json(&["policy", "resolve", "--tier", "1", "--network-approvals"]);
    assert_eq!(
        (code, v["error"]["code"].as_str()),
        (2, Some("network_restricted_by_tier"))
    );
    let (code, v) = json(&["policy", "resolve", "--tier", "3", "--egress-mbps", "0"]);
    assert_eq!(
        (code, v["error"]["code"].as_str()),
        (2, Some("invalid_budget"))
    );
    let (code, v) = json(&["policy", "resolve", "--tier", "2"]);
    assert_eq!((code, v["mode"].as_str()), (0, Some("restricted")));
    let (code, v) = json(&[
        "policy",
        "resolve",
        "--tier",
        "3",
        "--network-block-all",
        "--network-allow-list",
        "198.51.100.0/24",
    ]);
    assert_eq!(code, 0);
    assert_eq!(v["mode"], "blocked");
    assert_eq!(v["essentialServices"], false);
    assert_eq!(v["inactive"][0]["setting"], "networkAllowList");
    assert_eq!(v["inactive"][0]["reason"], "blocked");
}

#[test]
fn stored_settings_show_what_a_tier_makes_inactive() {
    let (code, v) = json(&[
        "policy",
        "resolve",
        "--tier",
        "1",
        "--stored",
        "--domain-allow-list",
        "*.example.com",
    ]);
    assert_eq!(code, 0);
    assert_eq!(v["mode"], "restricted");
    assert_eq!(v["inactive"][0]["setting"], "domainAllowList");
    assert_eq!(v["inactive"][0]["value"], "*.example.com");
    assert_eq!(v["inactive"][0]["reason"], "restricted_by_tier");
}

#[test]
fn invalid_input_exits_2_with_the_api_error_shape() {
    let cases: &[(&[&str], &str, &str)] = &[
        (
            &["--network-allow-list", "203.0.113.9/24"],
            "invalid_network_allow_list",
            "203.0.113.0/24",
        ),
        (
            &["--network-allow-list", "203.0.113.0/24,,"],
            "invalid_network_allow_list",
            "empty entry",
        ),
        (
            &["--domain-allow-list", "*"],
            "invalid_domain_allow_list",
            "\"*\"",
        ),
        (
            &["--domain-allow-list", "203.0.113.9"],
            "invalid_domain_allow_list",
            "203.0.113.9",
        ),
    ];
    for (extra, code, needle) in cases {
        let mut args = vec!["policy", "resolve", "--tier", "3"];
        args.extend_from_slice(extra);
        let (exit, v) = json(&args);
        assert_eq!(exit, 2, "{args:?}");
        assert_eq!(v["error"]["code"], *code, "{args:?}");
        let message = v["error"]["message"].as_str().unwrap();
        assert!(message.contains(needle), "{args:?}: {message}");
    }
    let (exit, v) = json(&[
        "policy",
        "resolve",
        "--tier",
        "1",
        "--network-allow-list",
        "203.0.113.0/24",
    ]);
    assert_eq!(exit, 2);
    assert_eq!(v["error"]["code"], "network_restricted_by_tier");
    assert!(v["error"]["message"].as_str().unwrap().contains("tier 3"));
    let (exit, v) = json(&[
        "policy",
        "explain",
        "--tier",
        "3",
        "--dest",
        "203.0.113.9:99999",
    ]);
    assert_eq!(exit, 2);
    assert_eq!(v["error"]["code"], "invalid_destination");
    let (exit, v) = json(&["policy", "resolve", "--tier", "5"]);
    assert_eq!(exit, 2);
    assert_eq!(v["error"]["code"], "invalid_tier");
}

#[test]
fn explain_prints_the_verdict() {
    let (code, v) = json(&[
        "policy",
        "explain",
        "--tier",
        "3",
        "--network-allow-list",
        "203.0.113.0/24",
        "--dest",
        "203.0.113.80:443",
    ]);
    assert_eq!(code, 0);
    assert_eq!(v["allowed"], true);
    assert_eq!(v["reason"], "allow_list:203.0.113.0/24");
    assert!(v["rule"].as_str().unwrap().contains("203.0.113.0/24"));

    let (code, v) = json(&[
        "policy",
        "explain",
        "--tier",
        "3",
        "--dest",
        "169.254.169.254",
    ]);
    assert_eq!(code, 0, "a denial is an answer, not an error");
    assert_eq!(v["allowed"], false);
    assert_eq!(v["reason"], "always_denied:metadata");

    let (_, v) = json(&[
        "policy",
        "explain",
        "--tier",
        "2",
        "--dest",
        "www.example.org",
    ]);
    assert_eq!(v["reason"], "restricted_by_tier");
}

#[test]
fn text_output_is_for_people() {
    let out = sandgate(&["policy", "explain", "--tier", "3", "--dest", "10.0.0.1:22"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.starts_with("DENIED 10.0.0.1:22 (open mode): private_range"),
        "{text}"
    );

    let out = sandgate(&[
        "policy",
        "resolve",
        "--tier",
        "3",
        "--network-allow-list",
        "192.0.2.1/24",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("error [invalid_network_allow_list]")
            && err.contains("did you mean 192.0.2.0/24?"),
        "{err}"
    );
}

#[test]
fn the_operator_config_changes_tiers_and_catalog() {
    let dir = std::env::temp_dir().join(format!("sandgate-cli-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("sandgate.toml"),
        "[policy]\n[policy.tiers.\"1\"]\nnetwork = \"configurable\"\n[catalog]\nfile = \"catalog.toml\"\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("catalog.toml"),
        "version = 1\n[[category]]\nid = \"platform\"\nhosts = [\"test.sandgate.api\"]\n",
    )
    .unwrap();
    let config = dir.join("sandgate.toml");
    let config = config.to_str().unwrap();
    let (code, v) = json(&[
        "--config",
        config,
        "policy",
        "resolve",
        "--tier",
        "1",
        "--network-allow-list",
        "192.0.2.0/24",
    ]);
    assert_eq!((code, v["mode"].as_str()), (0, Some("allowlist")));
    let (_, v) = json(&[
        "--config",
        config,
        "policy",
        "explain",
        "--tier",
        "1",
        "--domain-allow-list",
        "x.example.com",
        "--dest",
        "api.sandgate.test",
    ]);
    assert_eq!(v["reason"], "essential_service:platform");
    let (_, v) = json(&["--config", config, "policy", "catalog"]);
    let platform = v
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == "platform")
        .unwrap();
    assert_eq!(platform["hosts"], serde_json::json!(["api.sandgate.test"]));

    std::fs::write(
        dir.join("catalog.toml"),
        "version = 1\n[[category]]\nid = \"x\"\ntitle = \"X\"\nhosts = [\"Bad..Name\"]\n",
    )
    .unwrap();
    let (code, v) = json(&["--config", config, "policy", "resolve", "--tier", "3"]);
    assert_eq!(code, 2);
    assert_eq!(v["error"]["code"], "invalid_catalog");
    let message = v["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("Bad..Name") && message.contains("empty label"),
        "{message}"
    );
    let (code, v) = json(&[
        "--config",
        dir.join("missing.toml").to_str().unwrap(),
        "policy",
        "resolve",
        "--tier",
        "3",
    ]);
    assert_eq!(code, 2);
    assert_eq!(v["error"]["code"], "invalid_config");

    // Placement by tier: a tier of the table, labels that are labels.
    for (placement, fails) in [
        (
            "[placement.tiers.\"4\"]\nlabels = { pool = \"dedicated\" }\n",
            None,
        ),
        (
            "[placement.tiers.\"9\"]\nlabels = { pool = \"x\" }\n",
            Some("\"9\""),
        ),
        (
            "[placement.tiers.\"4\"]\nlabels = { pool = \"not one\" }\n",
            Some("not one"),
        ),
        ("[placement.tiers.\"4\"]\nlables = {}\n", Some("lables")),
        // The registries images come from: a host, credentials whole,
        // the password from a file that exists.
        (
            "[images]\nmax_bytes = 1000000\n[[images.registries]]\nhost = \"registry.example:5000\"\nusername = \"u\"\npassword_file = \"password\"\n",
            None,
        ),
        (
            "[[images.registries]]\nhost = \"registry.example/team\"\n",
            Some("registry.example/team"),
        ),
        (
            "[[images.registries]]\nhost = \"r.example\"\nusername = \"u\"\n",
            Some("go together"),
        ),
        (
            "[[images.registries]]\nhost = \"r.example\"\nusername = \"u\"\npassword_file = \"absent\"\n",
            Some("absent"),
        ),
        (
            "[[images.registries]]\nhost = \"r.example\"\npassword = \"in the open\"\n",
            Some("password"),
        ),
    ] {
        std::fs::write(dir.join("password"), "secret\n").unwrap();
        std::fs::write(dir.join("placement.toml"), placement).unwrap();
        let config = dir.join("placement.toml");
        let (code, v) = json(&[
            "--config",
            config.to_str().unwrap(),
            "policy",
            "resolve",
            "--tier",
            "3",
        ]);
        match fails {
            None => assert_eq!(code, 0, "{v}"),
            Some(word) => {
                assert_eq!(
                    (code, v["error"]["code"].as_str()),
                    (2, Some("invalid_config")),
                    "{v}"
                );
                assert!(
                    v["error"]["message"].as_str().unwrap().contains(word),
                    "{v}"
                );
            }
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn argument_errors_are_json_errors_too() {
    for args in [
        &["policy", "explain", "--tier", "3"][..],
        &["policy", "resolve", "--tier", "256"],
        &["policy", "resolve", "--tier", "3", "--no-such-flag"],
    ] {
        let (code, v) = json(args);
        assert_eq!(code, 2, "{args:?}");
        assert_eq!(v["error"]["code"], "invalid_arguments", "{args:?}");
        assert!(!v["error"]["message"].as_str().unwrap().is_empty());
    }
    // Without --json, clap's own message for people, on standard error.
    let out = sandgate(&["policy", "resolve"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--tier"));
    // Help is not an error.
    assert!(sandgate(&["policy", "--help"]).status.success());
}

#[test]
fn the_demo_matrix_is_all_ok() {
    let (code, v) = json(&["demo"]);
    assert_eq!(code, 0);
    let rows = v.as_array().unwrap();
    assert!(rows.len() >= 25);
    for row in rows {
        for key in ["sandbox", "mode", "target", "expected", "observed", "ok"] {
            assert!(row.get(key).is_some(), "{row}");
        }
        assert_eq!(row["ok"], true, "{row}");
    }
    let modes: std::collections::BTreeSet<_> =
        rows.iter().filter_map(|r| r["mode"].as_str()).collect();
    for mode in ["open", "allowlist", "restricted", "blocked"] {
        assert!(modes.contains(mode), "{modes:?}");
    }
}

#[test]
fn completions_are_generated_for_each_shell_and_bash_reads_its_script() {
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let out = sandgate(&["completions", shell]);
        assert!(out.status.success(), "{shell}");
        let script = String::from_utf8_lossy(&out.stdout);
        // Every command, down to the network subcommands, is completed.
        for word in ["sandbox", "network", "approve", "transfer-quota-mib"] {
            assert!(script.contains(word), "{shell}: no {word}");
        }
    }
    // Bash parses the script and, sourced, completes `sandgate sa<TAB>`.
    let script = String::from_utf8_lossy(&sandgate(&["completions", "bash"]).stdout).into_owned();
    let probe = format!(
        "{script}\nCOMP_WORDS=(sandgate sa); COMP_CWORD=1; COMP_LINE='sandgate sa'; COMP_POINT=11\n\
         _sandgate sandgate sa sandgate; printf '%s\\n' \"${{COMPREPLY[@]}}\"\n"
    );
    // Through standard input: the script is larger than one argument
    // may be (128 KiB).
    let mut bash = Command::new("bash")
        .arg("-s")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        bash.stdin
            .take()
            .unwrap()
            .write_all(probe.as_bytes())
            .unwrap();
    }
    let out = bash.wait_with_output().unwrap();
    let offered = String::from_utf8_lossy(&out.stdout);
    assert!(
        offered.lines().any(|l| l == "sandbox"),
        "{offered}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!sandgate(&["completions", "tcsh"]).status.success());
}

#[test]
fn manual_pages_are_written_for_every_command() {
    let main = sandgate(&["man"]);
    assert!(main.status.success());
    let page = String::from_utf8_lossy(&main.stdout);
    assert!(
        page.starts_with(".ie") || page.contains(".TH sandgate 1"),
        "{page}"
    );
    let dir = std::env::temp_dir().join(format!("sandgate-man-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let out = sandgate(&["man", "--out-dir", dir.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for page in [
        "sandgate.1",
        "sandgate-sandbox.1",
        "sandgate-sandbox-network.1",
        "sandgate-sandbox-network-usage.1",
        "sandgate-admin.1",
        "sandgate-server.1",
    ] {
        let text =
            std::fs::read_to_string(dir.join(page)).unwrap_or_else(|e| panic!("{page}: {e}"));
        assert!(text.contains(".SH NAME"), "{page}");
    }
    // man(1) renders the server's page, its options described.
    let shown = Command::new("man")
        .args(["-l", "-P", "cat"])
        .arg(dir.join("sandgate-server.1"))
        .env("MANWIDTH", "100")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&shown.stdout);
    assert!(text.contains("--execs-per-org"), "{text}");
    let _ = std::fs::remove_dir_all(&dir);
}
