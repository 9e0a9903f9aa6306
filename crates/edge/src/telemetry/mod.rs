//! Traces: OpenTelemetry export over OTLP and W3C trace context through
//! NATS headers, shared by `weir run`, `weir bridge` and `weir publish`.
//!
//! - **Configured the standard way** ([`Settings::resolve`]): export is on
//!   when an OTLP endpoint is set, by `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`
//!   (used as is), `OTEL_EXPORTER_OTLP_ENDPOINT` (`/v1/traces` appended) or
//!   `[telemetry] endpoint` in weir.toml ([`TelemetryConfig`]); the
//!   environment wins over the file for every setting. `OTEL_SDK_DISABLED=true`
//!   or `OTEL_TRACES_EXPORTER=none` turn it off. The protocol is
//!   `http/protobuf` (`OTEL_EXPORTER_OTLP_PROTOCOL`; `grpc` and `http/json`
//!   are refused with the reason: this build carries no gRPC stack).
//!   `OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER`
//!   (+ `_ARG`), `OTEL_EXPORTER_OTLP_HEADERS`, `OTEL_EXPORTER_OTLP_TIMEOUT`
//!   and `OTEL_BSP_*` are honoured (by the OpenTelemetry SDK and exporter
//!   themselves where they read them).
//! - **Bounded, never blocking** ([`export`]): finished spans go to the
//!   SDK's batch span processor (its own thread); at most
//!   [`DEFAULT_MAX_QUEUE_SPANS`] wait (`OTEL_BSP_MAX_QUEUE_SIZE`,
//!   `[telemetry] max_queue_spans`); a span that finds the queue full is
//!   dropped and counted ([`stats`]: `weir_trace_spans_dropped_total`). A
//!   collector that is down or slow costs exports, never an event's time.
//! - **Off costs nothing**: without an endpoint no layer is installed,
//!   [`enabled`] is false, and weir's pipelines skip every trace step
//!   (no header is read, no span beyond the one per batch is made).
//! - **Trace context** ([`context`]): an event's `traceparent` (and
//!   `tracestate`) header makes its batch's span part of that trace;
//!   events weir publishes carry the context of the span publishing them.
//!   A malformed `traceparent` is ignored (the event is handled, untraced).
//!
//! Source of the variable names and their precedence: the OpenTelemetry
//! specification, "Environment Variable Specification" and "OTLP Exporter
//! Configuration" (opentelemetry.io/docs/specs/otel/).

pub mod context;
pub mod export;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{WithExportConfig as _, WithHttpConfig as _};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{BatchConfigBuilder, Sampler, SdkTracerProvider};
use serde::{Deserialize, Serialize};

pub use context::{
    Link, extract, follow, inject_current, parse_traceparent, send_span, traceparent_of,
};
pub use export::{ExportStats, stats};
pub use opentelemetry::KeyValue;
pub use opentelemetry::trace::SpanContext;

/// Spans waiting for export at most, by default: 2,048 (the SDK's
/// `OTEL_BSP_MAX_QUEUE_SIZE` default).
pub const DEFAULT_MAX_QUEUE_SPANS: usize = 2_048;

/// Largest `max_queue_spans` accepted: 1,048,576 (a span is about 1 KiB
/// in memory: 1 GiB).
pub const MAX_QUEUE_SPANS: usize = 1 << 20;

/// Spans the batch processor sends per export request at most: 512 (the
/// SDK's `OTEL_BSP_MAX_EXPORT_BATCH_SIZE` default), or the queue's size if
/// smaller.
pub const MAX_EXPORT_BATCH_SPANS: usize = 512;

/// Time one export request may take, by default: 10,000 ms (the OTLP
/// specification's `OTEL_EXPORTER_OTLP_TIMEOUT` default).
pub const DEFAULT_EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest `timeout_ms` accepted: 60,000 ms.
pub const MAX_EXPORT_TIMEOUT_MS: u64 = 60_000;

/// Time a stopping weir gives the exporter to send what is queued: 2 s,
/// so a collector that is down never delays a stop by more (the rest is
/// lost, and was counted as queued).
pub const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(2);

