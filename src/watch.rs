//! Watching the config paths. Any event (an editor's atomic rename, a ConfigMap `..data` symlink
//! swap, a git-sync worktree swap) asks for a reload; the controller also reloads every resync as
//! a fallback for lost events. Watches are re-established after each reload because a symlink
//! swap leaves the old inode watched.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use notify::RecursiveMode;
use notify_debouncer_full::{new_debouncer, DebounceEventResult, Debouncer, RecommendedCache};
use tokio::sync::mpsc;
use tracing::{debug, warn};

/// Debounce window: editors and kubelet write several events per change. 50 ms of quiet covers a
/// rename or a ConfigMap's `..data` swap (each one burst of events) with margin, and is a quarter
/// of issue 11's 200 ms budget from an edit to its first Route53 write (100 ms took half of it).
/// A file caught half-written is rejected and kept at its last good version until its next event.
pub const DEBOUNCE: Duration = Duration::from_millis(50);

pub struct Watcher {
    debouncer: Debouncer<notify::RecommendedWatcher, RecommendedCache>,
    watched: BTreeSet<PathBuf>,
    changed: Arc<Mutex<Changed>>,
}

/// What the events since the last reload name: the config files to read again, or `all` when an
/// event may change the listing in ways a file name does not say (a directory or symlink swap).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Changed {
    pub files: BTreeSet<PathBuf>,
    pub all: bool,
}

impl Changed {
    pub fn is_empty(&self) -> bool {
        !self.all && self.files.is_empty()
    }
}

/// What an event path means for the config, if anything: `Some(Some(file))` for a config file
/// (named as the loader lists it: a config file path, or a config directory joined with the
/// file name), `Some(None)` for anything else that can change the config (the directory itself,
/// kubelet's `..data` swap, a symlinked component), `None` for what the loader never reads (a
/// log, an editor's swap or backup file next to the documents).
pub fn classify(event: &Path, paths: &[PathBuf]) -> Option<Option<PathBuf>> {
    let mut hit = false;
    for p in paths {
        let abs = absolute(p);
        if event == abs && !abs.is_dir() {
            return Some(Some(p.clone()));
        }
        if event.parent() == Some(abs.as_path()) && abs.is_dir() {
            let name = event
                .file_name()
                .map(|n| n.to_string_lossy())
                .unwrap_or_default();
            let yaml = Path::new(name.as_ref()).extension().is_some_and(|ext| {
                ext.eq_ignore_ascii_case("yaml") || ext.eq_ignore_ascii_case("yml")
            });
            if name.starts_with("..") {
                hit = true;
            } else if !name.starts_with('.') && yaml {
                return Some(Some(p.join(name.as_ref())));
            }
            continue;
        }
        if relevant(event, std::slice::from_ref(p)) {
            hit = true;
        }
    }
    hit.then_some(None)
}

/// Directories to watch so that a change of any config path, through any symlink, is seen: a
/// config directory itself, a config file's directory, and the directory holding any symlinked
/// component of a path (git-sync's worktree link).
pub fn watch_set(paths: &[PathBuf]) -> BTreeSet<PathBuf> {
    let mut out = BTreeSet::new();
    for p in paths.iter().map(|p| absolute(p)) {
        if p.is_dir() {
            out.insert(p.clone());
        } else if let Some(parent) = p.parent() {
            out.insert(parent.to_path_buf());
        }
        for link in symlinked_components(&p) {
            if let Some(parent) = link.parent() {
                out.insert(parent.to_path_buf());
            }
        }
    }
    out.retain(|d| d.is_dir());
    out
}

fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

fn symlinked_components(p: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut prefix = PathBuf::new();
    for c in p.components() {
        prefix.push(c);
        if prefix
            .symlink_metadata()
            .map(|m| m.file_type().is_symlink())
            .unwrap_or(false)
        {
            out.push(prefix.clone());
        }
    }
    out
}

/// Whether an event path concerns the config: a config path or something inside a config
/// directory (kubelet's `..data` swap), a config file itself (an editor's rename onto it), or a
/// symlinked component of a config path. Other files next to a config file (a log, an editor's
/// swap file) do not cause reloads.
pub fn relevant(event: &Path, paths: &[PathBuf]) -> bool {
    paths
        .iter()
        .map(|p| absolute(p))
        .any(|p| event.starts_with(&p) || symlinked_components(&p).iter().any(|l| event == l))
}

