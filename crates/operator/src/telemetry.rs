//! Telemetry from the pool's pods: each ready pod's `GET /v1/telemetry` with a short timeout,
//! summarised for status, merged into measured profiles for the planner, and turned into the
//! samples the autoscaler ([`crate::autoscale`]) decides replicas from.

use crate::state::{CachedTelemetry, PoolKey, Registry};
use crate::status::TelemetryView;
use gpupool_api::telemetry::{ModelState, TelemetryReport, TELEMETRY_KIND};
use gpupool_api::TelemetrySummary;
use gpupool_planner::{MeasuredProfiles, PodSample};
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use std::time::{Duration, Instant};

/// Most pods asked at once.
const CONCURRENCY: usize = 16;
/// Most problems listed in the Degraded message.
const MAX_PROBLEMS: usize = 5;

/// Why one pod's telemetry could not be read.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// The HTTP client could not be built.
    #[error("building the telemetry HTTP client failed")]
    Client(#[source] reqwest::Error),
    /// The request failed or timed out.
    #[error("GET {url} failed")]
    Request {
        /// The URL asked.
        url: String,
        /// Why.
        #[source]
        source: reqwest::Error,
    },
    /// The pod answered something that is not a telemetry document.
    #[error("{url} answered a {kind:?} document, not {TELEMETRY_KIND}")]
    WrongKind {
        /// The URL asked.
        url: String,
        /// The kind it answered.
        kind: String,
    },
}

/// A pod that is ready and has an IP, with the port its sidecar serves on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadyPod {
    /// Pod name.
    pub name: String,
    /// Pod IP.
    pub ip: String,
    /// HTTP port of the sidecar.
    pub port: u16,
}

/// The pods among `pods` that are Running, Ready, not being deleted and have an IP.
pub fn ready_pods(pods: &[Pod], default_port: u16) -> Vec<ReadyPod> {
    pods.iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter_map(|p| {
            let status = p.status.as_ref()?;
            let ready = status.phase.as_deref() == Some("Running")
                && status
                    .conditions
                    .iter()
                    .flatten()
                    .any(|c| c.type_ == "Ready" && c.status == "True");
            let ip = status.pod_ip.clone().filter(|ip| !ip.is_empty())?;
            let port = http_port(p).unwrap_or(default_port);
            ready.then(|| ReadyPod {
                name: p.name_any(),
                ip,
                port,
            })
        })
        .collect()
}

fn http_port(pod: &Pod) -> Option<u16> {
    pod.spec
        .as_ref()?
        .containers
        .iter()
        .flat_map(|c| c.ports.iter().flatten())
        .find(|p| p.name.as_deref() == Some(crate::resources::HTTP_PORT_NAME))
        .and_then(|p| u16::try_from(p.container_port).ok())
}

/// Asks pods for their telemetry.
#[derive(Debug, Clone)]
pub struct Collector {
    http: reqwest::Client,
}

/// What one collection got.
#[derive(Debug, Clone, Default)]
pub struct Collection {
    /// Reports by pod name.
    pub reports: Vec<(String, TelemetryReport)>,
    /// Ready pods that did not answer.
    pub failed: Vec<String>,
}

impl Collector {
    /// A collector whose requests give up after `timeout`.
    pub fn new(timeout: Duration) -> Result<Self, TelemetryError> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .no_proxy()
            .build()
            .map_err(TelemetryError::Client)?;
        Ok(Self { http })
    }

    /// Collects from every pod in `pods`, a bounded number at a time; failures are logged.
    pub async fn collect(&self, pods: &[ReadyPod]) -> Collection {
        use futures::StreamExt;
        // Owned pods and client per request keep the future free of borrowed lifetimes (Send).
        let answers: Vec<_> = futures::stream::iter(pods.to_vec())
            .map(|pod| {
                let this = self.clone();
                async move {
                    let answer = this.fetch(&pod).await;
                    (pod.name, answer)
                }
            })
            .buffer_unordered(CONCURRENCY)
            .collect()
            .await;
        let mut collection = Collection::default();
        for (name, answer) in answers {
            match answer {
                Ok(report) => collection.reports.push((name, report)),
                Err(e) => {
                    tracing::warn!(pod = %name, error = %crate::error::chain(&e), "no telemetry from pod");
                    collection.failed.push(name);
                }
            }
        }
        collection.reports.sort_by(|a, b| a.0.cmp(&b.0));
        collection.failed.sort();
        collection
    }

    async fn fetch(&self, pod: &ReadyPod) -> Result<TelemetryReport, TelemetryError> {
        let host = if pod.ip.contains(':') {
            format!("[{}]", pod.ip)
        } else {
            pod.ip.clone()
        };
        let url = format!("http://{host}:{}/v1/telemetry", pod.port);
        let request = |source| TelemetryError::Request {
            url: url.clone(),
            source,
        };
        let report: TelemetryReport = self
            .http
            .get(&url)
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(request)?
            .json()
            .await
            .map_err(request)?;
        if report.kind != TELEMETRY_KIND {
            return Err(TelemetryError::WrongKind {
                url,
                kind: report.kind,
            });
        }
        Ok(report)
    }
}

