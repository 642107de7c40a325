//! From a pod's first container to a local command line and environment.
//!
//! - The executable comes from the image (see [`super::ImageCommands`]); `command` is ignored.
//! - `args` are passed after `$(VAR)` expansion, with every path under a volume's `mountPath`
//!   rewritten to the volume's directory on this host (also in `--flag=PATH` form).
//! - `--listen HOST:PORT` gets the pod IP as host (keeping PORT); without one,
//!   `--listen <podIP>:<first containerPort, else 8080>` is added.
//! - Without `--config`, `--config PATH` is added, PATH being the first of: the value of a
//!   container env var whose name ends in `CONFIG` and that names a file in a ConfigMap volume
//!   (e.g. the operator's `GPUPOOL_SIDECAR_CONFIG=/etc/gpupool/sidecar.yaml`); the first `.yaml`
//!   / `.yml` file of the first ConfigMap volume mounted into the container; its first file.
//! - The environment is the stand-in's own, plus the `GPUPOOL_*` variables below, plus the
//!   container's `env` and `envFrom` (values, downward-API `fieldRef`, `resourceFieldRef` in units of
//!   its divisor as the kubelet gives it, ConfigMap and Secret keys), which win on conflicts. Env values that are paths
//!   under a `mountPath` are rewritten like arguments.
//!
//! | variable | value |
//! | --- | --- |
//! | `GPUPOOL_POD_NAME`, `GPUPOOL_POD_NAMESPACE`, `GPUPOOL_POD_UID` | the pod's identity |
//! | `GPUPOOL_POD_IP`, `GPUPOOL_NODE_NAME` | its address and node |
//! | `GPUPOOL_POD_DIR` | its directory (also the working directory) |
//! | `GPUPOOL_MOUNTS` | JSON object: each `mountPath` → host path |
//! | `GPUPOOL_MOUNT_<VOLUME>` | host path of each of the pod's volumes (upper-cased, non-alphanumerics → `_`) |
//! | `NVIDIA_VISIBLE_DEVICES` | the pod's GPU indices, e.g. `0,1` (only if it asked for GPUs) |
//! | `CUDA_VISIBLE_DEVICES` | the same, only with `--set-cuda-visible-devices` |

use super::env::{container_env, expand, node_name};
use super::error::Result;
use super::process::Launch;
use k8s_openapi::api::core::v1::{Container, Pod};
use kube::Client;
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

/// What the stand-in decided for a pod, needed to start its container.
#[derive(Debug, Clone)]
pub struct PodPlacement<'a> {
    /// The pod.
    pub pod: &'a Pod,
    /// Its address.
    pub ip: Ipv4Addr,
    /// The node's address.
    pub host_ip: Ipv4Addr,
    /// The pod's directory.
    pub pod_dir: &'a Path,
    /// Host path of each volume, by name.
    pub volumes: &'a BTreeMap<String, PathBuf>,
    /// GPU indices given to the pod.
    pub gpus: &'a [u32],
    /// Also set `CUDA_VISIBLE_DEVICES`.
    pub set_cuda_visible_devices: bool,
}

/// Builds the command for `container` of `placement.pod`.
pub async fn build(
    client: &Client,
    placement: &PodPlacement<'_>,
    container: &Container,
    program: PathBuf,
    log: PathBuf,
) -> Result<Launch> {
    let pod = placement.pod;
    let namespace = pod.metadata.namespace.clone().unwrap_or_default();
    let mounts = mounts(container, placement.volumes);
    let mut env = gpupool_env(placement, &mounts);
    let own = container_env(client, pod, &namespace, container, placement).await?;
    let own: Vec<(String, String)> = own
        .into_iter()
        .map(|(k, v)| (k, host_path(&mounts, &v)))
        .collect();
    let default_config = default_config(pod, container, placement.volumes, &own);
    env.extend(own);

    let vars: BTreeMap<String, String> = env.iter().cloned().collect();
    let args: Vec<String> = container
        .args
        .iter()
        .flatten()
        .map(|a| expand(a, &vars))
        .collect();
    let port = container
        .ports
        .iter()
        .flatten()
        .next()
        .and_then(|p| u16::try_from(p.container_port).ok())
        .unwrap_or(8080);
    Ok(Launch {
        program,
        args: rewrite_args(&args, &mounts, placement.ip, port, default_config),
        env,
        cwd: placement.pod_dir.to_path_buf(),
        log,
    })
}

