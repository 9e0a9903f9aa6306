//! Capability probe: tries to read files, list preopened directories, read
//! environment variables and arguments, open a TCP socket and resolve a name.
//! It also reads the wall and monotonic clocks twice around some work.
//! It acks every event and publishes one `probe-report` effect whose JSON
//! payload says what each attempt got, for the host's tests to judge. The
//! TCP connection goes to 127.0.0.1 on the port the first event names
//! (`probe:<port>`: the test listens there, so a refusal cannot be a port
//! where nothing listens), else 4222.
use wasi::sockets::network::{IpAddressFamily, IpSocketAddress, Ipv4SocketAddress};
use weir_guest::{Batch, EventExt, Handler};

struct Probe;

fn tcp_connect(port: u16) -> String {
    let network = wasi::sockets::instance_network::instance_network();
    let socket = match wasi::sockets::tcp_create_socket::create_tcp_socket(IpAddressFamily::Ipv4) {
        Ok(socket) => socket,
        Err(e) => return format!("denied: create: {e:?}"),
    };
    let addr = IpSocketAddress::Ipv4(Ipv4SocketAddress {
        port,
        address: (127, 0, 0, 1),
    });
    match socket.start_connect(&network, addr) {
        Ok(()) => {
            socket.subscribe().block();
            match socket.finish_connect() {
                Ok(_) => "granted: connected".into(),
                Err(e) => format!("denied: finish: {e:?}"),
            }
        }
        Err(e) => format!("denied: connect: {e:?}"),
    }
}

fn name_lookup() -> String {
    let network = wasi::sockets::instance_network::instance_network();
    match wasi::sockets::ip_name_lookup::resolve_addresses(&network, "localhost") {
        Ok(stream) => {
            stream.subscribe().block();
            match stream.resolve_next_address() {
                Ok(Some(_)) => "granted: resolved".into(),
                Ok(None) => "denied: no address".into(),
                Err(e) => format!("denied: {e:?}"),
            }
        }
        Err(e) => format!("denied: {e:?}"),
    }
}

fn wall_clock_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Whether the monotonic clock moves across ~10 ms of work.
fn monotonic_advanced() -> bool {
    let start = wasi::clocks::monotonic_clock::now();
    let mut x = 0u64;
    for i in 0..20_000_000u64 {
        x = std::hint::black_box(x ^ i);
    }
    wasi::clocks::monotonic_clock::now() > start
}

fn outcome<T>(r: std::io::Result<T>) -> String {
    match r {
        Ok(_) => "granted".into(),
        Err(e) => format!("denied: {e}"),
    }
}

impl Handler for Probe {
    fn handle(batch: &mut Batch) {
        let port = batch
            .events()
            .first()
            .and_then(|e| e.text())
            .and_then(|t| t.strip_prefix("probe:"))
            .and_then(|p| p.parse().ok())
            .unwrap_or(4222);
        let report = serde_json::json!({
            "file_read": outcome(std::fs::read("/etc/passwd")),
            "file_write": outcome(std::fs::write("/tmp/weir-probe", b"x")),
            "dir_list": outcome(std::fs::read_dir("/")),
            "preopens": wasi::filesystem::preopens::get_directories().len(),
            "env_vars": std::env::vars_os().count(),
            "env_home": std::env::var_os("HOME").is_some(),
            "args": std::env::args_os().count(),
            "tcp_connect": tcp_connect(port),
            "name_lookup": name_lookup(),
            "wall_clock_s": wall_clock_s(),
            "monotonic_advanced": monotonic_advanced(),
        });
        batch.publish("probe-report", report.to_string());
    }
}

weir_guest::export!(Probe);
