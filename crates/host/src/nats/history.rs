//! The events stream's history, read for `weir replay` ([`crate::replay`]):
//! stored messages by stream sequence, without a consumer and without the
//! NATS client's header parser.
//!
//! Every message is read through the JSON message-get API
//! (`$JS.API.STREAM.MSG.GET.<stream>`), which carries the header block
//! base64-encoded inside a JSON reply ([`super::unreadable`]): a message
//! whose header block the client cannot read, which would drop the
//! connection of a consumer delivering it (and an ordered consumer would be
//! recreated at it forever), is returned here with the reason instead.
//! [`HISTORY_READS_IN_FLIGHT`] requests are in flight at a time, answered
//! in sequence order. Nothing is written: no consumer is made, nothing is
//! acknowledged.

use std::time::Duration;

use bytes::Bytes;
use futures::{Stream, StreamExt as _};

use super::unreadable::{self, MsgGetReply};
use super::{MSG_ID_HEADER, Transport, TransportError, js_err};

/// Message-get requests in flight while reading a range: 64.
pub const HISTORY_READS_IN_FLIGHT: usize = 64;

/// Probes of the binary search for the first event published at or after
/// a time: at most 64 (one per bit of a sequence).
pub const MAX_TIME_PROBES: u32 = 64;

/// What the stream holds now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamSpan {
    /// Its first stored sequence (the one after the last removed by its
    /// limits; `last + 1` when it is empty).
    pub first_sequence: u64,
    /// Its last stored sequence (0 when nothing was ever stored).
    pub last_sequence: u64,
    /// Messages stored.
    pub messages: u64,
}

/// One stored message of the events stream.
#[derive(Debug, Clone)]
pub struct StoredEvent {
    /// Its stream sequence.
    pub sequence: u64,
    /// The subject it was published on.
    pub subject: String,
    /// `Nats-Msg-Id`, else `"<stream>:<sequence>"` (as for a delivery).
    pub id: String,
    /// The payload as published.
    pub payload: Bytes,
    /// Publish time, ms since the Unix epoch (0 if the server's time could
    /// not be read).
    pub published_ms: u64,
    /// Why the NATS client could not read its header block, if it could
    /// not (such an event is dead-lettered by a live host, never handled).
    pub header_error: Option<String>,
}

/// The span of `transport`'s events stream.
///
/// # Errors
///
/// [`TransportError::JetStream`] if the stream cannot be read (missing,
/// no permission, no server).
pub async fn span(transport: &Transport) -> Result<StreamSpan, TransportError> {
    let stream = transport
        .jetstream()
        .get_stream(transport.stream())
        .await
        .map_err(js_err("stream info"))?;
    let state = &stream.cached_info().state;
    Ok(StreamSpan {
        first_sequence: state.first_sequence,
        last_sequence: state.last_sequence,
        messages: state.messages,
    })
}

/// The first sequence of `span` whose message was published at or after
/// `since_ms` (ms since the Unix epoch); `span.last_sequence + 1` if none
/// was. A binary search of at most [`MAX_TIME_PROBES`] message reads
/// (publish times increase with the sequence).
///
/// # Errors
///
/// As [`read_one`].
pub async fn first_since(
    transport: &Transport,
    span: StreamSpan,
    since_ms: u64,
) -> Result<u64, TransportError> {
    let (mut low, mut high) = (span.first_sequence, span.last_sequence + 1);
    let mut probes = 0;
    while low < high && probes < MAX_TIME_PROBES {
        probes += 1;
        let mid = low + (high - low) / 2;
        // The first message at or after `mid` (a removed sequence is
        // skipped), on any subject of the stream.
        match read_next(transport, mid).await? {
            None => high = mid,
            Some(found) if found.published_ms >= since_ms => high = mid.min(found.sequence),
            Some(found) => low = found.sequence + 1,
        }
    }
    Ok(low)
}

/// The stored messages with sequences `from..=to`, in order: `None` for a
/// sequence the stream no longer holds (or never did: a gap). Reads
/// [`HISTORY_READS_IN_FLIGHT`] ahead.
pub fn read(
    transport: &Transport,
    from: u64,
    to: u64,
) -> impl Stream<Item = Result<Option<StoredEvent>, TransportError>> + '_ {
    futures::stream::iter(from..=to)
        .map(move |sequence| read_one(transport, sequence))
        .buffered(HISTORY_READS_IN_FLIGHT)
}

/// The stored message at `sequence`, `None` if the stream does not hold it.
///
/// # Errors
///
/// [`TransportError::JetStream`] if the request fails or the server answers
/// with an error other than "no message found".
pub async fn read_one(
    transport: &Transport,
    sequence: u64,
) -> Result<Option<StoredEvent>, TransportError> {
    get(transport, serde_json::json!({ "seq": sequence })).await
}

/// The first stored message at or after `sequence`, on any event subject.
async fn read_next(
    transport: &Transport,
    sequence: u64,
) -> Result<Option<StoredEvent>, TransportError> {
    let all = transport.subjects().all_events();
    get(
        transport,
        serde_json::json!({ "seq": sequence, "next_by_subj": all }),
    )
    .await
}

/// One message-get request.
async fn get(
    transport: &Transport,
    request: serde_json::Value,
) -> Result<Option<StoredEvent>, TransportError> {
    let api = format!("STREAM.MSG.GET.{}", transport.stream());
    let reply: MsgGetReply = transport
        .jetstream()
        .request(api, &request)
        .await
        .map_err(js_err("message get"))?;
    let message = match reply {
        MsgGetReply::Found { message } => message,
        MsgGetReply::Error { error } if error.code == 404 => return Ok(None),
        MsgGetReply::Error { error } => {
            return Err(js_err("message get")(format!(
                "{}: {}",
                error.code, error.description
            )));
        }
    };
    let (headers, payload) = message.decoded();
    let header_error = if headers.is_empty() {
        None
    } else {
        unreadable::header_block_problem(&headers).map(|problem| {
            format!(
                "the NATS client cannot read this event's headers ({problem}): {}",
                unreadable::quote(&headers)
            )
        })
    };
    let id = header_error
        .is_none()
        .then(|| header_value(&headers, MSG_ID_HEADER))
        .flatten()
        .unwrap_or_else(|| format!("{}:{}", transport.stream(), message.seq));
    let published_ms = message
        .time
        .as_deref()
        .and_then(|t| humantime::parse_rfc3339(t).ok())
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d: Duration| d.as_millis() as u64);
    Ok(Some(StoredEvent {
        sequence: message.seq,
        subject: message.subject,
        id,
        payload: Bytes::from(payload),
        published_ms,
        header_error,
    }))
}

/// The value of header `name` in a readable header block `raw` (the first
/// one; names compared without case, as async-nats does).
fn header_value(raw: &[u8], name: &str) -> Option<String> {
    let text = std::str::from_utf8(raw).ok()?;
    text.lines().skip(1).find_map(|line| {
        let (n, v) = line.split_once(':')?;
        n.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().to_owned())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_message_id_is_read_from_the_block() {
        let block = b"NATS/1.0\r\nX: y\r\nnats-msg-id:  abc-1 \r\n\r\n";
        assert_eq!(header_value(block, MSG_ID_HEADER).as_deref(), Some("abc-1"));
        assert_eq!(
            header_value(b"NATS/1.0\r\nX: y\r\n\r\n", MSG_ID_HEADER),
            None
        );
    }
}
