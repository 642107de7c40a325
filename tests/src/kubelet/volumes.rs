//! A pod's volumes as directories under its pod directory. ConfigMap and Secret volumes are
//! watched and rewritten atomically on every change (see [`super::atomic`]), as the kubelet's
//! projected-volume refresh does; emptyDir is a fresh directory; hostPath is the host path itself;
//! a persistentVolumeClaim is the directory [`Config::claim_dir`] names, which outlives the pod.
//! Other volume types become empty directories (with a warning).

use super::atomic::{write_payload, FileContent, Payload};
use super::config::Config;
use super::error::{Error, Result};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, KeyToPath, Pod, Secret};
use kube::runtime::watcher::{self, watcher, Event};
use kube::runtime::WatchStreamExt;
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;
use std::collections::BTreeMap;
use std::fmt::Debug;
use std::path::{Path, PathBuf};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The materialised volumes of one pod; dropping it stops the watches.
#[derive(Debug, Default)]
pub struct Volumes {
    paths: BTreeMap<String, PathBuf>,
    ready: Vec<(String, watch::Receiver<bool>)>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Volumes {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// What a watched volume projects: the object's data, its `items`, modes and optionality.
struct Projection {
    items: Option<Vec<KeyToPath>>,
    default_mode: u32,
    optional: bool,
}

impl Volumes {
    /// Creates every volume of `pod` under `<pod_dir>/volumes/<name>` and starts the watches.
    pub fn start(client: &Client, config: &Config, pod: &Pod, pod_dir: &Path) -> Result<Self> {
        let namespace = pod.metadata.namespace.clone().unwrap_or_default();
        let pod_name = pod.metadata.name.clone().unwrap_or_default();
        let mut volumes = Volumes::default();
        let specs = pod
            .spec
            .as_ref()
            .and_then(|s| s.volumes.clone())
            .unwrap_or_default();
        for volume in specs {
            let dir = pod_dir.join("volumes").join(&volume.name);
            if let Some(host) = &volume.host_path {
                volumes.paths.insert(volume.name, PathBuf::from(&host.path));
                continue;
            }
            if let Some(claim) = &volume.persistent_volume_claim {
                let dir = config.claim_dir(&namespace, &claim.claim_name);
                std::fs::create_dir_all(&dir).map_err(|e| Error::io("creating", &dir, e))?;
                volumes.paths.insert(volume.name, dir);
                continue;
            }
            std::fs::create_dir_all(&dir).map_err(|e| Error::io("creating", &dir, e))?;
            volumes.paths.insert(volume.name.clone(), dir.clone());
            let what = format!("volume {} of pod {namespace}/{pod_name}", volume.name);
            if let Some(cm) = volume.config_map {
                let projection = Projection {
                    items: cm.items,
                    default_mode: mode(cm.default_mode),
                    optional: cm.optional.unwrap_or(false),
                };
                let api: Api<ConfigMap> = Api::namespaced(client.clone(), &namespace);
                volumes.watch(api, cm.name, configmap_data, projection, dir, what);
            } else if let Some(secret) = volume.secret {
                let projection = Projection {
                    items: secret.items,
                    default_mode: mode(secret.default_mode),
                    optional: secret.optional.unwrap_or(false),
                };
                let api: Api<Secret> = Api::namespaced(client.clone(), &namespace);
                let name = secret.secret_name.unwrap_or_default();
                volumes.watch(api, name, secret_data, projection, dir, what);
            } else if volume.empty_dir.is_none() {
                tracing::warn!("{what}: unsupported volume type, mounted as an empty directory");
            }
        }
        Ok(volumes)
    }

    fn watch<K>(
        &mut self,
        api: Api<K>,
        name: String,
        data: fn(&K) -> BTreeMap<String, Vec<u8>>,
        projection: Projection,
        dir: PathBuf,
        what: String,
    ) where
        K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
    {
        let (tx, rx) = watch::channel(false);
        self.ready.push((what.clone(), rx));
        let task = sync(api, name, data, projection, dir, tx, what);
        self.tasks.push(tokio::spawn(task));
    }

    /// Host path of each volume, by volume name.
    pub fn paths(&self) -> &BTreeMap<String, PathBuf> {
        &self.paths
    }

    /// Whether every watched volume has been written once (or is optional and absent).
    pub fn is_ready(&self) -> bool {
        self.ready.iter().all(|(_, rx)| *rx.borrow())
    }

    /// Volumes not written yet, for the container's waiting message.
    pub fn pending(&self) -> Vec<String> {
        let pending = self.ready.iter().filter(|(_, rx)| !*rx.borrow());
        pending.map(|(what, _)| what.clone()).collect()
    }

    /// Completes once [`Volumes::is_ready`] (never, if a watch task ended before that).
    pub async fn wait_ready(&mut self) {
        for (_, rx) in &mut self.ready {
            if rx.wait_for(|ready| *ready).await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }
}

fn mode(mode: Option<i32>) -> u32 {
    mode.map(|m| (m as u32) & 0o7777).unwrap_or(0o644)
}

fn configmap_data(cm: &ConfigMap) -> BTreeMap<String, Vec<u8>> {
    let text = cm
        .data
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.clone().into_bytes()));
    let binary = cm
        .binary_data
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.0.clone()));
    text.chain(binary).collect()
}

