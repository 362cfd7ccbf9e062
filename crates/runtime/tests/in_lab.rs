//! A sandbox in a dataplane slot of the lab (REQUIREMENTS.md section 5),
//! under each runtime class: what a program inside the container reaches
//! is what its policy allows, and root inside cannot take more. Needs
//! root, runc, runsc and busybox-static.

#![allow(clippy::unwrap_used)]

use sandgate_dataplane::{Dataplane, DataplaneConfig};
use sandgate_lab::addrs::*;
use sandgate_lab::{lab_policy, Lab};
use sandgate_netns::Netns;
use sandgate_policy::SettingsRequest;
use sandgate_runtime::{ExecRequest, Resources, Runtime, RuntimeClass, RuntimeConfig};
use std::net::IpAddr;
use std::time::Duration;

/// A TCP echo from inside the sandbox: `true` when the lab server echoed.
fn echoes(rt: &Runtime, id: &str, dest: IpAddr) -> bool {
    assert!(is_lab_address(dest), "{dest} is not a lab address");
    let r = rt
        .exec(
            id,
            &ExecRequest {
                command: format!("echo sandgate | nc -w 1 {dest} {TCP_ECHO}"),
                timeout: Some(Duration::from_secs(5)),
                ..Default::default()
            },
        )
        .unwrap();
    r.stdout == "sandgate\n"
}

#[test]
fn a_container_reaches_what_its_policy_allows_and_nothing_else() {
    in_a_slot(RuntimeClass::Runc);
}

/// Under gVisor, the sandbox's sockets are host sockets in the slot's
/// namespace (`--network=host`): the slot's interface carries them, and
/// the same rules hold.
#[test]
fn under_gvisor_a_container_reaches_what_its_policy_allows_and_nothing_else() {
    in_a_slot(RuntimeClass::Runsc);
}

fn in_a_slot(class: RuntimeClass) {
    let lab = Lab::up().unwrap();
    let policy = lab_policy();
    let dir = std::env::temp_dir().join(format!("sandgate-rt-lab-{}", lab.tag()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut cfg = DataplaneConfig::new(&policy, lab.tag(), dir.join("dataplane.json")).unwrap();
    cfg.host_netns = Some(lab.host().name().to_string());
    let (mut dp, _) = Dataplane::start(cfg, policy.clone()).unwrap();
    let rt = Runtime::new(RuntimeConfig::new(dir.join("runtime"))).unwrap();
    if let Err(e) = rt.usable(class) {
        panic!("{e} (scripts/setup installs runsc)");
    }
    rt.build_busybox("busybox").unwrap();

    let request = SettingsRequest {
        network_allow_list: Some("192.0.2.10/32"),
        ..Default::default()
    };
    let settings = policy.settings_for_create(3, &request).unwrap();
    let effective = policy.resolve(3, &settings).unwrap();
    let slot = dp.create("c", &effective).unwrap();
    dp.attach_later();
    let id = format!("lab-{class}-{}", std::process::id());
    rt.create(
        &id,
        "busybox",
        &Netns::path_of(&slot.netns),
        IpAddr::V4(slot.gateway4),
        &Resources {
            class,
            ..Default::default()
        },
    )
    .unwrap();
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        // The container is in the slot: its address is the slot's.
        let ip = rt
            .exec(
                &id,
                &ExecRequest {
                    command: "ip -4 addr".into(),
                    ..Default::default()
                },
            )
            .unwrap();
        assert!(
            ip.stdout.contains(&slot.sandbox4.to_string()),
            "{}",
            ip.stdout
        );
        // The allowed server answers; the others do not.
        assert!(echoes(&rt, &id, SERVER4));
        for dest in [SERVER4_B, SERVER6, PRIVATE_SERVER4, DENIED_SERVER4] {
            assert!(!echoes(&rt, &id, dest), "{dest} answered");
        }
        // Root inside cannot change its address, its routes or the rules
        // to get round that, nor send forged raw packets.
        for attempt in [
            "ip addr add 198.51.100.77/32 dev eth0",
            "ip route add 198.51.100.0/24 dev eth0",
            "nft flush ruleset",
            "ping -c 1 -W 1 198.51.100.10",
        ] {
            let r = rt
                .exec(
                    &id,
                    &ExecRequest {
                        command: attempt.into(),
                        ..Default::default()
                    },
                )
                .unwrap();
            assert_ne!(r.exit_code, 0, "{attempt:?} succeeded: {}", r.result);
        }
        assert!(!echoes(&rt, &id, SERVER4_B));
        assert!(echoes(&rt, &id, SERVER4));
    }));
    rt.delete(&id).unwrap();
    dp.delete(slot.index).unwrap();
    drop(dp);
    let _ = std::fs::remove_dir_all(&dir);
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}
