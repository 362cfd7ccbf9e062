//! HTTP rules (`httpRules`): the methods and paths a sandbox may ask of a
//! host, enforced by the gateway on each request it sees (plain HTTP, and
//! TLS that the gateway terminates). REQUIREMENTS.md section 1, "HTTP
//! rules".
//!
//! ```json
//! [{"host": "api.example.com", "methods": ["GET", "HEAD"], "paths": ["/repos/**"]}]
//! ```
//!
//! - `host`: a name or a `*.` wildcard, as in `domainAllowList`.
//! - `methods`: HTTP methods, upper case as on the wire; left out, any.
//! - `paths`: globs over the request's path (the query is not part of
//!   it): `*` is any run of characters within one segment, `**` a whole
//!   segment that stands for any number of segments (none included):
//!   `/repos/**` matches `/repos`, `/repos/`, `/repos/a` and `/repos/a/b`,
//!   not `/repository`. Left out, any path.
//!
//! Rules add up: a request for a name that some rule's `host` matches
//! passes if one of those rules allows both its method and its path; a
//! name no rule matches is not restricted by HTTP rules (the name itself
//! is still checked). A request's path is decoded (`%xx`) before it is
//! matched; a path that decodes to a `/`, a `\`, a NUL or a `.` or `..`
//! segment is refused as ambiguous, since the destination may read it
//! otherwise than the rule does.

use crate::domain::{DomainName, DomainPattern};
use crate::error::{ErrorCode, PolicyError, Problem};
use serde::{Deserialize, Serialize};

/// The request field.
pub const FIELD: &str = "httpRules";
/// Rules a sandbox may have.
pub const HTTP_RULES_MAX: usize = 64;
/// Methods in one rule.
pub const METHODS_MAX: usize = 16;
/// Paths in one rule.
pub const PATHS_MAX: usize = 64;
/// Bytes of one path glob.
pub const PATH_MAX: usize = 1024;

/// One rule as a request sends it (and as a store keeps it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpRuleRequest {
    /// A name or `*.` wildcard.
    pub host: String,
    /// Methods; `None`: any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub methods: Option<Vec<String>>,
    /// Path globs; `None`: any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paths: Option<Vec<String>>,
}

/// A path glob, split into its segments.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct PathGlob {
    text: String,
    segments: Vec<Segment>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Segment {
    /// `**`: any number of segments.
    Any,
    /// One segment, with `*` standing for any run of characters in it.
    Glob(String),
}

impl PathGlob {
    fn parse(text: &str) -> Result<PathGlob, String> {
        if !text.starts_with('/') {
            return Err(format!(
                "path {text:?} does not start with '/'; write it as \"/{text}\""
            ));
        }
        if text.len() > PATH_MAX {
            return Err(format!(
                "path {:?}... is over {PATH_MAX} bytes",
                text.chars().take(32).collect::<String>()
            ));
        }
        if let Some(c) = text
            .chars()
            .find(|c| c.is_control() || c.is_whitespace() || matches!(c, '?' | '#' | '%' | '\\'))
        {
            return Err(format!(
                "path {text:?} has {c:?}; a path glob is the decoded path alone (no query, fragment, escapes or back slashes)"
            ));
        }
        let segments: Vec<Segment> = text[1..]
            .split('/')
            .map(|s| {
                if s == "**" {
                    Ok(Segment::Any)
                } else if s.contains("**") {
                    Err(format!(
                        "path {text:?} has '**' inside a segment; '**' stands alone between slashes, as in /repos/**"
                    ))
                } else if s == "." || s == ".." {
                    Err(format!("path {text:?} has a {s:?} segment, which no request path matches"))
                } else {
                    Ok(Segment::Glob(s.to_string()))
                }
            })
            .collect::<Result<_, _>>()?;
        Ok(PathGlob {
            text: text.to_string(),
            segments,
        })
    }

