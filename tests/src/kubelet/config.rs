//! The stand-in's configuration: what node it registers and how it runs pods.

use super::error::{Error, Result};
use super::ipam::PodCidr;
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// What happens to the Node object when the stand-in stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum OnExit {
    /// Keep the Node and set its Ready condition to False (as a stopped kubelet leaves it).
    #[default]
    NotReady,
    /// Delete the Node (as a cluster autoscaler's scale-down does); the lease goes with it.
    Delete,
}

/// Everything one stand-in instance needs; [`Config::new`] fills in the defaults.
#[derive(Debug, Clone)]
pub struct Config {
    /// Name of the Node to register (also its `kubernetes.io/hostname` label).
    pub node_name: String,
    /// Number of `nvidia.com/gpu` the node advertises.
    pub gpus: u32,
    /// `nvidia.com/gpu.product` label.
    pub gpu_product: String,
    /// `nvidia.com/gpu.memory` label, MiB per GPU.
    pub gpu_memory_mib: u64,
    /// Extra node labels.
    pub node_labels: BTreeMap<String, String>,
    /// Loopback range pod IPs are taken from.
    pub pod_cidr: PodCidr,
    /// The node's address, reported as the pods' `hostIP`.
    pub host_ip: Ipv4Addr,
    /// Root of the per-pod directories (`pods/<uid>/`) and logs (`logs/`).
    pub state_dir: PathBuf,
    /// Which executable runs which image.
    pub images: ImageCommands,
    /// What to do with the Node on shutdown.
    pub on_exit: OnExit,
    /// How often the Node's Ready heartbeat and its Lease are renewed.
    pub heartbeat_interval: Duration,
    /// The Lease's `leaseDurationSeconds`.
    pub lease_duration: Duration,
    /// How often probes run. A probe's `failureThreshold` is scaled by `periodSeconds` /
    /// `probe_period`, so failing still takes as long as the spec says while success (startup,
    /// readiness) is seen within one `probe_period`.
    pub probe_period: Duration,
    /// First delay before restarting an exited container; doubles per restart.
    pub restart_backoff: Duration,
    /// Upper bound of the restart delay.
    pub max_restart_backoff: Duration,
    /// Also set `CUDA_VISIBLE_DEVICES` to the pod's GPU indices (not only `NVIDIA_VISIBLE_DEVICES`).
    pub set_cuda_visible_devices: bool,
    /// Host directories backing PersistentVolumeClaims, by claim name (see [`Config::claim_dir`]).
    pub claim_dirs: BTreeMap<String, PathBuf>,
}

impl Config {
    /// A node called `node_name` with one GPU and the defaults the binary's flags have.
    pub fn new(node_name: impl Into<String>) -> Self {
        let node_name = node_name.into();
        Self {
            state_dir: default_state_dir(&node_name),
            node_name,
            gpus: 1,
            gpu_product: "NVIDIA-H200".into(),
            gpu_memory_mib: 143_771,
            node_labels: BTreeMap::new(),
            pod_cidr: PodCidr::default(),
            host_ip: Ipv4Addr::LOCALHOST,
            images: ImageCommands::default(),
            on_exit: OnExit::NotReady,
            heartbeat_interval: Duration::from_secs(10),
            lease_duration: Duration::from_secs(40),
            probe_period: Duration::from_secs(1),
            restart_backoff: Duration::from_secs(1),
            max_restart_backoff: Duration::from_secs(60),
            set_cuda_visible_devices: false,
            claim_dirs: BTreeMap::new(),
        }
    }

    /// Directory backing claim `claim` of `namespace`: the one mapped for the claim's name, else
    /// `<state>/claims/<namespace>/<claim>` (kept when pods go, like a real volume).
    pub fn claim_dir(&self, namespace: &str, claim: &str) -> PathBuf {
        self.claim_dirs
            .get(claim)
            .cloned()
            .unwrap_or_else(|| self.state_dir.join("claims").join(namespace).join(claim))
    }

    /// Directory of one pod (volumes, pid file); removed when the pod is gone.
    pub fn pod_dir(&self, uid: &str) -> PathBuf {
        self.state_dir.join("pods").join(uid)
    }

    /// Log file of one container's stdout and stderr; kept after the pod is gone.
    pub fn log_path(&self, namespace: &str, pod: &str, uid: &str, container: &str) -> PathBuf {
        self.state_dir
            .join("logs")
            .join(format!("{namespace}_{pod}_{uid}"))
            .join(format!("{container}.log"))
    }
}

/// `$TMPDIR/gpupool-kubelet/<node>`.
pub fn default_state_dir(node_name: &str) -> PathBuf {
    std::env::temp_dir().join("gpupool-kubelet").join(node_name)
}

/// Maps container images to local executables.
///
/// An explicit mapping `IMAGE=PATH` matches an image whose reference equals `IMAGE`, whose
/// repository (the reference without `:tag` or `@digest`) equals it, or whose repository ends with
/// `/IMAGE` (so `gpupool/sidecar` matches `ghcr.io/gpupool/sidecar:0.1`). Otherwise the executable
/// named by the repository's last path segment is looked up in the search directories (by default
/// the directory of the running executable and, for test binaries in `target/*/deps`, its parent).
#[derive(Debug, Clone)]
pub struct ImageCommands {
    explicit: Vec<(String, PathBuf)>,
    search_dirs: Vec<PathBuf>,
}

