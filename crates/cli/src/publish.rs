//! `weir publish`: one event, or a replay of a JSON Lines corpus, each
//! awaited until JetStream stores it.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tracing::Instrument as _;
use weir_host::config::Config;
use weir_host::corpus::{self, CorpusEvent};
use weir_host::nats::{DEFAULT_PREFIX, DEFAULT_STREAM, NatsConfig, Subjects, TlsConfig, Transport};

use crate::exit::{self, Code as _, Failure};

/// `weir publish`.
#[derive(clap::Args)]
pub struct PublishArgs {
    /// Take the servers, credentials, TLS, prefix, stream and replicas from
    /// this config's `[nats]` section (instead of the flags below).
    #[arg(long, conflicts_with_all = ["url", "prefix", "stream", "replicas", "user", "password_file", "token_file", "nkey_seed_file", "creds_file", "tls_ca_file", "tls_cert_file", "tls_key_file", "tls_first"])]
    config: Option<PathBuf>,
    /// NATS server URL; repeat it (or separate with commas) for a seed list.
    #[arg(
        long,
        env = "WEIR_NATS_URL",
        value_delimiter = ',',
        default_value = "nats://127.0.0.1:4222"
    )]
    url: Vec<String>,
    /// Subject prefix.
    #[arg(long, default_value = DEFAULT_PREFIX)]
    prefix: String,
    /// Events stream (created if missing, with `--replicas`).
    #[arg(long, default_value = DEFAULT_STREAM)]
    stream: String,
    /// Replicas of the streams if this command creates them (1 to 5).
    #[arg(long, default_value_t = 1)]
    replicas: usize,
    /// User (the password from `--password-file` or `WEIR_NATS_PASSWORD`).
    #[arg(long)]
    user: Option<String>,
    /// File holding the password of `--user`.
    #[arg(long, requires = "user")]
    password_file: Option<PathBuf>,
    /// File holding a token (or `WEIR_NATS_TOKEN`).
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// File holding an nkey seed.
    #[arg(long)]
    nkey_seed_file: Option<PathBuf>,
    /// A `.creds` file (user JWT and seed).
    #[arg(long)]
    creds_file: Option<PathBuf>,
    /// CA certificates (PEM) that sign the servers' certificates.
    #[arg(long)]
    tls_ca_file: Option<PathBuf>,
    /// Client certificate (PEM) for mutual TLS, with `--tls-key-file`.
    #[arg(long, requires = "tls_key_file")]
    tls_cert_file: Option<PathBuf>,
    /// Private key (PEM) of `--tls-cert-file`.
    #[arg(long, requires = "tls_cert_file")]
    tls_key_file: Option<PathBuf>,
    /// TLS-first handshake.
    #[arg(long)]
    tls_first: bool,
    /// Event name (single event).
    #[arg(long, conflicts_with = "replay", requires = "source")]
    name: Option<String>,
    /// Publisher identity of a single event, e.g. `module/ldapproxy4`,
    /// `node/1` or `cluster` (required with `--name`: `cluster` is the most
    /// trusted source, so it is never a default).
    #[arg(long, conflicts_with = "replay")]
    source: Option<String>,
    /// Payload, as published (single event).
    #[arg(long, default_value = "{}")]
    payload: String,
    /// Event id (`Nats-Msg-Id`); default a fresh unique id.
    #[arg(long)]
    id: Option<String>,
    /// Continue this W3C trace context (`00-<trace id>-<span id>-<flags>`):
    /// each event is published in it (the hosts' batch spans join that
    /// trace). Without it, and with OTLP export on
    /// (`OTEL_EXPORTER_OTLP_ENDPOINT`), each event starts a trace of its
    /// own; its id is printed.
    #[arg(long, value_name = "TRACEPARENT")]
    traceparent: Option<String>,
    /// Replay a JSON Lines corpus (NS8 corpus format).
    #[arg(long)]
    replay: Option<PathBuf>,
    /// Honour the corpus's `t_ms` offsets (default: publish as fast as
    /// JetStream acknowledges).
    #[arg(long)]
    realtime: bool,
    /// Fold per-domain events of one source published at the same instant
    /// into one event with a `domains` list (the fix at the source).
    #[arg(long)]
    batch_domains: bool,
}

impl PublishArgs {
    /// `--config`, if given.
    pub(crate) fn config_path(&self) -> Option<PathBuf> {
        self.config.clone()
    }

    /// The `[nats]` section to publish with: the config's, or the flags'.
    fn nats(&self) -> Result<NatsConfig, Failure> {
        let nats = match &self.config {
            Some(path) => Config::read(path).code(exit::CONFIG)?.nats,
            None => NatsConfig {
                url: None,
                urls: Some(self.url.clone()),
                replicas: self.replicas,
                prefix: self.prefix.clone(),
                stream: self.stream.clone(),
                user: self.user.clone(),
                password_file: self.password_file.clone(),
                token_file: self.token_file.clone(),
                nkey_seed_file: self.nkey_seed_file.clone(),
                creds_file: self.creds_file.clone(),
                tls: TlsConfig {
                    ca_file: self.tls_ca_file.clone(),
                    cert_file: self.tls_cert_file.clone(),
                    key_file: self.tls_key_file.clone(),
                    first: self.tls_first,
                },
                ..NatsConfig::default()
            },
        };
        let problems = nats.problems();
        if !problems.is_empty() {
            return Err(anyhow::anyhow!("nats: {}", problems.join("; nats: "))).code(exit::CONFIG);
        }
        // Without url or urls, the host runs the embedded server on
        // `embedded_port`: publish there.
        let Some(servers) = nats.client_servers() else {
            return Err(anyhow::anyhow!(
                "the config names no NATS server and its embedded server takes any free port (nats.embedded_port = 0): give --url with the port `weir run` logged"
            ))
            .code(exit::CONFIG);
        };
        Ok(NatsConfig {
            url: None,
            urls: Some(servers),
            ..nats
        })
    }
}

