//! The operator's command line and environment, parsed and checked before any port is bound.

use clap::{Parser, ValueEnum};
use std::net::SocketAddr;
use std::time::Duration;

/// Sidecar image used when a pool does not name one (`spec.pod.image`).
pub const DEFAULT_SIDECAR_IMAGE: &str =
    concat!("ghcr.io/gpupool/sidecar:", env!("CARGO_PKG_VERSION"));

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// One JSON object per line (for log collectors).
    Json,
    /// Human-readable text.
    Text,
}

/// Command line of `gpupool-operator`; every flag can also come from the environment, and a flag
/// given twice takes the last value.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "gpupool-operator",
    version,
    about = "Runs InferencePools on GPU nodes",
    args_override_self = true
)]
pub struct Args {
    /// Watch only this namespace (all namespaces when absent).
    #[arg(long, env = "GPUPOOL_WATCH_NAMESPACE")]
    pub namespace: Option<String>,

    /// Sidecar image for pools that do not set `spec.pod.image`.
    #[arg(long, env = "GPUPOOL_SIDECAR_IMAGE", default_value = DEFAULT_SIDECAR_IMAGE)]
    pub sidecar_image: String,

    /// Address of the HTTP server (/metrics, /healthz, /readyz); port 0 picks a free one.
    #[arg(long, env = "GPUPOOL_HTTP_ADDR", default_value = "0.0.0.0:8080")]
    pub http_addr: SocketAddr,

    /// Elect a leader through a Lease so that only one replica reconciles.
    #[arg(long, env = "GPUPOOL_LEADER_ELECT", default_value_t = true, action = clap::ArgAction::Set)]
    pub leader_elect: bool,

    /// Name of the coordination.k8s.io/v1 Lease used for leader election.
    #[arg(long, env = "GPUPOOL_LEASE_NAME", default_value = "gpupool-operator")]
    pub lease_name: String,

    /// Namespace of the Lease (the operator's own namespace in a cluster).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    pub lease_namespace: String,

    /// This replica's identity in the Lease (defaults to the host name and process id).
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,

    /// How long a Lease holds without renewal before a standby may take it (e.g. "15s").
    #[arg(long, env = "GPUPOOL_LEASE_DURATION", default_value = "15s", value_parser = parse_duration)]
    pub lease_duration: Duration,

    /// How long the leader keeps trying to renew before it gives up leadership and exits.
    #[arg(long, env = "GPUPOOL_RENEW_DEADLINE", default_value = "10s", value_parser = parse_duration)]
    pub renew_deadline: Duration,

    /// Pause between attempts to acquire or renew the Lease.
    #[arg(long, env = "GPUPOOL_RETRY_PERIOD", default_value = "2s", value_parser = parse_duration)]
    pub retry_period: Duration,

    /// How often ready pods' telemetry is collected.
    #[arg(long, env = "GPUPOOL_TELEMETRY_INTERVAL", default_value = "15s", value_parser = parse_duration)]
    pub telemetry_interval: Duration,

    /// Time allowed for one pod's telemetry answer.
    #[arg(long, env = "GPUPOOL_TELEMETRY_TIMEOUT", default_value = "2s", value_parser = parse_duration)]
    pub telemetry_timeout: Duration,

    /// Port the sidecars serve HTTP (and /v1/telemetry) on.
    #[arg(long, env = "GPUPOOL_SIDECAR_PORT", default_value_t = 8080)]
    pub sidecar_port: u16,

    /// Log line format.
    #[arg(long, env = "GPUPOOL_LOG_FORMAT", value_enum, default_value = "json")]
    pub log_format: LogFormat,
}

impl Args {
    /// Checks relations between flags that clap cannot express; the message names the flags.
    pub fn validate(&self) -> Result<(), String> {
        if self.sidecar_image.trim().is_empty() {
            return Err("--sidecar-image must not be empty".into());
        }
        if self.namespace.as_deref() == Some("") {
            return Err(
                "--namespace must not be empty (leave it out to watch all namespaces)".into(),
            );
        }
        if self.leader_elect {
            if self.lease_name.is_empty() || self.lease_namespace.is_empty() {
                return Err("--lease-name and --lease-namespace must not be empty".into());
            }
            if self.lease_duration < Duration::from_secs(1) {
                return Err("--lease-duration must be at least 1s".into());
            }
            if self.lease_duration.subsec_nanos() != 0 {
                return Err(
                    "--lease-duration must be whole seconds (a Lease counts seconds)".into(),
                );
            }
            if self.renew_deadline >= self.lease_duration {
                return Err("--renew-deadline must be shorter than --lease-duration".into());
            }
            if self.retry_period.is_zero() || self.retry_period >= self.renew_deadline {
                return Err(
                    "--retry-period must be above zero and shorter than --renew-deadline".into(),
                );
            }
        }
        if self.telemetry_interval < Duration::from_secs(1) {
            return Err("--telemetry-interval must be at least 1s".into());
        }
        if self.telemetry_timeout.is_zero() || self.telemetry_timeout >= self.telemetry_interval {
            return Err(
                "--telemetry-timeout must be above zero and shorter than --telemetry-interval"
                    .into(),
            );
        }
        if self.sidecar_port == 0 {
            return Err("--sidecar-port must not be 0".into());
        }
        Ok(())
    }

    /// The identity to hold the Lease under: `--identity`, or host name and process id.
    pub fn identity(&self) -> String {
        match &self.identity {
            Some(id) if !id.is_empty() => id.clone(),
            _ => {
                let host = std::env::var("HOSTNAME")
                    .ok()
                    .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
                    .map(|h| h.trim().to_string())
                    .filter(|h| !h.is_empty())
                    .unwrap_or_else(|| "gpupool-operator".into());
                format!("{host}-{}", std::process::id())
            }
        }
    }
}

/// Reads a duration: a number with a unit (`ms`, `s`, `m`, `h`), or plain seconds ("15", "1.5").
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration (e.g. \"500ms\", \"15s\", \"2m\")"))?;
    let seconds = match unit {
        "ms" => value / 1000.0,
        "" | "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        other => return Err(format!("unknown duration unit {other:?} in {text:?}")),
    };
    if !seconds.is_finite() || !(0.0..=1e9).contains(&seconds) {
        return Err(format!("{text:?} is out of range"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(extra: &[&str]) -> Args {
        let mut argv = vec!["gpupool-operator"];
        argv.extend_from_slice(extra);
        Args::try_parse_from(argv).expect("parses")
    }

    #[test]
    fn durations_take_units() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("15s"), Ok(Duration::from_secs(15)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("fast").is_err());
        assert!(parse_duration("3d").is_err());
    }

    #[test]
    fn defaults_are_valid() {
        assert_eq!(args(&[]).validate(), Ok(()));
    }

    #[test]
    fn lease_timings_must_nest() {
        let bad = args(&["--lease-duration", "5s", "--renew-deadline", "6s"]);
        assert!(bad
            .validate()
            .expect_err("invalid")
            .contains("--renew-deadline"));
        let bad = args(&[
            "--lease-duration",
            "5s",
            "--renew-deadline",
            "3s",
            "--retry-period",
            "3s",
        ]);
        assert!(bad
            .validate()
            .expect_err("invalid")
            .contains("--retry-period"));
        let ok = args(&[
            "--lease-duration",
            "5s",
            "--renew-deadline",
            "3s",
            "--retry-period",
            "1s",
        ]);
        assert_eq!(ok.validate(), Ok(()));
        let fractional = args(&["--lease-duration", "5.5s"]);
        assert!(fractional.validate().is_err());
    }
}
