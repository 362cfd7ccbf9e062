//! A bounded answer cache keyed by (name, record type). A hit is served
//! only after the asking sandbox's policy allowed the name, and still
//! admits the answer's addresses for that sandbox.

use hickory_proto::op::{Message, ResponseCode};
use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

/// How long a negative or empty answer is kept.
const NEGATIVE: Duration = Duration::from_secs(30);

/// The cache.
#[derive(Debug)]
pub struct Cache {
    capacity: usize,
    entries: HashMap<(String, u16), (Message, Instant)>,
    order: VecDeque<(String, u16)>,
}

impl Cache {
    /// A cache of at most `capacity` answers.
    pub fn new(capacity: usize) -> Self {
        Cache {
            capacity,
            entries: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    /// The answer for `key` if it has not expired.
    pub fn get(&mut self, key: &(String, u16)) -> Option<Message> {
        match self.entries.get(key) {
            Some((m, expiry)) if *expiry > Instant::now() => Some(m.clone()),
            Some(_) => {
                self.entries.remove(key);
                None
            }
            None => None,
        }
    }

    /// Keeps `answer` for its shortest TTL (negative answers for 30 s;
    /// failures not at all).
    pub fn put(&mut self, key: (String, u16), answer: &Message) {
        if self.capacity == 0 {
            return;
        }
        let ttl = match answer.metadata.response_code {
            ResponseCode::NoError | ResponseCode::NXDomain => answer
                .answers
                .iter()
                .map(|r| r.ttl)
                .min()
                .map_or(NEGATIVE, |t| Duration::from_secs(u64::from(t))),
            _ => return,
        };
        if ttl.is_zero() {
            return;
        }
        while self.entries.len() >= self.capacity {
            match self.order.pop_front() {
                Some(old) => {
                    self.entries.remove(&old);
                }
                None => break,
            }
        }
        if self
            .entries
            .insert(key.clone(), (answer.clone(), Instant::now() + ttl))
            .is_none()
        {
            self.order.push_back(key);
        }
        // Keys that expired and came back leave stale places in the order;
        // keep it no longer than twice the cache.
        if self.order.len() > 2 * self.capacity {
            let entries = &self.entries;
            self.order.retain(|k| entries.contains_key(k));
        }
    }
}
