//! An OTLP/HTTP trace receiver for tests: `POST /v1/traces` bodies
//! decoded with the OpenTelemetry protocol's own messages
//! (`opentelemetry-proto`), kept for the test to read. It can answer
//! slowly, to show that a slow collector never delays an event.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use prost::Message as _;

/// One received span, flattened for assertions.
#[derive(Debug, Clone, PartialEq)]
pub struct Span {
    /// Hex trace id.
    pub trace_id: String,
    /// Hex span id.
    pub span_id: String,
    /// Hex parent span id; empty for a root.
    pub parent_span_id: String,
    /// The span's name.
    pub name: String,
    /// OTLP span kind (1 internal, 2 server, 3 client, 4 producer, 5
    /// consumer).
    pub kind: i32,
    /// Attributes, values as text.
    pub attributes: BTreeMap<String, String>,
    /// Links: (hex trace id, hex span id, attributes).
    pub links: Vec<(String, String, BTreeMap<String, String>)>,
    /// Status code (0 unset, 1 ok, 2 error).
    pub status: i32,
    /// The resource's attributes.
    pub resource: BTreeMap<String, String>,
}

impl Span {
    /// The attribute `key`, or `""`.
    pub fn attr(&self, key: &str) -> &str {
        self.attributes.get(key).map_or("", String::as_str)
    }
}

#[derive(Default)]
struct State {
    spans: Mutex<Vec<Span>>,
    requests: AtomicU64,
    delay_ms: AtomicU64,
    /// Count requests and bytes only, decode nothing (a collector on
    /// another machine, for benches).
    discard: std::sync::atomic::AtomicBool,
    bytes: AtomicU64,
}

/// A running receiver on a loopback port; stops when dropped.
pub struct Collector {
    addr: SocketAddr,
    state: Arc<State>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Collector {
    /// Start a receiver answering every request at once (on a thread of its
    /// own, with its own runtime).
    pub fn start() -> Self {
        Self::with_delay(Duration::ZERO)
    }

    /// Start a receiver that answers at once and keeps nothing but the
    /// count of requests and bytes ([`Collector::bytes`]): the cost of a
    /// collector that runs elsewhere is not measured with weir's.
    pub fn discarding() -> Self {
        let state = Arc::new(State::default());
        state.discard.store(true, Ordering::Relaxed);
        Self::serve(state)
    }

    /// Start a receiver that waits `delay` before answering each request
    /// (a slow collector).
    pub fn with_delay(delay: Duration) -> Self {
        let state = Arc::new(State::default());
        state
            .delay_ms
            .store(delay.as_millis() as u64, Ordering::Relaxed);
        Self::serve(state)
    }

    fn serve(state: Arc<State>) -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a loopback port");
        listener.set_nonblocking(true).expect("non-blocking");
        let addr = listener.local_addr().expect("its address");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let served = state.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .thread_name("otlp-collector")
                .enable_all()
                .build()
                .expect("a runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
                let app = axum::Router::new()
                    .route("/v1/traces", axum::routing::post(receive))
                    .with_state(served);
                let _ = axum::serve(listener, app)
                    .with_graceful_shutdown(async {
                        let _ = stopped.await;
                    })
                    .await;
            });
        });
        Self {
            addr,
            state,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// The base endpoint, for `OTEL_EXPORTER_OTLP_ENDPOINT`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Request body bytes received so far.
    pub fn bytes(&self) -> u64 {
        self.state.bytes.load(Ordering::Relaxed)
    }

    /// Export requests received so far.
    pub fn requests(&self) -> u64 {
        self.state.requests.load(Ordering::Relaxed)
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<Span> {
        self.state
            .spans
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Wait up to `timeout` until `done` holds for the spans received;
    /// returns them, or panics with `what` and every span's name.
    pub fn wait_for(
        &self,
        timeout: Duration,
        what: &str,
        done: impl Fn(&[Span]) -> bool,
    ) -> Vec<Span> {
        let start = Instant::now();
        loop {
            let spans = self.spans();
            if done(&spans) {
                return spans;
            }
            assert!(
                start.elapsed() < timeout,
                "no {what} within {timeout:?}; received {} spans: {:?}",
                spans.len(),
                spans
                    .iter()
                    .map(|s| (&s.name, &s.trace_id))
                    .collect::<Vec<_>>()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn receive(
    axum::extract::State(state): axum::extract::State<Arc<State>>,
    body: axum::body::Bytes,
) -> axum::http::StatusCode {
    state.requests.fetch_add(1, Ordering::Relaxed);
    let delay = state.delay_ms.load(Ordering::Relaxed);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    state.bytes.fetch_add(body.len() as u64, Ordering::Relaxed);
    if state.discard.load(Ordering::Relaxed) {
        return axum::http::StatusCode::OK;
    }
    let Ok(request) = ExportTraceServiceRequest::decode(body) else {
        return axum::http::StatusCode::BAD_REQUEST;
    };
    let mut received = Vec::new();
    for resource_spans in request.resource_spans {
        let resource = resource_spans
            .resource
            .map(|r| attributes(&r.attributes))
            .unwrap_or_default();
        for scope in resource_spans.scope_spans {
            for s in scope.spans {
                received.push(Span {
                    trace_id: hex::encode(&s.trace_id),
                    span_id: hex::encode(&s.span_id),
                    parent_span_id: hex::encode(&s.parent_span_id),
                    name: s.name,
                    kind: s.kind,
                    attributes: attributes(&s.attributes),
                    links: s
                        .links
                        .iter()
                        .map(|l| {
                            (
                                hex::encode(&l.trace_id),
                                hex::encode(&l.span_id),
                                attributes(&l.attributes),
                            )
                        })
                        .collect(),
                    status: s.status.map_or(0, |st| st.code),
                    resource: resource.clone(),
                });
            }
        }
    }
    state
        .spans
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .extend(received);
    axum::http::StatusCode::OK
}

fn attributes(kvs: &[KeyValue]) -> BTreeMap<String, String> {
    kvs.iter()
        .map(|kv| {
            (
                kv.key.clone(),
                kv.value.as_ref().map(text).unwrap_or_default(),
            )
        })
        .collect()
}

fn text(v: &AnyValue) -> String {
    match &v.value {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::DoubleValue(d)) => d.to_string(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}
