//! What `networkAllowList` and `domainAllowList` share: splitting on commas,
//! trimming, empty entries, merging duplicates, the entry limit, bounded
//! work on hostile input, and error reports whose suggested fixes are
//! themselves valid.

use crate::error::{ErrorCode, PolicyError, Problem};
use std::collections::HashSet;
use std::hash::Hash;

/// The most problems reported for one list; the message counts the rest.
const MAX_PROBLEMS: usize = 20;

/// What is wrong with one entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct EntryError {
    /// The problem, as the end of a sentence that starts with the entry:
    /// `has host bits set`.
    pub what: String,
    /// The corrected entry, where there is an obvious one. It is offered
    /// only if it parses.
    pub fix: Option<String>,
}

impl EntryError {
    /// A problem without a fix.
    pub fn new(what: impl Into<String>) -> Self {
        EntryError {
            what: what.into(),
            fix: None,
        }
    }

    /// A problem with a candidate fix.
    pub fn with_fix(what: impl Into<String>, fix: impl Into<String>) -> Self {
        EntryError {
            what: what.into(),
            fix: Some(fix.into()),
        }
    }
}

/// How one list field is parsed.
pub(crate) struct ListSpec {
    /// The API field name.
    pub field: &'static str,
    /// The error code of the field.
    pub code: ErrorCode,
    /// The most distinct entries allowed.
    pub max: usize,
    /// What to do about too many entries.
    pub limit_hint: &'static str,
}

/// Parses a comma-separated list: each trimmed entry through `parse`,
/// duplicates merged (first position kept), at most `spec.max` distinct
/// entries. `""` or white space alone is the empty list.
pub(crate) fn parse_list<T: Eq + Hash + Clone>(
    input: &str,
    spec: &ListSpec,
    parse: impl Fn(&str) -> Result<T, EntryError>,
) -> Result<Vec<T>, PolicyError> {
    if input.trim().is_empty() {
        return Ok(Vec::new());
    }
    let too_many = |count: usize| Problem {
        entry: String::new(),
        position: 0,
        message: format!(
            "{} has {count} entries; at most {} are allowed ({})",
            spec.field, spec.max, spec.limit_hint
        ),
        suggestion: None,
    };
    // Far more raw entries than the limit cannot merge down to it (no
    // honest request repeats an entry many times): refuse before parsing,
    // so hostile input costs nothing.
    let raw = input.split(',').count();
    if raw > spec.max.saturating_mul(4).max(spec.max.saturating_add(16)) {
        return Err(PolicyError::from_problems(
            spec.code,
            spec.field,
            vec![too_many(raw)],
        ));
    }
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    let mut problems = Vec::new();
    let mut failures = 0usize;
    for (index, entry) in input.split(',').map(str::trim).enumerate() {
        let position = index + 1;
        let result = if entry.is_empty() {
            Err(EntryError::new(format!(
                "has an empty entry at position {position} (two commas in a row, or a comma at the start or end); remove it"
            )))
        } else {
            parse(entry)
        };
        match result {
            Ok(value) => {
                if seen.insert(value.clone()) {
                    out.push(value);
                }
            }
            Err(error) => {
                failures += 1;
                if problems.len() < MAX_PROBLEMS {
                    problems.push(problem(spec.field, entry, position, error, &parse));
                }
            }
        }
    }
    if failures == 0 && out.len() > spec.max {
        problems.push(too_many(out.len()));
    }
    if problems.is_empty() {
        return Ok(out);
    }
    let mut error = PolicyError::from_problems(spec.code, spec.field, problems);
    if failures > MAX_PROBLEMS {
        error.message = format!(
            "{} ({failures} problems in {} in all; the first {MAX_PROBLEMS} are listed)",
            error.problems[0].message, spec.field
        );
    }
    Err(error)
}

/// The report of one bad entry. A fix is offered only if it parses; a fix
/// that is itself wrong in a way with its own fix (`1.2.3.4/024` -> `/24`
/// -> host bits) is followed once more.
fn problem<T>(
    field: &str,
    entry: &str,
    position: usize,
    error: EntryError,
    parse: &impl Fn(&str) -> Result<T, EntryError>,
) -> Problem {
    let fix = error.fix.and_then(|fix| match parse(&fix) {
        Ok(_) => Some(fix),
        Err(again) => again.fix.filter(|f| parse(f).is_ok()),
    });
    let message = if entry.is_empty() {
        format!("{field} {}", error.what)
    } else {
        match &fix {
            Some(f) => format!(
                "{field} entry \"{entry}\" {}: did you mean {f}?",
                error.what
            ),
            None => format!("{field} entry \"{entry}\" {}", error.what),
        }
    };
    Problem {
        entry: entry.to_string(),
        position,
        message,
        suggestion: fix,
    }
}

/// Writes `items` separated by commas: the canonical form of a list.
pub(crate) fn write_joined<T: std::fmt::Display>(
    f: &mut std::fmt::Formatter<'_>,
    items: &[T],
) -> std::fmt::Result {
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            f.write_str(",")?;
        }
        write!(f, "{item}")?;
    }
    Ok(())
}
