//! Writes a volume's files the way the kubelet's `AtomicWriter` does, so that a reader never sees
//! a half-written update and hot reload behaves as it does in a real cluster:
//!
//! ```text
//! <dir>/..<nanos>/config.yaml     this version's files
//! <dir>/..data -> ..<nanos>       swapped atomically: symlink ..data_tmp, rename over ..data
//! <dir>/config.yaml -> ..data/config.yaml
//! ```

use super::error::{Error, Result};
use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path};

/// One file of a volume: its bytes and permission bits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileContent {
    /// The file's bytes.
    pub data: Vec<u8>,
    /// Unix permission bits, e.g. `0o644`.
    pub mode: u32,
}

/// Relative paths (may contain `/`) to their contents.
pub type Payload = BTreeMap<String, FileContent>;

const DATA: &str = "..data";
const DATA_TMP: &str = "..data_tmp";

/// Makes `dir` hold exactly `payload`; returns whether anything changed.
pub fn write_payload(dir: &Path, payload: &Payload) -> Result<bool> {
    for path in payload.keys() {
        validate(path)
            .map_err(|source| Error::io("refusing volume path", dir.join(path), source))?;
    }
    std::fs::create_dir_all(dir).map_err(|e| Error::io("creating", dir, e))?;
    let old = std::fs::read_link(dir.join(DATA)).ok();
    if let Some(old) = &old {
        if current_payload(&dir.join(old)).as_ref() == Some(payload) {
            return Ok(false);
        }
    }
    let version = new_version_dir(dir)?;
    for (path, content) in payload {
        let file = dir.join(&version).join(path);
        if let Some(parent) = file.parent() {
            std::fs::create_dir_all(parent).map_err(|e| Error::io("creating", parent, e))?;
        }
        std::fs::write(&file, &content.data).map_err(|e| Error::io("writing", &file, e))?;
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(content.mode))
            .map_err(|e| Error::io("setting the mode of", &file, e))?;
    }
    let tmp = dir.join(DATA_TMP);
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(&version, &tmp).map_err(|e| Error::io("linking", &tmp, e))?;
    std::fs::rename(&tmp, dir.join(DATA)).map_err(|e| Error::io("renaming", &tmp, e))?;

    let tops: std::collections::BTreeSet<&str> =
        payload.keys().filter_map(|p| p.split('/').next()).collect();
    for top in &tops {
        let link = dir.join(top);
        if std::fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink(Path::new(DATA).join(top), &link)
                .map_err(|e| Error::io("linking", &link, e))?;
        }
    }
    let entries = std::fs::read_dir(dir).map_err(|e| Error::io("listing", dir, e))?;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let is_link = entry.file_type().is_ok_and(|t| t.is_symlink());
        if is_link && !name.starts_with("..") && !tops.contains(name.as_str()) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    if let Some(old) = old {
        let _ = std::fs::remove_dir_all(dir.join(old));
    }
    Ok(true)
}

/// Paths must be relative, without `..` and not starting with `..` (reserved for the layout).
fn validate(path: &str) -> std::io::Result<()> {
    let ok = !path.is_empty()
        && !path.starts_with("..")
        && Path::new(path)
            .components()
            .all(|c| matches!(c, Component::Normal(_)));
    if ok {
        Ok(())
    } else {
        Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "volume paths must be relative and must not contain '..'",
        ))
    }
}

/// A fresh `..<nanoseconds>` directory name inside `dir`.
fn new_version_dir(dir: &Path) -> Result<String> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    for attempt in 0..1000u32 {
        let name = format!("..{nanos}_{attempt}");
        match std::fs::create_dir(dir.join(&name)) {
            Ok(()) => return Ok(name),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(Error::io("creating", dir.join(&name), e)),
        }
    }
    Err(Error::io(
        "creating a version directory in",
        dir,
        std::io::Error::from(std::io::ErrorKind::AlreadyExists),
    ))
}

/// What a version directory holds, or `None` if it cannot be read.
fn current_payload(version_dir: &Path) -> Option<Payload> {
    fn walk(root: &Path, rel: &str, out: &mut Payload) -> std::io::Result<()> {
        for entry in std::fs::read_dir(root.join(rel))? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let rel = if rel.is_empty() {
                name
            } else {
                format!("{rel}/{name}")
            };
            if entry.file_type()?.is_dir() {
                walk(root, &rel, out)?;
            } else {
                let data = std::fs::read(entry.path())?;
                let mode = entry.metadata()?.permissions().mode() & 0o7777;
                out.insert(rel, FileContent { data, mode });
            }
        }
        Ok(())
    }
    let mut out = Payload::new();
    walk(version_dir, "", &mut out).ok().map(|()| out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(files: &[(&str, &str)]) -> Payload {
        files
            .iter()
            .map(|(p, d)| {
                let content = FileContent {
                    data: d.as_bytes().to_vec(),
                    mode: 0o644,
                };
                (p.to_string(), content)
            })
            .collect()
    }

    fn read(dir: &Path, path: &str) -> String {
        std::fs::read_to_string(dir.join(path)).unwrap_or_default()
    }

    #[test]
    fn updates_swap_the_data_link_and_drop_old_files() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("vol");
        assert!(write_payload(&dir, &payload(&[("a.yaml", "1"), ("sub/b", "x")])).expect("write"));
        assert_eq!(read(&dir, "a.yaml"), "1");
        assert_eq!(read(&dir, "sub/b"), "x");
        assert!(std::fs::symlink_metadata(dir.join("a.yaml"))
            .expect("link")
            .file_type()
            .is_symlink());
        let first = std::fs::read_link(dir.join(DATA)).expect("..data");

        // The same content again changes nothing.
        assert!(!write_payload(&dir, &payload(&[("a.yaml", "1"), ("sub/b", "x")])).expect("write"));
        assert_eq!(std::fs::read_link(dir.join(DATA)).ok(), Some(first.clone()));

        assert!(write_payload(&dir, &payload(&[("a.yaml", "2")])).expect("write"));
        assert_eq!(read(&dir, "a.yaml"), "2");
        assert!(!dir.join("sub").exists(), "dropped keys disappear");
        assert!(!dir.join(&first).exists(), "the old version is removed");
        assert!(!dir.join(DATA_TMP).exists());
    }

    #[test]
    fn escaping_paths_are_refused() {
        let tmp = tempfile::tempdir().expect("tempdir");
        for bad in ["../x", "/etc/passwd", "..data", "a/../../b", ""] {
            assert!(
                write_payload(tmp.path(), &payload(&[(bad, "x")])).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn modes_are_applied() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let mut p = payload(&[("run.sh", "#!/bin/sh")]);
        if let Some(f) = p.get_mut("run.sh") {
            f.mode = 0o755;
        }
        write_payload(tmp.path(), &p).expect("write");
        let mode = std::fs::metadata(tmp.path().join("run.sh"))
            .expect("stat")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o755);
    }
}
