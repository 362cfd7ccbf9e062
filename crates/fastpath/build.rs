//! Builds the BPF program with clang (Debian's `clang`, with the BPF
//! helpers' declarations of `libbpf-dev`); the object is embedded in the
//! crate.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    let source = "bpf/fastpath.c";
    println!("cargo:rerun-if-changed={source}");
    println!("cargo:rerun-if-env-changed=CLANG");
    let out =
        PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR")).join("fastpath.o");
    let arch = std::env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_else(|_| "x86_64".into());
    // The kernel's headers include <asm/types.h>, which Debian keeps under
    // the machine's multiarch directory.
    let multiarch = format!("/usr/include/{arch}-linux-gnu");
    let clang = std::env::var("CLANG").unwrap_or_else(|_| "clang".into());
    let status = Command::new(&clang)
        .args(["-O2", "-g", "-Wall", "-Werror", "-target", "bpf"])
        .arg(format!("-I{multiarch}"))
        .args(["-c", source, "-o"])
        .arg(&out)
        .status();
    match status {
        Ok(s) if s.success() => {}
        Ok(s) => panic!("clang could not build the fast path's BPF program ({source}): {s}"),
        Err(e) => panic!(
            "the fast path's BPF program is built by clang, which could not be run ({clang}: {e}); \
             install Debian's clang and libbpf-dev (scripts/setup does)"
        ),
    }
}
