//! The export path's two pieces weir adds to the SDK's: an HTTP client
//! (ureq, which weir links already) for the OTLP exporter, and a bound on
//! the spans waiting for export, counting what it drops.
//!
//! The SDK's batch span processor already drops spans when its queue is
//! full, but keeps the count to itself (a log line at shutdown);
//! [`BoundedProcessor`] admits a span only while fewer than the queue's
//! size are waiting or being exported, so the SDK's queue never fills and
//! every drop is weir's, counted in [`stats`].

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use opentelemetry::Context;
use opentelemetry_http::{Bytes, HttpError, Request, Response};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{
    BatchConfig, BatchSpanProcessor, Span, SpanData, SpanExporter, SpanProcessor,
};

/// Largest response body read from a collector: 64 KiB (an OTLP response
/// is a small protobuf; a partial-success message at most).
pub const MAX_RESPONSE_BYTES: u64 = 64 << 10;

static EXPORTED: AtomicU64 = AtomicU64::new(0);
static DROPPED: AtomicU64 = AtomicU64::new(0);
static FAILED: AtomicU64 = AtomicU64::new(0);

/// This process's export counters since it started (all 0 when export is
/// off).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExportStats {
    /// Spans the collector accepted.
    pub exported: u64,
    /// Spans dropped because [`super::TelemetryConfig::max_queue_spans`]
    /// were waiting (a collector down or slower than weir).
    pub dropped: u64,
    /// Spans lost with an export request that failed after the
    /// exporter's retries (refused, timed out, unreachable).
    pub failed: u64,
}

/// The export counters: `weir_trace_spans_exported_total`,
/// `weir_trace_spans_dropped_total`, `weir_trace_spans_failed_total`.
pub fn stats() -> ExportStats {
    ExportStats {
        exported: EXPORTED.load(Ordering::Relaxed),
        dropped: DROPPED.load(Ordering::Relaxed),
        failed: FAILED.load(Ordering::Relaxed),
    }
}

/// The OTLP exporter's HTTP client: a ureq agent with the export timeout,
/// that hands every status back to the exporter (which retries 429 and 5xx
/// as the OTLP specification says).
#[derive(Debug)]
pub struct HttpClient {
    agent: ureq::Agent,
}

impl HttpClient {
    /// A client whose requests each end within `timeout`.
    pub fn new(timeout: Duration) -> Self {
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(timeout))
            .http_status_as_error(false)
            .build()
            .new_agent();
        Self { agent }
    }
}

#[async_trait::async_trait]
impl opentelemetry_http::HttpClient for HttpClient {
    /// Blocking, on the batch processor's own thread (never a tokio
    /// worker: the processor runs its exports there).
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let request = request.map(|body| body.to_vec());
        let mut response = self.agent.run(request)?;
        let status = response.status();
        let body = response
            .body_mut()
            .with_config()
            .limit(MAX_RESPONSE_BYTES)
            .read_to_vec()?;
        Ok(Response::builder().status(status).body(Bytes::from(body))?)
    }
}

/// The SDK's batch span processor, admitting a finished span only while
/// fewer than `capacity` are waiting or being exported; the rest are
/// dropped and counted.
#[derive(Debug)]
pub struct BoundedProcessor {
    inner: BatchSpanProcessor,
    waiting: Arc<AtomicUsize>,
    capacity: usize,
}

impl BoundedProcessor {
    /// `exporter` behind a batch processor configured by `config` (whose
    /// queue holds `capacity` spans).
    pub fn new<E: SpanExporter + 'static>(
        exporter: E,
        config: BatchConfig,
        capacity: usize,
    ) -> Self {
        let waiting = Arc::new(AtomicUsize::new(0));
        let exporter = Counted {
            inner: exporter,
            waiting: waiting.clone(),
        };
        Self {
            inner: BatchSpanProcessor::builder(exporter)
                .with_batch_config(config)
                .build(),
            waiting,
            capacity,
        }
    }
}

impl SpanProcessor for BoundedProcessor {
    fn on_start(&self, span: &mut Span, cx: &Context) {
        self.inner.on_start(span, cx);
    }

    fn on_end(&self, span: SpanData) {
        if !span.span_context.is_sampled() {
            return;
        }
        if self.waiting.fetch_add(1, Ordering::AcqRel) >= self.capacity {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            // Counted, not logged: this runs inside the tracing layer's
            // span close, where a log line would re-enter it.
            DROPPED.fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.inner.on_end(span);
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &opentelemetry_sdk::Resource) {
        self.inner.set_resource(resource);
    }
}

/// The OTLP exporter, counting what it sends and what it loses, and
/// releasing the spans it takes from [`BoundedProcessor`]'s count.
#[derive(Debug)]
struct Counted<E> {
    inner: E,
    waiting: Arc<AtomicUsize>,
}

impl<E: SpanExporter> SpanExporter for Counted<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let n = batch.len();
        let _ = self
            .waiting
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |w| {
                Some(w.saturating_sub(n))
            });
        let result = self.inner.export(batch).await;
        match &result {
            Ok(()) => EXPORTED.fetch_add(n as u64, Ordering::Relaxed),
            Err(e) => {
                tracing::debug!(spans = n, error = %e, "trace export failed");
                FAILED.fetch_add(n as u64, Ordering::Relaxed)
            }
        };
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &opentelemetry_sdk::Resource) {
        self.inner.set_resource(resource);
    }
}
