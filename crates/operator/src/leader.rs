//! Leader election on a `coordination.k8s.io/v1` Lease, written against the Lease API directly.
//!
//! Every replica tries to acquire or renew the Lease each retry period. Updates carry the
//! resourceVersion that was read, so two replicas never both win: the API server refuses the
//! second with 409 Conflict. A standby measures expiry on its own clock, from when it first saw
//! the Lease's current version (as client-go does), so clock skew between hosts cannot make it
//! take over early; a Lease with no holder (released on shutdown) is taken at once.
//!
//! The leader gives up when it has not renewed within the renew deadline, which is shorter than
//! the lease duration, so it stops before any standby may take over. The caller then exits
//! non-zero and its Deployment restarts it as a standby: no half-stopped controller lingers.

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::PostParams;
use kube::{Api, Client};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Where the Lease is, who we are, and the timings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseConfig {
    /// Lease name.
    pub name: String,
    /// Lease namespace.
    pub namespace: String,
    /// This process's identity (`holderIdentity`).
    pub identity: String,
    /// How long the Lease holds without renewal.
    pub lease_duration: Duration,
    /// How long the leader tries to renew before giving up.
    pub renew_deadline: Duration,
    /// Pause between attempts.
    pub retry_period: Duration,
}

/// Why one attempt on the Lease failed.
#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    /// Reading the Lease failed.
    #[error("reading lease {0} failed")]
    Get(String, #[source] kube::Error),
    /// Creating the Lease failed.
    #[error("creating lease {0} failed")]
    Create(String, #[source] kube::Error),
    /// Updating the Lease failed (other than a lost race).
    #[error("updating lease {0} failed")]
    Update(String, #[source] kube::Error),
    /// The attempt took longer than allowed.
    #[error("the attempt on lease {0} timed out")]
    Timeout(String),
}

/// How holding the Lease ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeadershipEnd {
    /// Shutdown was requested.
    Cancelled,
    /// Leadership was lost; the process must stop reconciling.
    Lost(String),
}

/// Acquires and holds the Lease.
#[derive(Debug)]
pub struct LeaderElector {
    api: Api<Lease>,
    config: LeaseConfig,
    /// The Lease version last seen and when this process first saw it.
    observed: Option<(String, Instant)>,
}

impl LeaderElector {
    /// An elector for `config`'s Lease.
    pub fn new(client: Client, config: LeaseConfig) -> Self {
        Self {
            api: Api::namespaced(client, &config.namespace),
            config,
            observed: None,
        }
    }

    /// This process's identity.
    pub fn identity(&self) -> &str {
        &self.config.identity
    }

    /// Waits until this process holds the Lease; `false` if cancelled first.
    pub async fn acquire(&mut self, cancel: &CancellationToken) -> bool {
        let mut last_holder: Option<String> = None;
        loop {
            match self.attempt(self.config.renew_deadline).await {
                Ok(Attempt::Held) => {
                    tracing::info!(lease = %self.config.name, identity = %self.config.identity, "acquired leadership");
                    return true;
                }
                Ok(Attempt::Raced) => tracing::debug!("lost a race for the lease"),
                Ok(Attempt::HeldBy(holder)) => {
                    if last_holder.as_ref() != Some(&holder) {
                        tracing::info!(lease = %self.config.name, %holder, "standing by: another process leads");
                        last_holder = Some(holder);
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %crate::error::chain(&e), "leader election attempt failed")
                }
            }
            tokio::select! {
                () = cancel.cancelled() => return false,
                () = tokio::time::sleep(self.config.retry_period) => {}
            }
        }
    }

    /// Renews the Lease until shutdown or until leadership is lost.
    pub async fn hold(&mut self, cancel: &CancellationToken) -> LeadershipEnd {
        let mut renewed = Instant::now();
        loop {
            tokio::select! {
                () = cancel.cancelled() => return LeadershipEnd::Cancelled,
                () = tokio::time::sleep(self.config.retry_period) => {}
            }
            // An attempt may only use what is left of the renew deadline: a hung request must
            // not keep this process reconciling after a standby may have taken over.
            let left = self.config.renew_deadline.saturating_sub(renewed.elapsed());
            match self.attempt(left).await {
                Ok(Attempt::Held) => renewed = Instant::now(),
                // Not renewed this round; the next read shows whether someone took over.
                Ok(Attempt::Raced) => tracing::warn!("the lease changed under the leader"),
                Ok(Attempt::HeldBy(holder)) => {
                    return LeadershipEnd::Lost(format!("lease taken over by {holder}"));
                }
                Err(e) => {
                    tracing::warn!(error = %crate::error::chain(&e), "renewing the lease failed");
                }
            }
            if renewed.elapsed() >= self.config.renew_deadline {
                return LeadershipEnd::Lost(format!(
                    "lease not renewed within the renew deadline ({:?})",
                    self.config.renew_deadline
                ));
            }
        }
    }

    /// Gives the Lease up (on graceful shutdown) so a standby takes over without waiting.
    pub async fn release(&mut self) {
        let result = async {
            let Some(mut lease) = self.get().await? else {
                return Ok(());
            };
            let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
            if spec.holder_identity.as_deref() != Some(self.config.identity.as_str()) {
                return Ok(());
            }
            spec.holder_identity = None;
            spec.lease_duration_seconds = Some(1);
            spec.renew_time = Some(MicroTime(Timestamp::now()));
            self.api
                .replace(&self.config.name, &PostParams::default(), &lease)
                .await
                .map_err(|e| LeaderError::Update(self.config.name.clone(), e))?;
            Ok::<(), LeaderError>(())
        };
        match tokio::time::timeout(self.config.retry_period, result).await {
            Ok(Ok(())) => tracing::info!(lease = %self.config.name, "released leadership"),
            Ok(Err(e)) => {
                tracing::warn!(error = %crate::error::chain(&e), "releasing the lease failed")
            }
            Err(_) => tracing::warn!("releasing the lease timed out"),
        }
    }

    async fn get(&self) -> Result<Option<Lease>, LeaderError> {
        self.api
            .get_opt(&self.config.name)
            .await
            .map_err(|e| LeaderError::Get(self.config.name.clone(), e))
    }

    /// One try to acquire or renew, bounded by `budget`.
    async fn attempt(&mut self, budget: Duration) -> Result<Attempt, LeaderError> {
        match tokio::time::timeout(budget, self.try_acquire_or_renew()).await {
            Ok(result) => result,
            Err(_) => Err(LeaderError::Timeout(self.config.name.clone())),
        }
    }

    async fn try_acquire_or_renew(&mut self) -> Result<Attempt, LeaderError> {
        let now = MicroTime(Timestamp::now());
        let Some(mut lease) = self.get().await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.config.name.clone()),
                    namespace: Some(self.config.namespace.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(self.spec(None, now, 0)),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(Attempt::Held),
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(Attempt::Raced),
                Err(e) => Err(LeaderError::Create(self.config.name.clone(), e)),
            };
        };
        let version = lease.metadata.resource_version.clone().unwrap_or_default();
        let first_seen = match &self.observed {
            Some((seen, at)) if *seen == version => *at,
            _ => {
                let at = Instant::now();
                self.observed = Some((version, at));
                at
            }
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
        let ours = holder.as_deref() == Some(self.config.identity.as_str());
        if let Some(holder) = holder.as_ref().filter(|_| !ours) {
            let duration = spec
                .lease_duration_seconds
                .and_then(|s| u64::try_from(s).ok())
                .map_or(self.config.lease_duration, Duration::from_secs);
            if first_seen.elapsed() < duration {
                return Ok(Attempt::HeldBy(holder.clone()));
            }
            tracing::info!(%holder, "the leader's lease expired; taking over");
        }
        let transitions =
            spec.lease_transitions.unwrap_or(0) + i32::from(!ours && holder.is_some());
        let acquired = if ours {
            spec.acquire_time.clone()
        } else {
            Some(now.clone())
        };
        lease.spec = Some(self.spec(acquired, now, transitions));
        // `replace` sends the resourceVersion read above: a concurrent writer makes this a 409.
        match self
            .api
            .replace(&self.config.name, &PostParams::default(), &lease)
            .await
        {
            Ok(updated) => {
                if let Some(v) = updated.metadata.resource_version {
                    self.observed = Some((v, Instant::now()));
                }
                Ok(Attempt::Held)
            }
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(Attempt::Raced),
            Err(e) => Err(LeaderError::Update(self.config.name.clone(), e)),
        }
    }

    fn spec(&self, acquire_time: Option<MicroTime>, now: MicroTime, transitions: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(self.config.identity.clone()),
            lease_duration_seconds: i32::try_from(self.config.lease_duration.as_secs()).ok(),
            acquire_time: acquire_time.or_else(|| Some(now.clone())),
            renew_time: Some(now),
            lease_transitions: Some(transitions),
            ..LeaseSpec::default()
        }
    }
}

/// The outcome of one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Attempt {
    /// This process holds the Lease (acquired or renewed).
    Held,
    /// Another process holds it.
    HeldBy(String),
    /// Someone else wrote the Lease between our read and our write; the next read says who.
    Raced,
}
