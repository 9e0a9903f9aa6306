//! Guest logging under a budget.
//!
//! Lines come from the `log` import and from the guest's stdout (info) and
//! stderr (warn). Each line is truncated to [`MAX_LOG_LINE_BYTES`], control
//! characters are escaped (no ANSI sequences or CR/LF injection into the
//! host's log), invalid UTF-8 is replaced, and the line is written as a
//! `tracing` event with target `weir::guest` and field `app`. Over the per-batch
//! or per-minute budget, lines are dropped and counted; one summary line per
//! batch reports the drops.

use std::fmt::Write as _;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError, StreamResult};

use crate::bindings::weir::handler::log::Level;
use crate::limits::{Limits, MAX_LOG_LINE_BYTES};

/// Length of the per-app log window: one minute.
pub const LOG_WINDOW: Duration = Duration::from_secs(60);

/// Bytes the guest may write to stdout/stderr per `check-write`: 64 KiB.
const STDIO_WRITE_PERMIT: usize = 64 << 10;

/// Per-app log budget across batches: a fixed one-minute window.
#[derive(Debug)]
pub(crate) struct LogWindow {
    lines_per_minute: u32,
    bytes_per_minute: u64,
    state: Mutex<WindowState>,
    /// Drops not yet reported: (last summary, lines, bytes).
    dropped: Mutex<(Option<Instant>, u64, u64)>,
}

#[derive(Debug)]
struct WindowState {
    start: Instant,
    lines: u32,
    bytes: u64,
}

impl LogWindow {
    pub(crate) fn new(limits: &Limits) -> Self {
        Self {
            lines_per_minute: limits.log_lines_per_minute,
            bytes_per_minute: limits.log_bytes_per_minute,
            state: Mutex::new(WindowState {
                start: Instant::now(),
                lines: 0,
                bytes: 0,
            }),
            dropped: Mutex::new((None, 0, 0)),
        }
    }

    /// Add a batch's drops; returns the totals to report if no summary line
    /// was written in the last [`LOG_WINDOW`] (one summary line per window).
    fn report_drops(&self, lines: u64, bytes: u64) -> Option<(u64, u64)> {
        let mut d = self.dropped.lock().unwrap_or_else(PoisonError::into_inner);
        d.1 += lines;
        d.2 += bytes;
        let due = d.0.is_none_or(|at| at.elapsed() >= LOG_WINDOW);
        if !due || d.1 == 0 {
            return None;
        }
        let totals = (d.1, d.2);
        *d = (Some(Instant::now()), 0, 0);
        Some(totals)
    }

    /// Charge one line of `bytes`; false if the minute's budget is spent.
    fn admit(&self, bytes: u64) -> bool {
        let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if s.start.elapsed() >= LOG_WINDOW {
            *s = WindowState {
                start: Instant::now(),
                lines: 0,
                bytes: 0,
            };
        }
        if s.lines >= self.lines_per_minute || s.bytes + bytes > self.bytes_per_minute {
            return false;
        }
        s.lines += 1;
        s.bytes += bytes;
        true
    }
}

/// Counts of one batch's logging.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LogCounts {
    /// Lines written to the host log.
    pub lines: u32,
    /// Bytes written (after truncation and escaping).
    pub bytes: u64,
    /// Lines dropped over budget.
    pub dropped_lines: u64,
    /// Bytes dropped over budget (before truncation).
    pub dropped_bytes: u64,
}

#[derive(Debug)]
struct Buffer {
    app: Arc<str>,
    window: Arc<LogWindow>,
    lines_per_batch: u32,
    bytes_per_batch: u64,
    counts: LogCounts,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
}

impl Buffer {
    fn line(&mut self, level: Level, raw: &[u8]) {
        let c = &mut self.counts;
        let cost = raw.len().min(MAX_LOG_LINE_BYTES) as u64;
        if c.lines >= self.lines_per_batch
            || c.bytes + cost > self.bytes_per_batch
            || !self.window.admit(cost)
        {
            c.dropped_lines += 1;
            c.dropped_bytes += raw.len() as u64;
            return;
        }
        let text = escape(raw);
        c.lines += 1;
        c.bytes += cost;
        emit(&self.app, level, &text);
    }

