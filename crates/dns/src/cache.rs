//! A bounded answer cache, partitioned: each partition (an organization)
//! has its own answers, so that no tenant learns from a lookup's speed
//! which names another asked, and no answer of one reaches another.
//!
//! Answers are kept for their smallest TTL (30 s for negative answers,
//! never for failures) and served with their TTLs counted down by the time
//! they spent here. A hit is served only after the asking sandbox's policy
//! allowed the name, and still admits the addresses for that sandbox.
//!
//! The bound is shared fairly: a full cache makes room in its largest
//! partition (that partition's oldest answer goes), so one organization
//! asking for ever new names evicts its own answers, never another's
//! while it holds more than they do.

use hickory_proto::op::{Message, ResponseCode};
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a negative or empty answer is kept.
const NEGATIVE: Duration = Duration::from_secs(30);

/// A cache key: partition, name (lowercase), record type.
pub type Key = (Arc<str>, String, u16);

/// A key within a partition: name (lowercase), record type.
type Name = (String, u16);

#[derive(Debug)]
struct Entry {
    answer: Message,
    stored: Instant,
    expires: Instant,
}

/// One organization's answers, oldest first in `order`.
#[derive(Debug, Default)]
struct Partition {
    entries: HashMap<Name, Entry>,
    /// Insertion order; may hold names since removed (skipped).
    order: VecDeque<Name>,
}

impl Partition {
    /// Removes the oldest answer held.
    fn evict_oldest(&mut self) {
        while let Some(old) = self.order.pop_front() {
            if self.entries.remove(&old).is_some() {
                return;
            }
        }
    }
}

/// The cache.
#[derive(Debug)]
pub struct Cache {
    capacity: usize,
    held: usize,
    partitions: HashMap<Arc<str>, Partition>,
}

impl Cache {
    /// A cache of at most `capacity` answers in all partitions.
    pub fn new(capacity: usize) -> Self {
        Cache {
            capacity,
            held: 0,
            partitions: HashMap::new(),
        }
    }

    /// The answer for `key` if it has not expired, its TTLs reduced by the
    /// whole seconds it spent here.
    pub fn get(&mut self, key: &Key) -> Option<Message> {
        let now = Instant::now();
        let (partition, name, rtype) = key;
        let part = self.partitions.get_mut(partition)?;
        let name = (name.clone(), *rtype);
        if part.entries.get(&name)?.expires <= now {
            part.entries.remove(&name);
            self.held -= 1;
            if part.entries.is_empty() {
                self.partitions.remove(partition);
            }
            return None;
        }
        let e = part.entries.get(&name)?;
        let aged = u32::try_from(now.duration_since(e.stored).as_secs()).unwrap_or(u32::MAX);
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
        let (partition, name, rtype) = key;
        let name = (name, rtype);
        let replaces = self
            .partitions
            .get(&partition)
            .is_some_and(|p| p.entries.contains_key(&name));
        if !replaces && self.held >= self.capacity {
            self.evict_from_largest(&partition);
        }
        let now = Instant::now();
        let entry = Entry {
            answer: answer.clone(),
            stored: now,
            expires: now + ttl,
        };
        let part = self.partitions.entry(partition).or_default();
        if part.entries.insert(name.clone(), entry).is_none() {
            self.held += 1;
            part.order.push_back(name);
        }
        // Names that expired and came back leave stale places in the
        // order; keep it no longer than twice what the partition holds.
        if part.order.len() > 2 * part.entries.len() + 16 {
            let entries = &part.entries;
            part.order.retain(|k| entries.contains_key(k));
        }
    }

    /// Makes room for one answer of `inserting`: the oldest answer of the
    /// partition holding the most goes (`inserting`'s own on a tie).
    fn evict_from_largest(&mut self, inserting: &Arc<str>) {
        let own = self
            .partitions
            .get(inserting)
            .map_or(0, |p| p.entries.len());
        let largest = self
            .partitions
            .iter()
            .filter(|(_, p)| p.entries.len() > own)
            .max_by_key(|(_, p)| p.entries.len())
            .map_or_else(|| inserting.clone(), |(k, _)| k.clone());
        if let Some(part) = self.partitions.get_mut(&largest) {
            let before = part.entries.len();
            part.evict_oldest();
            self.held -= before - part.entries.len();
            if part.entries.is_empty() {
                self.partitions.remove(&largest);
            }
        }
    }

    /// The answers held.
    pub fn len(&self) -> usize {
        self.held
    }

    /// Whether it holds nothing.
    pub fn is_empty(&self) -> bool {
        self.held == 0
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
        if let Some(e) = c
            .partitions
            .get_mut(&a)
            .and_then(|p| p.entries.get_mut(&("example.com".to_string(), 1)))
        {
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

    #[test]
    fn one_partition_asking_for_ever_new_names_evicts_only_its_own() {
        let mut c = Cache::new(100);
        let quiet: Arc<str> = Arc::from("org-quiet");
        let loud: Arc<str> = Arc::from("org-loud");
        for i in 0..10 {
            c.put((quiet.clone(), format!("q{i}"), 1), &answer(600));
        }
        for i in 0..10_000 {
            c.put((loud.clone(), format!("l{i}"), 1), &answer(600));
        }
        assert_eq!(c.len(), 100);
        for i in 0..10 {
            assert!(
                c.get(&(quiet.clone(), format!("q{i}"), 1)).is_some(),
                "the quiet organization's answer q{i} was evicted by another's flood"
            );
        }
        // The loud one keeps its newest answers in the rest.
        assert!(c.get(&(loud.clone(), "l9999".to_string(), 1)).is_some());
        assert!(c.get(&(loud, "l0".to_string(), 1)).is_none());
    }
}
