//! The `gpupool-kubelet` command line.

use super::config::{
    default_state_dir, parse_duration, parse_key_value, Config, ImageCommands, OnExit,
};
use super::error::{Error, Result};
use super::ipam::PodCidr;
use std::path::PathBuf;
use std::time::Duration;

/// `gpupool-kubelet`: registers a GPU Node and runs the pods bound to it as local processes.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "gpupool-kubelet", version)]
pub struct Args {
    /// Kubeconfig to use (default: $KUBECONFIG, ~/.kube/config, or in-cluster).
    #[arg(long, value_name = "PATH")]
    pub kubeconfig: Option<PathBuf>,
    /// Name of the Node to register.
    #[arg(long, env = "GPUPOOL_NODE_NAME", value_name = "NAME")]
    pub node_name: String,
    /// Number of `nvidia.com/gpu` the Node advertises.
    #[arg(long, default_value_t = 1)]
    pub gpus: u32,
    /// `nvidia.com/gpu.product` label.
    #[arg(long, default_value = "NVIDIA-H200")]
    pub gpu_product: String,
    /// `nvidia.com/gpu.memory` label (MiB per GPU).
    #[arg(long, default_value_t = 143_771)]
    pub gpu_memory_mib: u64,
    /// Extra node label (repeatable).
    #[arg(long = "node-label", value_name = "KEY=VALUE")]
    pub node_labels: Vec<String>,
    /// Loopback range pod IPs come from; give each node of one machine its own.
    #[arg(long, default_value = "127.0.1.0/24", value_name = "CIDR")]
    pub pod_cidr: String,
    /// Pod directories and container logs (default: $TMPDIR/gpupool-kubelet/NODE).
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Run IMAGE with the executable PATH (repeatable); unmapped images run the executable named
    /// by the image's last path segment, found next to this binary.
    #[arg(long = "image-command", value_name = "IMAGE=PATH")]
    pub image_commands: Vec<String>,
    /// Also look for unmapped images' executables in DIR (repeatable, searched first).
    #[arg(long = "image-search-dir", value_name = "DIR")]
    pub image_search_dirs: Vec<PathBuf>,
    /// What to do with the Node on SIGTERM/SIGINT.
    #[arg(long, value_enum, default_value_t = OnExit::NotReady)]
    pub on_exit: OnExit,
    /// Period of the Ready heartbeat and the Lease renewal.
    #[arg(long, default_value = "10s", value_parser = duration)]
    pub heartbeat_interval: Duration,
    /// The Lease's duration.
    #[arg(long, default_value = "40s", value_parser = duration)]
    pub lease_duration: Duration,
    /// How often probes run (failure thresholds are scaled so failing takes as long as the
    /// probe's periodSeconds x failureThreshold).
    #[arg(long, default_value = "1s", value_parser = duration)]
    pub probe_period: Duration,
    /// First restart delay of an exited container (doubles per restart).
    #[arg(long, default_value = "1s", value_parser = duration)]
    pub restart_backoff: Duration,
    /// Largest restart delay.
    #[arg(long, default_value = "60s", value_parser = duration)]
    pub max_restart_backoff: Duration,
    /// Also set CUDA_VISIBLE_DEVICES to the pod's GPU indices (only right when the node's GPUs
    /// are real GPUs of this machine).
    #[arg(long)]
    pub set_cuda_visible_devices: bool,
    /// Back PersistentVolumeClaim CLAIM with the host directory DIR (repeatable); unmapped claims
    /// get a directory under the state dir.
    #[arg(long = "claim-dir", value_name = "CLAIM=DIR")]
    pub claim_dirs: Vec<String>,
}

fn duration(value: &str) -> Result<Duration> {
    parse_duration(value)
}