/// Summarises a collection for status at time `now` (RFC 3339).
pub fn summarise(collection: &Collection, now: &str) -> TelemetryView {
    let reports = || collection.reports.iter().map(|(_, r)| r);
    let models = || reports().flat_map(|r| &r.models);
    let summary = TelemetrySummary {
        pods_reporting: u32::try_from(collection.reports.len()).unwrap_or(u32::MAX),
        max_memory_used_fraction: reports()
            .map(TelemetryReport::memory_in_use_fraction)
            .fold(0.0, f64::max),
        max_reserved_bytes: reports()
            .map(|r| r.allocator.reserved_bytes)
            .max()
            .unwrap_or(0),
        queue_depth: models().fold(0u32, |n, m| n.saturating_add(m.queue_depth)),
        images_per_second: models().map(|m| m.images_per_second).sum(),
        rejected_total: models().fold(0u64, |n, m| n.saturating_add(m.rejected_total)),
        oom_events_total: models().fold(0u64, |n, m| n.saturating_add(m.oom_events_total)),
        collected_at: now.to_string(),
    };
    let mut problems = Vec::new();
    for (pod, report) in &collection.reports {
        if report.circuit_open {
            problems.push(format!(
                "pod {pod}: memory above rejectAbove, refusing new work"
            ));
        }
        for m in report
            .models
            .iter()
            .filter(|m| m.state == ModelState::Failed)
        {
            let why = m.reason.as_deref().unwrap_or("no reason given");
            problems.push(format!("pod {pod}: model {} failed: {why}", m.name));
        }
    }
    if !collection.failed.is_empty() {
        problems.push(format!(
            "{} ready pod(s) did not answer telemetry ({})",
            collection.failed.len(),
            collection.failed.join(", ")
        ));
    }
    if problems.len() > MAX_PROBLEMS {
        let more = problems.len() - MAX_PROBLEMS;
        problems.truncate(MAX_PROBLEMS);
        problems.push(format!("and {more} more"));
    }
    TelemetryView {
        summary,
        max_device_used_bytes: reports()
            .filter_map(|r| r.device.as_ref().map(|d| d.used_bytes))
            .max(),
        problems,
    }
}

/// Telemetry as one reconcile uses it.
#[derive(Debug, Clone)]
pub struct Telemetry {
    /// The summary for status.
    pub view: TelemetryView,
    /// The planner's view of each report.
    pub samples: Vec<PodSample>,
    /// Collected in this reconcile (not taken from the cache).
    pub fresh: bool,
    /// Ready pods that did not answer this collection (0 when cached).
    pub failed: usize,
}

impl Collector {
    /// The latest telemetry of the `ready` pods: collected when the last collection is older
    /// than `interval` or the set of ready pods changed, otherwise the cached one. Fresh reports
    /// also replace the pool's measured profiles. `None` (and the cache cleared) when no pod is
    /// ready.
    pub async fn latest(
        &self,
        memory: &Registry,
        key: &PoolKey,
        ready: &[ReadyPod],
        interval: Duration,
    ) -> Option<Telemetry> {
        let names: Vec<String> = ready.iter().map(|p| p.name.clone()).collect();
        if ready.is_empty() {
            memory.with(key, |m| m.telemetry = None);
            return None;
        }
        let (cached, previous) = memory.with(key, |m| {
            let cached = m
                .telemetry
                .as_ref()
                .filter(|t| t.pods == names && t.at.elapsed() < interval);
            let previous = m
                .telemetry
                .as_ref()
                .map(|t| t.reports.clone())
                .unwrap_or_default();
            let cached = cached.map(|t| Telemetry {
                view: t.view.clone(),
                samples: t.samples.clone(),
                fresh: false,
                failed: 0,
            });
            (cached, previous)
        });
        if cached.is_some() {
            return cached;
        }
        let collection = self.collect(ready).await;
        let view = summarise(&collection, &crate::status::now_rfc3339());
        let samples = crate::autoscale::samples(&collection, &previous);
        let failed = collection.failed.len();
        memory.with(key, |m| {
            if !collection.reports.is_empty() {
                let reports: Vec<_> = collection.reports.iter().map(|(_, r)| r.clone()).collect();
                m.measured = Some(MeasuredProfiles::from_reports(&reports));
            }
            m.telemetry = Some(CachedTelemetry {
                at: Instant::now(),
                pods: names,
                view: view.clone(),
                reports: collection.reports,
                samples: samples.clone(),
            });
        });
        Some(Telemetry {
            view,
            samples,
            fresh: true,
            failed,
        })
    }
}

#[cfg(test)]
#[path = "telemetry_tests.rs"]
mod tests;
