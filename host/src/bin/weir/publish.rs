//! `weir publish`: one event, or a replay of a JSON Lines corpus, each
//! awaited until JetStream stores it.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use weir_host::corpus::{self, CorpusEvent};
use weir_host::nats::{DEFAULT_PREFIX, DEFAULT_STREAM, Subjects, Transport};

use crate::exit::{self, Code as _, Failure};

/// `weir publish`.
#[derive(clap::Args)]
pub struct PublishArgs {
    /// NATS server URL.
    #[arg(long, env = "WEIR_NATS_URL", default_value = "nats://127.0.0.1:4222")]
    url: String,
    /// Subject prefix.
    #[arg(long, default_value = DEFAULT_PREFIX)]
    prefix: String,
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

/// Publish; prints how many events were stored and how many were
/// duplicates (an id JetStream already holds within its duplicate window,
/// nothing new stored). 64 without `--name`/`--source` or `--replay`, 65 for
/// a corpus that cannot be read, 69 if NATS refuses or is unreachable.
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
    let subjects = Subjects::new(&args.prefix).code(exit::USAGE)?;
    crate::tokio_runtime()?.block_on(async {
        let transport = Transport::connect(&args.url, "weir-publish", subjects, DEFAULT_STREAM)
            .await
            .code(exit::UNAVAILABLE)?;
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
            let published = transport
                .publish_event(
                    &e.name,
                    &e.source,
                    bytes::Bytes::from(e.payload.clone()),
                    &id,
                )
                .await
                .with_context(|| format!("event {} ({})", n + 1, e.name))
                .code(exit::UNAVAILABLE)?;
            if published.duplicate {
                duplicates += 1;
            } else {
                stored += 1;
            }
            tracing::debug!(id, seq = published.sequence, published.duplicate, "published");
        }
        eprintln!(
            "published {} events in {:.1?}: {stored} stored, {duplicates} duplicates (already stored)",
            events.len(),
            start.elapsed()
        );
        Ok(ExitCode::SUCCESS)
    })
}

fn unique_suffix() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{nanos:x}-{:x}", std::process::id())
}