/// Publish; prints how many events were stored and how many were
/// duplicates (an id JetStream already holds within its duplicate window,
/// nothing new stored). 64 without `--name`/`--source` or `--replay`, 65 for
/// a corpus that cannot be read, 69 if NATS refuses or is unreachable, 78
/// for a bad `[nats]` section or credentials that cannot be read.
pub fn run(args: PublishArgs) -> Result<ExitCode, Failure> {
    let events: Vec<CorpusEvent> = match (&args.replay, &args.name, &args.source) {
        (Some(path), _, _) => {
            let events = corpus::read_jsonl(path).code(exit::DATA)?;
            if args.batch_domains {
                corpus::fold_domains(&events)
            } else {
                events
            }
        }
        (None, Some(name), Some(source)) => vec![CorpusEvent {
            seq: 0,
            t_ms: 0,
            source: source.clone(),
            name: name.clone(),
            payload: args.payload.clone(),
            id: Some(
                args.id
                    .clone()
                    .unwrap_or_else(|| format!("weir-publish:{}", unique_suffix())),
            ),
            attempt: 0,
        }],
        _ => {
            return Err(anyhow::anyhow!(
                "give --name and --source (one event) or --replay FILE"
            ))
            .code(exit::USAGE);
        }
    };
    let scope = args
        .replay
        .as_ref()
        .and_then(|p| p.file_stem())
        .map_or_else(
            || "publish".to_owned(),
            |s| s.to_string_lossy().into_owned(),
        );
    let parent = match args.traceparent.as_deref() {
        None => None,
        Some(value) => match weir_edge::telemetry::parse_traceparent(value) {
            Some(context) => Some(context),
            None => {
                return Err(anyhow::anyhow!(
                    "--traceparent {value:?} is not a W3C traceparent (00-<32 hex>-<16 hex>-<2 hex>)"
                ))
                .code(exit::USAGE);
            }
        },
    };
    let nats = args.nats()?;
    let subjects = Subjects::new(&nats.prefix).code(exit::CONFIG)?;
    let auth = nats.auth("_INBOX".to_owned()).code(exit::CONFIG)?;
    let servers = nats.servers().unwrap_or_default();
    crate::tokio_runtime()?.block_on(async {
        let transport =
            Transport::connect_with(&servers, "weir-publish", subjects, &nats.stream, auth)
                .await
                .code(exit::UNAVAILABLE)?
                .with_replicas(nats.replicas);
        transport.ensure_streams().await.code(exit::UNAVAILABLE)?;
        let start = Instant::now();
        let (mut stored, mut duplicates) = (0usize, 0usize);
        for (n, e) in events.iter().enumerate() {
            if args.realtime {
                let at = Duration::from_millis(e.t_ms);
                if let Some(wait) = at.checked_sub(start.elapsed()) {
                    tokio::time::sleep(wait).await;
                }
            }
            let id = e.id.clone().unwrap_or_else(|| format!("{scope}:{}", e.seq));
            let span = publish_span(&transport, e, &id, parent.as_ref());
            let published = transport
                .publish_event_carrying(
                    &e.name,
                    &e.source,
                    bytes::Bytes::from(e.payload.clone()),
                    &id,
                    args.traceparent.as_deref(),
                )
                .instrument(span.clone())
                .await
                .with_context(|| format!("event {} ({})", n + 1, e.name))
                .code(exit::UNAVAILABLE)?;
            if published.duplicate {
                duplicates += 1;
            } else {
                stored += 1;
            }
            tracing::debug!(id, seq = published.sequence, published.duplicate, "published");
            if let Some(traceparent) = weir_edge::telemetry::traceparent_of(&span)
                && events.len() == 1
            {
                eprintln!("traceparent {traceparent}");
            }
        }
        eprintln!(
            "published {} events in {:.1?}: {stored} stored, {duplicates} duplicates (already stored)",
            events.len(),
            start.elapsed()
        );
        Ok(ExitCode::SUCCESS)
    })
}

/// The span of one publish when traces are exported (else
/// [`tracing::Span::none`]): a messaging `send` span, a child of `parent`
/// (`--traceparent`) or the root of a new trace; the event carries its
/// context.
fn publish_span(
    transport: &Transport,
    event: &CorpusEvent,
    id: &str,
    parent: Option<&weir_edge::telemetry::SpanContext>,
) -> tracing::Span {
    if !weir_edge::telemetry::enabled() {
        return tracing::Span::none();
    }
    let subject = transport
        .subjects()
        .event(&event.name, &event.source)
        .unwrap_or_default();
    weir_edge::telemetry::send_span(&event.name, &subject, id, &event.source, parent.cloned())
}

fn unique_suffix() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{nanos:x}-{:x}", std::process::id())
}