    /// Whether the decoded `path` (its segments after the leading `/`)
    /// matches.
    fn matches(&self, path: &[&str]) -> bool {
        // The classic greedy match with one back-track point, over
        // segments: `**` is the star, a segment glob the symbol.
        let (pat, mut p, mut s) = (&self.segments, 0, 0);
        let mut back: Option<(usize, usize)> = None;
        while s < path.len() {
            match pat.get(p) {
                Some(Segment::Any) => {
                    back = Some((p, s));
                    p += 1;
                }
                Some(Segment::Glob(g)) if segment_matches(g, path[s]) => {
                    p += 1;
                    s += 1;
                }
                _ => match back {
                    Some((bp, bs)) => {
                        p = bp + 1;
                        s = bs + 1;
                        back = Some((bp, bs + 1));
                    }
                    None => return false,
                },
            }
        }
        pat[p..].iter().all(|g| *g == Segment::Any)
    }
}

/// Whether one segment matches a glob where `*` is any run of characters.
fn segment_matches(glob: &str, segment: &str) -> bool {
    let (g, t) = (glob.as_bytes(), segment.as_bytes());
    let (mut i, mut j) = (0, 0);
    let mut back: Option<(usize, usize)> = None;
    while j < t.len() {
        if i < g.len() && g[i] == b'*' {
            back = Some((i, j));
            i += 1;
        } else if i < g.len() && g[i] == t[j] {
            i += 1;
            j += 1;
        } else if let Some((bi, bj)) = back {
            i = bi + 1;
            j = bj + 1;
            back = Some((bi, bj + 1));
        } else {
            return false;
        }
    }
    g[i..].iter().all(|&c| c == b'*')
}

/// One validated rule.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HttpRule {
    host: DomainPattern,
    /// Sorted, distinct; empty: any.
    methods: Vec<String>,
    /// Distinct, in the order given; empty: any.
    paths: Vec<PathGlob>,
}

impl HttpRule {
    fn parse(req: &HttpRuleRequest) -> Result<HttpRule, String> {
        let host = DomainPattern::parse(&req.host.trim().to_ascii_lowercase())
            .map_err(|e| format!("host {:?} {e}", req.host))?;
        let methods = match &req.methods {
            None => Vec::new(),
            Some(m) if m.is_empty() => {
                return Err(format!(
                    "host {host}: \"methods\": [] allows nothing; leave it out for any method"
                ))
            }
            Some(m) if m.len() > METHODS_MAX => {
                return Err(format!("host {host}: at most {METHODS_MAX} methods"))
            }
            Some(m) => {
                let mut out = Vec::new();
                for method in m {
                    let token = !method.is_empty()
                        && method.len() <= 32
                        && method
                            .bytes()
                            .all(|b| b.is_ascii_alphabetic() || b == b'-' || b == b'_');
                    if !token {
                        return Err(format!("host {host}: {method:?} is not an HTTP method"));
                    }
                    if method.bytes().any(|b| b.is_ascii_lowercase()) {
                        return Err(format!(
                            "host {host}: method {method:?} is in lower case; methods are case-sensitive: write {:?}",
                            method.to_ascii_uppercase()
                        ));
                    }
                    out.push(method.clone());
                }
                out.sort();
                out.dedup();
                out
            }
        };
        let paths = match &req.paths {
            None => Vec::new(),
            Some(p) if p.is_empty() => {
                return Err(format!(
                    "host {host}: \"paths\": [] allows nothing; leave it out for any path"
                ))
            }
            Some(p) if p.len() > PATHS_MAX => {
                return Err(format!("host {host}: at most {PATHS_MAX} paths"))
            }
            Some(p) => {
                let mut out: Vec<PathGlob> = Vec::new();
                for text in p {
                    let glob = PathGlob::parse(text).map_err(|e| format!("host {host}: {e}"))?;
                    if !out.contains(&glob) {
                        out.push(glob);
                    }
                }
                out
            }
        };
        Ok(HttpRule {
            host,
            methods,
            paths,
        })
    }

    fn to_request(&self) -> HttpRuleRequest {
        HttpRuleRequest {
            host: self.host.to_string(),
            methods: (!self.methods.is_empty()).then(|| self.methods.clone()),
            paths: (!self.paths.is_empty())
                .then(|| self.paths.iter().map(|p| p.text.clone()).collect()),
        }
    }

    fn allows_method(&self, method: &str) -> bool {
        self.methods.is_empty() || self.methods.iter().any(|m| m == method)
    }

