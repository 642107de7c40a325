//! A container's environment: `envFrom`, then `env` in order with `$(VAR)` expansion; values,
//! downward-API `fieldRef`s, `resourceFieldRef`s (in units of the divisor, as the kubelet gives
//! them) and ConfigMap/Secret keys.

use super::error::{Error, Result};
use super::launch::PodPlacement;
use super::quantity;
use k8s_openapi::api::core::v1::{ConfigMap, Container, Pod, ResourceFieldSelector, Secret};
use kube::{Api, Client};
use std::collections::BTreeMap;

pub(crate) fn node_name(pod: &Pod) -> String {
    pod.spec
        .as_ref()
        .and_then(|s| s.node_name.clone())
        .unwrap_or_default()
}

/// The container's `envFrom` then `env`, resolved in order (later entries see earlier ones).
pub(crate) async fn container_env(
    client: &Client,
    pod: &Pod,
    namespace: &str,
    container: &Container,
    placement: &PodPlacement<'_>,
) -> Result<Vec<(String, String)>> {
    let pod_name = format!("{namespace}/{}", pod.metadata.name.as_deref().unwrap_or(""));
    let fail = |reason: String| Error::ContainerConfig {
        pod: pod_name.clone(),
        reason,
    };
    let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let mut out: Vec<(String, String)> = Vec::new();
    for from in container.env_from.iter().flatten() {
        let prefix = from.prefix.clone().unwrap_or_default();
        let data = if let Some(r) = &from.config_map_ref {
            let cm = get(&configmaps, &r.name, r.optional, &fail).await?;
            cm.and_then(|cm| cm.data).unwrap_or_default()
        } else if let Some(r) = &from.secret_ref {
            let secret = get(&secrets, &r.name, r.optional, &fail).await?;
            let data = secret.and_then(|s| s.data).unwrap_or_default();
            let text = data
                .into_iter()
                .map(|(k, v)| (k, String::from_utf8_lossy(&v.0).into()));
            text.collect()
        } else {
            BTreeMap::new()
        };
        out.extend(data.into_iter().map(|(k, v)| (format!("{prefix}{k}"), v)));
    }
    for var in container.env.iter().flatten() {
        let vars: BTreeMap<String, String> = out.iter().cloned().collect();
        let value = match (&var.value, &var.value_from) {
            (Some(v), _) => Some(expand(v, &vars)),
            (None, Some(from)) => {
                if let Some(field) = &from.field_ref {
                    let v = field_value(pod, placement, &field.field_path);
                    Some(v.ok_or_else(|| {
                        fail(format!("unsupported fieldRef {}", field.field_path))
                    })?)
                } else if let Some(res) = &from.resource_field_ref {
                    Some(resource_field(container, res).map_err(fail)?)
                } else if let Some(r) = &from.config_map_key_ref {
                    let cm = get(&configmaps, &r.name, r.optional, &fail).await?;
                    let v = cm
                        .and_then(|cm| cm.data)
                        .and_then(|d| d.get(&r.key).cloned());
                    required(v, r.optional, || {
                        fail(format!("configmap {} has no key {}", r.name, r.key))
                    })?
                } else if let Some(r) = &from.secret_key_ref {
                    let s = get(&secrets, &r.name, r.optional, &fail).await?;
                    let v = s.and_then(|s| s.data).and_then(|d| d.get(&r.key).cloned());
                    let v = v.map(|b| String::from_utf8_lossy(&b.0).into_owned());
                    required(v, r.optional, || {
                        fail(format!("secret {} has no key {}", r.name, r.key))
                    })?
                } else {
                    None
                }
            }
            (None, None) => Some(String::new()),
        };
        if let Some(value) = value {
            out.push((var.name.clone(), value));
        }
    }
    Ok(out)
}

/// A `resourceFieldRef`'s value as the kubelet gives it: the container's request or limit
/// divided by the divisor, rounded up; a limit the container does not set is the node's
/// allocatable amount (a request not set is 0).
fn resource_field(
    container: &Container,
    field: &ResourceFieldSelector,
) -> std::result::Result<String, String> {
    let unsupported = || format!("unsupported resourceFieldRef {}", field.resource);
    let (kind, name) = field.resource.split_once('.').ok_or_else(unsupported)?;
    let resources = container.resources.as_ref();
    let set = match kind {
        "requests" => resources.and_then(|r| r.requests.as_ref()),
        "limits" => resources.and_then(|r| r.limits.as_ref()),
        _ => return Err(unsupported()),
    }
    .and_then(|m| m.get(name))
    .map(|q| q.0.as_str());
    let quantity = match (set, kind, name) {
        (Some(q), _, _) => q,
        (None, "limits", "memory") => super::node::MEMORY_CAPACITY,
        (None, "limits", "cpu") => super::node::CPU_CAPACITY,
        (None, _, _) => "0",
    };
    let divisor = field.divisor.as_ref().map(|d| d.0.as_str());
    quantity::in_units_of(quantity, divisor)
        .map(|units| units.to_string())
        .ok_or_else(|| {
            format!(
                "resourceFieldRef {}: cannot divide {quantity} by {divisor:?}",
                field.resource
            )
        })
}