/// The only OTLP protocol this build exports: `http/protobuf`.
pub const PROTOCOL: &str = "http/protobuf";

/// The path the OTLP/HTTP specification appends to a base endpoint for
/// traces: `/v1/traces`.
pub const TRACES_PATH: &str = "/v1/traces";

/// The service name when neither `OTEL_SERVICE_NAME` nor `service_name`
/// sets one: `weir`.
pub const DEFAULT_SERVICE_NAME: &str = "weir";

/// The instrumentation scope of weir's spans: `weir`.
pub const SCOPE: &str = "weir";

/// Samplers `sampler` (and `OTEL_TRACES_SAMPLER`) may name: the
/// specification's built-in ones.
pub const SAMPLERS: [&str; 6] = [
    "always_on",
    "always_off",
    "traceidratio",
    "parentbased_always_on",
    "parentbased_always_off",
    "parentbased_traceidratio",
];

static ENABLED: AtomicBool = AtomicBool::new(false);

/// Whether this process exports traces (a [`Telemetry`] was started):
/// weir's pipelines read trace context and make their spans only then.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// `[telemetry]` in weir.toml: trace export, for `weir run`, `weir bridge`
/// and `weir publish`. Every setting has its standard environment variable,
/// which wins when set. Read at start (a reload does not change it).
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// OTLP/HTTP base endpoint, e.g. `"http://127.0.0.1:4318"`
    /// (`/v1/traces` is appended). Setting it turns trace export on.
    /// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` (used as is) and
    /// `OTEL_EXPORTER_OTLP_ENDPOINT` win. Default: none (export off).
    pub endpoint: Option<String>,
    /// `"http/protobuf"`, the only protocol this build exports
    /// (`OTEL_EXPORTER_OTLP_PROTOCOL` wins).
    pub protocol: Option<String>,
    /// Extra headers on every export request (an API key of a hosted
    /// collector); `OTEL_EXPORTER_OTLP_HEADERS` adds to them.
    pub headers: BTreeMap<String, String>,
    /// `service.name`; default `"weir"` (`OTEL_SERVICE_NAME` wins).
    pub service_name: Option<String>,
    /// More resource attributes, e.g. `deployment.environment.name` set to
    /// `"prod"`; `OTEL_RESOURCE_ATTRIBUTES` wins key by key.
    pub resource_attributes: BTreeMap<String, String>,
    /// `always_on`, `always_off`, `traceidratio`, `parentbased_always_on`,
    /// `parentbased_always_off` or `parentbased_traceidratio` ([`SAMPLERS`]);
    /// default `parentbased_always_on` (every trace; `OTEL_TRACES_SAMPLER`
    /// wins).
    pub sampler: Option<String>,
    /// The ratio of the `traceidratio` samplers, 0 to 1 (default 1;
    /// `OTEL_TRACES_SAMPLER_ARG` wins).
    pub sampler_arg: Option<f64>,
    /// Time one export request may take, ms; default 10,000, at most
    /// 60,000 (`OTEL_EXPORTER_OTLP_TIMEOUT` wins).
    pub timeout_ms: Option<u64>,
    /// Spans waiting for export at most; default 2,048, at most 1,048,576
    /// (`OTEL_BSP_MAX_QUEUE_SIZE` wins). More are dropped and counted.
    pub max_queue_spans: Option<usize>,
}

impl TelemetryConfig {
    /// Every problem of the section itself (empty if valid), unprefixed.
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if let Some(e) = &self.endpoint
            && let Err(why) = check_endpoint(e)
        {
            p.push(format!("endpoint = {e:?}: {why}"));
        }
        if let Some(protocol) = &self.protocol
            && let Err(why) = check_protocol(protocol)
        {
            p.push(format!("protocol: {why}"));
        }
        if let Some(s) = &self.sampler
            && !SAMPLERS.contains(&s.as_str())
        {
            p.push(format!("sampler = {s:?}: one of {}", SAMPLERS.join(", ")));
        }
        if let Some(a) = self.sampler_arg
            && !(0.0..=1.0).contains(&a)
        {
            p.push(format!("sampler_arg = {a}: a ratio from 0 to 1"));
        }
        if let Some(t) = self.timeout_ms
            && !(1..=MAX_EXPORT_TIMEOUT_MS).contains(&t)
        {
            p.push(format!(
                "timeout_ms = {t}: from 1 to {MAX_EXPORT_TIMEOUT_MS}"
            ));
        }
        if let Some(q) = self.max_queue_spans
            && !(1..=MAX_QUEUE_SPANS).contains(&q)
        {
            p.push(format!(
                "max_queue_spans = {q}: from 1 to {MAX_QUEUE_SPANS}"
            ));
        }
        for name in self.headers.keys() {
            if ureq::http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                p.push(format!("headers: {name:?} is not a header name"));
            }
        }
        p
    }
}

