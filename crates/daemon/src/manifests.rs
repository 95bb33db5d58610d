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
/// Only the files the source is made of: other files of the directory (a log written there, an
/// editor's swap file) once made it reload the whole source every second.
fn stamp(path: &Path) -> Vec<(PathBuf, u64, u64, Option<SystemTime>)> {
    nftproxy_manifest::manifest_files(path)
        .unwrap_or_default()
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
            tracing::debug!(before = ?last, now = ?now, "manifest source changed: loading it");
            last = Some(now);
            let events = match nftproxy_manifest::load_path_with(&path, allow_empty) {
                Ok(loaded) => {
                    // The objects move into the events (a copy of them all was 10k Services'
                    // worth of memory at every reload).
                    let mut ev: Vec<SourceEvent> =
                        loaded.warnings.iter().map(|w| SourceEvent::Warning(w.to_string())).collect();
                    let mut state = loaded.state;
                    let node = state.nodes.remove(&node_name);
                    let cidrs = std::mem::take(&mut state.service_cidr_objects).into_iter().collect();
                    ev.push(SourceEvent::ServicesListed(std::mem::take(&mut state.services).into_values().collect()));
                    ev.push(SourceEvent::SlicesListed(state.into_slices().collect()));
                    ev.push(SourceEvent::ServiceCidrsListed(cidrs));
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Only the files the source is made of count: a log written into the directory changes
    /// nothing, a manifest touched does.
    #[test]
    fn only_manifest_files_make_a_change() {
        let dir = std::env::temp_dir().join(format!("knp-stamp-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("cluster.yaml"), "kind: List\nitems: []\n").unwrap();
        let before = stamp(&dir);
        std::fs::write(dir.join("proxy.log"), "a line\n").unwrap();
        std::fs::write(dir.join(".cluster.yaml.swp"), "x").unwrap();
        assert_eq!(stamp(&dir), before, "a log and a swap file are not the source");
        std::fs::write(dir.join("more.json"), "{}").unwrap();
        assert_ne!(stamp(&dir), before, "a new manifest file is");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
