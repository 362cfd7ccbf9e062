//! A bounded answer cache, partitioned: each partition (an organization)
//! has its own answers, so that no tenant learns from a lookup's speed
//! which names another asked, and no answer of one reaches another.
//!
//! Answers are kept for their smallest TTL (30 s for negative answers,
//! never for failures) and served with their TTLs counted down by the time
//! they spent here. A hit is served only after the asking sandbox's policy
//! allowed the name, and still admits the addresses for that sandbox.

use hickory_proto::op::{Message, ResponseCode};
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a negative or empty answer is kept.
const NEGATIVE: Duration = Duration::from_secs(30);

/// A cache key: partition, name (lowercase), record type.
pub type Key = (Arc<str>, String, u16);

#[derive(Debug)]
struct Entry {
    answer: Message,
    stored: Instant,
    expires: Instant,
}

/// The cache.
#[derive(Debug)]
pub struct Cache {
    capacity: usize,
    entries: HashMap<Key, Entry>,
    order: VecDeque<Key>,
}

impl Cache {
    /// A cache of at most `capacity` answers in all partitions.
    pub fn new(capacity: usize) -> Self {
        Cache {
            capacity,
            entries: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    /// The answer for `key` if it has not expired, its TTLs reduced by the
    /// whole seconds it spent here.
    pub fn get(&mut self, key: &Key) -> Option<Message> {
        let now = Instant::now();
        match self.entries.get(key) {
            Some(e) if e.expires > now => {
                let aged =
                    u32::try_from(now.duration_since(e.stored).as_secs()).unwrap_or(u32::MAX);
                let mut answer = e.answer.clone();
                for r in answer
                    .answers
                    .iter_mut()
                    .chain(answer.authorities.iter_mut())
                    .chain(answer.additionals.iter_mut())
                {
                    r.ttl = r.ttl.saturating_sub(aged);
                }
                Some(answer)
            }
            Some(_) => {
                self.entries.remove(key);
                None
            }
            None => None,
        }
    }

    /// Keeps `answer` for its shortest TTL (negative answers for 30 s;
    /// failures not at all).
    pub fn put(&mut self, key: Key, answer: &Message) {
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
        let now = Instant::now();
        let entry = Entry {
            answer: answer.clone(),
            stored: now,
            expires: now + ttl,
        };
        if self.entries.insert(key.clone(), entry).is_none() {
            self.order.push_back(key);
        }
        // Keys that expired and came back leave stale places in the order;
        // keep it no longer than twice the cache.
        if self.order.len() > 2 * self.capacity {
            let entries = &self.entries;
            self.order.retain(|k| entries.contains_key(k));
        }
    }

    /// The answers held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether it holds nothing.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::Query;
    use hickory_proto::rr::rdata::A;
    use hickory_proto::rr::{Name, RData, Record, RecordType};

    fn answer(ttl: u32) -> Message {
        let mut m = Message::query();
        let name = Name::from_ascii("example.com.").unwrap_or_default();
        m.add_query(Query::query(name.clone(), RecordType::A));
        m.add_answer(Record::from_rdata(
            name,
            ttl,
            RData::A(A::new(192, 0, 2, 10)),
        ));
        m
    }

    #[test]
    fn partitions_are_apart_and_ttls_count_down() {
        let mut c = Cache::new(10);
        let a: Arc<str> = Arc::from("org-a");
        let b: Arc<str> = Arc::from("org-b");
        let key = |p: &Arc<str>| (p.clone(), "example.com".to_string(), 1);
        c.put(key(&a), &answer(300));
        assert!(c.get(&key(&b)).is_none(), "another partition's answer");
        let got = c.get(&key(&a)).map(|m| m.answers[0].ttl);
        assert!(matches!(got, Some(299..=300)), "{got:?}");
        // An answer stored a while ago is served with less time left.
        if let Some(e) = c.entries.get_mut(&key(&a)) {
            e.stored -= Duration::from_secs(100);
        }
        let got = c.get(&key(&a)).map(|m| m.answers[0].ttl);
        assert!(matches!(got, Some(199..=200)), "{got:?}");
    }

    #[test]
    fn the_oldest_answer_makes_room() {
        let mut c = Cache::new(2);
        let p: Arc<str> = Arc::from("org");
        for name in ["a", "b", "c"] {
            c.put((p.clone(), name.to_string(), 1), &answer(60));
        }
        assert_eq!(c.len(), 2);
        assert!(c.get(&(p.clone(), "a".to_string(), 1)).is_none());
        assert!(c.get(&(p, "c".to_string(), 1)).is_some());
    }
}