impl Args {
    /// The configuration these flags describe.
    pub fn config(&self) -> Result<Config> {
        let mut images = ImageCommands::default();
        for dir in self.image_search_dirs.iter().rev() {
            images = images.search_first(dir);
        }
        for spec in &self.image_commands {
            images = images.map_spec(spec)?;
        }
        let mut node_labels = std::collections::BTreeMap::new();
        for label in &self.node_labels {
            let (k, v) = parse_key_value("--node-label", label)?;
            node_labels.insert(k, v);
        }
        let mut claim_dirs = std::collections::BTreeMap::new();
        for mapping in &self.claim_dirs {
            let (claim, dir) = parse_key_value("--claim-dir", mapping)?;
            claim_dirs.insert(claim, PathBuf::from(dir));
        }
        let pod_cidr: PodCidr = self.pod_cidr.parse()?;
        Ok(Config {
            node_name: self.node_name.clone(),
            gpus: self.gpus,
            gpu_product: self.gpu_product.clone(),
            gpu_memory_mib: self.gpu_memory_mib,
            node_labels,
            pod_cidr,
            state_dir: self
                .state_dir
                .clone()
                .unwrap_or_else(|| default_state_dir(&self.node_name)),
            images,
            on_exit: self.on_exit,
            heartbeat_interval: self.heartbeat_interval,
            lease_duration: self.lease_duration,
            probe_period: self.probe_period,
            restart_backoff: self.restart_backoff,
            max_restart_backoff: self.max_restart_backoff,
            set_cuda_visible_devices: self.set_cuda_visible_devices,
            claim_dirs,
            ..Config::new(self.node_name.clone())
        })
    }

    /// A client from `--kubeconfig`, or inferred from the environment.
    pub async fn client(&self) -> Result<kube::Client> {
        let config = match &self.kubeconfig {
            Some(path) => {
                let kubeconfig = kube::config::Kubeconfig::read_from(path)
                    .map_err(|e| Error::Kubeconfig(Box::new(e)))?;
                kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
                    .await
                    .map_err(|e| Error::Kubeconfig(Box::new(e)))?
            }
            None => kube::Config::infer()
                .await
                .map_err(|e| Error::Kubeconfig(Box::new(e)))?,
        };
        kube::Client::try_from(config).map_err(|e| Error::kube("building a client", e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn flags_become_a_config() {
        let args = Args::try_parse_from([
            "gpupool-kubelet",
            "--node-name",
            "gpu-0",
            "--gpus",
            "2",
            "--image-command",
            "gpupool/sidecar=/bin/true",
            "--node-label",
            "pool=a",
            "--pod-cidr",
            "127.0.7.0/24",
            "--probe-period",
            "250ms",
            "--on-exit",
            "delete",
        ])
        .expect("parses");
        let config = args.config().expect("valid");
        assert_eq!(config.gpus, 2);
        assert_eq!(config.pod_cidr.to_string(), "127.0.7.0/24");
        assert_eq!(config.probe_period, Duration::from_millis(250));
        assert_eq!(config.on_exit, OnExit::Delete);
        assert_eq!(
            config.node_labels.get("pool").map(String::as_str),
            Some("a")
        );
        assert_eq!(
            config.images.resolve("gpupool/sidecar:1").ok(),
            Some("/bin/true".into())
        );
        assert!(config.state_dir.ends_with("gpupool-kubelet/gpu-0"));
    }

    #[test]
    fn bad_values_are_refused() {
        let parse = |extra: &[&str]| {
            let mut argv = vec!["gpupool-kubelet", "--node-name", "n"];
            argv.extend(extra);
            Args::try_parse_from(argv)
                .map_err(|e| e.to_string())
                .and_then(|a| a.config().map_err(|e| e.to_string()))
        };
        assert!(parse(&["--pod-cidr", "10.0.0.0/24"]).is_err());
        assert!(parse(&["--image-command", "nopath"]).is_err());
        assert!(parse(&["--probe-period", "soon"]).is_err());
        assert!(parse(&["--node-label", "x"]).is_err());
    }
}
