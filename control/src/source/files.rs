//! The manifests source: `--manifests PATH` (a file or a directory tree),
//! loaded with [`crate::manifests::load_path`] and watched with inotify
//! (the `notify` crate).
//!
//! Contract:
//! - Every load that is free of errors is sent as one
//!   [`SourceEvent::Snapshot`]; the change tracker turns it into per-key
//!   changes, so editing one object yields a generation with only that
//!   change (and a save that changes nothing yields no generation).
//! - A load with any [`crate::manifests::LoadError`] (or an unreadable
//!   path) is rejected whole: nothing is sent, the last good state keeps
//!   serving, the errors are logged, `kxdp_manifest_errors_total` counts
//!   the rejection and [`ManifestsSource::last_error`] describes it. A
//!   half-saved file must not delete half the cluster. At start-up, a
//!   broken tree keeps the node unready until it is fixed.
//! - Changes are debounced: a reload runs once the tree has been quiet for
//!   `debounce` (editors write, truncate and rename in several steps).
//! - A single file is watched through its parent directory, so editors
//!   that save by renaming a new file over the old one are seen.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher};

use super::{EventSender, SourceEvent};
use crate::manifests::load_path;
use crate::metrics::Metrics;

/// Longest the watcher thread sleeps without looking at its stop flag.
const POLL: Duration = Duration::from_millis(100);

/// Errors starting the manifests source.
#[derive(Debug, thiserror::Error)]
pub enum FilesError {
    #[error("manifests path {path}: {source}")]
    Path {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("watching {path} for changes: {source}")]
    Watch {
        path: PathBuf,
        #[source]
        source: notify::Error,
    },
    #[error("starting the manifests watcher thread: {0}")]
    Thread(#[source] std::io::Error),
}

/// Settings of the manifests source.
#[derive(Clone, Debug)]
pub struct ManifestsConfig {
    /// A manifests file or directory.
    pub path: PathBuf,
    /// Quiet time after the last file event before reloading.
    pub debounce: Duration,
}

impl ManifestsConfig {
    /// Defaults (200 ms debounce) for `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        ManifestsConfig {
            path: path.into(),
            debounce: Duration::from_millis(200),
        }
    }
}

/// The running source; dropping it stops watching.
pub struct ManifestsSource {
    _watcher: RecommendedWatcher,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    last_error: Arc<Mutex<Option<String>>>,
}

impl std::fmt::Debug for ManifestsSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ManifestsSource")
            .field("last_error", &self.last_error())
            .finish_non_exhaustive()
    }
}

impl ManifestsSource {
    /// Why the last load was rejected; None once a load succeeded again.
    pub fn last_error(&self) -> Option<String> {
        self.last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Stop watching and wait for the thread.
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            if t.join().is_err() {
                tracing::error!("manifests watcher thread panicked");
            }
        }
    }
}

impl Drop for ManifestsSource {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Load `config.path` now, send it if clean, and keep watching it.
pub fn start_manifests_source(
    config: ManifestsConfig,
    events: EventSender,
    metrics: Arc<Metrics>,
) -> Result<ManifestsSource, FilesError> {
    let root = config.path.clone();
    let meta = std::fs::metadata(&root).map_err(|source| FilesError::Path {
        path: root.clone(),
        source,
    })?;
    // A file is watched through its directory (rename-on-save).
    let (watch_path, mode) = if meta.is_dir() {
        (root.clone(), RecursiveMode::Recursive)
    } else {
        let parent = match root.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        (parent, RecursiveMode::NonRecursive)
    };
    let (tx, rx) = mpsc::channel::<notify::Result<notify::Event>>();
    let mut watcher = notify::recommended_watcher(tx).map_err(|source| FilesError::Watch {
        path: watch_path.clone(),
        source,
    })?;
    watcher
        .watch(&watch_path, mode)
        .map_err(|source| FilesError::Watch {
            path: watch_path.clone(),
            source,
        })?;
    let stop = Arc::new(AtomicBool::new(false));
    let last_error = Arc::new(Mutex::new(None));
    let worker = Reloader {
        root,
        file_only: !meta.is_dir(),
        events,
        metrics,
        last_error: last_error.clone(),
    };
    let debounce = config.debounce;
    let stop2 = stop.clone();
    let thread = std::thread::Builder::new()
        .name("kxdp-manifests".into())
        .spawn(move || worker.run(&rx, debounce, &stop2))
        .map_err(FilesError::Thread)?;
    Ok(ManifestsSource {
        _watcher: watcher,
        stop,
        thread: Some(thread),
        last_error,
    })
}

struct Reloader {
    root: PathBuf,
    file_only: bool,
    events: EventSender,
    metrics: Arc<Metrics>,
    last_error: Arc<Mutex<Option<String>>>,
}

impl Reloader {
    fn run(
        &self,
        rx: &mpsc::Receiver<notify::Result<notify::Event>>,
        debounce: Duration,
        stop: &AtomicBool,
    ) {
        if !self.reload() {
            return;
        }
        let mut dirty_since: Option<Instant> = None;
        loop {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            let wait = dirty_since.map_or(POLL, |t| {
                (t + debounce)
                    .saturating_duration_since(Instant::now())
                    .min(POLL)
            });
            match rx.recv_timeout(wait) {
                Ok(Ok(ev)) => {
                    if self.relevant(&ev) {
                        dirty_since = Some(Instant::now());
                    }
                }
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, path = %self.root.display(), "manifests watch error");
                    // Whatever happened, look again.
                    dirty_since = Some(Instant::now());
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
            if dirty_since.is_some_and(|t| t.elapsed() >= debounce) {
                dirty_since = None;
                if !self.reload() {
                    return;
                }
            }
        }
    }

    fn relevant(&self, ev: &notify::Event) -> bool {
        if matches!(ev.kind, EventKind::Access(_)) {
            return false;
        }
        if !self.file_only {
            return true;
        }
        // Only events about the file itself (its directory sees others).
        let name = self.root.file_name();
        ev.paths.iter().any(|p| p.file_name() == name)
    }

    /// Load and send; false when the runner is gone.
    fn reload(&self) -> bool {
        let outcome = match load_path(&self.root) {
            Ok(report) if report.errors.is_empty() => {
                for w in &report.warnings {
                    tracing::warn!("{w}");
                }
                Ok(report.state)
            }
            Ok(report) => {
                for e in &report.errors {
                    tracing::error!("{e}");
                }
                let first = report
                    .errors
                    .first()
                    .map(ToString::to_string)
                    .unwrap_or_default();
                Err(format!(
                    "{} error(s) in the manifests, first: {first}",
                    report.errors.len()
                ))
            }
            Err(e) => Err(e.to_string()),
        };
        let mut last = self
            .last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match outcome {
            Ok(state) => {
                *last = None;
                drop(last);
                tracing::info!(path = %self.root.display(), "manifests loaded");
                self.events
                    .send(SourceEvent::Snapshot(Box::new(state)))
                    .is_ok()
            }
            Err(msg) => {
                self.metrics.manifest_error();
                tracing::error!(
                    path = %self.root.display(),
                    "manifests rejected, previous tables kept: {msg}"
                );
                *last = Some(msg);
                true
            }
        }
    }
}
