//! Standalone input: a manifest file or directory, read again whenever it changes (polled: a
//! ConfigMap mounted into a pod changes by a symlink swap that inotify watches on the file miss;
//! an editor's atomic rename changes the file's identity and time, which the poll sees).
//! Last good state wins: a source that does not load as a whole (a syntax error, a truncated or
//! unreadable file, no objects at all unless allowed) changes nothing and is reported once per
//! change.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use nftproxy_manifest::Object;
use nftproxy_model::{ListedKind, SourceEvent};
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
            let (path, node_name, tx) = (path.clone(), node_name.clone(), tx.clone());
            let sent = tokio::task::spawn_blocking(move || send_source(&path, &node_name, allow_empty, &tx)).await;
            if !matches!(sent, Ok(true)) {
                return;
            }
        }
        tokio::time::sleep(interval).await;
    }
}

const KINDS: [ListedKind; 3] = [ListedKind::Services, ListedKind::EndpointSlices, ListedKind::ServiceCidrs];

/// One load of the source, streamed as lists of every kind (see [`SourceEvent`]): the objects
/// go to the tracker one by one as the second pass of [`nftproxy_manifest::stream_path`] parses
/// them, so the source's objects never exist twice in memory beside the tracker's state (at
/// 10,000 Services × 3 a reload peaked at 118 MiB where the first load took 64). A source that
/// does not load sends only `SourceFailed`: its first pass fails before any object is sent.
/// False when the daemon is gone.
fn send_source(path: &Path, node_name: &str, allow_empty: bool, tx: &mpsc::Sender<SourceEvent>) -> bool {
    let send = |e: SourceEvent| tx.blocking_send(e).is_ok();
    let started = Arc::new(AtomicBool::new(false));
    let node = Arc::new(Mutex::new(None));
    let (to, started_in, node_in, node_name_in) = (tx.clone(), started.clone(), node.clone(), node_name.to_string());
    let loaded = nftproxy_manifest::stream_path(path, allow_empty, move |o| {
        if !started_in.swap(true, Ordering::Relaxed) {
            for k in KINDS {
                let _ = to.blocking_send(SourceEvent::ListStarted(k));
            }
        }
        let ev = match o {
            Object::Service(s) => SourceEvent::ServiceApplied(s),
            Object::Slice(s) => SourceEvent::SliceApplied(s),
            Object::ServiceCidr(c) => SourceEvent::ServiceCidrApplied(c),
            Object::Node(n) => {
                if n.name == node_name_in {
                    *node_in.lock().unwrap_or_else(|e| e.into_inner()) = Some(n);
                }
                return;
            }
        };
        let _ = to.blocking_send(ev);
    });
    let loaded = match loaded {
        Ok(l) => l,
        // A missing, unreadable, unparsable or empty source keeps what was programmed.
        Err(e) => return send(SourceEvent::SourceFailed(e.to_string())),
    };
    // A source without a usable object (allowed empty, or all skipped): the lists are empty.
    if !started.load(Ordering::Relaxed) && !KINDS.iter().all(|k| send(SourceEvent::ListStarted(*k))) {
        return false;
    }
    let warnings = loaded.warnings.iter().map(|w| SourceEvent::Warning(w.to_string()));
    let done = KINDS.iter().map(|k| SourceEvent::ListDone(*k));
    let node = node.lock().unwrap_or_else(|e| e.into_inner()).take();
    // No Node object in the manifests: nothing says the node is ineligible.
    warnings.chain(done).chain([SourceEvent::Node { eligible: true, node }]).all(send)
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

    fn events_of(path: &Path) -> Vec<SourceEvent> {
        let (tx, mut rx) = mpsc::channel(1024);
        assert!(send_source(path, "node-a", false, &tx));
        drop(tx);
        std::iter::from_fn(|| rx.try_recv().ok()).collect()
    }

    /// A load streams every kind as a list, the objects between start and end; the tracker then
    /// holds what `load_path` loads. A file that does not parse sends nothing but the failure.
    #[test]
    fn a_load_streams_lists_and_a_broken_one_sends_only_its_failure() {
        let dir = std::env::temp_dir().join(format!("knp-stream-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("cluster.yaml");
        std::fs::write(
            &f,
            "apiVersion: v1\nkind: List\nitems:\n\
             - {apiVersion: v1, kind: Service, metadata: {name: a, namespace: ns}, spec: {clusterIP: 10.96.0.1, ports: [{port: 80}]}}\n\
             - {apiVersion: v1, kind: Service, metadata: {name: bad, namespace: ns}, spec: {clusterIP: nonsense, ports: [{port: 80}]}}\n\
             - {apiVersion: v1, kind: Node, metadata: {name: node-a}}\n\
             ---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
             metadata: {name: a-1, namespace: ns, labels: {kubernetes.io/service-name: a}}\n\
             addressType: IPv4\nendpoints: [{addresses: [10.244.1.2]}]\nports: [{port: 8080}]\n",
        )
        .unwrap();
        let ev = events_of(&f);
        let kinds = |e: &SourceEvent| match e {
            SourceEvent::ListStarted(_) => "start",
            SourceEvent::ListDone(_) => "done",
            SourceEvent::ServiceApplied(_) => "service",
            SourceEvent::SliceApplied(_) => "slice",
            SourceEvent::Warning(_) => "warning",
            SourceEvent::Node { node: Some(_), .. } => "node",
            other => panic!("unexpected {other:?}"),
        };
        let seq: Vec<&str> = ev.iter().map(kinds).collect();
        assert_eq!(seq, ["start", "start", "start", "service", "slice", "warning", "done", "done", "done", "node"]);
        let mut t = crate::tracker::ChangeTracker::default();
        ev.into_iter().for_each(|e| _ = t.apply(e));
        assert!(t.ready());
        let loaded = nftproxy_manifest::load_path(&f).unwrap();
        assert_eq!(t.state.services, loaded.state.services);
        assert_eq!(t.state.slices(), loaded.state.slices());

        std::fs::write(&f, "apiVersion: v1\nkind: Service\nmetadata: {name: a\n").unwrap();
        let ev = events_of(&f);
        assert!(matches!(&ev[..], [SourceEvent::SourceFailed(_)]), "{ev:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
