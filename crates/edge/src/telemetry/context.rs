//! W3C trace context (`traceparent`, `tracestate`) in NATS headers, and
//! the trace steps of weir's spans.
//!
//! Header values come from any publisher: [`extract`] takes only what the
//! W3C Trace Context parser of the OpenTelemetry SDK accepts (version
//! `00`, 32 and 16 lowercase hex digits, not all zero, flags); anything
//! else is no context, and the event is handled untraced. A header name is
//! matched without regard to case (publishers that canonicalise names
//! write `Traceparent`).

use async_nats::HeaderMap;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator as _};
use opentelemetry::trace::{SpanContext, TraceContextExt as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// The W3C header holding version, trace id, parent span id and flags:
/// `traceparent`.
pub const TRACEPARENT: &str = "traceparent";

/// The W3C header holding vendors' trace state: `tracestate`.
pub const TRACESTATE: &str = "tracestate";

/// Longest `tracestate` value carried on: 512 bytes (the W3C Trace Context
/// specification's limit for propagators to keep).
pub const MAX_TRACESTATE_BYTES: usize = 512;

/// Most links one span gets: 128 (the OpenTelemetry SDK's default
/// `OTEL_SPAN_LINK_COUNT_LIMIT`); a batch of more traced events links the
/// first 128 and says how many in `weir.links_dropped`.
pub const MAX_LINKS: usize = 128;

/// An event's trace context, with the attributes its link carries.
#[derive(Debug, Clone)]
pub struct Link {
    /// The context the event was published in.
    pub context: SpanContext,
    /// `messaging.message.id`, ...
    pub attributes: Vec<KeyValue>,
}

impl Link {
    /// A link to `context` for the event `id` (its subject is the batch's
    /// `messaging.destination.name`, or one of the batch's: not repeated
    /// per link, which would double what a batch of 64 sends).
    pub fn event(context: SpanContext, id: &str) -> Self {
        Self {
            context,
            attributes: vec![KeyValue::new("messaging.message.id", id.to_owned())],
        }
    }
}

struct Headers<'a>(&'a HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        if let Some(v) = self.0.get(key) {
            return Some(v.as_str());
        }
        self.0
            .iter()
            .find(|(name, _)| AsRef::<str>::as_ref(*name).eq_ignore_ascii_case(key))
            .and_then(|(_, values)| values.first())
            .map(|v| v.as_str())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|(name, _)| name.as_ref()).collect()
    }
}

struct HeadersMut<'a>(&'a mut HeaderMap);

impl Injector for HeadersMut<'_> {
    fn set(&mut self, key: &str, value: String) {
        if key == TRACESTATE && value.len() > MAX_TRACESTATE_BYTES {
            return;
        }
        // The propagator writes only `traceparent` and `tracestate`, whose
        // values hold no line breaks; `try_from` refuses them anyway.
        if let Ok(value) = async_nats::HeaderValue::try_from(value.as_str()) {
            self.0.insert(key, value);
        }
    }
}

/// The remote span context in `headers`, if they carry a valid
/// `traceparent` (with its `tracestate`); `None` for no headers, no
/// `traceparent`, or one that does not parse.
pub fn extract(headers: Option<&HeaderMap>) -> Option<SpanContext> {
    let headers = headers?;
    let cx = TraceContextPropagator::new().extract(&Headers(headers));
    let span = cx.span();
    let context = span.span_context();
    context.is_valid().then(|| context.clone())
}

/// Parse one `traceparent` value (`weir publish --traceparent`, a pending
/// effect's stored context); `None` if it is not valid.
pub fn parse_traceparent(value: &str) -> Option<SpanContext> {
    let value = async_nats::HeaderValue::try_from(value.trim()).ok()?;
    let mut headers = HeaderMap::new();
    headers.insert(TRACEPARENT, value);
    extract(Some(&headers))
}

/// The `traceparent` of `span` (sampled or not), if it is traced.
pub fn traceparent_of(span: &tracing::Span) -> Option<String> {
    if !super::enabled() {
        return None;
    }
    let mut headers = HeaderMap::new();
    inject(&span.context(), &mut headers);
    headers.get(TRACEPARENT).map(|v| v.as_str().to_owned())
}