fn check_endpoint(endpoint: &str) -> Result<(), String> {
    let uri: ureq::http::Uri = endpoint.parse().map_err(|e| format!("not a URL ({e})"))?;
    match uri.scheme_str() {
        Some("http" | "https") if uri.host().is_some() => Ok(()),
        _ => Err("an http:// or https:// URL with a host".into()),
    }
}

fn check_protocol(protocol: &str) -> Result<(), String> {
    match protocol {
        PROTOCOL => Ok(()),
        "grpc" | "http/json" => Err(format!(
            "{protocol:?} is not built into weir, which exports {PROTOCOL:?} (OTLP/HTTP, port 4318 on the OpenTelemetry Collector and Grafana Alloy)"
        )),
        other => Err(format!(
            "{other:?} is not an OTLP protocol; use {PROTOCOL:?}"
        )),
    }
}

/// What a process exports, resolved from the environment and
/// [`TelemetryConfig`] (the environment wins).
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// The full traces URL, when it comes from weir.toml (else the exporter
    /// reads it from the environment itself, as the specification says).
    pub config_endpoint: Option<String>,
    /// Where traces go, for logs: the URL or the variable that gives it.
    pub endpoint_shown: String,
    /// `service.name`, when weir.toml sets it and `OTEL_SERVICE_NAME` does
    /// not.
    pub service_name: String,
    /// Resource attributes from weir.toml (the SDK adds
    /// `OTEL_RESOURCE_ATTRIBUTES` over them).
    pub resource_attributes: Vec<(String, String)>,
    /// The sampler from weir.toml, when `OTEL_TRACES_SAMPLER` is unset (the
    /// SDK reads the variable itself).
    pub config_sampler: Option<(String, f64)>,
    /// Time per export request.
    pub timeout: Duration,
    /// Spans waiting for export at most.
    pub max_queue_spans: usize,
    /// Headers from weir.toml.
    pub headers: Vec<(String, String)>,
}

