//! The name matcher on a 10,000-name catalog, against two baselines run
//! side by side: a linear scan of the patterns (what a list of rules costs)
//! and a hash set probed once per suffix of the name.
//!
//! `cargo bench -p sandgate-policy --bench matcher` prints criterion's
//! figures, then the ratios of the baselines to the trie.

#![allow(clippy::unwrap_used)]

use criterion::Criterion;
use rustc_hash::FxHashSet;
use sandgate_policy::{DomainName, DomainPattern, NameMatcher};
use std::hint::black_box;
use std::path::{Path, PathBuf};

const RULES: usize = 10_000;
const QUERIES: usize = 1_000;

/// 10,000 rules: nine exact names for every wildcard, over 100 zones.
fn rules() -> Vec<DomainPattern> {
    (0..RULES)
        .map(|i| {
            let base = DomainName::parse(&format!("svc{i}.zone{}.example.test", i % 100)).unwrap();
            if i % 10 == 0 {
                DomainPattern::Wildcard(base)
            } else {
                DomainPattern::Exact(base)
            }
        })
        .collect()
}

/// A third exact hits, a third below wildcards, a third misses.
fn queries() -> Vec<String> {
    (0..QUERIES)
        .map(|q| {
            let i = (q * 7919) % RULES;
            match q % 3 {
                0 => format!("svc{}.zone{}.example.test", i | 1, (i | 1) % 100),
                1 => format!(
                    "a.b.svc{}.zone{}.example.test",
                    i - i % 10,
                    (i - i % 10) % 100
                ),
                _ => format!("www.unknown{i}.example.org"),
            }
        })
        .collect()
}

struct SuffixSets {
    exact: FxHashSet<String>,
    wildcard: FxHashSet<String>,
}

impl SuffixSets {
    fn new(rules: &[DomainPattern]) -> Self {
        let mut s = SuffixSets {
            exact: FxHashSet::default(),
            wildcard: FxHashSet::default(),
        };
        for r in rules {
            let set = if r.is_wildcard() {
                &mut s.wildcard
            } else {
                &mut s.exact
            };
            set.insert(r.base().to_string());
        }
        s
    }

    fn find(&self, name: &str) -> bool {
        let name = name.to_ascii_lowercase();
        if self.exact.contains(&name) {
            return true;
        }
        let mut rest = name.as_str();
        while let Some((_, parent)) = rest.split_once('.') {
            if self.wildcard.contains(parent) {
                return true;
            }
            rest = parent;
        }
        false
    }
}

fn bench(c: &mut Criterion, rules: &[DomainPattern], queries: &[String]) {
    let mut trie = NameMatcher::new();
    for (i, r) in rules.iter().enumerate() {
        trie.insert(r, i);
    }
    let sets = SuffixSets::new(rules);
    let names: Vec<DomainName> = queries
        .iter()
        .map(|q| DomainName::parse(q).unwrap())
        .collect();
    // All three agree before anything is timed.
    for (q, n) in queries.iter().zip(&names) {
        let linear = rules.iter().any(|r| r.matches(n));
        assert_eq!(trie.find(q).is_some(), linear, "{q}");
        assert_eq!(sets.find(q), linear, "{q}");
    }

    let mut group = c.benchmark_group("matcher_10k");
    group.bench_function("trie", |b| {
        b.iter(|| {
            queries
                .iter()
                .filter(|q| trie.find(black_box(q)).is_some())
                .count()
        })
    });
    group.bench_function("suffix_hash", |b| {
        b.iter(|| queries.iter().filter(|q| sets.find(black_box(q))).count())
    });
    group.sample_size(10);
    group.bench_function("linear", |b| {
        b.iter(|| {
            names
                .iter()
                .filter(|n| rules.iter().any(|r| r.matches(black_box(n))))
                .count()
        })
    });
    group.finish();
}

fn median_ns(dir: &Path, function: &str) -> Option<f64> {
    let path = dir
        .join("matcher_10k")
        .join(function)
        .join("new/estimates.json");
    let text = std::fs::read_to_string(path).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    v["median"]["point_estimate"].as_f64()
}

fn main() {
    let out: PathBuf = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target"))
        .join("criterion");
    let mut c = Criterion::default()
        .output_directory(&out)
        .configure_from_args();
    bench(&mut c, &rules(), &queries());
    c.final_summary();
    let (Some(trie), Some(hash), Some(linear)) = (
        median_ns(&out, "trie"),
        median_ns(&out, "suffix_hash"),
        median_ns(&out, "linear"),
    ) else {
        return;
    };
    let per = |ns: f64| ns / QUERIES as f64;
    println!("\nname lookups, {RULES} rules, median per lookup over {QUERIES} names:");
    println!("  trie         {:>10.1} ns   1.00x", per(trie));
    println!(
        "  suffix_hash  {:>10.1} ns   {:.2}x the trie's time",
        per(hash),
        hash / trie
    );
    println!(
        "  linear       {:>10.1} ns   {:.0}x the trie's time",
        per(linear),
        linear / trie
    );
}
