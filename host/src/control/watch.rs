//! Files that changed under a folder, reported once they stopped changing: a `notify` watcher
//! whose events arm a timer per path; when `settle` passes without another event and the
//! file's size and modification time are what they were when the timer was last armed, the
//! path is reported. A file still being written keeps re-arming its timer, so it is never
//! reported half-written (a writer that pauses longer than `settle` is the exception: write
//! under another name and rename, which is atomic).

use notify::event::{AccessKind, AccessMode};
use notify::{EventKind, RecursiveMode, Watcher};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};
use tokio::sync::mpsc;
use tokio::time::Instant;

/// A running watch; dropping it stops the watcher and closes [`Settled::paths`].
pub struct Settled {
    _watcher: notify::RecommendedWatcher,
    /// Paths that changed and have settled, each once per settling.
    pub paths: mpsc::UnboundedReceiver<PathBuf>,
}

/// What a file looks like now: its size and modification time, `None` if it is gone.
fn look(path: &Path) -> Option<(u64, SystemTime)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.len(), meta.modified().ok()?))
}

/// Watch `dir` (and, with `recursive`, its subfolders) and report settled paths; `existing`
/// paths are treated as just changed (files that were there before the watch began).
pub fn watch(
    dir: &Path,
    recursive: bool,
    settle: Duration,
    existing: Vec<PathBuf>,
) -> notify::Result<Settled> {
    let (raw_tx, mut raw) = mpsc::unbounded_channel::<PathBuf>();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else { return };
        if matches!(
            event.kind,
            EventKind::Create(_)
                | EventKind::Modify(_)
                | EventKind::Access(AccessKind::Close(AccessMode::Write))
        ) {
            for path in event.paths {
                let _ = raw_tx.send(path);
            }
        }
    })?;
    let mode = if recursive {
        RecursiveMode::Recursive
    } else {
        RecursiveMode::NonRecursive
    };
    watcher.watch(dir, mode)?;
    let (out, paths) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut pending: HashMap<PathBuf, (Instant, Option<(u64, SystemTime)>)> = existing
            .into_iter()
            .map(|path| {
                let seen = look(&path);
                (path, (Instant::now() + settle, seen))
            })
            .collect();
        loop {
            let next = pending.values().map(|(due, _)| *due).min();
            let due = async {
                match next {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                event = raw.recv() => {
                    let Some(path) = event else { break };
                    let seen = look(&path);
                    pending.insert(path, (Instant::now() + settle, seen));
                }
                () = due => {
                    let now = Instant::now();
                    let ready: Vec<PathBuf> = pending
                        .iter()
                        .filter(|(_, (due, _))| *due <= now)
                        .map(|(path, _)| path.clone())
                        .collect();
                    for path in ready {
                        let (_, seen) = pending.remove(&path).expect("listed just now");
                        match look(&path) {
                            None => {}
                            Some(current) if Some(current) == seen => {
                                if out.send(path).is_err() {
                                    return;
                                }
                            }
                            changed => {
                                pending.insert(path, (now + settle, changed));
                            }
                        }
                    }
                }
            }
        }
    });
    Ok(Settled {
        _watcher: watcher,
        paths,
    })
}