impl Default for ImageCommands {
    fn default() -> Self {
        let mut search_dirs = Vec::new();
        if let Some(dir) = std::env::current_exe()
            .ok()
            .and_then(|exe| exe.parent().map(Path::to_path_buf))
        {
            if dir.file_name().is_some_and(|n| n == "deps") {
                if let Some(parent) = dir.parent() {
                    search_dirs.push(parent.to_path_buf());
                }
            }
            search_dirs.insert(0, dir);
        }
        Self {
            explicit: Vec::new(),
            search_dirs,
        }
    }
}

impl ImageCommands {
    /// Adds `image` → `program`; later mappings of the same image win.
    pub fn map(mut self, image: impl Into<String>, program: impl Into<PathBuf>) -> Self {
        self.explicit.insert(0, (image.into(), program.into()));
        self
    }

    /// Adds a mapping written `IMAGE=PATH` (the `--image-command` flag).
    pub fn map_spec(self, spec: &str) -> Result<Self> {
        match spec.split_once('=') {
            Some((image, path)) if !image.is_empty() && !path.is_empty() => {
                Ok(self.map(image, path))
            }
            _ => Err(Error::ImageCommandSyntax { spec: spec.into() }),
        }
    }

    /// Looks for unmapped images' executables in `dir` first.
    pub fn search_first(mut self, dir: impl Into<PathBuf>) -> Self {
        self.search_dirs.insert(0, dir.into());
        self
    }

    /// The executable that runs `image`.
    pub fn resolve(&self, image: &str) -> Result<PathBuf> {
        let repo = repository(image);
        let mapped = self.explicit.iter().find(|(key, _)| {
            key == image
                || key == repo
                || repo
                    .strip_suffix(key.as_str())
                    .is_some_and(|rest| rest.ends_with('/'))
        });
        if let Some((_, program)) = mapped {
            return Ok(program.clone());
        }
        let name = repo.rsplit('/').next().unwrap_or(repo);
        let tried: Vec<PathBuf> = self.search_dirs.iter().map(|d| d.join(name)).collect();
        tried
            .iter()
            .find(|p| p.is_file())
            .cloned()
            .ok_or_else(|| Error::NoExecutable {
                image: image.into(),
                tried,
            })
    }
}

/// An image reference without its `@digest` and `:tag`.
fn repository(image: &str) -> &str {
    let image = image.split('@').next().unwrap_or(image);
    match image.rfind(':') {
        // A colon after the last slash is a tag; before it, a registry port.
        Some(colon) if !image[colon..].contains('/') => &image[..colon],
        _ => image,
    }
}

/// Parses `500ms`, `10s`, `1.5s`, `2m`, `1h` (a bare number is seconds).
pub fn parse_duration(value: &str) -> Result<Duration> {
    let bad = || Error::InvalidDuration {
        value: value.into(),
    };
    let v = value.trim();
    let split = v
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(v.len());
    let (number, unit) = v.split_at(split);
    let number: f64 = number.parse().map_err(|_| bad())?;
    let seconds = match unit {
        "ms" => number / 1000.0,
        "" | "s" => number,
        "m" => number * 60.0,
        "h" => number * 3600.0,
        _ => return Err(bad()),
    };
    Duration::try_from_secs_f64(seconds).map_err(|_| bad())
}

/// Parses `KEY=VALUE` for the flag `flag`.
pub fn parse_key_value(flag: &'static str, value: &str) -> Result<(String, String)> {
    value
        .split_once('=')
        .filter(|(k, _)| !k.is_empty())
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| Error::KeyValueSyntax {
            flag,
            value: value.into(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_match_by_reference_repository_or_path_suffix() {
        let images = ImageCommands::default()
            .map("gpupool/sidecar", "/bin/sidecar")
            .map("other:1.0", "/bin/other");
        for image in [
            "gpupool/sidecar",
            "gpupool/sidecar:0.1.0",
            "ghcr.io/gpupool/sidecar:0.1",
            "localhost:5000/gpupool/sidecar@sha256:abc",
        ] {
            assert_eq!(
                images.resolve(image).ok(),
                Some("/bin/sidecar".into()),
                "{image}"
            );
        }
        assert_eq!(images.resolve("other:1.0").ok(), Some("/bin/other".into()));
        assert!(images.resolve("notgpupool/sidecarx").is_err());
    }

    #[test]
    fn unmapped_images_are_looked_up_by_last_segment() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("gpupool-sidecar"), "").expect("write");
        let images = ImageCommands::default().search_first(dir.path());
        assert_eq!(
            images.resolve("ghcr.io/x/gpupool-sidecar:1").ok(),
            Some(dir.path().join("gpupool-sidecar"))
        );
        match images.resolve("nothing-here") {
            Err(Error::NoExecutable { tried, .. }) => {
                assert_eq!(tried[0], dir.path().join("nothing-here"))
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn image_command_specs_need_both_sides() {
        assert!(ImageCommands::default().map_spec("a=/b").is_ok());
        assert!(ImageCommands::default().map_spec("a").is_err());
        assert!(ImageCommands::default().map_spec("=/b").is_err());
    }

    #[test]
    fn durations_take_units() {
        assert_eq!(
            parse_duration("500ms").ok(),
            Some(Duration::from_millis(500))
        );
        assert_eq!(parse_duration("10s").ok(), Some(Duration::from_secs(10)));
        assert_eq!(parse_duration("10").ok(), Some(Duration::from_secs(10)));
        assert_eq!(
            parse_duration("1.5s").ok(),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(parse_duration("2m").ok(), Some(Duration::from_secs(120)));
        assert!(parse_duration("ten").is_err());
        assert!(parse_duration("5d").is_err());
    }
}
