//! Container probes as the kubelet runs them: HTTP GET (2xx and 3xx succeed) and TCP connect,
//! with thresholds; plus the small HTTP/1.0 client they use, which tests can use too.

use k8s_openapi::api::core::v1::{Container, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A response of [`http_get`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpResponse {
    /// The status code.
    pub status: u16,
    /// The body as text (lossy UTF-8, at most 1 MiB).
    pub body: String,
}

/// `GET path` over HTTP/1.0 (so the body is never chunked) with `headers`, within `timeout`.
pub async fn http_get(
    addr: SocketAddr,
    path: &str,
    headers: &[(String, String)],
    timeout: Duration,
) -> std::io::Result<HttpResponse> {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await?;
        let mut request = format!(
            "GET {path} HTTP/1.0\r\nHost: {addr}\r\nUser-Agent: kube-probe/gpupool-kubelet\r\nAccept: */*\r\n"
        );
        for (name, value) in headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        request.push_str("\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut raw = Vec::new();
        stream.take(1 << 20).read_to_end(&mut raw).await?;
        parse_response(&raw)
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))?
}

fn parse_response(raw: &[u8]) -> std::io::Result<HttpResponse> {
    let text = String::from_utf8_lossy(raw);
    let bad = || std::io::Error::new(std::io::ErrorKind::InvalidData, "not an HTTP response");
    let status_line = text.lines().next().ok_or_else(bad)?;
    let mut parts = status_line.split_whitespace();
    let (Some(version), Some(code)) = (parts.next(), parts.next()) else {
        return Err(bad());
    };
    if !version.starts_with("HTTP/") {
        return Err(bad());
    }
    let status = code.parse().map_err(|_| bad())?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b)
        .unwrap_or_default();
    Ok(HttpResponse {
        status,
        body: body.to_string(),
    })
}

/// What a probe checks, resolved against the pod's address and the container's ports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check {
    /// `GET path` on `addr`; 200–399 succeeds.
    Http {
        /// Where to connect.
        addr: SocketAddr,
        /// Request path.
        path: String,
        /// Extra headers.
        headers: Vec<(String, String)>,
    },
    /// A TCP connection to `addr` succeeds.
    Tcp {
        /// Where to connect.
        addr: SocketAddr,
    },
    /// A probe kind the stand-in cannot run (exec, gRPC, HTTPS); counted as success.
    Unsupported(&'static str),
}

/// Resolves `probe` for `container` running at `pod_ip`.
pub fn check(probe: &Probe, container: &Container, pod_ip: IpAddr) -> Check {
    let port = |p: &IntOrString| -> Option<u16> {
        match p {
            IntOrString::Int(n) => u16::try_from(*n).ok(),
            IntOrString::String(name) => container
                .ports
                .iter()
                .flatten()
                .find(|cp| cp.name.as_deref() == Some(name.as_str()))
                .and_then(|cp| u16::try_from(cp.container_port).ok()),
        }
    };
    if let Some(http) = &probe.http_get {
        if http
            .scheme
            .as_deref()
            .is_some_and(|s| s.eq_ignore_ascii_case("https"))
        {
            return Check::Unsupported("https");
        }
        let host = http
            .host
            .as_deref()
            .and_then(|h| h.parse().ok())
            .unwrap_or(pod_ip);
        let Some(port) = port(&http.port) else {
            return Check::Unsupported("unresolvable port");
        };
        let headers = http.http_headers.iter().flatten();
        return Check::Http {
            addr: SocketAddr::new(host, port),
            path: http.path.clone().unwrap_or_else(|| "/".into()),
            headers: headers.map(|h| (h.name.clone(), h.value.clone())).collect(),
        };
    }
    if let Some(tcp) = &probe.tcp_socket {
        let host = tcp
            .host
            .as_deref()
            .and_then(|h| h.parse().ok())
            .unwrap_or(pod_ip);
        return match port(&tcp.port) {
            Some(port) => Check::Tcp {
                addr: SocketAddr::new(host, port),
            },
            None => Check::Unsupported("unresolvable port"),
        };
    }
    if probe.grpc.is_some() {
        Check::Unsupported("grpc")
    } else {
        Check::Unsupported("exec")
    }
}

/// Runs `check` once; `timeout` bounds it.
pub async fn run(check: &Check, timeout: Duration) -> bool {
    match check {
        Check::Http {
            addr,
            path,
            headers,
        } => http_get(*addr, path, headers, timeout)
            .await
            .is_ok_and(|r| (200..400).contains(&r.status)),
        Check::Tcp { addr } => tokio::time::timeout(timeout, TcpStream::connect(addr))
            .await
            .is_ok_and(|r| r.is_ok()),
        Check::Unsupported(_) => true,
    }
}

/// Consecutive results of one probe and the verdict they add up to.
#[derive(Debug, Clone)]
pub struct ProbeState {
    success_threshold: u32,
    failure_threshold: u32,
    initial_delay: Duration,
    successes: u32,
    failures: u32,
    /// The current verdict.
    pub passing: bool,
}

