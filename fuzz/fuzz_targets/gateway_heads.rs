//! What the gateway reads of a connection before it decides: the TLS
//! ClientHello (`hello::parse`, reassembly across records included) and
//! an HTTP/1 request head's name (`http::request_name`, on the head as
//! httparse, hyper's parser, reads it), and the HTTP rules' check of its
//! method and path (`HttpRules::check`, the path decoded). Never a panic;
//! a name is only ever one of the head's.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sandgate_gateway::hello::{self, Hello};

fuzz_target!(|data: &[u8]| {
    let _: Hello = hello::parse(data);
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut req = httparse::Request::new(&mut headers);
    if let Ok(httparse::Status::Complete(_)) = req.parse(data) {
        let mut b = hyper::Request::builder().uri(req.path.unwrap_or("/"));
        for h in req.headers.iter() {
            b = b.header(h.name, h.value);
        }
        if let Ok(request) = b.body(()) {
            if let Ok(Some(name)) = sandgate_gateway::http::request_name(&request) {
                let lower = String::from_utf8_lossy(data).to_ascii_lowercase();
                assert!(lower.contains(&name.to_ascii_lowercase()));
                let _ = rules().check(&name, req.method.unwrap_or("GET"), request.uri().path());
            }
        }
    }
});

/// Rules with every kind of glob, for every name below `example.com`.
fn rules() -> &'static sandgate_policy::HttpRules {
    static RULES: std::sync::OnceLock<sandgate_policy::HttpRules> = std::sync::OnceLock::new();
    RULES.get_or_init(|| {
        let rules: Vec<sandgate_policy::HttpRuleRequest> = serde_json::from_str(
            r#"[{"host": "*.example.com", "methods": ["GET"], "paths": ["/a/**/b*c/*", "/**/x", "/"]},
                {"host": "example.com", "paths": ["/**"]}]"#,
        )
        .expect("rules");
        sandgate_policy::HttpRules::parse(&rules, usize::MAX).expect("valid rules")
    })
}