async fn get<K>(
    api: &Api<K>,
    name: &str,
    optional: Option<bool>,
    fail: &impl Fn(String) -> Error,
) -> Result<Option<K>>
where
    K: Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let found = api
        .get_opt(name)
        .await
        .map_err(|e| Error::kube(format!("reading {name} for a container's environment"), e))?;
    match found {
        None if !optional.unwrap_or(false) => Err(fail(format!("{name} not found"))),
        found => Ok(found),
    }
}

fn required(
    value: Option<String>,
    optional: Option<bool>,
    fail: impl FnOnce() -> Error,
) -> Result<Option<String>> {
    match value {
        None if !optional.unwrap_or(false) => Err(fail()),
        v => Ok(v),
    }
}

/// The downward API's `fieldRef` paths.
fn field_value(pod: &Pod, placement: &PodPlacement<'_>, path: &str) -> Option<String> {
    let meta = &pod.metadata;
    let lookup = |map: &Option<BTreeMap<String, String>>, key: &str| {
        map.as_ref()
            .and_then(|m| m.get(key).cloned())
            .or(Some(String::new()))
    };
    if let Some(key) = bracketed(path, "metadata.labels") {
        return lookup(&meta.labels, key);
    }
    if let Some(key) = bracketed(path, "metadata.annotations") {
        return lookup(&meta.annotations, key);
    }
    match path {
        "metadata.name" => meta.name.clone(),
        "metadata.namespace" => meta.namespace.clone(),
        "metadata.uid" => meta.uid.clone(),
        "spec.nodeName" => Some(node_name(pod)),
        "spec.serviceAccountName" => pod
            .spec
            .as_ref()
            .and_then(|s| s.service_account_name.clone()),
        "status.podIP" | "status.podIPs" => Some(placement.ip.to_string()),
        "status.hostIP" | "status.hostIPs" => Some(placement.host_ip.to_string()),
        _ => None,
    }
}

/// `key` of `prefix['key']`.
fn bracketed<'p>(path: &'p str, prefix: &str) -> Option<&'p str> {
    let rest = path.strip_prefix(prefix)?.strip_prefix("['")?;
    rest.strip_suffix("']")
}

/// Kubernetes' `$(VAR)` expansion: defined names are replaced, `$$` is a literal `$`, anything
/// else is kept as written.
pub fn expand(input: &str, vars: &BTreeMap<String, String>) -> String {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some((name, tail)) = after.strip_prefix('(').and_then(|a| a.split_once(')')) {
            match vars.get(name) {
                Some(value) => out.push_str(value),
                None => out.push_str(&format!("$({name})")),
            }
            rest = tail;
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ResourceRequirements;
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

    #[test]
    fn resource_fields_are_integers_in_units_of_the_divisor() {
        let field = |resource: &str, divisor: Option<&str>| ResourceFieldSelector {
            resource: resource.into(),
            divisor: divisor.map(|d| Quantity(d.into())),
            ..ResourceFieldSelector::default()
        };
        let limited = Container {
            resources: Some(ResourceRequirements {
                limits: Some([("memory".to_string(), Quantity("8Gi".into()))].into()),
                ..ResourceRequirements::default()
            }),
            ..Container::default()
        };
        let unlimited = Container::default();
        assert_eq!(
            resource_field(&limited, &field("limits.memory", None)),
            Ok((8u64 << 30).to_string())
        );
        assert_eq!(
            resource_field(&limited, &field("limits.memory", Some("1Mi"))),
            Ok("8192".into())
        );
        assert_eq!(
            resource_field(&unlimited, &field("limits.memory", None)),
            Ok((128u64 << 30).to_string()),
            "no limit: the node's allocatable memory"
        );
        assert_eq!(
            resource_field(&unlimited, &field("requests.cpu", None)),
            Ok("0".into())
        );
        assert!(resource_field(&unlimited, &field("memory", None)).is_err());
    }

    #[test]
    fn expansion_follows_kubernetes_rules() {
        let vars: BTreeMap<String, String> = [("A".to_string(), "1".to_string())].into();
        assert_eq!(expand("x$(A)y", &vars), "x1y");
        assert_eq!(expand("$(B)", &vars), "$(B)");
        assert_eq!(expand("$$(A) $ $(", &vars), "$(A) $ $(");
    }
}