impl Settings {
    /// Resolve export settings from `config` and the environment `env`
    /// (a lookup, `std::env::var` in use). `Ok(None)`: export is off (no
    /// endpoint, or `OTEL_SDK_DISABLED=true`, or `OTEL_TRACES_EXPORTER=none`).
    ///
    /// # Errors
    ///
    /// A protocol this build cannot export, an unusable endpoint, or a
    /// problem of `config` ([`TelemetryConfig::problems`]), one line each.
    pub fn resolve(
        config: &TelemetryConfig,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Option<Self>, Vec<String>> {
        let var = |name: &str| env(name).filter(|v| !v.trim().is_empty());
        let mut problems: Vec<String> = config
            .problems()
            .into_iter()
            .map(|p| format!("[telemetry] {p}"))
            .collect();
        if var("OTEL_SDK_DISABLED").is_some_and(|v| v.trim().eq_ignore_ascii_case("true")) {
            return Ok(None);
        }
        if let Some(exporters) = var("OTEL_TRACES_EXPORTER") {
            let names: Vec<&str> = exporters.split(',').map(str::trim).collect();
            if names.contains(&"none") {
                return Ok(None);
            }
            if let Some(other) = names.iter().find(|n| **n != "otlp") {
                problems.push(format!(
                    "OTEL_TRACES_EXPORTER={exporters}: weir exports \"otlp\" (or \"none\"), not {other:?}"
                ));
            }
        }
        let (config_endpoint, endpoint_shown) =
            if let Some(e) = var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") {
                (None, format!("{e} (OTEL_EXPORTER_OTLP_TRACES_ENDPOINT)"))
            } else if let Some(e) = var("OTEL_EXPORTER_OTLP_ENDPOINT") {
                (None, format!("{e} (OTEL_EXPORTER_OTLP_ENDPOINT)"))
            } else if let Some(e) = &config.endpoint {
                let full = format!("{}{TRACES_PATH}", e.trim_end_matches('/'));
                (Some(full.clone()), full)
            } else {
                return if problems.is_empty() {
                    Ok(None)
                } else {
                    Err(problems)
                };
            };
        for name in [
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "OTEL_EXPORTER_OTLP_ENDPOINT",
        ] {
            if let Some(e) = var(name)
                && let Err(why) = check_endpoint(&e)
            {
                problems.push(format!("{name}={e}: {why}"));
            }
        }
        for name in [
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
            "OTEL_EXPORTER_OTLP_PROTOCOL",
        ] {
            if let Some(p) = var(name) {
                if let Err(why) = check_protocol(p.trim()) {
                    problems.push(format!("{name}: {why}"));
                }
                break;
            }
        }
        let millis = |name: &str| -> Option<u64> {
            let v = var(name)?;
            match v.trim().parse::<u64>() {
                Ok(ms) if (1..=MAX_EXPORT_TIMEOUT_MS).contains(&ms) => Some(ms),
                _ => {
                    tracing::warn!(
                        variable = name,
                        value = %v,
                        "not a time in ms from 1 to {MAX_EXPORT_TIMEOUT_MS}; ignored"
                    );
                    None
                }
            }
        };
        let timeout = millis("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT")
            .or_else(|| millis("OTEL_EXPORTER_OTLP_TIMEOUT"))
            .or(config.timeout_ms)
            .map_or(DEFAULT_EXPORT_TIMEOUT, Duration::from_millis);
        let max_queue_spans = var("OTEL_BSP_MAX_QUEUE_SIZE")
            .and_then(|v| v.trim().parse::<usize>().ok())
            .filter(|q| (1..=MAX_QUEUE_SPANS).contains(q))
            .or(config.max_queue_spans)
            .unwrap_or(DEFAULT_MAX_QUEUE_SPANS);
        let config_sampler = match (var("OTEL_TRACES_SAMPLER"), &config.sampler) {
            (None, Some(s)) => Some((s.clone(), config.sampler_arg.unwrap_or(1.0))),
            _ => None,
        };
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(Some(Self {
            config_endpoint,
            endpoint_shown,
            service_name: var("OTEL_SERVICE_NAME")
                .or_else(|| config.service_name.clone())
                .unwrap_or_else(|| DEFAULT_SERVICE_NAME.to_owned()),
            resource_attributes: config
                .resource_attributes
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            config_sampler,
            timeout,
            max_queue_spans,
            headers: config
                .headers
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        }))
    }

    /// [`Settings::resolve`] with the process's environment.
    ///
    /// # Errors
    ///
    /// As [`Settings::resolve`].
    pub fn from_env(config: &TelemetryConfig) -> Result<Option<Self>, Vec<String>> {
        Self::resolve(config, &|name| std::env::var(name).ok())
    }
}

/// A running trace export: the SDK's tracer provider behind weir's
/// bounded queue. Make the `tracing` layer with [`Telemetry::layer`]; call
/// [`Telemetry::shutdown`] when the process stops.
#[derive(Debug)]
pub struct Telemetry {
    provider: SdkTracerProvider,
    endpoint: String,
}

