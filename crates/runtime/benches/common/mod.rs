//! What the runtime's benchmarks share.

use std::path::Path;
use std::process::{Command, Stdio};

/// Runs runc with `args` under the state directory `root`, from the
/// calling process's mount namespace (the baseline's runc, not the
/// runtime's), and checks that it succeeded.
pub fn runc(root: &Path, args: &[&str]) {
    let status = Command::new("runc")
        .arg("--root")
        .arg(root)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "runc {args:?}");
}
