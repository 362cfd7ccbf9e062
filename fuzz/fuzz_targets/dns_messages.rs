//! DNS messages as the service meets them: a query from a sandbox
//! (`parse_query`), and the same bytes as an upstream answer
//! (`answers`, `addresses`, `strip`, `extended_error`). Never a panic.
#![no_main]

use hickory_proto::op::Message;
use libfuzzer_sys::fuzz_target;
use sandgate_dns::protocol::{addresses, answers, extended_error, parse_query, strip, Question};

fuzz_target!(|data: &[u8]| {
    if let Some((_, Ok(question))) = parse_query(data) {
        let _ = sandgate_dns::protocol::upstream_query(&question.name, question.qtype, 7);
    }
    if let Ok(mut message) = Message::from_vec(data) {
        let _ = extended_error(&message);
        let asked = message.queries.first().map(|q| Question {
            name: q.name().to_ascii().trim_end_matches('.').to_lowercase(),
            qtype: q.query_type(),
        });
        if let Some(question) = asked {
            let _ = answers(&message, &question.name, question.qtype);
            let _ = addresses(&message, &question);
        }
        let _ = strip(&mut message, |a| a.is_loopback());
    }
});
