//! Which names resolved, for which holder of a slot, to which addresses:
//! what the DNS service answered each sandbox, kept as long as the
//! admission it made.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Instant;

/// A slot's holder: the slot and the lease it holds it under (a slot
/// given to another sandbox has a new lease, and none of the last one's
/// bindings).
pub type HolderKey = (u32, u64);

/// Names bound to addresses, per holder, each until a time.
#[derive(Debug, Default)]
pub struct Bindings {
    by_holder: HashMap<HolderKey, HashMap<(String, IpAddr), Instant>>,
}

impl Bindings {
    /// Binds `name` to `addr` for `holder` until `until` (a later time
    /// than one it has; never an earlier one). At `cap` bindings the one
    /// that would end first makes room; expired ones go first.
    pub fn bind(
        &mut self,
        holder: HolderKey,
        name: &str,
        addr: IpAddr,
        until: Instant,
        cap: usize,
    ) {
        let now = Instant::now();
        let held = self.by_holder.entry(holder).or_default();
        let key = (name.to_string(), addr);
        if let Some(t) = held.get_mut(&key) {
            *t = (*t).max(until);
            return;
        }
        if held.len() >= cap.max(1) {
            held.retain(|_, t| *t > now);
        }
        while held.len() >= cap.max(1) {
            let Some(first) = held.iter().min_by_key(|(_, t)| **t).map(|(k, _)| k.clone()) else {
                break;
            };
            held.remove(&first);
        }
        held.insert(key, until);
    }

    /// Whether `name` resolved for `holder` to `addr`, and the binding
    /// has not ended.
    pub fn resolved(&self, holder: HolderKey, name: &str, addr: IpAddr) -> bool {
        self.by_holder
            .get(&holder)
            .and_then(|held| held.get(&(name.to_string(), addr)))
            .is_some_and(|until| *until > Instant::now())
    }

    /// The names that resolved for `holder` to `addr` and whose bindings
    /// have not ended, in order.
    pub fn names(&self, holder: HolderKey, addr: IpAddr) -> Vec<String> {
        let now = Instant::now();
        let mut names: Vec<String> = self
            .by_holder
            .get(&holder)
            .into_iter()
            .flatten()
            .filter(|((_, a), until)| *a == addr && **until > now)
            .map(|((name, _), _)| name.clone())
            .collect();
        names.sort();
        names
    }

    /// Every binding of slot `slot`, under any lease, goes.
    pub fn forget(&mut self, slot: u32) {
        self.by_holder.retain(|(s, _), _| *s != slot);
    }

    /// How many bindings `holder` has (expired ones included).
    pub fn len(&self, holder: HolderKey) -> usize {
        self.by_holder.get(&holder).map_or(0, HashMap::len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_binding_is_the_holders_own_lasts_its_time_and_is_bounded() {
        let mut b = Bindings::default();
        let a: IpAddr = "192.0.2.10".parse().unwrap();
        let other: IpAddr = "198.51.100.10".parse().unwrap();
        let later = Instant::now() + Duration::from_secs(60);
        b.bind((3, 1), "api.example.com", a, later, 8);
        assert!(b.resolved((3, 1), "api.example.com", a));
        assert!(!b.resolved((3, 1), "api.example.com", other));
        assert!(!b.resolved((3, 1), "www.example.com", a));
        // The slot's next holder, another slot: nothing.
        assert!(!b.resolved((3, 2), "api.example.com", a));
        assert!(!b.resolved((4, 1), "api.example.com", a));
        // Ended.
        b.bind((3, 1), "short.example.com", a, Instant::now(), 8);
        assert!(!b.resolved((3, 1), "short.example.com", a));
        // A shorter answer does not shorten a binding.
        b.bind((3, 1), "api.example.com", a, Instant::now(), 8);
        assert!(b.resolved((3, 1), "api.example.com", a));
        // At the cap, the one ending first makes room.
        for i in 0..10u64 {
            let until = Instant::now() + Duration::from_secs(100 + i);
            b.bind((5, 1), &format!("n{i}.example.com"), a, until, 4);
        }
        assert_eq!(b.len((5, 1)), 4);
        assert!(b.resolved((5, 1), "n9.example.com", a));
        assert!(!b.resolved((5, 1), "n0.example.com", a));
        assert_eq!(b.names((3, 1), a), ["api.example.com"]);
        assert!(b.names((3, 1), other).is_empty());
        b.forget(3);
        assert!(!b.resolved((3, 1), "api.example.com", a));
        assert!(b.resolved((5, 1), "n9.example.com", a));
    }
}