impl Telemetry {
    /// Start exporting as `settings` say, with `attributes` added to the
    /// resource (`weir.node.id`, ...; the configuration's and the
    /// environment's win). Sets [`enabled`].
    ///
    /// # Errors
    ///
    /// The exporter cannot be built (an endpoint the exporter refuses).
    pub fn start(settings: &Settings, attributes: Vec<KeyValue>) -> Result<Self, String> {
        let client = export::HttpClient::new(settings.timeout);
        let mut builder = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
            .with_http_client(client)
            .with_timeout(settings.timeout);
        if let Some(endpoint) = &settings.config_endpoint {
            builder = builder.with_endpoint(endpoint.clone());
        }
        if !settings.headers.is_empty() {
            builder = builder.with_headers(settings.headers.iter().cloned().collect());
        }
        let exporter = builder
            .build()
            .map_err(|e| format!("trace exporter: {e}"))?;
        let batch = settings.max_queue_spans.min(MAX_EXPORT_BATCH_SPANS);
        let config = BatchConfigBuilder::default()
            .with_max_queue_size(settings.max_queue_spans)
            .with_max_export_batch_size(batch)
            .build();
        let processor = export::BoundedProcessor::new(exporter, config, settings.max_queue_spans);
        let mut resource = Resource::builder_empty()
            .with_attributes(attributes)
            .with_attributes(
                settings
                    .resource_attributes
                    .iter()
                    .map(|(k, v)| KeyValue::new(k.clone(), v.clone())),
            )
            .with_service_name(settings.service_name.clone())
            .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
            .with_detectors(&[
                Box::new(opentelemetry_sdk::resource::TelemetryResourceDetector),
                Box::new(opentelemetry_sdk::resource::EnvResourceDetector::new()),
            ]);
        if let Ok(name) = std::env::var("OTEL_SERVICE_NAME")
            && !name.trim().is_empty()
        {
            resource = resource.with_service_name(name);
        }
        let mut provider = SdkTracerProvider::builder()
            .with_span_processor(processor)
            .with_resource(resource.build());
        if let Some((name, arg)) = &settings.config_sampler {
            provider = provider.with_sampler(sampler(name, *arg));
        }
        ENABLED.store(true, Ordering::Relaxed);
        Ok(Self {
            provider: provider.build(),
            endpoint: settings.endpoint_shown.clone(),
        })
    }

    /// Where the traces go, for the start's log line.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The `tracing` layer that turns weir's spans into OpenTelemetry
    /// spans of this export (no thread, code location, target or busy-time
    /// attributes: a span's own fields are its attributes; a span's
    /// `otel.name`, `otel.kind` and `otel.status_code` fields set its name,
    /// kind and status).
    pub fn layer<S>(
        &self,
    ) -> tracing_opentelemetry::OpenTelemetryLayer<S, opentelemetry_sdk::trace::SdkTracer>
    where
        S: tracing::Subscriber + for<'span> tracing_subscriber::registry::LookupSpan<'span>,
    {
        tracing_opentelemetry::layer()
            .with_tracer(self.provider.tracer(SCOPE))
            .with_tracked_inactivity(false)
            .with_threads(false)
            .with_location(false)
            .with_target(false)
            // weir reads a span's context explicitly (`span.context()`),
            // never `Context::current()`: no context push and pop on every
            // poll of an instrumented future.
            .with_context_activation(false)
    }

    /// Send what is queued, waiting at most [`SHUTDOWN_TIMEOUT`], and stop
    /// exporting. What cannot be sent in time is lost.
    pub fn shutdown(self) {
        ENABLED.store(false, Ordering::Relaxed);
        let provider = self.provider;
        // The SDK's own timeout covers its processor; the thread bounds
        // the rest (an exporter in the middle of a slow request).
        let (done, wait) = std::sync::mpsc::channel();
        let spawned = std::thread::Builder::new()
            .name("weir-otel-stop".into())
            .spawn(move || {
                let _ = provider.shutdown_with_timeout(SHUTDOWN_TIMEOUT);
                let _ = done.send(());
            });
        if spawned.is_ok() && wait.recv_timeout(SHUTDOWN_TIMEOUT).is_err() {
            tracing::debug!("trace export did not stop in time; queued spans are lost");
        }
    }
}

