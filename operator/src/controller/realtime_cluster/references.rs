//! Dereferencing a RealtimeCluster: its Secrets (each read by name with `get`; the
//! operator caches no Secret bodies) and its TurnPool, and the checksum of the rendered
//! configuration and the Secret values that rolls the pods when either changes.

use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use sha2::{Digest, Sha256};

use super::Error;
use crate::controller::Context;
use crate::crd::{RealtimeCluster, TurnPool};
use crate::render;

/// What the references resolved to: the checksum input, or why they could not.
pub enum References {
    Resolved { checksum: String },
    Missing(String),
}

/// Loads the referenced Secrets (every key must exist) and the TurnPool, and computes the
/// checksum of the configuration and the Secret values.
pub async fn resolve(rc: &RealtimeCluster, ctx: &Context, ns: &str) -> Result<References, Error> {
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
    let mut hasher = Sha256::new();
    hasher.update(serde_json::to_vec(&render::config_data(rc))?);
    for (var, r) in render::secret_env(rc) {
        let Some(secret) = secrets
            .get_opt(&r.name)
            .await
            .map_err(Error::reading(&secrets, &r.name))?
        else {
            return Ok(References::Missing(format!(
                "Secret {}/{} (for {var}) does not exist; create it with key {:?}",
                ns, r.name, r.key
            )));
        };
        let value = secret
            .data
            .as_ref()
            .and_then(|d| d.get(&r.key))
            .map(|v| v.0.clone())
            .or_else(|| {
                secret
                    .string_data
                    .as_ref()
                    .and_then(|d| d.get(&r.key))
                    .map(|v| v.clone().into_bytes())
            });
        let Some(value) = value else {
            return Ok(References::Missing(format!(
                "Secret {}/{} has no key {:?} (for {var}); add it",
                ns, r.name, r.key
            )));
        };
        hasher.update(var.as_bytes());
        hasher.update(&value);
    }
    if let Some(pool) = &rc.spec.turn_pool_ref {
        let pools: Api<TurnPool> = Api::namespaced(ctx.client.clone(), ns);
        if pools
            .get_opt(&pool.name)
            .await
            .map_err(Error::reading(&pools, &pool.name))?
            .is_none()
        {
            return Ok(References::Missing(format!(
                "TurnPool {ns}/{} (spec.turnPoolRef) does not exist; create it or remove the reference",
                pool.name
            )));
        }
    }
    let digest = hasher.finalize();
    Ok(References::Resolved {
        checksum: digest.iter().map(|b| format!("{b:02x}")).collect(),
    })
}