    fn allows_path(&self, path: &[&str]) -> bool {
        self.paths.is_empty() || self.paths.iter().any(|g| g.matches(path))
    }
}

/// Why HTTP rules refused a request: the code of its deny event and of
/// its `x-sandgate-deny` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HttpRefusal {
    /// No rule of the host allows the method.
    Method,
    /// Rules of the host allow the method, none the path.
    Path,
    /// The path decodes to something a destination may read otherwise.
    AmbiguousPath,
}

impl HttpRefusal {
    /// The reason code.
    pub fn code(self) -> &'static str {
        match self {
            HttpRefusal::Method => "http_method_not_allowed",
            HttpRefusal::Path => "http_path_not_allowed",
            HttpRefusal::AmbiguousPath => "http_path_ambiguous",
        }
    }
}

/// A sandbox's HTTP rules, validated and canonical: rules in the order
/// given, duplicates merged.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct HttpRules(Vec<HttpRule>);

impl HttpRules {
    /// Validates `httpRules` as a request sends them; every bad rule is a
    /// problem of the error.
    pub fn parse(rules: &[HttpRuleRequest], max: usize) -> Result<HttpRules, PolicyError> {
        let mut problems = Vec::new();
        let mut out: Vec<HttpRule> = Vec::new();
        if rules.len() > max {
            return Err(PolicyError {
                field: Some(FIELD),
                ..PolicyError::new(
                    ErrorCode::InvalidHttpRules,
                    format!("httpRules has {} rules; at most {max}", rules.len()),
                )
            });
        }
        for (i, req) in rules.iter().enumerate() {
            match HttpRule::parse(req) {
                Ok(rule) => {
                    if !out.contains(&rule) {
                        out.push(rule);
                    }
                }
                Err(message) => problems.push(Problem {
                    entry: req.host.clone(),
                    position: i + 1,
                    message: format!("httpRules[{i}]: {message}"),
                    suggestion: None,
                }),
            }
        }
        if problems.is_empty() {
            Ok(HttpRules(out))
        } else {
            Err(PolicyError::from_problems(
                ErrorCode::InvalidHttpRules,
                FIELD,
                problems,
            ))
        }
    }

    /// Reads back the canonical text of a store (`""`: none).
    pub fn parse_stored(text: &str) -> Result<HttpRules, PolicyError> {
        if text.trim().is_empty() {
            return Ok(HttpRules::default());
        }
        let rules: Vec<HttpRuleRequest> = serde_json::from_str(text).map_err(|e| {
            PolicyError::new(
                ErrorCode::InvalidHttpRules,
                format!("stored httpRules are not rules: {e}"),
            )
        })?;
        HttpRules::parse(&rules, usize::MAX)
    }

    /// The canonical text a store keeps (`""`: none).
    pub fn to_stored(&self) -> String {
        if self.0.is_empty() {
            String::new()
        } else {
            serde_json::to_string(&self.requests()).unwrap_or_default()
        }
    }