    fn stdio(&mut self, stderr: bool, bytes: &[u8]) {
        let level = if stderr { Level::Warn } else { Level::Info };
        let mut rest = bytes;
        while !rest.is_empty() {
            let pending = if stderr {
                &mut self.stderr
            } else {
                &mut self.stdout
            };
            let (chunk, newline, tail) = match rest.iter().position(|&b| b == b'\n') {
                Some(i) => (&rest[..i], true, &rest[i + 1..]),
                None => (rest, false, &[][..]),
            };
            let room = MAX_LOG_LINE_BYTES.saturating_sub(pending.len());
            pending.extend_from_slice(&chunk[..chunk.len().min(room)]);
            let overflow = chunk.len() > room;
            rest = tail;
            if newline || overflow || pending.len() >= MAX_LOG_LINE_BYTES {
                let line = std::mem::take(pending);
                self.line(level, &line);
                if overflow && !newline {
                    // Drop the rest of an overlong line up to its newline.
                    rest = match rest.iter().position(|&b| b == b'\n') {
                        Some(i) => &rest[i + 1..],
                        None => &[],
                    };
                }
            }
        }
    }

    fn finish(&mut self) -> LogCounts {
        for stderr in [false, true] {
            let pending = std::mem::take(if stderr {
                &mut self.stderr
            } else {
                &mut self.stdout
            });
            if !pending.is_empty() {
                self.line(if stderr { Level::Warn } else { Level::Info }, &pending);
            }
        }
        let c = self.counts;
        if c.dropped_lines > 0
            && let Some((lines, bytes)) = self.window.report_drops(c.dropped_lines, c.dropped_bytes)
        {
            tracing::warn!(
                target: "weir::guest",
                app = %self.app,
                dropped_lines = lines,
                dropped_bytes = bytes,
                "handler log over budget: {lines} lines ({bytes} bytes) dropped since the last summary"
            );
        }
        c
    }
}

fn emit(app: &str, level: Level, text: &str) {
    match level {
        Level::Trace => tracing::trace!(target: "weir::guest", app, "{text}"),
        Level::Debug => tracing::debug!(target: "weir::guest", app, "{text}"),
        Level::Info => tracing::info!(target: "weir::guest", app, "{text}"),
        Level::Warn => tracing::warn!(target: "weir::guest", app, "{text}"),
        Level::Error => tracing::error!(target: "weir::guest", app, "{text}"),
    }
}

