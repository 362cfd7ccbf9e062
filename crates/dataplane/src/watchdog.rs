//! The watchdog: if the ruleset disappears (someone runs `nft flush
//! ruleset`, a firewall reloads), every slot interface goes down at once,
//! so that a sandbox is cut off rather than left with no enforcement. The
//! next start of the dataplane loads the ruleset, puts every policy back
//! and brings the interfaces up again.

use crate::config::SLOT_IF_PREFIX;
use sandgate_netns::{Netns, Rtnl};
use sandgate_nftables::NftSocket;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// A running watchdog.
#[derive(Debug)]
pub struct Watchdog {
    stop: Arc<AtomicBool>,
    tripped: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Watchdog {
    /// Looks for `table` every `interval` from `host` (or here).
    pub fn start(host: Option<&Netns>, table: &str, interval: Duration) -> io::Result<Watchdog> {
        let stop = Arc::new(AtomicBool::new(false));
        let tripped = Arc::new(AtomicBool::new(false));
        let (s, t, table) = (stop.clone(), tripped.clone(), table.to_string());
        let body = move || {
            let (Ok(mut nft), Ok(mut rtnl)) = (NftSocket::open(), Rtnl::open()) else {
                // Without its sockets the watchdog cannot watch: say so by
                // tripping, which cuts the slots off.
                t.store(true, Ordering::SeqCst);
                return;
            };
            while !s.load(Ordering::SeqCst) {
                std::thread::sleep(interval);
                if matches!(nft.table_exists(&table), Ok(false)) {
                    t.store(true, Ordering::SeqCst);
                    if let Ok(links) = rtnl.links() {
                        for link in links.iter().filter(|l| l.name.starts_with(SLOT_IF_PREFIX)) {
                            if let Err(e) = rtnl.set_down(link.index) {
                                tracing::error!(link = %link.name, error = %e, "the ruleset is gone and a slot's link could not be put down");
                            }
                        }
                    }
                }
            }
        };
        let thread = match host {
            Some(ns) => ns.spawn("sandgate-watchdog", body)?,
            None => std::thread::Builder::new()
                .name("sandgate-watchdog".into())
                .spawn(body)?,
        };
        Ok(Watchdog {
            stop,
            tripped,
            thread: Some(thread),
        })
    }

    /// Whether the ruleset went missing since the start.
    pub fn tripped(&self) -> bool {
        self.tripped.load(Ordering::SeqCst)
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            if t.join().is_err() {
                tracing::error!("the ruleset watchdog's thread panicked");
            }
        }
    }
}
