//! What the API server serves, asked through discovery, and fallbacks for older servers.
//!
//! PodDisruptionBudget is `policy/v1` from Kubernetes 1.21 and only `policy/v1beta1` before
//! (1.20 is what the local test control plane runs), while k8s-openapi carries only the v1 type.
//! The PDB is built as v1 and, on an older server, applied as an untyped object of the same shape
//! under `policy/v1beta1`. A PDB is a safety net, not the service: if neither version is served,
//! or applying it fails, the pool goes on without one and a warning is logged.

use crate::resources::FIELD_MANAGER;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{ApiResource, DynamicObject, Patch, PatchParams};
use kube::{Api, Client, ResourceExt};
use tokio::sync::OnceCell;

/// The PodDisruptionBudget API the server serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PdbApi {
    /// `policy/v1` (Kubernetes 1.21 and later).
    V1,
    /// `policy/v1beta1` only (Kubernetes 1.20 and earlier).
    V1beta1,
    /// Neither: the pool runs without a PDB.
    Unavailable,
}

/// Discovery results, asked once per process and shared by reconciles.
#[derive(Debug, Default)]
pub struct Compat {
    pdb: OnceCell<PdbApi>,
}

/// Why a PDB was not applied (never fatal for the pool).
#[derive(Debug, thiserror::Error)]
pub enum CompatError {
    /// Discovery of the policy group failed (retried on the next reconcile).
    #[error("discovering the policy API group failed")]
    Discovery(#[source] kube::Error),
    /// The apply itself failed.
    #[error("applying the PodDisruptionBudget as {api_version} failed")]
    Apply {
        /// The API version used.
        api_version: &'static str,
        /// What the API server said.
        #[source]
        source: kube::Error,
    },
    /// The PDB could not be turned into an untyped object.
    #[error("converting the PodDisruptionBudget failed")]
    Convert(#[source] serde_json::Error),
}

impl Compat {
    /// The PDB API, asking discovery the first time (a failed discovery is asked again later).
    pub async fn pdb_api(&self, client: &Client) -> Result<PdbApi, CompatError> {
        self.pdb
            .get_or_try_init(|| discover_pdb(client))
            .await
            .copied()
    }

    /// Applies `pdb` (built as v1) under whichever version the server serves.
    pub async fn apply_pdb(
        &self,
        client: &Client,
        pdb: &PodDisruptionBudget,
    ) -> Result<PdbApi, CompatError> {
        let api = self.pdb_api(client).await?;
        let namespace = pdb.namespace().unwrap_or_default();
        let name = pdb.name_any();
        let params = PatchParams::apply(FIELD_MANAGER).force();
        match api {
            PdbApi::V1 => {
                Api::<PodDisruptionBudget>::namespaced(client.clone(), &namespace)
                    .patch(&name, &params, &Patch::Apply(pdb))
                    .await
                    .map_err(|source| CompatError::Apply {
                        api_version: "policy/v1",
                        source,
                    })?;
            }
            PdbApi::V1beta1 => {
                let resource = v1beta1_resource();
                let document = v1beta1_document(pdb)?;
                Api::<DynamicObject>::namespaced_with(client.clone(), &namespace, &resource)
                    .patch(&name, &params, &Patch::Apply(&document))
                    .await
                    .map_err(|source| CompatError::Apply {
                        api_version: "policy/v1beta1",
                        source,
                    })?;
            }
            PdbApi::Unavailable => {}
        }
        Ok(api)
    }
}

async fn discover_pdb(client: &Client) -> Result<PdbApi, CompatError> {
    for (version, api) in [
        ("policy/v1", PdbApi::V1),
        ("policy/v1beta1", PdbApi::V1beta1),
    ] {
        match client.list_api_group_resources(version).await {
            Ok(list)
                if list
                    .resources
                    .iter()
                    .any(|r| r.name == "poddisruptionbudgets") =>
            {
                tracing::info!(api_version = version, "PodDisruptionBudgets are served");
                return Ok(api);
            }
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.code == 404 => {}
            Err(e) => return Err(CompatError::Discovery(e)),
        }
    }
    tracing::warn!("the server serves no PodDisruptionBudget API; pools run without one");
    Ok(PdbApi::Unavailable)
}

/// The `policy/v1beta1` PodDisruptionBudget resource, which k8s-openapi no longer carries.
pub fn v1beta1_resource() -> ApiResource {
    ApiResource {
        group: "policy".into(),
        version: "v1beta1".into(),
        api_version: "policy/v1beta1".into(),
        kind: "PodDisruptionBudget".into(),
        plural: "poddisruptionbudgets".into(),
    }
}

/// A v1 PDB rewritten as a v1beta1 document: the fields gpupool sets (selector,
/// maxUnavailable) mean the same in both versions.
pub fn v1beta1_document(pdb: &PodDisruptionBudget) -> Result<serde_json::Value, CompatError> {
    let mut document = serde_json::to_value(pdb).map_err(CompatError::Convert)?;
    if let Some(object) = document.as_object_mut() {
        object.insert("apiVersion".into(), "policy/v1beta1".into());
        object.remove("status");
        if let Some(spec) = object.get_mut("spec").and_then(|s| s.as_object_mut()) {
            // v1-only field; absent in v1beta1.
            spec.remove("unhealthyPodEvictionPolicy");
        }
    }
    Ok(document)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{pool, POOL_UID};

    #[test]
    fn v1beta1_document_keeps_shape_and_owner() {
        let pdb = crate::resources::pod_disruption_budget(&pool()).expect("pdb");
        let doc = v1beta1_document(&pdb).expect("converts");
        assert_eq!(doc["apiVersion"], "policy/v1beta1");
        assert_eq!(doc["kind"], "PodDisruptionBudget");
        assert_eq!(doc["spec"]["maxUnavailable"], 1);
        assert_eq!(doc["metadata"]["ownerReferences"][0]["uid"], POOL_UID);
        assert_eq!(doc["metadata"]["ownerReferences"][0]["controller"], true);
        assert_eq!(
            doc["spec"]["selector"]["matchLabels"]["gpupool.io/pool"],
            "spheroid"
        );
        assert!(doc.get("status").is_none());
    }
}