impl Watcher {
    /// Start watching; every debounced event that concerns the config adds to [`Watcher::take`]
    /// and sends one `()` (dropped when a reload is pending: the pending one takes it all).
    pub fn start(paths: &[PathBuf], tx: mpsc::Sender<()>) -> crate::Result<Watcher> {
        let config: Vec<PathBuf> = paths.to_vec();
        let changed = Arc::new(Mutex::new(Changed::default()));
        let pending = changed.clone();
        let debouncer = new_debouncer(DEBOUNCE, None, move |res: DebounceEventResult| match res {
            Ok(events) => {
                let mut found = Changed::default();
                // Reading the config opens it (inotify IN_OPEN): access events would make every
                // reload trigger the next one.
                for e in events
                    .iter()
                    .filter(|e| !matches!(e.kind, notify::EventKind::Access(_)))
                {
                    for p in &e.paths {
                        match classify(p, &config) {
                            Some(Some(file)) => {
                                found.files.insert(file);
                            }
                            Some(None) => found.all = true,
                            None => {}
                        }
                    }
                }
                if !found.is_empty() {
                    debug!(files = found.files.len(), all = found.all, "config change");
                    if let Ok(mut c) = pending.lock() {
                        c.all |= found.all;
                        c.files.extend(found.files);
                    }
                    let _ = tx.try_send(());
                }
            }
            Err(errors) => {
                warn!(?errors, "file watch error");
                // An event may be lost with the error: verify everything.
                if let Ok(mut c) = pending.lock() {
                    c.all = true;
                }
                let _ = tx.try_send(());
            }
        })
        .map_err(|e| crate::Error::Other(format!("cannot start the file watcher: {e}")))?;
        let mut w = Watcher {
            debouncer,
            watched: BTreeSet::new(),
            changed,
        };
        w.rewatch(paths);
        Ok(w)
    }

    /// Re-establish the watches (after a reload, symlink targets may have changed).
    pub fn rewatch(&mut self, paths: &[PathBuf]) {
        let want = watch_set(paths);
        for old in std::mem::take(&mut self.watched) {
            let _ = self.debouncer.unwatch(&old);
        }
        for dir in want {
            match self.debouncer.watch(&dir, RecursiveMode::NonRecursive) {
                Ok(()) => {
                    self.watched.insert(dir);
                }
                Err(e) => {
                    warn!(dir = %dir.display(), error = %e, "cannot watch; relying on --resync")
                }
            }
        }
    }

    /// What changed since the last call.
    pub fn take(&self) -> Changed {
        match self.changed.lock() {
            Ok(mut c) => std::mem::take(&mut *c),
            // A panic while holding the lock: nothing is known, so everything is verified.
            Err(_) => Changed {
                all: true,
                ..Changed::default()
            },
        }
    }

    pub fn watched(&self) -> impl Iterator<Item = &Path> {
        self.watched.iter().map(|p| p.as_path())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watches_dirs_and_symlink_parents() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        std::fs::create_dir_all(root.join("wt1/splits")).unwrap();
        std::os::unix::fs::symlink(root.join("wt1"), root.join("repo")).unwrap();
        let set = watch_set(&[root.join("repo/splits")]);
        assert!(set.contains(&root.join("repo/splits")), "{set:?}");
        assert!(
            set.contains(&root.to_path_buf()),
            "the link's parent: {set:?}"
        );
        assert!(
            !set.contains(&root.join("repo")),
            "not the config dir's parent: {set:?}"
        );
        let file_set = watch_set(&[root.join("wt1/splits/api.yaml")]);
        assert!(file_set.contains(&root.join("wt1/splits")), "{file_set:?}");
    }

    #[test]
    fn only_config_paths_are_relevant() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        std::fs::create_dir_all(root.join("wt1/splits")).unwrap();
        std::os::unix::fs::symlink(root.join("wt1"), root.join("repo")).unwrap();
        let paths = vec![root.join("repo/splits"), root.join("single.yaml")];
        assert!(relevant(&root.join("repo/splits/..data"), &paths));
        assert!(
            relevant(&root.join("repo"), &paths),
            "the git-sync link swap"
        );
        assert!(
            relevant(&root.join("single.yaml"), &paths),
            "an editor's rename onto the file"
        );
        assert!(!relevant(&root.join("controller.log"), &paths));
        assert!(!relevant(&root.join(".single.yaml.swp"), &paths));
    }

    #[test]
    fn events_name_the_file_to_read_again_when_they_can() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        std::fs::create_dir_all(root.join("wt1/splits")).unwrap();
        std::os::unix::fs::symlink(root.join("wt1"), root.join("repo")).unwrap();
        std::fs::write(root.join("single.yaml"), "x").unwrap();
        let dir = root.join("repo/splits");
        let paths = vec![dir.clone(), root.join("single.yaml")];
        assert_eq!(
            classify(&dir.join("api.yaml"), &paths),
            Some(Some(dir.join("api.yaml")))
        );
        assert_eq!(
            classify(&root.join("single.yaml"), &paths),
            Some(Some(root.join("single.yaml")))
        );
        assert_eq!(
            classify(&dir.join("..data"), &paths),
            Some(None),
            "kubelet's swap changes every file"
        );
        assert_eq!(classify(&dir, &paths), Some(None));
        assert_eq!(
            classify(&root.join("repo"), &paths),
            Some(None),
            "the git-sync link swap"
        );
        assert_eq!(classify(&dir.join(".api.yaml.swp"), &paths), None);
        assert_eq!(classify(&dir.join("api.yaml~"), &paths), None);
        assert_eq!(classify(&root.join("controller.log"), &paths), None);
    }
}
