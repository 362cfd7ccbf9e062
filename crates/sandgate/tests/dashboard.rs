//! The dashboard in a real browser: Debian's headless Chromium, driven
//! over WebDriver (chromedriver, fantoccini), against a real `sandgate
//! server` in the lab. The browser, its driver, the server's API socket
//! and this test's own connections live in a namespace of their own that
//! has only loopback: whatever the browser would send elsewhere has no
//! route. Needs root, runc, busybox-static, chromium and chromium-driver.

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use fantoccini::{Client, ClientBuilder, Locator};
use sandgate_lab::addrs::*;
use sandgate_lab::Lab;
use sandgate_netns::Netns;
use serde_json::json;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A chromedriver process and the browser it starts (all of whose
/// processes name `profile`): killed on drop, however the test ended, and
/// the profile removed.
struct Driver {
    child: Child,
    profile: std::path::PathBuf,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let profile = self.profile.to_string_lossy().into_owned();
        let browser: Vec<i32> = processes()
            .filter(|(pid, _, _)| {
                let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                String::from_utf8_lossy(&cmdline).contains(&profile)
            })
            .map(|(pid, _, _)| pid)
            .collect();
        let _ = self.child.kill();
        let _ = self.child.wait();
        for pid in &browser {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(*pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        // Orphans come to this process (a subreaper, see the test): each
        // dead one is reaped, none is left a zombie.
        let deadline = Instant::now() + Duration::from_secs(5);
        let me = std::process::id();
        loop {
            let zombies: Vec<i32> = processes()
                .filter(|(_, ppid, state)| *ppid == me && *state == 'Z')
                .map(|(pid, _, _)| pid)
                .collect();
            for pid in &zombies {
                let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(*pid), None);
            }
            let alive = browser
                .iter()
                .any(|pid| std::path::Path::new(&format!("/proc/{pid}")).exists());
            if !alive || Instant::now() > deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

/// Every process: its id, its parent's and its state letter.
fn processes() -> impl Iterator<Item = (i32, u32, char)> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let pid = entry.file_name().to_string_lossy().parse::<i32>().ok()?;
            let stat = std::fs::read_to_string(entry.path().join("stat")).ok()?;
            // "pid (comm) S ppid ...": the name may hold anything.
            let mut rest = stat[stat.rfind(')')? + 1..].split_whitespace();
            let state = rest.next()?.chars().next()?;
            let ppid = rest.next()?.parse().ok()?;
            Some((pid, ppid, state))
        })
}

/// Starts chromedriver on a free port of this namespace's loopback, its
/// browser's files (profile, home) in `profile`, and waits until it
/// answers.
fn driver(profile: &std::path::Path) -> (Driver, u16) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    std::fs::create_dir_all(profile).unwrap();
    let child = Command::new("chromedriver")
        .arg(format!("--port={port}"))
        .env("HOME", profile)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromedriver (Debian's chromium-driver; scripts/setup installs it)");
    let driver = Driver {
        child,
        profile: profile.to_path_buf(),
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while ureq::get(format!("http://127.0.0.1:{port}/status"))
        .call()
        .is_err()
    {
        assert!(Instant::now() < deadline, "chromedriver did not answer");
        std::thread::sleep(Duration::from_millis(100));
    }
    (driver, port)
}

/// The text of the element `css` once it contains `needle` (waiting up to
/// `within`), or a failure that shows what it held.
async fn text_with(c: &Client, css: &str, needle: &str, within: Duration) -> String {
    let deadline = Instant::now() + within;
    let mut last = String::new();
    loop {
        if let Ok(el) = c.find(Locator::Css(css)).await {
            last = el.text().await.unwrap_or_default();
            if last.contains(needle) {
                return last;
            }
        }
        assert!(
            Instant::now() < deadline,
            "{css} never held {needle:?}; it holds {last:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Replaces the value of input `css` with `text`.
async fn type_into(c: &Client, css: &str, text: &str) {
    let el = c.find(Locator::Css(css)).await.unwrap();
    el.clear().await.unwrap();
    el.send_keys(text).await.unwrap();
}

async fn click(c: &Client, css: &str) {
    c.find(Locator::Css(css))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
}

#[test]
fn a_user_signs_in_creates_sees_a_denial_live_and_edits_the_policy() {
    // The browser's helpers outlive their parents; they come to this
    // process, which reaps them (see `Driver`).
    nix::sys::prctl::set_child_subreaper(true).unwrap();
    let lab = Lab::up().unwrap();
    // Named after the lab: the lab's drop removes it.
    let browser_ns = Netns::create(&format!("{}-browser", lab.tag())).unwrap();
    browser_ns
        .run(|| {
            let mut rt = sandgate_netns::Rtnl::open()?;
            let lo = rt.link_index("lo")?.unwrap();
            rt.set_up(lo)
        })
        .unwrap();
    let dir = std::env::temp_dir().join(format!("sandgate-dashboard-{}", lab.tag()));
    let _ = std::fs::remove_dir_all(&dir);
    browser_ns
        .run(|| {
            // Everything below (and every process it starts) is in the
            // browser's namespace.
            let mut guard = Cleanup {
                dir: dir.clone(),
                server: Some(start_server(&lab, &dir)),
            };
            let url = guard.server.as_ref().unwrap().url.clone();
            let (_, key) = organization(&url, TOKEN, "acme", 3);
            // Its files come with their own security policy.
            for (file, kind) in [("", "text/html"), ("app.js", "text/javascript")] {
                let answer = ureq::get(format!("{url}/dashboard/{file}")).call().unwrap();
                let header = |name: &str| {
                    answer
                        .headers()
                        .get(name)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_string()
                };
                assert_eq!(
                    header("content-security-policy"),
                    sandgate_server::dashboard::POLICY
                );
                assert!(header("content-type").starts_with(kind));
                assert_eq!(header("x-content-type-options"), "nosniff");
            }
            let profile = dir.with_extension("chromium");
            let (driver, port) = driver(&profile);
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(session(&url, &key, port, &profile));
            drop(driver);
            guard.server.take().unwrap().stop_gracefully();
            Ok(())
        })
        .unwrap();
}

async fn session(url: &str, key: &str, port: u16, profile: &std::path::Path) {
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": "/usr/bin/chromium",
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                "--disable-dev-shm-usage", "--no-first-run",
                "--disable-crash-reporter", "--disable-breakpad",
                format!("--user-data-dir={}", profile.display())],
        }),
    );
    let c = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{port}"))
        .await
        .unwrap();
    let wait = Duration::from_secs(15);

    // A wrong key is refused with the API's code; the right one signs in.
    c.goto(&format!("{url}/dashboard")).await.unwrap();
    type_into(&c, "#key", "sk_not_a_key").await;
    click(&c, "#sign-in-form button").await;
    text_with(&c, "#sign-in-error", "unauthorized", wait).await;
    type_into(&c, "#key", key).await;
    click(&c, "#sign-in-form button").await;
    text_with(&c, "#who", "acme (tier 3)", wait).await;

    // A create with a bad list shows the API's error at the field; fixed,
    // the sandbox is made, listed and opened.
    type_into(&c, "#create-form input[name=name]", "web").await;
    type_into(
        &c,
        "#create-form input[name=networkAllowList]",
        "192.0.2.300",
    )
    .await;
    click(&c, "#create-form button[type=submit]").await;
    text_with(
        &c,
        "#create-form [data-error-for=networkAllowList]",
        "invalid_network_allow_list",
        wait,
    )
    .await;
    type_into(
        &c,
        "#create-form input[name=networkAllowList]",
        &format!("{SERVER4_B}/32"),
    )
    .await;
    click(&c, "#create-form button[type=submit]").await;
    text_with(&c, "#detail-name", "web", Duration::from_secs(30)).await;
    text_with(&c, "#sandboxes", "web", wait).await;
    text_with(&c, "#effective", "allowlist", wait).await;

    // A denied connection from the sandbox appears live.
    assert!(echoes(url, key, "web", SERVER4_B));
    assert!(!echoes(url, key, "web", SERVER4));
    let events = text_with(&c, "#events", &SERVER4.to_string(), wait).await;
    assert!(events.contains("connection"), "{events}");
    // So are its flows, the allowed one and the refused one.
    let flows = text_with(&c, "#flows", &SERVER4.to_string(), wait).await;
    assert!(flows.contains("not_in_allow_list"), "{flows}");
    let flows = text_with(&c, "#flows", &SERVER4_B.to_string(), wait).await;
    assert!(flows.contains("allowed"), "{flows}");

    // Explain says why; the policy is edited; the edit is in force.
    type_into(
        &c,
        "#explain-form input[name=dest]",
        &format!("{SERVER4}:{TCP_ECHO}"),
    )
    .await;
    click(&c, "#explain-form button").await;
    text_with(&c, "#explanation", "denied", wait).await;
    type_into(
        &c,
        "#edit-form input[name=networkAllowList]",
        &format!("{SERVER4_B}/32,{SERVER4}/32"),
    )
    .await;
    click(&c, "#edit-form button[type=submit]").await;
    text_with(&c, "#edit-ok", "Saved", wait).await;
    text_with(&c, "#effective", &SERVER4.to_string(), wait).await;
    assert!(echoes(url, key, "web", SERVER4));
    click(&c, "#explain-form button").await;
    text_with(&c, "#explanation", "allowed", wait).await;

    // The network test runs from the page.
    click(&c, "#test").await;
    text_with(&c, "#test-results", "yes", Duration::from_secs(60)).await;

    // A bad edit is refused at its field and changes nothing.
    type_into(&c, "#edit-form input[name=domainAllowList]", "not a name").await;
    click(&c, "#edit-form button[type=submit]").await;
    text_with(
        &c,
        "#edit-form [data-error-for=domainAllowList]",
        "invalid_domain_allow_list",
        wait,
    )
    .await;
    assert!(echoes(url, key, "web", SERVER4));

    // Approvals on: a refused connection asks, and is approved from the
    // page; then it passes.
    type_into(&c, "#edit-form input[name=domainAllowList]", "").await;
    click(&c, "#edit-form input[name=networkApprovals]").await;
    click(&c, "#edit-form button[type=submit]").await;
    text_with(&c, "#edit-ok", "Saved", wait).await;
    assert!(!echoes(url, key, "web", SERVER6));
    text_with(&c, "#requests", "pending", wait).await;
    click(&c, "#requests button").await;
    text_with(&c, "#requests", "approved", wait).await;
    assert!(echoes(url, key, "web", SERVER6));
    c.close().await.unwrap();
}
