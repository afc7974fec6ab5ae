//! Watching the config paths. Any event (an editor's atomic rename, a ConfigMap `..data` symlink
//! swap, a git-sync worktree swap) asks for a reload; the controller also reloads every resync as
//! a fallback for lost events. Watches are re-established after each reload because a symlink
//! swap leaves the old inode watched.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::RecursiveMode;
use notify_debouncer_full::{new_debouncer, DebounceEventResult, Debouncer, RecommendedCache};
use tokio::sync::mpsc;
use tracing::{debug, warn};

/// Debounce window: editors and kubelet write several events per change.
pub const DEBOUNCE: Duration = Duration::from_millis(100);

pub struct Watcher {
    debouncer: Debouncer<notify::RecommendedWatcher, RecommendedCache>,
    watched: BTreeSet<PathBuf>,
}

/// Directories to watch so that a change of any config path, through any symlink, is seen.
pub fn watch_set(paths: &[PathBuf]) -> BTreeSet<PathBuf> {
    let mut out = BTreeSet::new();
    for p in paths {
        if p.is_dir() {
            out.insert(p.clone());
        }
        if let Some(parent) = p.parent().filter(|x| !x.as_os_str().is_empty()) {
            out.insert(parent.to_path_buf());
        } else {
            out.insert(PathBuf::from("."));
        }
        // A symlinked component (git-sync's worktree link) is swapped in its parent directory.
        let mut prefix = PathBuf::new();
        for c in p.components() {
            prefix.push(c);
            if prefix
                .symlink_metadata()
                .map(|m| m.file_type().is_symlink())
                .unwrap_or(false)
            {
                if let Some(parent) = prefix.parent().filter(|x| !x.as_os_str().is_empty()) {
                    out.insert(parent.to_path_buf());
                }
            }
        }
    }
    out.retain(|d| d.is_dir());
    out
}

impl Watcher {
    /// Start watching; every debounced event sends one `()` (dropped when a reload is pending).
    pub fn start(paths: &[PathBuf], tx: mpsc::Sender<()>) -> crate::Result<Watcher> {
        let debouncer = new_debouncer(DEBOUNCE, None, move |res: DebounceEventResult| match res {
            Ok(events) if !events.is_empty() => {
                debug!(events = events.len(), "config change");
                let _ = tx.try_send(());
            }
            Ok(_) => {}
            Err(errors) => warn!(?errors, "file watch error"),
        })
        .map_err(|e| crate::Error::Other(format!("cannot start the file watcher: {e}")))?;
        let mut w = Watcher {
            debouncer,
            watched: BTreeSet::new(),
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

    pub fn watched(&self) -> impl Iterator<Item = &Path> {
        self.watched.iter().map(|p| p.as_path())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watches_dirs_parents_and_symlink_parents() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        std::fs::create_dir_all(root.join("wt1/splits")).unwrap();
        std::os::unix::fs::symlink(root.join("wt1"), root.join("repo")).unwrap();
        let set = watch_set(&[root.join("repo/splits")]);
        assert!(set.contains(&root.join("repo/splits")), "{set:?}");
        assert!(set.contains(&root.join("repo")), "{set:?}");
        assert!(
            set.contains(&root.to_path_buf()),
            "the link's parent: {set:?}"
        );
    }
}
