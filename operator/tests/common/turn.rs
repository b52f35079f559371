//! TurnPool helpers: apply a pool, read its Secret and conditions, rotate it on demand,
//! and collect what the operator wrote about it (to look for secret material).

use k8s_openapi::api::core::v1::{Event as CoreEvent, Secret};
use kube::ResourceExt;
use kube::api::{ListParams, Patch, PatchParams};
use realtime_operator::crd::TurnPool;
use realtime_operator::render::turn_pool::{CURRENT_KEY, PREVIOUS_KEY, ROTATE_ANNOTATION};
use realtime_turn::coturn::SecretPair;
use serde_json::json;

use super::{Env, eventually};

pub async fn apply_pool(env: &Env, pool: serde_json::Value) -> TurnPool {
    let pool: TurnPool = serde_json::from_value(pool).unwrap();
    env.api::<TurnPool>()
        .patch(
            &pool.name_any(),
            &PatchParams::apply("test").force(),
            &Patch::Apply(&pool),
        )
        .await
        .unwrap()
}

pub fn text(secret: &Secret, key: &str) -> Option<String> {
    secret
        .data
        .as_ref()?
        .get(key)
        .map(|b| String::from_utf8(b.0.clone()).unwrap())
}

pub async fn secret_pair(env: &Env, pool: &str) -> SecretPair {
    let secret = eventually("the pool's Secret", 20, || async {
        env.api::<Secret>()
            .get_opt(&format!("{pool}-turn-secret"))
            .await
            .unwrap()
    })
    .await;
    SecretPair {
        current: text(&secret, CURRENT_KEY).unwrap(),
        previous: text(&secret, PREVIOUS_KEY),
    }
}

/// Requests a rotation of `pool` (annotation value `request`) and waits until its Secret
/// holds a current secret other than `before`'s; returns the new pair.
pub async fn rotate(env: &Env, pool: &str, request: &str, before: &SecretPair) -> SecretPair {
    env.api::<TurnPool>()
        .patch(
            pool,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {ROTATE_ANNOTATION: request}}})),
        )
        .await
        .unwrap();
    eventually(&format!("{pool}'s rotated secret"), 20, || async {
        let p = secret_pair(env, pool).await;
        (p.current != before.current).then_some(p)
    })
    .await
}

pub fn condition(pool: &TurnPool, type_: &str) -> Option<(String, String)> {
    pool.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status.clone(), c.reason.clone()))
}

/// Everything the operator wrote about the pool, as text, to look for secret material.
pub async fn everything_written(env: &Env, pool: &str) -> String {
    let p = env.api::<TurnPool>().get(pool).await.unwrap();
    let events = env
        .api::<CoreEvent>()
        .list(&ListParams::default())
        .await
        .unwrap();
    format!(
        "{}\n{}",
        serde_json::to_string(&p.status).unwrap(),
        serde_json::to_string(&events.items).unwrap()
    )
}