impl ProbeState {
    /// A probe's state before its first run, when it runs every `period`; `passing` starts as
    /// `initially`. The failure threshold is scaled by `periodSeconds / period` so that failing
    /// takes as long as the spec says.
    pub fn new(probe: &Probe, period: Duration, initially: bool) -> Self {
        let positive = |v: Option<i32>, default: u32| {
            v.and_then(|v| u32::try_from(v).ok())
                .filter(|v| *v > 0)
                .unwrap_or(default)
        };
        let spec_period = Duration::from_secs(positive(probe.period_seconds, 10).into());
        let runs_per_period = spec_period.as_secs_f64() / period.as_secs_f64().max(0.001);
        let scale = (runs_per_period.ceil() as u32).max(1);
        Self {
            success_threshold: positive(probe.success_threshold, 1),
            failure_threshold: positive(probe.failure_threshold, 3).saturating_mul(scale),
            initial_delay: Duration::from_secs(positive(probe.initial_delay_seconds, 0).into()),
            successes: 0,
            failures: 0,
            passing: initially,
        }
    }

    /// Whether the probe is due, `since_start` after the container started.
    pub fn due(&self, since_start: Duration) -> bool {
        since_start >= self.initial_delay
    }

    /// Whether the last `failureThreshold` results all failed.
    pub fn failed_out(&self) -> bool {
        self.failures >= self.failure_threshold
    }

    /// Records one result; returns the new verdict if it changed.
    pub fn record(&mut self, success: bool) -> Option<bool> {
        if success {
            self.successes += 1;
            self.failures = 0;
        } else {
            self.failures += 1;
            self.successes = 0;
        }
        let verdict = if self.successes >= self.success_threshold {
            true
        } else if self.failures >= self.failure_threshold {
            false
        } else {
            self.passing
        };
        (verdict != self.passing).then(|| {
            self.passing = verdict;
            verdict
        })
    }
}

/// The per-attempt timeout of a probe (`timeoutSeconds`, default 1 s).
pub fn timeout(probe: &Probe) -> Duration {
    let secs = probe.timeout_seconds.and_then(|s| u64::try_from(s).ok());
    Duration::from_secs(secs.filter(|s| *s > 0).unwrap_or(1))
}

/// A probe of the running container with its state.
pub(crate) struct Probing {
    check: Check,
    timeout: Duration,
    /// Consecutive results and the verdict.
    pub(crate) state: ProbeState,
}

impl Probing {
    pub(crate) fn new(
        probe: &Option<Probe>,
        container: &Container,
        ip: Ipv4Addr,
        period: Duration,
        initially: bool,
    ) -> Option<Self> {
        probe.as_ref().map(|p| Probing {
            check: check(p, container, IpAddr::V4(ip)),
            timeout: timeout(p),
            state: ProbeState::new(p, period, initially),
        })
    }

    /// Runs the probe if due; returns the verdict change, if any.
    pub(crate) async fn run(&mut self, since_start: Duration) -> Option<bool> {
        if !self.state.due(since_start) {
            return None;
        }
        let ok = run(&self.check, self.timeout).await;
        self.state.record(ok)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{ContainerPort, HTTPGetAction};

    #[test]
    fn thresholds_decide_flips() {
        let probe = Probe {
            failure_threshold: Some(2),
            success_threshold: Some(1),
            period_seconds: Some(1),
            ..Probe::default()
        };
        let mut state = ProbeState::new(&probe, Duration::from_secs(1), false);
        assert_eq!(state.record(true), Some(true));
        assert_eq!(state.record(false), None);
        assert_eq!(state.record(true), None);
        assert_eq!(state.record(false), None);
        assert_eq!(state.record(false), Some(false));
    }

    #[test]
    fn failing_takes_as_long_as_the_spec_says_at_a_faster_period() {
        let probe = Probe {
            failure_threshold: Some(3),
            period_seconds: Some(10),
            ..Probe::default()
        };
        let mut state = ProbeState::new(&probe, Duration::from_secs(1), true);
        for _ in 0..29 {
            assert_eq!(state.record(false), None);
        }
        assert_eq!(state.record(false), Some(false));
        assert_eq!(
            state.record(true),
            Some(true),
            "one success is seen at once"
        );
    }

    #[test]
    fn named_ports_and_pod_ip_resolve() {
        let container = Container {
            name: "c".into(),
            ports: Some(vec![ContainerPort {
                name: Some("http".into()),
                container_port: 8080,
                ..ContainerPort::default()
            }]),
            ..Container::default()
        };
        let probe = Probe {
            http_get: Some(HTTPGetAction {
                path: Some("/readyz".into()),
                port: IntOrString::String("http".into()),
                ..HTTPGetAction::default()
            }),
            ..Probe::default()
        };
        let ip: IpAddr = [127, 0, 1, 4].into();
        assert_eq!(
            check(&probe, &container, ip),
            Check::Http {
                addr: SocketAddr::new(ip, 8080),
                path: "/readyz".into(),
                headers: vec![]
            }
        );
    }

    #[test]
    fn responses_parse() {
        let r = parse_response(b"HTTP/1.0 503 Service Unavailable\r\nA: b\r\n\r\nnope")
            .expect("parses");
        assert_eq!((r.status, r.body.as_str()), (503, "nope"));
        assert!(parse_response(b"garbage").is_err());
    }
}
