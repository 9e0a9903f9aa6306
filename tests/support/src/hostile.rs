//! Hostile bytes for NATS tests: raw `HPUB`s over a plain socket (what any
//! client allowed to publish can send, bypassing a client library's checks)
//! and the header blocks weir must survive.

use std::io::{Read as _, Write as _};
use std::time::Duration;

/// The largest header block JetStream stores: 65,535 bytes (nats-server's
/// `stream.go`, `len(hdr) > math.MaxUint16`; a larger one is refused to its
/// publisher, never stored).
pub const JETSTREAM_MAX_HEADER_BYTES: usize = 65_535;

/// One raw message: subject, header block, payload.
pub type RawMessage = (String, Vec<u8>, Vec<u8>);

/// Publish raw `HPUB`s on the server at `url` (`nats://host:port`) and wait
/// for its `PONG` (so every one was processed; JetStream stores what its
/// subjects capture).
///
/// # Panics
///
/// The server cannot be reached, closes the connection or answers `-ERR`.
pub fn hpub(url: &str, messages: &[RawMessage]) {
    let addr = url.trim_start_matches("nats://").to_owned();
    let mut s = std::net::TcpStream::connect(&addr).expect("connect to nats-server");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut info = [0u8; 4096];
    let _ = s.read(&mut info).expect("INFO");
    let mut out = b"CONNECT {\"verbose\":false,\"pedantic\":false,\"headers\":true}\r\n".to_vec();
    for (subject, headers, payload) in messages {
        out.extend_from_slice(
            format!(
                "HPUB {subject} {} {}\r\n",
                headers.len(),
                headers.len() + payload.len()
            )
            .as_bytes(),
        );
        out.extend_from_slice(headers);
        out.extend_from_slice(payload);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"PING\r\n");
    s.write_all(&out).expect("write");
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&seen).contains("PONG") {
        let n = s.read(&mut buf).expect("read");
        assert!(n > 0, "server closed: {}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&buf[..n]);
    }
    assert!(
        !String::from_utf8_lossy(&seen).contains("-ERR"),
        "{}",
        String::from_utf8_lossy(&seen)
    );
}

/// A header block: the version line, `lines`, the blank line.
pub fn block(version: &str, lines: &[&[u8]]) -> Vec<u8> {
    let mut b = version.as_bytes().to_vec();
    b.extend_from_slice(b"\r\n");
    for l in lines {
        b.extend_from_slice(l);
        b.extend_from_slice(b"\r\n");
    }
    b.extend_from_slice(b"\r\n");
    b
}

/// The hostile header blocks, by name, and whether the NATS client can read
/// them (`true`: the event is handled; `false`: dead-lettered because its
/// headers cannot be read).
pub fn hostile_blocks() -> Vec<(&'static str, Vec<u8>, bool)> {
    let many: Vec<Vec<u8>> = (0..3_000)
        .map(|i| format!("X-H{i}: v{i}").into_bytes())
        .collect();
    let many: Vec<&[u8]> = many.iter().map(Vec::as_slice).collect();
    // JetStream stores header blocks of at most 65,535 bytes (nats-server's
    // stream.go, `len(hdr) > math.MaxUint16`; a larger one is refused to
    // its publisher, never stored): one exactly at the limit. The block is
    // "NATS/1.0\r\n" (10) + "X-Big: " (7) + value + "\r\n\r\n" (4).
    let big = [
        b"X-Big: ".as_slice(),
        &[b'b'; JETSTREAM_MAX_HEADER_BYTES - 10 - 7 - 4],
    ]
    .concat();
    vec![
        ("cr", block("NATS/1.0", &[b"X-Odd: a\rb"]), true),
        ("nul", block("NATS/1.0", &[b"X-Odd: a\x00b"]), true),
        (
            "traceparent",
            block("NATS/1.0", &[b"traceparent: \x01zz-not-a-trace-\x7f"]),
            true,
        ),
        (
            "status-408",
            block("NATS/1.0 408 Request Timeout", &[]),
            true,
        ),
        ("status-503", block("NATS/1.0 503", &[]), true),
        (
            "status-100",
            block("NATS/1.0 100 Idle Heartbeat", &[]),
            true,
        ),
        ("many", block("NATS/1.0", &many), true),
        ("at-limit", block("NATS/1.0", &[&big]), true),
        ("lf", block("NATS/1.0", &[b"X-Odd: a\nb"]), false),
        ("utf8", block("NATS/1.0", &[b"X-Odd: a\xff\xfeb"]), false),
        ("no-colon", block("NATS/1.0", &[b"nocolon"]), false),
        ("version", block("HTTP/1.1", &[b"X: y"]), false),
        ("name-space", block("NATS/1.0", &[b"X Y: z"]), false),
        // nats-server stores this one as `NATS/1.0` (checked with 2.12.8:
        // JetStream rewrites the version line), so it arrives readable.
        ("status-abc", block("NATS/1.0 abc", &[b"X: y"]), true),
    ]
}

/// Hostile payloads that start like a JSON object but are not one every
/// JSON parser reads the same way, by name: each must be dead-lettered with
/// the envelope's reason (`weir_host::envelope`'s rules: valid UTF-8, at most
/// 127 levels deep, numbers within `f64`, no repeated key).
pub fn hostile_payloads() -> Vec<(&'static str, Vec<u8>)> {
    let deep = [
        b"{\"a\":".as_slice(),
        &[b'['; 10_000],
        &[b']'; 10_000],
        b"}",
    ]
    .concat();
    vec![
        ("truncated", b"{\"domains\":[\"dom01.example.org\"".to_vec()),
        ("invalid-utf8", b"{\"domain\":\"\xff\xfe\"}".to_vec()),
        ("deep", deep),
        ("huge-number", b"{\"node_id\":1e400}".to_vec()),
        ("duplicate-key", b"{\"node_id\":1,\"node_id\":2}".to_vec()),
        ("nul", b"{\x00}".to_vec()),
    ]
}