/// `raw` as one safe log line: invalid UTF-8 replaced with U+FFFD, control
/// characters (C0, DEL, C1: ANSI escapes, CR, LF, BEL) written as `\u{..}`
/// escapes (`\n`, `\r`, `\t` as such), truncated to [`MAX_LOG_LINE_BYTES`]
/// input bytes with a trailing `…`.
pub fn escape(raw: &[u8]) -> String {
    let truncated = raw.len() > MAX_LOG_LINE_BYTES;
    let text = String::from_utf8_lossy(&raw[..raw.len().min(MAX_LOG_LINE_BYTES)]);
    let mut out = String::with_capacity(text.len() + 4);
    for ch in text.chars() {
        match ch {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    if truncated {
        out.push('…');
    }
    out
}

/// One batch's log sink, shared by the `log` import and the guest's
/// stdout/stderr streams.
#[derive(Debug, Clone)]
pub(crate) struct LogSink(Arc<Mutex<Buffer>>);

impl LogSink {
    pub(crate) fn new(app: Arc<str>, window: Arc<LogWindow>, limits: &Limits) -> Self {
        Self(Arc::new(Mutex::new(Buffer {
            app,
            window,
            lines_per_batch: limits.log_lines_per_batch,
            bytes_per_batch: limits.log_bytes_per_batch,
            counts: LogCounts::default(),
            stdout: Vec::new(),
            stderr: Vec::new(),
        })))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Buffer> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A line from the `log` import.
    pub(crate) fn line(&self, level: Level, message: &str) {
        self.lock().line(level, message.as_bytes());
    }

    /// Flush partial stdio lines, write the summary line, return the counts.
    pub(crate) fn finish(&self) -> LogCounts {
        self.lock().finish()
    }

    /// A WASI stdout (`stderr == false`) or stderr stream into this sink.
    pub(crate) fn stdio(&self, stderr: bool) -> StdioLog {
        StdioLog {
            sink: self.clone(),
            stderr,
        }
    }
}

/// The guest's stdout or stderr, written into a [`LogSink`].
pub(crate) struct StdioLog {
    sink: LogSink,
    stderr: bool,
}

impl IsTerminal for StdioLog {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for StdioLog {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(StdioLog {
            sink: self.sink.clone(),
            stderr: self.stderr,
        })
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(StdioLog {
            sink: self.sink.clone(),
            stderr: self.stderr,
        })
    }
}

impl OutputStream for StdioLog {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.sink.lock().stdio(self.stderr, &bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> Result<usize, StreamError> {
        Ok(STDIO_WRITE_PERMIT)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for StdioLog {
    async fn ready(&mut self) {}
}

impl tokio::io::AsyncWrite for StdioLog {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.sink.lock().stdio(self.stderr, buf);
        std::task::Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sink(lines: u32, bytes: u64) -> LogSink {
        let limits = Limits {
            log_lines_per_batch: lines,
            log_bytes_per_batch: bytes,
            ..Limits::default()
        };
        LogSink::new("t".into(), Arc::new(LogWindow::new(&limits)), &limits)
    }

    #[test]
    fn escapes_control_characters_and_invalid_utf8() {
        assert_eq!(escape(b"a\x1b[31mb\r\nc\x07"), "a\\u{1b}[31mb\\r\\nc\\u{7}");
        assert_eq!(escape(b"\xff ok"), "\u{fffd} ok");
        assert_eq!(escape("\u{9b}x".as_bytes()), "\\u{9b}x");
        let long = vec![b'x'; MAX_LOG_LINE_BYTES + 10];
        let e = escape(&long);
        assert!(e.ends_with('…'));
        assert_eq!(e.len(), MAX_LOG_LINE_BYTES + '…'.len_utf8());
    }

    #[test]
    fn batch_budget_drops_and_counts() {
        let s = sink(3, 1 << 20);
        for _ in 0..10 {
            s.line(Level::Info, "hello");
        }
        let c = s.finish();
        assert_eq!((c.lines, c.dropped_lines, c.dropped_bytes), (3, 7, 35));
        let s = sink(100, 10);
        s.line(Level::Info, "12345");
        s.line(Level::Info, "123456");
        assert_eq!(s.finish().dropped_lines, 1);
    }

    #[test]
    fn minute_window_spans_batches() {
        let limits = Limits {
            log_lines_per_minute: 5,
            ..Limits::default()
        };
        let window = Arc::new(LogWindow::new(&limits));
        let a = LogSink::new("t".into(), window.clone(), &limits);
        for _ in 0..4 {
            a.line(Level::Info, "x");
        }
        assert_eq!(a.finish().lines, 4);
        let b = LogSink::new("t".into(), window, &limits);
        for _ in 0..4 {
            b.line(Level::Info, "x");
        }
        let c = b.finish();
        assert_eq!((c.lines, c.dropped_lines), (1, 3));
    }

    #[test]
    fn stdio_splits_lines_and_flushes_partials() {
        let s = sink(100, 1 << 20);
        let mut out = s.stdio(false);
        OutputStream::write(&mut out, Bytes::from_static(b"one\ntw")).unwrap();
        OutputStream::write(&mut out, Bytes::from_static(b"o\nthree")).unwrap();
        let c = s.finish();
        assert_eq!(c.lines, 3);
        assert_eq!(c.bytes, 11);
    }

    #[test]
    fn stdio_caps_overlong_lines() {
        let s = sink(100, 1 << 20);
        let mut out = s.stdio(true);
        let mut big = vec![b'y'; MAX_LOG_LINE_BYTES * 3];
        big.extend_from_slice(b"\nnext\n");
        OutputStream::write(&mut out, Bytes::from(big)).unwrap();
        let c = s.finish();
        assert_eq!(c.lines, 2, "one truncated line plus 'next'");
        assert_eq!(c.bytes, MAX_LOG_LINE_BYTES as u64 + 4);
    }
}
