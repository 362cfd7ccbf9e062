//! The name matcher: a trie on reversed labels.
//!
//! Exact names and `*.` wildcards live in one trie keyed by labels from the
//! top-level domain down, so one walk over the labels of a name finds the
//! best rule: an exact match at the name's own node wins, otherwise the
//! deepest wildcard on the way down. The cost of a lookup depends on the
//! number of labels of the name, not on the number of rules.

use crate::domain::DomainPattern;
use rustc_hash::FxHashMap;

/// How a name matched a rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Match<T> {
    /// The value stored with the rule.
    pub value: T,
    /// Whether the rule was a `*.` wildcard.
    pub wildcard: bool,
}

#[derive(Debug, Clone)]
struct Node<T> {
    children: FxHashMap<Box<str>, u32>,
    exact: Option<T>,
    wildcard: Option<T>,
}

impl<T> Default for Node<T> {
    fn default() -> Self {
        Node {
            children: FxHashMap::default(),
            exact: None,
            wildcard: None,
        }
    }
}

/// A set of exact and wildcard name rules, each carrying a value.
#[derive(Debug, Clone)]
pub struct NameMatcher<T> {
    nodes: Vec<Node<T>>,
    rules: usize,
}

impl<T: Copy> Default for NameMatcher<T> {
    fn default() -> Self {
        NameMatcher::new()
    }
}

impl<T: Copy> NameMatcher<T> {
    /// An empty matcher.
    pub fn new() -> Self {
        NameMatcher {
            nodes: vec![Node::default()],
            rules: 0,
        }
    }

    /// Adds a rule. The first value inserted for a pattern is kept; returns
    /// whether this one was new.
    pub fn insert(&mut self, pattern: &DomainPattern, value: T) -> bool {
        let mut node = 0usize;
        for label in pattern.base().reversed_labels() {
            node = match self.nodes[node].children.get(label) {
                Some(&child) => child as usize,
                None => {
                    let child = self.nodes.len();
                    self.nodes.push(Node::default());
                    // A trie with more than u32::MAX nodes would not fit in
                    // memory long before; the cast cannot truncate.
                    self.nodes[node].children.insert(label.into(), child as u32);
                    child
                }
            };
        }
        let slot = if pattern.is_wildcard() {
            &mut self.nodes[node].wildcard
        } else {
            &mut self.nodes[node].exact
        };
        if slot.is_some() {
            return false;
        }
        *slot = Some(value);
        self.rules += 1;
        true
    }

    /// The number of distinct rules.
    pub fn len(&self) -> usize {
        self.rules
    }

    /// Whether there are no rules.
    pub fn is_empty(&self) -> bool {
        self.rules == 0
    }

    /// The best rule for `name` (dotted order, any case, one trailing dot
    /// allowed): its exact rule, else the deepest wildcard above it.
    ///
    /// A name with an empty or over-long label matches nothing.
    pub fn find(&self, name: &str) -> Option<Match<T>> {
        NameMatcher::find_in([self], name)
    }

    /// The best rule for `name` over several matchers at once, as if they
    /// were one (so a large shared trie, like the catalog's, need not be
    /// copied into each sandbox's): one walk over the labels moves a cursor
    /// in each. Exact beats wildcard, a deeper wildcard beats a shallower
    /// one, and at equal rank the earlier matcher wins.
    pub fn find_in<const N: usize>(layers: [&NameMatcher<T>; N], name: &str) -> Option<Match<T>> {
        let name = name.strip_suffix('.').unwrap_or(name);
        if name.is_empty() {
            return None;
        }
        let mut buf = [0u8; 63];
        let mut cursors: [Option<&Node<T>>; N] = layers.map(|m| Some(&m.nodes[0]));
        let mut best = None;
        let mut labels = labels_reversed(name);
        while let Some(label) = labels.next() {
            if label.is_empty() || label.len() > buf.len() {
                return None;
            }
            // The name has this label below each cursor, so a wildcard
            // there covers it.
            if let Some(value) = cursors.iter().flatten().find_map(|n| n.wildcard) {
                best = Some(Match {
                    value,
                    wildcard: true,
                });
            }
            let key = lowercase(label, &mut buf);
            let mut any = false;
            for (cursor, layer) in cursors.iter_mut().zip(layers) {
                *cursor = cursor
                    .and_then(|n| n.children.get(key))
                    .map(|&child| &layer.nodes[child as usize]);
                any |= cursor.is_some();
            }
            if !any {
                // Nothing deeper can match; the rest of the name must still
                // be a valid name for `best` to apply.
                let valid = labels.all(|l| !l.is_empty() && l.len() <= buf.len());
                return if valid { best } else { None };
            }
        }
        match cursors.iter().flatten().find_map(|n| n.exact) {
            Some(value) => Some(Match {
                value,
                wildcard: false,
            }),
            None => best,
        }
    }
}

