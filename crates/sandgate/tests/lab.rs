//! `sandgate lab up` and `sandgate lab down`, as run by hand (needs root).

#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

fn namespaces(prefix: &str) -> Vec<String> {
    std::fs::read_dir("/run/netns")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(prefix))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn lab_up_then_lab_down() {
    lab_up_serves_until_terminated_then_removes_itself();
    lab_down_removes_what_a_killed_lab_left();
}

fn lab_up_serves_until_terminated_then_removes_itself() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_sandgate"))
        .args(["lab", "up", "--json"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut reader = BufReader::new(child.stdout.take().unwrap());
    let mut text = String::new();
    while !text.trim_end().ends_with('}') {
        assert!(
            reader.read_line(&mut text).unwrap() > 0,
            "lab up ended early: {text}"
        );
    }
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let host = v["host"].as_str().unwrap().to_string();
    let tag = host.trim_end_matches("-host").to_string();
    assert_eq!(namespaces(&format!("{tag}-")).len(), 2);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert!(child.wait().unwrap().success());
    assert!(namespaces(&format!("{tag}-")).is_empty());
}

/// `lab down` removes every lab on the machine, so it runs after the test
/// above, never beside it.
fn lab_down_removes_what_a_killed_lab_left() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_sandgate"))
        .args(["lab", "up", "--json"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut reader = BufReader::new(child.stdout.take().unwrap());
    let mut text = String::new();
    while !text.trim_end().ends_with('}') {
        assert!(reader.read_line(&mut text).unwrap() > 0);
    }
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let tag = v["host"]
        .as_str()
        .unwrap()
        .trim_end_matches("-host")
        .to_string();
    child.kill().unwrap(); // SIGKILL: no clean-up ran
    child.wait().unwrap();
    assert_eq!(namespaces(&format!("{tag}-")).len(), 2);
    let out = Command::new(env!("CARGO_BIN_EXE_sandgate"))
        .args(["lab", "down", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["removed"]
        .as_array()
        .unwrap()
        .iter()
        .any(|n| n.as_str() == Some(&format!("{tag}-host"))));
    assert!(namespaces(&format!("{tag}-")).is_empty());
}
