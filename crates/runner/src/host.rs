//! The host's own addresses, always denied to every sandbox: read at
//! start and kept current as they change.
//!
//! The kernel needs no list of them: whatever a slot sends to an address
//! of the host is delivered locally, where the dataplane's input hook
//! drops everything but the redirected DNS. What needs the list is what
//! *says* what the kernel does, and what the DNS service lets through:
//! `explain` and `network test` (`always_denied:host`), and DNS answers,
//! from which the host's addresses are removed like any always-denied
//! address. [`LivePolicy`] holds the operator's configuration with the
//! host's addresses as they are now; a thread of the runner follows the
//! host namespace's address changes over rtnetlink and updates it.

use sandgate_netns::{AddressMonitor, Netns, Rtnl};
use sandgate_policy::PolicyConfig;
use std::io;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::thread::JoinHandle;
use std::time::Duration;

/// The policy configuration as the running host makes it.
#[derive(Debug)]
pub struct LivePolicy {
    base: PolicyConfig,
    current: RwLock<Arc<PolicyConfig>>,
}

impl LivePolicy {
    /// The operator's configuration, before the host's addresses are known.
    pub fn new(base: PolicyConfig) -> LivePolicy {
        LivePolicy {
            current: RwLock::new(Arc::new(base.clone())),
            base,
        }
    }

    /// The configuration now.
    pub fn current(&self) -> Arc<PolicyConfig> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Puts the host's addresses as they are now in place of the last
    /// ones; whether they changed.
    pub fn set_host_addresses(&self, addrs: impl IntoIterator<Item = IpAddr>) -> bool {
        let next = self.base.with_host_addresses(addrs);
        let mut current = self.current.write().unwrap_or_else(|e| e.into_inner());
        let before: Vec<IpAddr> = current.ranges().host_addresses().collect();
        let after: Vec<IpAddr> = next.ranges().host_addresses().collect();
        if before == after {
            return false;
        }
        *current = Arc::new(next);
        true
    }

    /// Whether a change of `addr` can change the host's addresses here:
    /// not one in the sandbox subnets (a slot's gateway) or a link-local
    /// one (a slot's link), which come with every slot made or removed.
    fn relevant(&self, addr: IpAddr) -> bool {
        self.base.ranges().host_relevant(addr)
    }
}

/// Reads every address of the host namespace into `live`.
fn refresh(rtnl: &mut Rtnl, live: &LivePolicy) -> io::Result<()> {
    let addrs = rtnl.addresses()?.into_iter().map(|(_, a)| a);
    if live.set_host_addresses(addrs) {
        let now: Vec<String> = live
            .current()
            .ranges()
            .host_addresses()
            .map(|a| a.to_string())
            .collect();
        tracing::info!(addresses = %now.join(", "), "the host's addresses (always denied to sandboxes)");
    }
    Ok(())
}

/// The thread that keeps [`LivePolicy`] current.
#[derive(Debug)]
pub struct HostWatch {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl HostWatch {
    /// Reads the host's addresses now (in `host`, or the process's
    /// namespace), then follows their changes on a thread of its own.
    pub fn start(host: Option<&Netns>, live: Arc<LivePolicy>) -> io::Result<HostWatch> {
        let open = || -> io::Result<(Rtnl, AddressMonitor)> {
            // Subscribed before the first read, so that no change between
            // the two is missed.
            let monitor = AddressMonitor::open()?;
            Ok((Rtnl::open()?, monitor))
        };
        let (mut rtnl, mut monitor) = match host {
            Some(ns) => ns.run(open)?,
            None => open()?,
        };
        refresh(&mut rtnl, &live)?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        // The sockets were opened in the host namespace: the thread that
        // reads them may live anywhere.
        let thread = std::thread::Builder::new()
            .name("sandgate-host-addresses".into())
            .spawn(move || {
                while !flag.load(Ordering::SeqCst) {
                    let stale = match monitor.wait(Duration::from_millis(200)) {
                        Ok(Some(changed)) => changed.iter().any(|a| live.relevant(*a)),
                        // Changes were lost: read everything again.
                        Ok(None) => true,
                        Err(e) => {
                            tracing::warn!(error = %e, "watching the host's addresses");
                            std::thread::sleep(Duration::from_secs(1));
                            true
                        }
                    };
                    if stale {
                        if let Err(e) = refresh(&mut rtnl, &live) {
                            tracing::warn!(error = %e, "reading the host's addresses");
                        }
                    }
                }
            })?;
        Ok(HostWatch {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for HostWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            if t.join().is_err() {
                tracing::error!("the host address watcher panicked");
            }
        }
    }
}
