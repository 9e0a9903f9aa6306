//! Deploying an app: compile (or load from the artifact cache), check its
//! imports and exports, and prepare it for instantiation, once per app and
//! off the event path.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::Runtime;
use crate::bindings::HandlerPre;
use crate::check::{CheckReport, inspect};
use crate::error::DeployError;
use crate::guest_log::LogWindow;
use crate::invoke::{App, AppInner};
use crate::kv::{KvAccess, KvGrant};
use crate::limits::Limits;
use crate::state::{AppIdentity, HostState};

/// The key-value interface's name without its version: imported only by
/// apps granted a bucket.
pub const KV_INTERFACE: &str = "weir:handler/kv@";
use crate::domain::DomainSet;

/// Everything needed to deploy one app on this node.
#[derive(Debug, Clone)]
pub struct AppSpec {
    /// App name, e.g. `"mail1"`: used in logs, metrics and as the source of
    /// its published events (`module/<name>`).
    pub name: String,
    /// This node's id (answered by `node.id`).
    pub node_id: u32,
    /// This node's name (answered by `node.name`).
    pub node_name: String,
    /// The app's domains (exact or `*.suffix`), normalised at deploy.
    pub domains: Vec<String>,
    /// Caps for each batch.
    pub limits: Limits,
    /// Grant of the real WASI clocks. Default `false`: the wall clock reads
    /// the Unix epoch and the monotonic clock reads 0, so a handler cannot
    /// time the host or other apps.
    pub clocks: bool,
    /// The key-value buckets it may use (`grants.kv`, `grants.kv_shared`).
    /// Default none: a component importing `weir:handler/kv` is refused.
    pub kv: KvGrant,
}

impl AppSpec {
    /// A spec with default limits and no domains.
    pub fn new(name: impl Into<String>, node_id: u32, node_name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            node_id,
            node_name: node_name.into(),
            domains: Vec::new(),
            limits: Limits::default(),
            clocks: false,
            kv: KvGrant::default(),
        }
    }
}

impl Runtime {
    /// Load `bytes` as a component (cache, size cap, compile timeout) and
    /// report its imports, exports and every problem that would prevent
    /// deploying it. Does not deploy.
    ///
    /// # Errors
    ///
    /// [`DeployError::TooLarge`], [`DeployError::NotAComponent`],
    /// [`DeployError::Compile`], [`DeployError::CompileTimeout`]. Import and
    /// export problems are not errors here: they are in
    /// [`CheckReport::problems`].
    pub fn check(&self, bytes: &[u8]) -> Result<CheckReport, DeployError> {
        Ok(self.check_component(bytes)?.0)
    }

    /// [`Runtime::check`] on a file.
    ///
    /// # Errors
    ///
    /// As [`Runtime::check`], plus [`DeployError::Read`].
    pub fn check_file(&self, path: &Path) -> Result<CheckReport, DeployError> {
        self.check(&read(path)?)
    }

    /// Load, inspect and type-check a component. The component is
    /// instantiated-pre against the linker once: the [`HandlerPre`] is
    /// returned when every import links and the export matches.
    fn check_component(
        &self,
        bytes: &[u8],
    ) -> Result<(CheckReport, Option<HandlerPre<HostState>>), DeployError> {
        let cfg = &self.inner.config;
        let loaded = self.inner.cache.load(
            &self.inner.engine,
            bytes,
            cfg.max_component_bytes,
            Duration::from_millis(cfg.compile_timeout_ms),
        )?;
        let (imports, exports, mut problems) = inspect(&self.inner.engine, &loaded.component);
        let mut pre = None;
        if problems.is_empty() {
            // Type-check every import against what is linked (catches, e.g., a
            // newer WASI minor version or a changed weir:handler signature).
            match self.inner.linker.instantiate_pre(&loaded.component) {
                Err(e) => problems.push(format!("{e:#}")),
                Ok(instance_pre) => match HandlerPre::new(instance_pre) {
                    Ok(p) => pre = Some(p),
                    Err(e) => problems.push(format!(
                        "export `handle` does not match weir:handler (0.1.0 or 0.2.0): {e:#}"
                    )),
                },
            }
        }
        tracing::debug!(key = %loaded.key, source = ?loaded.source, elapsed = ?loaded.elapsed, "component loaded");
        let report = CheckReport {
            size: bytes.len(),
            imports,
            exports,
            problems,
            source: loaded.source,
            load_time: loaded.elapsed,
        };
        Ok((report, pre))
    }

    /// Deploy an app from component bytes: validate the spec (every problem
    /// at once), load and check the component, and prepare it for
    /// instantiation. Apps share the runtime's pool slots: deploying reserves
    /// none, any number of apps may be deployed.
    ///
    /// # Errors
    ///
    /// [`DeployError::Config`] (limits, domains), the load errors of [`Runtime::check`], and [`DeployError::Refused`]
    /// with every import or export problem.
    pub fn deploy(&self, spec: AppSpec, bytes: &[u8]) -> Result<App, DeployError> {
        let mut problems: Vec<String> = spec
            .limits
            .problems(self.inner.config.max_memory_bytes)
            .into_iter()
            .map(|p| format!("app {}: limits: {p}", spec.name))
            .collect();
        if spec.name.is_empty() {
            problems.push("app name must not be empty".into());
        }
        let domains = DomainSet::new(&spec.domains).unwrap_or_else(|errors| {
            problems.extend(
                errors
                    .into_iter()
                    .map(|e| format!("app {}: domains: {e}", spec.name)),
            );
            DomainSet::default()
        });
        if !problems.is_empty() {
            return Err(DeployError::Config(problems));
        }
        let (report, pre) = self.check_component(bytes)?;
        let mut report = report;
        if !spec.kv.any()
            && let Some(kv) = report
                .imports
                .iter()
                .find(|i| i.name.starts_with(KV_INTERFACE))
        {
            report.problems.push(format!(
                "imports {} but the app is granted no key-value bucket (set [app.grants] kv = true or kv_shared = [\"name\"])",
                kv.name
            ));
        }
        let pre = match pre {
            Some(pre) if report.deployable() => pre,
            _ => return Err(DeployError::Refused(report.problems)),
        };
        let identity = Arc::new(AppIdentity {
            app: spec.name.as_str().into(),
            node_id: spec.node_id,
            node_name: spec.node_name,
            domains,
            clocks: spec.clocks,
            kv: Arc::new(KvAccess::new(spec.kv.clone())),
        });
        tracing::info!(
            app = %spec.name,
            size = report.size,
            source = ?report.source,
            load_ms = report.load_time.as_millis() as u64,
            "app deployed"
        );
        Ok(App::new(AppInner {
            runtime: self.clone(),
            pre,
            log_window: Arc::new(LogWindow::new(&spec.limits)),
            long_running: std::sync::atomic::AtomicBool::new(false),
            limits: spec.limits,
            identity,
            report,
        }))
    }

    /// [`Runtime::deploy`] from a file.
    ///
    /// # Errors
    ///
    /// As [`Runtime::deploy`], plus [`DeployError::Read`].
    pub fn deploy_file(&self, spec: AppSpec, path: &Path) -> Result<App, DeployError> {
        self.deploy(spec, &read(path)?)
    }
}

fn read(path: &Path) -> Result<Vec<u8>, DeployError> {
    std::fs::read(path).map_err(|source| DeployError::Read {
        path: path.to_owned(),
        source,
    })
}
