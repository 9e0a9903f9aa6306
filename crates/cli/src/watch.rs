//! `[engine] watch = true`: reload when the config file or a component file
//! changes on disk.
//!
//! The directories holding them are watched (not the files: editors and
//! `install` replace a file by renaming a new one over it), events for other
//! files are ignored, and a burst of changes (a copy in several writes, a
//! config and its component updated together) becomes one reload after
//! [`WATCH_DEBOUNCE`] of quiet. Built on `notify-debouncer-mini`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use notify_debouncer_mini::notify::{RecommendedWatcher, RecursiveMode};
use notify_debouncer_mini::{DebounceEventResult, Debouncer, new_debouncer};
use tokio::sync::mpsc;
use weir_host::config::Plan;

/// Quiet time after the last change before a reload: 500 ms.
pub const WATCH_DEBOUNCE: Duration = Duration::from_millis(500);

/// Watches the files of one plan; [`Watch::changed`] yields once per burst.
pub struct Watch {
    debouncer: Debouncer<RecommendedWatcher>,
    files: Arc<Mutex<BTreeSet<PathBuf>>>,
    dirs: BTreeSet<PathBuf>,
    changes: mpsc::Receiver<()>,
}

/// A path made absolute and free of `.`/`..` where the file exists (the
/// form `notify` reports).
fn canonical(path: &Path) -> PathBuf {
    std::fs::canonicalize(path).unwrap_or_else(|_| path.to_owned())
}

impl Watch {
    /// Watch `config` and the components of `plan`.
    ///
    /// # Errors
    ///
    /// The platform's watcher cannot be created or a directory watched.
    pub fn new(config: &Path, plan: &Plan) -> anyhow::Result<Self> {
        let files: Arc<Mutex<BTreeSet<PathBuf>>> = Arc::default();
        let (tx, changes) = mpsc::channel(1);
        let seen = files.clone();
        let debouncer = new_debouncer(WATCH_DEBOUNCE, move |result: DebounceEventResult| {
            let Ok(events) = result else {
                return;
            };
            let files = seen
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if events.iter().any(|e| files.contains(&canonical(&e.path))) {
                // A full channel already holds a reload to come.
                let _ = tx.try_send(());
            }
        })?;
        let mut watch = Self {
            debouncer,
            files,
            dirs: BTreeSet::new(),
            changes,
        };
        watch.follow(config, plan)?;
        Ok(watch)
    }

    /// Follow the files of `plan` (after a reload: apps and components may
    /// have changed).
    ///
    /// # Errors
    ///
    /// A directory cannot be watched.
    pub fn follow(&mut self, config: &Path, plan: &Plan) -> anyhow::Result<()> {
        let files: BTreeSet<PathBuf> = std::iter::once(config.to_owned())
            .chain(plan.apps.iter().map(|a| a.component.clone()))
            .map(|p| canonical(&p))
            .collect();
        for dir in files.iter().filter_map(|f| f.parent()) {
            if self.dirs.insert(dir.to_owned()) {
                self.debouncer
                    .watcher()
                    .watch(dir, RecursiveMode::NonRecursive)?;
            }
        }
        tracing::debug!(
            files = files.len(),
            dirs = self.dirs.len(),
            "watching for changes"
        );
        *self
            .files
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = files;
        Ok(())
    }

    /// The next burst of changes.
    pub async fn changed(&mut self) -> Option<()> {
        self.changes.recv().await
    }
}
