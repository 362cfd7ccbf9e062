//! The SDKs' own test suites, each run against a real `sandgate server` in
//! a lab (needs root, runc, busybox-static, and each SDK's language: see
//! scripts/packages.txt). The suites get the server, keys of a tier-3 and
//! a tier-1 organization and of one given a known egress address (with
//! the CLI), and the lab's echo and "who am I" servers in their
//! environment.

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use sandgate_lab::addrs::*;
use sandgate_lab::Lab;
use std::path::Path;
use std::process::Command;

/// The commands one organization may run at once on the suites' server
/// (a suite fills them to see a 429 and its `Retry-After`).
const EXECS_PER_ORG: &str = "4";

/// A lab, a server, two organizations: the environment of an SDK suite.
struct Setup {
    _lab: Lab,
    guard: Cleanup,
    _registry: sandgate_lab::registry::LabRegistry,
    env: Vec<(String, String)>,
}

fn setup() -> Setup {
    let lab = Lab::up().unwrap();
    let dir = std::env::temp_dir().join(format!("sandgate-sdk-{}", lab.tag()));
    let _ = std::fs::remove_dir_all(&dir);
    // The secrets' key (the lab's: the suites create secrets).
    std::fs::create_dir_all(&dir).unwrap();
    let secrets_key = dir.join("secrets.key");
    std::fs::write(&secrets_key, "5a".repeat(32)).unwrap();
    let secrets_key = secrets_key.to_string_lossy().into_owned();
    // A registry in the lab's world, the only one the server's runner
    // pulls from, with an image the suites make a snapshot of.
    let registry = sandgate_lab::registry::LabRegistry::start(&lab).unwrap();
    let config = dir.join("sandgate.toml");
    std::fs::write(
        &config,
        format!(
            "[[images.registries]]\nhost = \"{}\"\nca_file = \"{}\"\n",
            registry.host(),
            registry.ca_file().display()
        ),
    )
    .unwrap();
    let config = config.to_string_lossy().into_owned();
    let guard = Cleanup {
        server: Some(start_server_with(
            &lab,
            &dir,
            &[
                "--execs-per-org",
                EXECS_PER_ORG,
                "--secrets-key-file",
                &secrets_key,
                "--config",
                &config,
            ],
        )),
        dir,
    };
    let url = guard.server.as_ref().unwrap().url.clone();
    let image = push_image(&lab, &registry, &guard.dir);
    let archive = archive(&guard.dir);
    let org_of = |name: &str, tier: &str| organization(&url, TOKEN, name, tier.parse().unwrap());
    let key_of = |name: &str, tier: &str| org_of(name, tier).1;
    // An organization the operator gives the lab's known egress address.
    let (egress_org, egress_key) = org_of("sdk-egress", "3");
    let (code, v) = cli(
        &url,
        TOKEN,
        &[
            "admin",
            "org",
            "egress-address",
            &egress_org,
            "--ipv4",
            &EGRESS4.to_string(),
            "--ipv6",
            &EGRESS6.to_string(),
        ],
    );
    assert_eq!(code, 0, "{v}");
    assert_eq!(
        v["organization"]["egressAddress"]["ipv4"],
        EGRESS4.to_string()
    );
    let env = vec![
        ("SANDGATE_API_URL".into(), url.clone()),
        ("SANDGATE_API_KEY".into(), key_of("sdk-tier3", "3")),
        ("SANDGATE_TEST_TIER1_KEY".into(), key_of("sdk-tier1", "1")),
        ("SANDGATE_TEST_SERVER".into(), SERVER4.to_string()),
        ("SANDGATE_TEST_OTHER".into(), SERVER4_B.to_string()),
        ("SANDGATE_TEST_PORT".into(), TCP_ECHO.to_string()),
        ("SANDGATE_TEST_EGRESS_KEY".into(), egress_key),
        ("SANDGATE_TEST_EGRESS4".into(), EGRESS4.to_string()),
        ("SANDGATE_TEST_WHOAMI_PORT".into(), WHOAMI.to_string()),
        ("SANDGATE_TEST_EXECS_PER_ORG".into(), EXECS_PER_ORG.into()),
        ("SANDGATE_TEST_IMAGE".into(), image),
        ("SANDGATE_TEST_ARCHIVE".into(), archive),
        ("SANDGATE_TEST_OPERATOR_TOKEN".into(), TOKEN.into()),
    ];
    Setup {
        _lab: lab,
        guard,
        _registry: registry,
        env,
    }
}

