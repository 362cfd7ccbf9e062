//! What a connection's first bytes say it is for: the server name of a TLS
//! ClientHello (parsed with `tls-parser`, reassembled across records), or
//! the start of something else.

use tls_parser::{
    parse_tls_extensions, parse_tls_message_handshake, parse_tls_raw_record, SNIType, TlsExtension,
    TlsMessage, TlsMessageHandshake, TlsRecordType,
};

/// The most bytes a ClientHello may take, records' headers included: a
/// hello with post-quantum key shares takes under 2 KiB; one larger than
/// this is refused rather than buffered.
pub const MAX_HELLO: usize = 64 * 1024;

/// The extension of Encrypted Client Hello (draft-ietf-tls-esni-18 and
/// RFC 9849's code point).
const ECH: u16 = 0xfe0d;
/// The older Encrypted SNI extension.
const ESNI: u16 = 0xffce;
/// A record's header: type, version, length.
const RECORD_HEADER: usize = 5;
/// A handshake message's header: type, 24-bit length.
const HANDSHAKE_HEADER: usize = 4;

/// What the first bytes of a connection are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hello {
    /// Not enough bytes yet to say.
    Incomplete,
    /// A TLS ClientHello naming this server (as sent: not yet checked or
    /// lowercased).
    ServerName(String),
    /// A TLS ClientHello with no server name.
    NoServerName,
    /// A TLS ClientHello whose real server name is encrypted (ECH, or the
    /// older ESNI): the name it shows is not the one it is for.
    Encrypted,
    /// TLS records that are not a well-formed ClientHello (or one larger
    /// than [`MAX_HELLO`]).
    Malformed,
    /// Not TLS: the first byte is not a handshake record's.
    NotTls,
}

/// Reads `buf`, the bytes received so far.
pub fn parse(buf: &[u8]) -> Hello {
    let Some(&first) = buf.first() else {
        return Hello::Incomplete;
    };
    if first != u8::from(TlsRecordType::Handshake) {
        // Another TLS record type (change cipher spec, alert, data)
        // first is TLS, but no hello; anything else is not TLS.
        return if (0x14..=0x17).contains(&first) {
            Hello::Malformed
        } else {
            Hello::NotTls
        };
    }
    // The handshake message's bytes, from as many records as it spans.
    let mut message = Vec::new();
    let mut rest = buf;
    loop {
        if rest.len() < RECORD_HEADER {
            return incomplete(buf);
        }
        let record = match parse_tls_raw_record(rest) {
            Ok((after, record)) => {
                rest = after;
                record
            }
            Err(tls_parser::nom::Err::Incomplete(_)) => return incomplete(buf),
            Err(_) => return Hello::Malformed,
        };
        if record.hdr.record_type != TlsRecordType::Handshake || record.data.is_empty() {
            return Hello::Malformed;
        }
        message.extend_from_slice(record.data);
        if message.len() >= HANDSHAKE_HEADER {
            let len = usize::from(message[1]) << 16
                | usize::from(message[2]) << 8
                | usize::from(message[3]);
            let whole = HANDSHAKE_HEADER + len;
            if whole > MAX_HELLO {
                return Hello::Malformed;
            }
            if message.len() >= whole {
                return client_hello(&message[..whole]);
            }
        }
    }
}

fn incomplete(buf: &[u8]) -> Hello {
    if buf.len() >= MAX_HELLO {
        Hello::Malformed
    } else {
        Hello::Incomplete
    }
}

fn client_hello(message: &[u8]) -> Hello {
    let Ok((_, TlsMessage::Handshake(TlsMessageHandshake::ClientHello(hello)))) =
        parse_tls_message_handshake(message)
    else {
        return Hello::Malformed;
    };
    let Some(ext) = hello.ext else {
        return Hello::NoServerName;
    };
    let Ok((_, extensions)) = parse_tls_extensions(ext) else {
        return Hello::Malformed;
    };
    let mut name = None;
    for e in &extensions {
        match e {
            TlsExtension::EncryptedServerName { .. } => return Hello::Encrypted,
            TlsExtension::Unknown(ty, _) if ty.0 == ECH || ty.0 == ESNI => return Hello::Encrypted,
            TlsExtension::SNI(names) => {
                // One name of type host_name at most (RFC 6066, 3); a
                // hello naming two is not one the gateway can check.
                let hosts: Vec<&[u8]> = names
                    .iter()
                    .filter(|(t, _)| *t == SNIType::HostName)
                    .map(|(_, n)| *n)
                    .collect();
                match hosts.as_slice() {
                    [] => {}
                    [one] => match std::str::from_utf8(one) {
                        Ok(s) => name = Some(s.to_string()),
                        Err(_) => return Hello::Malformed,
                    },
                    _ => return Hello::Malformed,
                }
            }
            _ => {}
        }
    }
    match name {
        Some(n) => Hello::ServerName(n),
        None => Hello::NoServerName,
    }
}

