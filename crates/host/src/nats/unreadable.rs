//! Deliveries the NATS client cannot read, found and decided.
//!
//! nats-server stores and delivers any header block a publisher sends
//! (checked with nats-server 2.12.8 and `HPUB` over a plain socket: a line
//! feed inside a value, invalid UTF-8, a line without `:`, a name with a
//! space, a version line that is not `NATS/1.0`, a status that is not three
//! digits). async-nats 0.52 reads a delivery's header block line by line and
//! gives up on the whole connection at the first line it cannot parse
//! (`connection.rs`, `try_read_op`: an `io::Error` ends the connection and
//! the client reconnects); the delivery never reaches weir. JetStream then
//! redelivers it after the ack wait, the connection drops again, and so on
//! forever: the event is never decided and every app of the host loses its
//! connection once per ack wait. (async-nats 0.51 panicked on a carriage
//! return in a value instead, which stopped the client for good; 0.52 puts a
//! space in place of a lone `\r`.)
//!
//! weir finds such deliveries without the client's parser: when an app's
//! consumer skipped a delivery sequence (a delivery that never arrived) or
//! the connection was renewed during a pull, the consumer's scan (`scan` in
//! `consumer.rs`) asks the server for the consumer's range of unacknowledged
//! stream sequences (consumer info) and reads the messages in it through
//! the JSON message-get API (`$JS.API.STREAM.MSG.GET.<stream>`, which
//! carries the header block base64-encoded inside a JSON reply the client
//! parses safely). A message whose header block [`header_block_problem`]
//! rejects is handed to the pipeline as an [`super::Inbound`] with a
//! `header_error`: it is
//! dead-lettered with the reason and terminated through an ack subject weir
//! writes itself (JetStream's explicit ack policy keys a term on the stream
//! sequence alone, `processAckMsg` in nats-server's `consumer.go`).

use base64::Engine as _;
use serde::Deserialize;

/// Most messages one scan reads: 1,024 (four default `max_ack_pending`
/// windows). A longer unacknowledged range is read in later scans.
pub const SCAN_MAX_MESSAGES: usize = 1_024;

/// Most bytes of an unreadable header block quoted in its dead-letter
/// reason (escaped): 256.
pub const QUOTED_HEADER_BYTES: usize = 256;

/// Most stream sequences remembered per consumer as decided (so a later
/// scan does not dead-letter the same message twice): 1,024.
pub const DECIDED_MEMORY: usize = 1_024;

/// Why async-nats 0.52 cannot read the header block `raw` (the bytes from
/// `NATS/1.0` to the blank line), or `None` if it can. Mirrors the client's
/// `try_read_op`: the block must be UTF-8; its first line must start with
/// `NATS/1.0`, optionally followed by a three-digit status; every other
/// non-empty line is `name: value` with a name of visible ASCII and no
/// `:`, or a continuation (leading white space) of the line before.
pub fn header_block_problem(raw: &[u8]) -> Option<String> {
    let Ok(text) = std::str::from_utf8(raw) else {
        return Some("the header block is not UTF-8".to_owned());
    };
    let mut lines = text.lines().peekable();
    let version = lines.next().unwrap_or("");
    let Some(rest) = version.strip_prefix("NATS/1.0") else {
        return Some("the header block does not start with NATS/1.0".to_owned());
    };
    let status = rest.trim().split_once(' ').map_or(rest.trim(), |(s, _)| s);
    if !status.is_empty() && !is_status(status) {
        return Some(format!("the header status {status:?} is not three digits"));
    }
    while let Some(line) = lines.next() {
        if line.is_empty() {
            continue;
        }
        let Some((name, _)) = line.split_once(':') else {
            return Some(format!("header line {line:?} has no ':'"));
        };
        if name.contains(|c: char| !c.is_ascii_graphic()) {
            return Some(format!("header name {name:?} is not visible ASCII"));
        }
        while lines
            .next_if(|l| l.starts_with(char::is_whitespace))
            .is_some()
        {}
    }
    None
}

/// A status as async-nats reads one: three digits, the first not 0.
fn is_status(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 3 && (b'1'..=b'9').contains(&b[0]) && b[1..].iter().all(u8::is_ascii_digit)
}

/// `raw` for a dead-letter reason: at most [`QUOTED_HEADER_BYTES`], escaped
/// (no control character or line break survives).
pub fn quote(raw: &[u8]) -> String {
    let cut = &raw[..raw.len().min(QUOTED_HEADER_BYTES)];
    let more = if raw.len() > cut.len() { "…" } else { "" };
    format!("b\"{}\"{more}", cut.escape_ascii())
}

