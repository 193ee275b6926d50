//! The fake API server's validation: what the API server would refuse of the objects the
//! target sends. Each is read into its k8s-openapi type (the HTTPRoute into the target's
//! own) and must serialise back to exactly what was sent, so a field the schema does not know
//! is refused, then checked field by field for what the target uses.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use slipway_deployer::target::kubernetes::route::HttpRoute;

/// `T`'s reading of `object`, which must serialise back to `object` exactly.
fn typed<T: DeserializeOwned + Serialize>(object: &Value) -> Result<T, String> {
    let typed: T = serde_json::from_value(object.clone()).map_err(|e| e.to_string())?;
    let back = serde_json::to_value(&typed).map_err(|e| e.to_string())?;
    if back != *object {
        return Err(format!(
            "fields not in the schema, or misplaced: sent {object}, understood {back}"
        ));
    }
    Ok(typed)
}

fn dns_label(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

fn label_value(v: &str) -> bool {
    v.len() <= 63
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        && (v.is_empty()
            || (v.starts_with(|c: char| c.is_ascii_alphanumeric())
                && v.ends_with(|c: char| c.is_ascii_alphanumeric())))
}

fn labels_valid(labels: Option<&BTreeMap<String, String>>) -> Result<(), String> {
    for (k, v) in labels.into_iter().flatten() {
        let name = k.rsplit('/').next().unwrap_or_default();
        if !label_value(name) || name.is_empty() || !label_value(v) {
            return Err(format!("metadata.labels: invalid label {k}={v}"));
        }
    }
    Ok(())
}

fn config_key(k: &str) -> bool {
    !k.is_empty()
        && k.len() <= 253
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-._".contains(c))
}

/// What the API server's validation would refuse of what the target sends.
pub fn validate(plural: &str, name: &str, object: &Value) -> Result<(), String> {
    let meta_name = object["metadata"]["name"].as_str().unwrap_or_default();
    if meta_name != name {
        return Err(format!(
            "metadata.name `{meta_name}` is not the URL's `{name}`"
        ));
    }
    if !dns_label(name) {
        return Err(format!("metadata.name: `{name}` is not a DNS-1123 label"));
    }
    let (api_version, kind) = match plural {
        "deployments" => ("apps/v1", "Deployment"),
        "services" => ("v1", "Service"),
        "configmaps" => ("v1", "ConfigMap"),
        "secrets" => ("v1", "Secret"),
        "httproutes" => ("gateway.networking.k8s.io/v1", "HTTPRoute"),
        other => return Err(format!("the target has no business writing {other}")),
    };
    if object["apiVersion"] != api_version || object["kind"] != kind {
        return Err(format!("apiVersion/kind must be {api_version}/{kind}"));
    }
    match plural {
        "deployments" => {
            let d: Deployment = typed(object)?;
            labels_valid(d.metadata.labels.as_ref())?;
            let spec = d.spec.ok_or("spec: Required value")?;
            let template_labels = spec
                .template
                .metadata
                .as_ref()
                .and_then(|m| m.labels.clone())
                .unwrap_or_default();
            labels_valid(Some(&template_labels))?;
            let selector = spec.selector.match_labels.unwrap_or_default();
            if selector.is_empty()
                || selector
                    .iter()
                    .any(|(k, v)| template_labels.get(k) != Some(v))
            {
                return Err("spec.template.metadata.labels: Invalid value: `selector` does not match template `labels`".into());
            }
            if spec.replicas.is_some_and(|r| r < 0) {
                return Err("spec.replicas: must be greater than or equal to 0".into());
            }
            let pod = spec
                .template
                .spec
                .ok_or("spec.template.spec: Required value")?;
            if pod.containers.is_empty() {
                return Err("spec.template.spec.containers: Required value".into());
            }
            for c in &pod.containers {
                if !dns_label(&c.name) || c.image.as_deref().is_none_or(str::is_empty) {
                    return Err(format!("container `{}`: name and image required", c.name));
                }
                for e in c.env.iter().flatten() {
                    if !config_key(&e.name) {
                        return Err(format!("env `{}`: invalid name", e.name));
                    }
                }
                for p in c.ports.iter().flatten() {
                    if !(1..=65535).contains(&p.container_port) {
                        return Err("containerPort out of range".into());
                    }
                }
            }
        }
        "services" => {
            let s: Service = typed(object)?;
            labels_valid(s.metadata.labels.as_ref())?;
            if !name.starts_with(|c: char| c.is_ascii_lowercase()) {
                return Err(
                    "metadata.name: a Service name must start with a letter (DNS-1035)".into(),
                );
            }
            let spec = s.spec.ok_or("spec: Required value")?;
            labels_valid(spec.selector.as_ref())?;
            let ports = spec.ports.unwrap_or_default();
            if ports.is_empty() || ports.iter().any(|p| !(1..=65535).contains(&p.port)) {
                return Err("spec.ports: Required value".into());
            }
        }
        "configmaps" => {
            let c: ConfigMap = typed(object)?;
            labels_valid(c.metadata.labels.as_ref())?;
            if let Some(k) = c
                .data
                .iter()
                .flatten()
                .map(|(k, _)| k)
                .find(|k| !config_key(k))
            {
                return Err(format!(
                    "data[{k}]: a valid config key must consist of alphanumerics, '-', '_' or '.'"
                ));
            }
        }
        "secrets" => {
            let s: Secret = typed(object)?;
            labels_valid(s.metadata.labels.as_ref())?;
            if let Some(k) = s
                .data
                .iter()
                .flatten()
                .map(|(k, _)| k)
                .find(|k| !config_key(k))
            {
                return Err(format!("data[{k}]: invalid key"));
            }
        }
        "httproutes" => {
            let r: HttpRoute = typed(object)?;
            labels_valid(r.metadata.labels.as_ref())?;
            if r.spec.parent_refs.is_empty() || r.spec.parent_refs.len() > 32 {
                return Err("spec.parentRefs: 1 to 32 required".into());
            }
            if r.spec.rules.len() > 16 {
                return Err("spec.rules: at most 16".into());
            }
            for b in r.spec.rules.iter().flat_map(|r| &r.backend_refs) {
                if b.weight.is_some_and(|w| w > 1_000_000) || !dns_label(&b.name) || b.port == 0 {
                    return Err(format!("spec.rules.backendRefs: invalid backend {b:?}"));
                }
            }
        }
        _ => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::validate;

    fn deployment() -> Value {
        json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "shop-v1", "labels": {"app": "shop"}},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": {"app": "shop"}},
                "template": {
                    "metadata": {"labels": {"app": "shop"}},
                    "spec": {"containers": [{"name": "app", "image": "registry.test/shop@sha256:00"}]},
                },
            },
        })
    }

    #[test]
    fn the_fake_refuses_what_an_api_server_would() {
        assert_eq!(validate("deployments", "shop-v1", &deployment()), Ok(()));

        let mut unknown = deployment();
        unknown["spec"]["replicaz"] = json!(2);
        let why = validate("deployments", "shop-v1", &unknown).unwrap_err();
        assert!(why.contains("fields not in the schema"), "{why}");

        let mut mismatch = deployment();
        mismatch["spec"]["selector"]["matchLabels"]["app"] = json!("other");
        let why = validate("deployments", "shop-v1", &mismatch).unwrap_err();
        assert!(why.contains("does not match template"), "{why}");

        let mut wrong_name = deployment();
        wrong_name["metadata"]["name"] = json!("Shop_V1");
        assert!(validate("deployments", "Shop_V1", &wrong_name).is_err());

        let route = json!({
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
            "metadata": {"name": "shop"},
            "spec": {"parentRefs": [], "rules": [{"backendRefs": [{"name": "shop-v1", "port": 8080}]}]},
        });
        let why = validate("httproutes", "shop", &route).unwrap_err();
        assert!(why.contains("parentRefs"), "{why}");
    }
}
