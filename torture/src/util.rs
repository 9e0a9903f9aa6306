//! Process measurements and small helpers.

use std::time::Duration;

pub use weir_test_support::{eventually as wait_for, rss_bytes};

/// Open file descriptors of this process (`/proc/self/fd`).
pub fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count())
}

/// MiB, one decimal.
pub fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1 << 20) as f64)
}

/// A small xorshift generator: random kill points, seeded from the clock.
pub struct Rng(u64);

impl Rng {
    /// Seeded from the current time (the seed is printed for replay).
    pub fn from_clock() -> Self {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0x9e37_79b9, |d| d.as_nanos() as u64)
            | 1;
        eprintln!("   rng seed {seed}");
        Self(seed)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

/// Quantile `q` of `samples` (sorted in place); zero if empty.
pub fn quantile(samples: &mut [Duration], q: f64) -> Duration {
    if samples.is_empty() {
        return Duration::ZERO;
    }
    samples.sort_unstable();
    let i = ((samples.len() as f64 * q).ceil() as usize).clamp(1, samples.len()) - 1;
    samples[i]
}

/// How long a run takes: the full run (the default, RELIABILITY.md's
/// figures) or the CI run (`--ci`: about 5 minutes, every scenario with
/// shorter loops and the same bars).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Every loop at its full length.
    Full,
    /// Every scenario, shorter loops ([`ByMode::ci`]).
    Ci,
}

/// A scenario parameter with its full-run and CI-run values.
#[derive(Debug, Clone, Copy)]
pub struct ByMode<T> {
    /// The value of a full run.
    pub full: T,
    /// The value of a CI run.
    pub ci: T,
}

impl<T: Copy> ByMode<T> {
    /// The value for `mode`.
    pub const fn pick(&self, mode: Mode) -> T {
        match mode {
            Mode::Full => self.full,
            Mode::Ci => self.ci,
        }
    }
}