/// Write the context of the current `tracing` span into `headers`
/// (`traceparent`, `tracestate`), when traces are exported and the span is
/// traced; otherwise leave them alone.
pub fn inject_current(headers: &mut HeaderMap) {
    if !super::enabled() {
        return;
    }
    inject(&tracing::Span::current().context(), headers);
}

fn inject(cx: &Context, headers: &mut HeaderMap) {
    if cx.span().span_context().is_valid() {
        TraceContextPropagator::new().inject_context(cx, &mut HeadersMut(headers));
    }
}

/// The span of one event weir sends (`weir publish`, `weir bridge`) when
/// traces are exported, else [`tracing::Span::none`]: a messaging `send`
/// span named `send <name>` (kind producer, `messaging.destination.name` =
/// `subject`, `messaging.message.id` = `id`, `weir.event.source` =
/// `source`; `weir.redis.channel` left for the bridge to record), a child
/// of `parent` if given, else the root of a new trace. Publishing inside it
/// carries its context ([`inject_current`]).
pub fn send_span(
    name: &str,
    subject: &str,
    id: &str,
    source: &str,
    parent: Option<SpanContext>,
) -> tracing::Span {
    if !super::enabled() {
        return tracing::Span::none();
    }
    let span = tracing::info_span!(
        "send",
        otel.name = %format_args!("send {name}"),
        otel.kind = "producer",
        messaging.system = "nats",
        messaging.operation.type = "send",
        messaging.operation.name = "send",
        messaging.destination.name = subject,
        messaging.message.id = id,
        weir.event.source = source,
        weir.redis.channel = tracing::field::Empty,
    );
    if let Some(context) = parent {
        follow(
            &span,
            vec![Link {
                context,
                attributes: Vec::new(),
            }],
        );
    }
    span
}

/// Make `span` (not yet entered) part of the traces of `links`: its parent
/// is the first link's context (so a batch of one traced event is a child
/// of its publish), and it links every one of them, at most [`MAX_LINKS`]
/// (a batch has many parents). Does nothing when no link is given or
/// traces are not exported.
pub fn follow(span: &tracing::Span, links: Vec<Link>) {
    if links.is_empty() || !super::enabled() {
        return;
    }
    let parent = Context::new().with_remote_span_context(links[0].context.clone());
    if let Err(e) = span.set_parent(parent) {
        tracing::debug!(error = %e, "span already started; trace parent not set");
    }
    let total = links.len();
    for link in links.into_iter().take(MAX_LINKS) {
        span.add_link_with_attributes(link.context, link.attributes);
    }
    if total > MAX_LINKS {
        span.set_attribute("weir.links_dropped", (total - MAX_LINKS) as i64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, *v);
        }
        h
    }

    #[test]
    fn a_valid_traceparent_is_read_whatever_the_header_name_case() {
        for name in ["traceparent", "Traceparent", "TRACEPARENT"] {
            let cx = extract(Some(&headers(&[(name, VALID), ("tracestate", "k=v")]))).unwrap();
            assert_eq!(
                cx.trace_id().to_string(),
                "4bf92f3577b34da6a3ce929d0e0e4736"
            );
            assert_eq!(cx.span_id().to_string(), "00f067aa0ba902b7");
            assert!(cx.is_sampled() && cx.is_remote());
        }
        assert!(parse_traceparent(VALID).is_some());
    }

    #[test]
    fn malformed_traceparents_are_no_context() {
        let bad = [
            "",
            "garbage",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0g",
            "00-4bf92f3577b34da6a3ce929d0e0e47\u{e9}-00f067aa0ba902b7-01",
        ];
        for value in bad {
            assert!(
                extract(Some(&headers(&[("traceparent", value)]))).is_none(),
                "{value:?} was taken"
            );
            assert!(parse_traceparent(value).is_none(), "{value:?} parsed");
        }
        assert!(extract(None).is_none());
        assert!(extract(Some(&HeaderMap::new())).is_none());
        assert!(
            parse_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736\r\n-00f067aa0ba902b7-01")
                .is_none()
        );
    }

    #[test]
    fn nothing_is_written_while_traces_are_not_exported() {
        let mut h = HeaderMap::new();
        inject_current(&mut h);
        assert!(h.get(TRACEPARENT).is_none());
        assert_eq!(traceparent_of(&tracing::Span::none()), None);
    }
}
