//! Benchmarks live in `invoke.rs` (run with `cargo bench -p weir-benches`).