/// ClientHello bytes made to order, for tests, fuzzing and benchmarks:
/// a hello with no name, two names or an encrypted one is what a real
/// TLS library will not send.
pub mod craft {
    /// The ECH extension's code point.
    pub const ECH: u16 = super::ECH;

    /// A ClientHello (TLS 1.2 shape) with `extensions` (type, data), as
    /// one handshake message.
    pub fn hello_message(extensions: &[(u16, Vec<u8>)]) -> Vec<u8> {
        let mut body = vec![0x03, 0x03];
        body.extend_from_slice(&[7u8; 32]); // random
        body.push(0); // no session id
        body.extend_from_slice(&[0x00, 0x02, 0x13, 0x01]); // one cipher suite
        body.extend_from_slice(&[0x01, 0x00]); // null compression
        let mut ext = Vec::new();
        for (ty, data) in extensions {
            ext.extend_from_slice(&ty.to_be_bytes());
            ext.extend_from_slice(&len16(data.len()));
            ext.extend_from_slice(data);
        }
        body.extend_from_slice(&len16(ext.len()));
        body.extend_from_slice(&ext);
        let mut msg = vec![0x01];
        let len = u32::try_from(body.len()).unwrap_or(u32::MAX).to_be_bytes();
        msg.extend_from_slice(&len[1..]);
        msg.extend_from_slice(&body);
        msg
    }

    fn len16(n: usize) -> [u8; 2] {
        u16::try_from(n).unwrap_or(u16::MAX).to_be_bytes()
    }

    /// The server name extension naming `names` (host names).
    pub fn sni(names: &[&str]) -> (u16, Vec<u8>) {
        let mut list = Vec::new();
        for n in names {
            list.push(0);
            list.extend_from_slice(&len16(n.len()));
            list.extend_from_slice(n.as_bytes());
        }
        let mut data = len16(list.len()).to_vec();
        data.extend_from_slice(&list);
        (0, data)
    }

    /// `message` cut into handshake records of at most `size` bytes.
    pub fn records(message: &[u8], size: usize) -> Vec<u8> {
        let mut out = Vec::new();
        for chunk in message.chunks(size.max(1)) {
            out.extend_from_slice(&[0x16, 0x03, 0x01]);
            out.extend_from_slice(&len16(chunk.len()));
            out.extend_from_slice(chunk);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::craft::{hello_message, records, sni};
    use super::*;

    #[test]
    fn a_hello_names_its_server_whole_or_in_pieces() {
        let msg = hello_message(&[sni(&["api.example.com"])]);
        let one = records(&msg, 16384);
        assert_eq!(parse(&one), Hello::ServerName("api.example.com".into()));
        // Every prefix is incomplete, never a verdict.
        for cut in 0..one.len() {
            assert_eq!(parse(&one[..cut]), Hello::Incomplete, "cut at {cut}");
        }
        // Cut into records of 7 bytes (a way to hide the name from a
        // reader of the first record only): the same name.
        let many = records(&msg, 7);
        assert_eq!(parse(&many), Hello::ServerName("api.example.com".into()));
        for cut in 0..many.len() {
            assert_eq!(parse(&many[..cut]), Hello::Incomplete, "cut at {cut}");
        }
    }

    #[test]
    fn no_name_an_encrypted_name_two_names_and_other_protocols_are_told_apart() {
        assert_eq!(
            parse(&records(&hello_message(&[]), 16384)),
            Hello::NoServerName
        );
        assert_eq!(
            parse(&records(&hello_message(&[(10, vec![0, 2, 0, 29])]), 16384)),
            Hello::NoServerName
        );
        let ech = hello_message(&[sni(&["public.example.net"]), (ECH, vec![0; 40])]);
        assert_eq!(parse(&records(&ech, 16384)), Hello::Encrypted);
        let esni = hello_message(&[(ESNI, vec![0; 40]), sni(&["a.example.net"])]);
        assert_eq!(parse(&records(&esni, 16384)), Hello::Encrypted);
        let two = hello_message(&[sni(&["a.example.com", "b.example.net"])]);
        assert_eq!(parse(&records(&two, 16384)), Hello::Malformed);
        assert_eq!(parse(b"GET / HTTP/1.1\r\n"), Hello::NotTls);
        assert_eq!(parse(b""), Hello::Incomplete);
        // An alert record where a hello should be; a hello too large.
        assert_eq!(parse(&[0x15, 3, 3, 0, 2, 2, 40]), Hello::Malformed);
        let mut huge = records(&hello_message(&[]), 16384);
        huge[6..9].copy_from_slice(&[0x01, 0x00, 0x00]);
        assert_eq!(parse(&huge), Hello::Malformed);
    }
}