/// The sampler `name` (one of [`SAMPLERS`]) with ratio `arg`.
fn sampler(name: &str, arg: f64) -> Sampler {
    let ratio = Sampler::TraceIdRatioBased(arg.clamp(0.0, 1.0));
    match name {
        "always_on" => Sampler::AlwaysOn,
        "always_off" => Sampler::AlwaysOff,
        "traceidratio" => ratio,
        "parentbased_always_off" => Sampler::ParentBased(Box::new(Sampler::AlwaysOff)),
        "parentbased_traceidratio" => Sampler::ParentBased(Box::new(ratio)),
        _ => Sampler::ParentBased(Box::new(Sampler::AlwaysOn)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve(
        config: &TelemetryConfig,
        vars: &[(&str, &str)],
    ) -> Result<Option<Settings>, Vec<String>> {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Settings::resolve(config, &move |name| {
            vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
        })
    }

    #[test]
    fn off_without_an_endpoint_or_when_disabled() {
        let none = TelemetryConfig::default();
        assert_eq!(resolve(&none, &[]), Ok(None));
        let on = [("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318")];
        assert!(resolve(&none, &on).unwrap().is_some());
        let disabled = [on[0], ("OTEL_SDK_DISABLED", "true")];
        assert_eq!(resolve(&none, &disabled), Ok(None));
        let no_exporter = [on[0], ("OTEL_TRACES_EXPORTER", "none")];
        assert_eq!(resolve(&none, &no_exporter), Ok(None));
    }

    #[test]
    fn the_environment_wins_over_the_file() {
        let config = TelemetryConfig {
            endpoint: Some("http://collector:4318/".into()),
            service_name: Some("from-file".into()),
            sampler: Some("traceidratio".into()),
            sampler_arg: Some(0.5),
            timeout_ms: Some(3_000),
            max_queue_spans: Some(100),
            ..TelemetryConfig::default()
        };
        let file = resolve(&config, &[]).unwrap().unwrap();
        assert_eq!(
            file.config_endpoint.as_deref(),
            Some("http://collector:4318/v1/traces")
        );
        assert_eq!(file.service_name, "from-file");
        assert_eq!(file.config_sampler, Some(("traceidratio".into(), 0.5)));
        assert_eq!(file.timeout, Duration::from_millis(3_000));
        assert_eq!(file.max_queue_spans, 100);
        let env = resolve(
            &config,
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://alloy:4318"),
                ("OTEL_SERVICE_NAME", "from-env"),
                ("OTEL_TRACES_SAMPLER", "always_on"),
                ("OTEL_EXPORTER_OTLP_TIMEOUT", "7000"),
                ("OTEL_BSP_MAX_QUEUE_SIZE", "64"),
            ],
        )
        .unwrap()
        .unwrap();
        assert_eq!(env.config_endpoint, None, "the exporter reads the variable");
        assert!(env.endpoint_shown.starts_with("http://alloy:4318"));
        assert_eq!(env.service_name, "from-env");
        assert_eq!(
            env.config_sampler, None,
            "the SDK reads OTEL_TRACES_SAMPLER"
        );
        assert_eq!(env.timeout, Duration::from_millis(7_000));
        assert_eq!(env.max_queue_spans, 64);
    }

    #[test]
    fn protocols_weir_cannot_export_are_refused_with_the_reason() {
        let on = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318");
        let none = TelemetryConfig::default();
        let grpc = resolve(&none, &[on, ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")]).unwrap_err();
        assert!(grpc[0].contains("not built into weir"), "{grpc:?}");
        let ok = resolve(
            &none,
            &[on, ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")],
        );
        assert!(ok.unwrap().is_some());
        let console = resolve(&none, &[on, ("OTEL_TRACES_EXPORTER", "console")]).unwrap_err();
        assert!(console[0].contains("weir exports \"otlp\""), "{console:?}");
    }

    #[test]
    fn bad_sections_are_refused_one_line_each() {
        let config = TelemetryConfig {
            endpoint: Some("collector:4318".into()),
            protocol: Some("grpc".into()),
            sampler: Some("sometimes".into()),
            sampler_arg: Some(1.5),
            timeout_ms: Some(0),
            max_queue_spans: Some(0),
            headers: [("bad header".to_owned(), "x".to_owned())].into(),
            ..TelemetryConfig::default()
        };
        let problems = config.problems();
        assert_eq!(problems.len(), 7, "{problems:#?}");
        assert!(
            resolve(&config, &[]).is_err(),
            "refused even when export is off"
        );
    }
}