fn secret_data(secret: &Secret) -> BTreeMap<String, Vec<u8>> {
    let data = secret
        .data
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.0.clone()));
    let text = secret.string_data.iter().flatten();
    data.chain(text.map(|(k, v)| (k.clone(), v.clone().into_bytes())))
        .collect()
}

/// The files a volume shows for `data`: every key, or only `items` (each under its own path).
fn project(data: &BTreeMap<String, Vec<u8>>, projection: &Projection) -> Result<Payload, String> {
    let Some(items) = &projection.items else {
        let files = data.iter().map(|(k, v)| {
            let content = FileContent {
                data: v.clone(),
                mode: projection.default_mode,
            };
            (k.clone(), content)
        });
        return Ok(files.collect());
    };
    let mut payload = Payload::new();
    for item in items {
        match data.get(&item.key) {
            Some(bytes) => {
                let content = FileContent {
                    data: bytes.clone(),
                    mode: item
                        .mode
                        .map(|m| mode(Some(m)))
                        .unwrap_or(projection.default_mode),
                };
                payload.insert(item.path.clone(), content);
            }
            None if projection.optional => {}
            None => return Err(format!("references non-existent key {:?}", item.key)),
        }
    }
    Ok(payload)
}

/// Keeps `dir` in step with the object `name` until aborted.
async fn sync<K>(
    api: Api<K>,
    name: String,
    data: fn(&K) -> BTreeMap<String, Vec<u8>>,
    projection: Projection,
    dir: PathBuf,
    ready: watch::Sender<bool>,
    what: String,
) where
    K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
{
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut events = watcher(api, config).default_backoff().boxed();
    let mut seen = false;
    let write = |payload: &Payload| match write_payload(&dir, payload) {
        Ok(true) => {
            tracing::info!(object = %name, dir = %dir.display(), "{what}: files written");
            ready.send_replace(true);
        }
        Ok(false) => {
            ready.send_replace(true);
        }
        Err(e) => tracing::warn!(error = %e, "{what}: cannot write files"),
    };
    while let Some(event) = events.next().await {
        match event {
            Ok(Event::Init) => seen = false,
            Ok(Event::Apply(obj) | Event::InitApply(obj)) => {
                seen = true;
                match project(&data(&obj), &projection) {
                    Ok(payload) => write(&payload),
                    Err(why) => tracing::warn!("{what}: {name} {why}"),
                }
            }
            Ok(Event::InitDone) if !seen && projection.optional => write(&Payload::new()),
            Ok(Event::InitDone) if !seen => {
                tracing::warn!("{what}: waiting for {name}, which does not exist")
            }
            Ok(Event::InitDone) => {}
            Ok(Event::Delete(_)) => {
                tracing::info!("{what}: {name} was deleted; keeping the last files")
            }
            Err(e) => tracing::warn!(error = %e, "{what}: watching {name}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data() -> BTreeMap<String, Vec<u8>> {
        [
            ("a".to_string(), b"1".to_vec()),
            ("b".to_string(), b"2".to_vec()),
        ]
        .into()
    }

    fn item(key: &str, path: &str) -> KeyToPath {
        KeyToPath {
            key: key.into(),
            path: path.into(),
            mode: None,
        }
    }

    #[test]
    fn every_key_is_a_file_without_items() {
        let p = Projection {
            items: None,
            default_mode: 0o600,
            optional: false,
        };
        let payload = project(&data(), &p).expect("projects");
        assert_eq!(payload.keys().collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(payload["a"].mode, 0o600);
    }

    #[test]
    fn items_pick_and_rename_keys_and_missing_ones_block_unless_optional() {
        let mut p = Projection {
            items: Some(vec![item("b", "conf/b.yaml")]),
            default_mode: 0o644,
            optional: false,
        };
        let payload = project(&data(), &p).expect("projects");
        assert_eq!(payload.keys().collect::<Vec<_>>(), ["conf/b.yaml"]);
        p.items = Some(vec![item("zzz", "z")]);
        assert!(project(&data(), &p).is_err());
        p.optional = true;
        assert_eq!(project(&data(), &p).map(|p| p.len()), Ok(0));
    }
}