/// The labels of a dotted name from the last to the first. (A plain
/// backwards scan: labels are short, and `rsplit` costs a `memrchr` call for
/// each.)
fn labels_reversed(name: &str) -> impl Iterator<Item = &str> {
    let mut end = Some(name.len());
    std::iter::from_fn(move || {
        let stop = end?;
        let start = name.as_bytes()[..stop]
            .iter()
            .rposition(|&b| b == b'.')
            .map_or(0, |dot| dot + 1);
        end = start.checked_sub(1);
        // Splitting at ASCII dots keeps UTF-8 boundaries.
        name.get(start..stop)
    })
}

/// `label` in lowercase, borrowing it when it is lowercase already.
fn lowercase<'a>(label: &'a str, buf: &'a mut [u8; 63]) -> &'a str {
    if !label.bytes().any(|b| b.is_ascii_uppercase()) {
        return label;
    }
    let out = &mut buf[..label.len()];
    out.copy_from_slice(label.as_bytes());
    out.make_ascii_lowercase();
    // ASCII lowercasing keeps valid UTF-8 valid.
    std::str::from_utf8(out).unwrap_or(label)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> DomainPattern {
        DomainPattern::parse(s).unwrap()
    }

    #[test]
    fn exact_beats_wildcard_and_deeper_wildcard_beats_shallower() {
        let mut m = NameMatcher::new();
        m.insert(&p("*.example.com"), 1);
        m.insert(&p("*.deep.example.com"), 2);
        m.insert(&p("exact.deep.example.com"), 3);
        assert_eq!(m.find("a.example.com").map(|m| m.value), Some(1));
        assert_eq!(m.find("deep.example.com").map(|m| m.value), Some(1));
        assert_eq!(m.find("x.deep.example.com").map(|m| m.value), Some(2));
        assert_eq!(m.find("EXACT.Deep.example.com.").map(|m| m.value), Some(3));
        assert_eq!(m.find("example.com"), None);
        assert_eq!(m.find("example.org"), None);
        assert_eq!(m.find("a..example.com"), None);
    }

    #[test]
    fn layers_behave_as_one_matcher() {
        let mut shared = NameMatcher::new();
        shared.insert(&p("*.example.com"), 1);
        shared.insert(&p("a.example.org"), 2);
        let mut own = NameMatcher::new();
        own.insert(&p("*.deep.example.com"), 10);
        own.insert(&p("*.example.com"), 11);
        own.insert(&p("b.example.org"), 12);
        let find = |n: &str| NameMatcher::find_in([&shared, &own], n).map(|m| m.value);
        assert_eq!(
            find("x.example.com"),
            Some(1),
            "equal rank: the first layer"
        );
        assert_eq!(find("x.deep.example.com"), Some(10), "deeper wildcard wins");
        assert_eq!(find("a.example.org"), Some(2));
        assert_eq!(find("B.example.org."), Some(12));
        assert_eq!(find("c.example.org"), None);
        assert_eq!(find("example.com"), None);
    }

    #[test]
    fn first_insert_wins() {
        let mut m = NameMatcher::new();
        assert!(m.insert(&p("a.example.com"), 1));
        assert!(!m.insert(&p("A.example.com"), 2));
        assert_eq!(m.len(), 1);
        assert_eq!(m.find("a.example.com").map(|m| m.value), Some(1));
    }
}