/// A root filesystem archive (`docker export`'s shape): the runner's
/// busybox root with `/etc/app.conf` ("from the archive"); its path.
fn archive(dir: &Path) -> String {
    let archive = dir.join("exported.tar");
    busybox_archive(dir, &archive, Some(("etc/app.conf", "from the archive\n")));
    archive.to_string_lossy().into_owned()
}

/// Pushes an image of the runner's busybox root and a layer with
/// `/etc/app.conf` ("from the image") to `registry`: its reference.
fn push_image(lab: &Lab, registry: &sandgate_lab::registry::LabRegistry, dir: &Path) -> String {
    let tar_of = |root: &Path| {
        let out = Command::new("tar")
            .arg("-C")
            .arg(root)
            .args(["-czf", "-", "."])
            .output()
            .unwrap();
        assert!(out.status.success());
        out.stdout
    };
    let own = dir.join("own-layer");
    std::fs::create_dir_all(own.join("etc")).unwrap();
    std::fs::write(own.join("etc/app.conf"), "from the image\n").unwrap();
    let base = tar_of(&dir.join("runner/runtime/snapshots/busybox/rootfs"));
    registry
        .push(lab, "team/app:1", &[base, tar_of(&own)])
        .unwrap();
    format!("{}/team/app:1", registry.host())
}