    /// The rules as a request would send them.
    pub fn requests(&self) -> Vec<HttpRuleRequest> {
        self.0.iter().map(HttpRule::to_request).collect()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// How many.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether some rule restricts requests for `name` (normalized).
    pub fn covers(&self, name: &str) -> bool {
        match DomainName::parse(name) {
            Ok(n) => self.0.iter().any(|r| r.host.matches(&n)),
            // A name that is no name is matched by no pattern.
            Err(_) => false,
        }
    }

    /// Whether a request for `name` (normalized) with `method` and
    /// `path` (the request target's path, still encoded) passes.
    pub fn check(&self, name: &str, method: &str, path: &str) -> Result<(), HttpRefusal> {
        let Ok(name) = DomainName::parse(name) else {
            // No name passes the gateway's check unparsed; fail closed all
            // the same where there are rules.
            return if self.0.is_empty() {
                Ok(())
            } else {
                Err(HttpRefusal::Method)
            };
        };
        let rules: Vec<&HttpRule> = self.0.iter().filter(|r| r.host.matches(&name)).collect();
        if rules.is_empty() {
            return Ok(());
        }
        let decoded = decode_path(path).ok_or(HttpRefusal::AmbiguousPath)?;
        let segments: Vec<&str> = decoded.iter().map(String::as_str).collect();
        let mut method_ok = false;
        for rule in rules {
            if rule.allows_method(method) {
                method_ok = true;
                if rule.allows_path(&segments) {
                    return Ok(());
                }
            }
        }
        Err(if method_ok {
            HttpRefusal::Path
        } else {
            HttpRefusal::Method
        })
    }
}

/// The segments of an encoded request path, each decoded; `None` if the
/// path is ambiguous: not absolute; a segment that decodes to a `/`, a
/// `\`, a NUL, invalid UTF-8, or is `.` or `..`; a segment with a `;`
/// (path parameters: Java servers read `/..;/` as `..`); an empty segment
/// but the last (servers that merge slashes read `//a` as `/a`).
fn decode_path(path: &str) -> Option<Vec<String>> {
    let rest = path.strip_prefix('/')?;
    let raw: Vec<&str> = rest.split('/').collect();
    let last = raw.len() - 1;
    raw.iter()
        .enumerate()
        .map(|(i, raw)| {
            let decoded = percent_encoding::percent_decode_str(raw)
                .decode_utf8()
                .ok()?
                .into_owned();
            let bad = decoded.contains(['/', '\\', '\0', ';'])
                || decoded == "."
                || decoded == ".."
                || (decoded.is_empty() && i != last);
            (!bad).then_some(decoded)
        })
        .collect()
}

impl Serialize for HttpRules {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.requests().serialize(s)
    }
}

impl<'de> Deserialize<'de> for HttpRules {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let rules = Vec::<HttpRuleRequest>::deserialize(d)?;
        HttpRules::parse(&rules, usize::MAX).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(host: &str, methods: Option<&[&str]>, paths: Option<&[&str]>) -> HttpRuleRequest {
        HttpRuleRequest {
            host: host.into(),
            methods: methods.map(|m| m.iter().map(|s| s.to_string()).collect()),
            paths: paths.map(|p| p.iter().map(|s| s.to_string()).collect()),
        }
    }

    fn rules(r: &[HttpRuleRequest]) -> HttpRules {
        HttpRules::parse(r, HTTP_RULES_MAX).unwrap()
    }

    #[test]
    fn a_request_passes_when_one_rule_of_its_host_allows_method_and_path() {
        let r = rules(&[
            rule(
                "api.example.com",
                Some(&["GET", "HEAD"]),
                Some(&["/repos/**"]),
            ),
            rule("api.example.com", Some(&["POST"]), Some(&["/graphql"])),
            rule("*.cdn.example.net", None, Some(&["/assets/*.js"])),
        ]);
        assert_eq!(r.check("api.example.com", "GET", "/repos/a/b"), Ok(()));
        assert_eq!(r.check("api.example.com", "HEAD", "/repos/"), Ok(()));
        assert_eq!(r.check("api.example.com", "POST", "/graphql"), Ok(()));
        assert_eq!(
            r.check("api.example.com", "POST", "/repos/a"),
            Err(HttpRefusal::Path)
        );
        assert_eq!(
            r.check("api.example.com", "DELETE", "/repos/a"),
            Err(HttpRefusal::Method)
        );
        assert_eq!(r.check("api.example.com", "GET", "/repos"), Ok(()));
        assert_eq!(
            r.check("api.example.com", "GET", "/repository"),
            Err(HttpRefusal::Path)
        );
        assert_eq!(
            r.check("x.cdn.example.net", "PUT", "/assets/app.js"),
            Ok(())
        );
        assert_eq!(
            r.check("x.cdn.example.net", "GET", "/assets/js/app.js"),
            Err(HttpRefusal::Path)
        );
        // A name no rule covers is not restricted.
        assert!(!r.covers("other.example.com"));
        assert_eq!(r.check("other.example.com", "DELETE", "/x"), Ok(()));
        assert!(r.covers("api.example.com"));
    }