/// One stored message as the JSON message-get API returns it.
#[derive(Debug, Deserialize)]
pub(super) struct StoredMessage {
    /// The subject it was published on.
    pub subject: String,
    /// Its stream sequence.
    pub seq: u64,
    /// The header block, base64.
    #[serde(default)]
    pub hdrs: Option<String>,
    /// The payload, base64.
    #[serde(default)]
    pub data: Option<String>,
    /// When it was stored (RFC 3339, UTC).
    #[serde(default)]
    pub time: Option<String>,
}

impl StoredMessage {
    /// The decoded header block and payload (empty where absent or not
    /// base64).
    pub fn decoded(&self) -> (Vec<u8>, Vec<u8>) {
        let b64 = |s: &Option<String>| {
            s.as_deref()
                .and_then(|s| base64::engine::general_purpose::STANDARD.decode(s).ok())
                .unwrap_or_default()
        };
        (b64(&self.hdrs), b64(&self.data))
    }
}

/// The message-get API's reply: the message, or the server's error (404 past
/// the last message).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum MsgGetReply {
    /// Found.
    Found {
        /// The message.
        message: StoredMessage,
    },
    /// Not found or refused.
    Error {
        /// The server's error.
        error: ApiError,
    },
}

/// A JetStream API error.
#[derive(Debug, Deserialize)]
pub(super) struct ApiError {
    /// HTTP-like code (404: no such message).
    #[serde(default)]
    pub code: u16,
    /// The server's description.
    #[serde(default)]
    pub description: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readable_blocks_pass() {
        for ok in [
            &b"NATS/1.0\r\nNats-Msg-Id: a\r\n\r\n"[..],
            b"NATS/1.0\r\n\r\n",
            b"NATS/1.0 503\r\n\r\n",
            b"NATS/1.0 408 Request Timeout\r\nX: y\r\n\r\n",
            b"NATS/1.0\r\nX-Odd: a\rb\r\n\r\n",
            b"NATS/1.0\r\nX-Nul: a\x00b\r\n\r\n",
            b"NATS/1.0\r\nX: a\r\n continued\r\n\r\n",
            b"NATS/1.0\r\n: empty name\r\n\r\n",
        ] {
            assert_eq!(header_block_problem(ok), None, "{}", quote(ok));
        }
    }

    #[test]
    fn unreadable_blocks_are_named() {
        for (bad, why) in [
            (&b"NATS/1.0\r\nX-Odd: a\nb\r\n\r\n"[..], "has no ':'"),
            (b"NATS/1.0\r\nX-Odd: a\xffb\r\n\r\n", "not UTF-8"),
            (b"NATS/1.0\r\nnocolon\r\n\r\n", "has no ':'"),
            (b"HTTP/1.1\r\nX: y\r\n\r\n", "NATS/1.0"),
            (b"NATS/1.0\r\nX Y: z\r\n\r\n", "visible ASCII"),
            (b"NATS/1.0 abc\r\n\r\n", "three digits"),
            (b"NATS/1.0 099\r\n\r\n", "three digits"),
        ] {
            let problem = header_block_problem(bad).unwrap_or_default();
            assert!(problem.contains(why), "{}: {problem:?}", quote(bad));
        }
    }

    #[test]
    fn quotes_are_escaped_and_capped() {
        assert_eq!(quote(b"a\r\nb\xff"), "b\"a\\r\\nb\\xff\"");
        let long = quote(&[b'x'; 1000]);
        assert!(long.len() < QUOTED_HEADER_BYTES + 10 && long.ends_with('…'));
    }

    #[test]
    fn replies_parse_both_ways() {
        let found: MsgGetReply = serde_json::from_str(
            r#"{"type":"x","message":{"subject":"weir.events.a.b","seq":7,"hdrs":"TkFUUy8xLjANCg0K","data":"e30=","time":"2026-01-01T00:00:00Z"}}"#,
        )
        .unwrap();
        let MsgGetReply::Found { message } = found else {
            panic!("not found")
        };
        assert_eq!(message.seq, 7);
        assert_eq!(
            message.decoded(),
            (b"NATS/1.0\r\n\r\n".to_vec(), b"{}".to_vec())
        );
        let missing: MsgGetReply = serde_json::from_str(
            r#"{"type":"x","error":{"code":404,"err_code":10037,"description":"no message found"}}"#,
        )
        .unwrap();
        assert!(matches!(missing, MsgGetReply::Error { error } if error.code == 404));
    }
}