/// `(mountPath, host path)` of each of the container's mounts.
fn mounts(container: &Container, volumes: &BTreeMap<String, PathBuf>) -> Vec<(String, PathBuf)> {
    let mounts = container.volume_mounts.iter().flatten();
    let resolved = mounts.filter_map(|m| {
        let base = volumes.get(&m.name)?;
        let host = match m.sub_path.as_deref().filter(|s| !s.is_empty()) {
            Some(sub) => base.join(sub),
            None => base.clone(),
        };
        Some((m.mount_path.trim_end_matches('/').to_string(), host))
    });
    resolved.collect()
}

fn gpupool_env(
    placement: &PodPlacement<'_>,
    mounts: &[(String, PathBuf)],
) -> Vec<(String, String)> {
    let meta = &placement.pod.metadata;
    let mut env = vec![
        (
            "GPUPOOL_POD_NAME".to_string(),
            meta.name.clone().unwrap_or_default(),
        ),
        (
            "GPUPOOL_POD_NAMESPACE".into(),
            meta.namespace.clone().unwrap_or_default(),
        ),
        (
            "GPUPOOL_POD_UID".into(),
            meta.uid.clone().unwrap_or_default(),
        ),
        ("GPUPOOL_POD_IP".into(), placement.ip.to_string()),
        ("GPUPOOL_NODE_NAME".into(), node_name(placement.pod)),
        (
            "GPUPOOL_POD_DIR".into(),
            placement.pod_dir.display().to_string(),
        ),
    ];
    let json: serde_json::Map<String, serde_json::Value> = mounts
        .iter()
        .map(|(m, h)| (m.clone(), h.display().to_string().into()))
        .collect();
    env.push((
        "GPUPOOL_MOUNTS".into(),
        serde_json::Value::Object(json).to_string(),
    ));
    for (name, path) in placement.volumes {
        let var = name
            .to_uppercase()
            .replace(|c: char| !c.is_ascii_alphanumeric(), "_");
        env.push((format!("GPUPOOL_MOUNT_{var}"), path.display().to_string()));
    }
    if !placement.gpus.is_empty() {
        let list: Vec<String> = placement.gpus.iter().map(u32::to_string).collect();
        env.push(("NVIDIA_VISIBLE_DEVICES".into(), list.join(",")));
        if placement.set_cuda_visible_devices {
            env.push(("CUDA_VISIBLE_DEVICES".into(), list.join(",")));
        }
    }
    env
}

/// The config file to pass when the args name none (see the module docs for the order).
fn default_config(
    pod: &Pod,
    container: &Container,
    volumes: &BTreeMap<String, PathBuf>,
    env: &[(String, String)],
) -> Option<PathBuf> {
    let spec_volumes = pod.spec.as_ref().and_then(|s| s.volumes.as_ref())?;
    let config_dirs: Vec<&PathBuf> = container
        .volume_mounts
        .iter()
        .flatten()
        .filter(|m| {
            spec_volumes
                .iter()
                .any(|v| v.name == m.name && v.config_map.is_some())
        })
        .filter_map(|m| volumes.get(&m.name))
        .collect();
    let named = env.iter().find_map(|(name, value)| {
        let path = PathBuf::from(value);
        let inside = config_dirs.iter().any(|d| path.starts_with(d));
        (name.ends_with("CONFIG") && inside && path.is_file()).then_some(path)
    });
    if named.is_some() {
        return named;
    }
    let dir = config_dirs.first()?;
    let mut files: Vec<String> = std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with(".."))
        .collect();
    files.sort();
    let yaml = files
        .iter()
        .find(|f| f.ends_with(".yaml") || f.ends_with(".yml"));
    yaml.or(files.first()).map(|f| dir.join(f))
}

