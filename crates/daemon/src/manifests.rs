//! Standalone input: a manifest file or directory, read again whenever it changes (polled: a
//! ConfigMap mounted into a pod changes by a symlink swap that inotify watches on the file miss;
//! an editor's atomic rename changes the file's identity and time, which the poll sees).
//! Last good state wins: a source that does not load as a whole (a syntax error, a truncated or
//! unreadable file, no objects at all unless allowed) changes nothing and is reported once per
//! change.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use nftproxy_model::SourceEvent;
use tokio::sync::mpsc;

/// Names, sizes, inodes and modification times of the manifest files: any change → reload.
fn stamp(path: &Path) -> Vec<(PathBuf, u64, u64, Option<SystemTime>)> {
    let mut files = vec![path.to_path_buf()];
    if path.is_dir() {
        files = std::fs::read_dir(path).into_iter().flatten().flatten().map(|e| e.path()).collect();
        files.sort();
    }
    files
        .into_iter()
        .map(|p| {
            let (len, ino, mtime) = file_stamp(&p);
            (p, len, ino, mtime)
        })
        .collect()
}

/// One file's size, inode and modification time (zeros when it is missing). The inode too: an
/// atomic rename over the file (an editor's save, a ConfigMap's symlink swap) is a change even
/// at equal size and time.
pub fn file_stamp(path: &Path) -> (u64, u64, Option<SystemTime>) {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok();
    (m.as_ref().map_or(0, |m| m.len()), m.as_ref().map_or(0, |m| m.ino()), m.and_then(|m| m.modified().ok()))
}

/// Loads `path` now and again after every change, sending complete lists each time.
pub async fn watch(
    path: PathBuf,
    node_name: String,
    interval: Duration,
    allow_empty: bool,
    tx: mpsc::Sender<SourceEvent>,
) {
    let mut last = None;
    loop {
        let now = stamp(&path);
        if last.as_ref() != Some(&now) {
            last = Some(now);
            let events = match nftproxy_manifest::load_path_with(&path, allow_empty) {
                Ok(loaded) => {
                    let mut ev: Vec<SourceEvent> =
                        loaded.warnings.iter().map(|w| SourceEvent::Warning(w.to_string())).collect();
                    let node = loaded.state.nodes.get(&node_name).cloned();
                    ev.push(SourceEvent::ServicesListed(loaded.state.services.values().cloned().collect()));
                    ev.push(SourceEvent::SlicesListed(loaded.state.slices().values().cloned().collect()));
                    ev.push(SourceEvent::ServiceCidrsListed(
                        loaded.state.service_cidr_objects.iter().map(|(n, c)| (n.clone(), c.clone())).collect(),
                    ));
                    // No Node object in the manifests: nothing says the node is ineligible.
                    ev.push(SourceEvent::Node { eligible: true, node });
                    ev
                }
                // A missing, unreadable, unparsable or empty source keeps what was programmed.
                Err(e) => vec![SourceEvent::SourceFailed(e.to_string())],
            };
            for e in events {
                if tx.send(e).await.is_err() {
                    return;
                }
            }
        }
        tokio::time::sleep(interval).await;
    }
}