    #[test]
    fn globs_match_segments() {
        let g = |p: &str| PathGlob::parse(p).unwrap();
        let m = |glob: &PathGlob, path: &str| {
            glob.matches(
                &decode_path(path)
                    .unwrap()
                    .iter()
                    .map(String::as_str)
                    .collect::<Vec<_>>(),
            )
        };
        assert!(m(&g("/"), "/"));
        assert!(!m(&g("/"), "/a"));
        assert!(m(&g("/**"), "/"));
        assert!(m(&g("/**"), "/a/b/c"));
        assert!(m(&g("/a/**/z"), "/a/z"));
        assert!(m(&g("/a/**/z"), "/a/b/c/z"));
        assert!(!m(&g("/a/**/z"), "/a/b/c/y"));
        assert!(m(&g("/a/*/z"), "/a/b/z"));
        assert!(!m(&g("/a/*/z"), "/a/b/c/z"));
        assert!(m(&g("/v*/x*y"), "/v1/xAAy"));
        assert!(!m(&g("/v*/x*y"), "/v1/xAAz"));
        assert!(m(&g("/files/*"), "/files/"));
        assert!(m(&g("/**/*.tar.gz"), "/a/b/pkg-1.0.tar.gz"));
        assert!(!m(&g("/**/*.tar.gz"), "/a/b/pkg-1.0.zip"));
    }

    #[test]
    fn ambiguous_paths_are_refused_and_encoded_ones_decoded() {
        let r = rules(&[rule("api.example.com", None, Some(&["/repos/**"]))]);
        for path in [
            "/repos/%2e%2e/admin",
            "/repos/../admin",
            "/repos/./x",
            "/repos%2fadmin",
            "/repos/a%5cb",
            "/repos/a%00",
            "/repos/%ff",
            "/repos/..;/admin",
            "/repos/%2e%2e;/admin",
            "/repos/a;jsessionid=1",
            "/repos//a",
            "//repos/a",
            "*",
            "",
        ] {
            assert_eq!(
                r.check("api.example.com", "GET", path),
                Err(HttpRefusal::AmbiguousPath),
                "{path}"
            );
        }
        assert_eq!(r.check("api.example.com", "GET", "/%72epos/x"), Ok(()));
        assert_eq!(r.check("api.example.com", "GET", "/repos/a%20b"), Ok(()));
    }

    #[test]
    fn bad_rules_are_refused_with_every_problem() {
        let e = HttpRules::parse(
            &[
                rule("api.example.com", Some(&["get"]), None),
                rule("*", None, None),
                rule("a.example.com", Some(&[]), None),
                rule("a.example.com", None, Some(&["repos"])),
                rule("a.example.com", None, Some(&["/a?b=1"])),
                rule("a.example.com", None, Some(&["/a**"])),
                rule("a.example.com", None, Some(&["/a/../b"])),
                rule("a.example.com", Some(&["GET /"]), None),
            ],
            HTTP_RULES_MAX,
        )
        .unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidHttpRules);
        assert_eq!(e.field, Some(FIELD));
        assert_eq!(e.problems.len(), 8, "{:?}", e.problems);
        assert!(e.message.contains("\"GET\""), "{}", e.message);
        let many: Vec<_> = (0..=HTTP_RULES_MAX)
            .map(|i| rule(&format!("h{i}.example.com"), None, None))
            .collect();
        assert!(HttpRules::parse(&many, HTTP_RULES_MAX).is_err());
    }

    #[test]
    fn rules_are_canonical_and_read_back() {
        let r = rules(&[
            rule(
                "API.example.com",
                Some(&["HEAD", "GET", "GET"]),
                Some(&["/a", "/a"]),
            ),
            rule("api.example.com", Some(&["GET", "HEAD"]), Some(&["/a"])),
        ]);
        assert_eq!(r.len(), 1);
        let stored = r.to_stored();
        assert_eq!(
            stored,
            r#"[{"host":"api.example.com","methods":["GET","HEAD"],"paths":["/a"]}]"#
        );
        assert_eq!(HttpRules::parse_stored(&stored).unwrap(), r);
        assert_eq!(HttpRules::parse_stored("").unwrap(), HttpRules::default());
        assert_eq!(HttpRules::default().to_stored(), "");
        let json = serde_json::to_string(&r).unwrap();
        assert_eq!(serde_json::from_str::<HttpRules>(&json).unwrap(), r);
    }
}
