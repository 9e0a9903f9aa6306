//! Log flood: one million hostile lines (ANSI escapes, CR/LF injection) through
//! the log import, then bytes that are not UTF-8 on stdout and stderr.
use std::io::Write;
use weir_guest::{Batch, Handler, Level};

struct Flood;

impl Handler for Flood {
    fn handle(_batch: &mut Batch) {
        for i in 0..1_000_000u32 {
            let line = format!("\x1b[31mline {i}\r\nFAKE host log: level=error app=other\x07");
            weir_guest::bindings::weir::handler::log::log(Level::Error, &line);
        }
        let mut out = std::io::stdout();
        for _ in 0..10_000 {
            let _ = out.write_all(b"\xff\xfe stdout \x1b[2J not utf-8\n");
        }
        let _ = std::io::stderr().write_all(b"stderr line without newline \xc3");
    }
}

weir_guest::export!(Flood);