/// `value` with a leading `mountPath` replaced by the volume's host path (longest mount first).
fn host_path(mounts: &[(String, PathBuf)], value: &str) -> String {
    let mut best: Option<(&str, &PathBuf)> = None;
    for (mount, host) in mounts {
        if let Some(rest) = value.strip_prefix(mount.as_str()) {
            let longer = best.is_none_or(|(b, _)| mount.len() > b.len());
            if (rest.is_empty() || rest.starts_with('/')) && longer {
                best = Some((mount, host));
            }
        }
    }
    match best {
        Some((mount, host)) => format!("{}{}", host.display(), &value[mount.len()..]),
        None => value.to_string(),
    }
}

/// Rewrites mount paths to host paths, points `--listen` at the pod IP and adds `--listen` and
/// `--config` where missing.
pub fn rewrite_args(
    args: &[String],
    mounts: &[(String, PathBuf)],
    ip: Ipv4Addr,
    port: u16,
    default_config: Option<PathBuf>,
) -> Vec<String> {
    let host_path = |value: &str| host_path(mounts, value);
    let listen = |value: &str| {
        let port = value
            .rsplit_once(':')
            .and_then(|(_, p)| p.parse().ok())
            .unwrap_or(port);
        format!("{ip}:{port}")
    };
    let (mut saw_listen, mut saw_config) = (false, false);
    let mut out: Vec<String> = Vec::with_capacity(args.len() + 4);
    let mut previous_was_listen = false;
    for arg in args {
        let rewritten = if previous_was_listen {
            listen(arg)
        } else if let Some(v) = arg.strip_prefix("--listen=") {
            format!("--listen={}", listen(v))
        } else if let Some((flag, v)) = arg.split_once('=').filter(|(f, _)| f.starts_with('-')) {
            format!("{flag}={}", host_path(v))
        } else {
            host_path(arg)
        };
        previous_was_listen = arg == "--listen";
        saw_listen |= arg == "--listen" || arg.starts_with("--listen=");
        saw_config |= arg == "--config" || arg.starts_with("--config=");
        out.push(rewritten);
    }
    if !saw_config {
        if let Some(config) = default_config {
            out.extend(["--config".to_string(), config.display().to_string()]);
        }
    }
    if !saw_listen {
        out.extend(["--listen".to_string(), format!("{ip}:{port}")]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn mount_paths_become_host_paths_and_listen_gets_the_pod_ip() {
        let mounts = vec![
            (
                "/etc/gpupool".to_string(),
                PathBuf::from("/state/pods/u/volumes/config"),
            ),
            ("/etc/gpupool/extra".to_string(), PathBuf::from("/x")),
        ];
        let ip = Ipv4Addr::new(127, 0, 1, 3);
        let args = strings(&[
            "--config",
            "/etc/gpupool/sidecar.yaml",
            "--models=/etc/gpupool/extra/m",
            "--listen",
            "0.0.0.0:9000",
            "/etc/gpupoolx",
        ]);
        assert_eq!(
            rewrite_args(&args, &mounts, ip, 8080, None),
            strings(&[
                "--config",
                "/state/pods/u/volumes/config/sidecar.yaml",
                "--models=/x/m",
                "--listen",
                "127.0.1.3:9000",
                "/etc/gpupoolx",
            ])
        );
    }

    #[test]
    fn missing_config_and_listen_are_added() {
        let ip = Ipv4Addr::new(127, 0, 1, 3);
        let out = rewrite_args(&[], &[], ip, 8080, Some(PathBuf::from("/d/sidecar.yaml")));
        assert_eq!(
            out,
            strings(&["--config", "/d/sidecar.yaml", "--listen", "127.0.1.3:8080"])
        );
        let out = rewrite_args(&strings(&["--listen=:7000"]), &[], ip, 8080, None);
        assert_eq!(out, strings(&["--listen=127.0.1.3:7000"]));
    }
}