/// Runs `program args` in `dir` with the suite's environment; panics with
/// its output unless it succeeds. Returns what it printed (both streams).
fn run_suite(
    s: &Setup,
    dir: &Path,
    program: &str,
    args: &[&str],
    extra: &[(&str, String)],
) -> String {
    let mut cmd = Command::new(program);
    cmd.args(args)
        .current_dir(dir)
        .envs(s.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .envs(extra.iter().map(|(k, v)| (*k, v.as_str())));
    let out = succeeded(cmd);
    let _ = &s.guard;
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The number in "Ran N tests" (Python's unittest), so that a suite that
/// found no tests cannot pass.
fn ran(output: &str) -> usize {
    output
        .lines()
        .find_map(|l| {
            l.strip_prefix("Ran ")?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

fn sdk_dir(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../sdk")
        .join(name)
}

#[test]
fn the_python_sdk_suite_passes_against_a_real_server() {
    let s = setup();
    let dir = sdk_dir("python");
    let src = dir.join("src").display().to_string();
    let output = run_suite(
        &s,
        &dir,
        "python3",
        &["-m", "unittest", "discover", "-v", "-s", "tests"],
        &[("PYTHONPATH", src)],
    );
    println!("{output}");
    assert!(ran(&output) >= 8, "{output}");
}

/// The counts of node's test runner ("# pass N", "# fail N").
fn node_counts(output: &str) -> (usize, usize) {
    let count = |what: &str| {
        output
            .lines()
            .find_map(|l| l.strip_prefix(what)?.trim().parse().ok())
            .unwrap_or(0)
    };
    (count("# pass "), count("# fail "))
}

#[test]
fn the_typescript_sdk_suite_passes_against_a_real_server() {
    let s = setup();
    let dir = sdk_dir("typescript");
    // Built here (scripts/setup installed the compiler with `npm ci`).
    run_suite(
        &s,
        &dir,
        "node",
        &["node_modules/typescript/bin/tsc", "-p", "."],
        &[],
    );
    let output = run_suite(&s, &dir, "node", &["--test", "dist/test/"], &[]);
    println!("{output}");
    let (pass, fail) = node_counts(&output);
    assert!(pass >= 7 && fail == 0, "{output}");
}

/// Runs `cmd`; panics with its output unless it succeeds.
fn succeeded(mut cmd: Command) -> std::process::Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e} (see scripts/packages.txt)"));
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Runs `program args` in `dir`; panics with its output unless it
/// succeeds. Returns its standard output.
fn run(dir: &Path, program: &str, args: &[&str]) -> String {
    let mut cmd = Command::new(program);
    cmd.args(args).current_dir(dir);
    String::from_utf8_lossy(&succeeded(cmd).stdout).into_owned()
}

#[test]
fn the_typescript_package_loads_as_commonjs_and_as_an_es_module() {
    // The package as `npm pack` makes it (its `prepare` builds both forms),
    // unpacked where a project's `node_modules` would hold it: `require`
    // and `import` find it through its `exports` map and see the same API.
    let dir = sdk_dir("typescript");
    let project = std::env::temp_dir().join(format!("sandgate-ts-package-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&project);
    std::fs::create_dir_all(project.join("node_modules")).unwrap();
    let packed = run(
        &dir,
        "npm",
        &[
            "pack",
            "--silent",
            "--pack-destination",
            project.to_str().unwrap(),
        ],
    );
    let tarball = project.join(packed.trim().lines().last().unwrap());
    run(
        &project.join("node_modules"),
        "tar",
        &["-xzf", tarball.to_str().unwrap()],
    );
    std::fs::rename(
        project.join("node_modules/package"),
        project.join("node_modules/sandgate"),
    )
    .unwrap();
    let names = "Object.keys(m).sort().join(',') + ' ' + typeof m.Sandgate";
    let cjs = run(
        &project,
        "node",
        &[
            "-e",
            &format!("const m = require('sandgate'); console.log({names})"),
        ],
    );
    let esm = run(
        &project,
        "node",
        &[
            "--input-type=module",
            "-e",
            &format!("import * as m from 'sandgate'; console.log({names})"),
        ],
    );
    assert!(
        cjs.contains("Sandgate,") && cjs.trim().ends_with(" function"),
        "{cjs}"
    );
    assert_eq!(cjs, esm, "CommonJS and ES module exports differ");
    // What the package holds: both builds and their declarations, no tests.
    let listed = run(&project, "tar", &["-tzf", tarball.to_str().unwrap()]);
    for file in [
        "package/dist/cjs/index.js",
        "package/dist/cjs/index.d.ts",
        "package/dist/esm/index.js",
        "package/dist/esm/index.d.ts",
        "package/dist/esm/package.json",
    ] {
        assert!(listed.lines().any(|l| l == file), "{file} not in {listed}");
    }
    assert!(!listed.contains("test"), "{listed}");
    let _ = std::fs::remove_dir_all(&project);
}

/// The counts of minitest's summary ("N runs, N assertions, N failures,
/// N errors").
fn minitest_counts(output: &str) -> (usize, usize) {
    let line = output.lines().find(|l| l.contains(" runs, ")).unwrap_or("");
    let number = |what: &str| {
        line.split(", ")
            .find_map(|part| part.strip_suffix(what)?.trim().parse().ok())
            .unwrap_or(usize::MAX)
    };
    (number(" runs"), number(" failures") + number(" errors"))
}

#[test]
fn the_ruby_sdk_suite_passes_against_a_real_server() {
    let s = setup();
    let dir = sdk_dir("ruby");
    let output = run_suite(&s, &dir, "ruby", &["-Ilib", "test/test_sandgate.rb"], &[]);
    println!("{output}");
    let (runs, bad) = minitest_counts(&output);
    assert!(runs >= 7 && bad == 0, "{output}");
}
