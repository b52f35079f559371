//! MongoIndex: an index created with createIndexes.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{DeletionPolicy, LocalRef};

/// A MongoDB index. A conflicting existing index is reported, and only replaced when
/// `replaceConflicting` is set.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "realtime.dev",
    version = "v1alpha1",
    kind = "MongoIndex",
    namespaced,
    shortname = "mi",
    status = "MongoIndexStatus",
    printcolumn = r#"{"name":"Collection","type":"string","jsonPath":".spec.collection"}"#,
    printcolumn = r#"{"name":"Index","type":"string","jsonPath":".status.indexName"}"#,
    printcolumn = r#"{"name":"Cluster","type":"string","jsonPath":".spec.clusterRef.name"}"#,
    printcolumn = r#"{"name":"Build","type":"string","jsonPath":".status.buildState"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct MongoIndexSpec {
    /// Database (defaults to the cluster's database).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database: Option<String>,
    /// Collection.
    #[schemars(length(min = 1, max = 120))]
    pub collection: String,
    /// Index keys, in order.
    #[schemars(length(min = 1, max = 32))]
    pub keys: Vec<IndexKey>,
    /// Index name (defaults to MongoDB's `field_order_…` form).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Refuse documents with duplicate keys.
    #[serde(default)]
    pub unique: bool,
    /// Skip documents that lack the indexed fields.
    #[serde(default)]
    pub sparse: bool,
    /// TTL: documents expire this many seconds after the indexed date.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub expire_after_seconds: Option<i64>,
    /// Only index documents matching this filter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::mongo_index::any_object")]
    pub partial_filter_expression: Option<serde_json::Value>,
    /// Drop and recreate an existing index of the same name with other options.
    #[serde(default)]
    pub replace_conflicting: bool,
    /// `Retain` (default) keeps the index when the resource is deleted; `Delete` drops it.
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,
    /// The RealtimeCluster whose MongoDB holds the index.
    pub cluster_ref: LocalRef,
}

/// One key of an index.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IndexKey {
    /// Field path, e.g. `participants.user_id`.
    #[schemars(length(min = 1))]
    pub field: String,
    /// 1 (ascending) or -1 (descending).
    #[schemars(extend("enum" = [1, -1]))]
    pub order: i32,
}

/// Observed state of a MongoIndex.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MongoIndexStatus {
    #[serde(default)]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Database and collection the index lives in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database: Option<String>,
    /// The index's name (the spec's, or MongoDB's `field_order_…` default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index_name: Option<String>,
    /// `Building` while the operator's `createIndexes` runs (a large collection takes
    /// minutes; the reconcile does not wait for it), `Ready` once the server lists the
    /// index, `Failed` when the build was refused (the conditions say why).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build_state: Option<String>,
    /// When the current or last build started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build_started_at: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
    /// The index as the server reports it (`listIndexes`); absent while it does not exist.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::mongo_index::any_object")]
    pub index: Option<serde_json::Value>,
}

/// The finalizer a MongoIndex carries only while `deletionPolicy: Delete` (so a `Retain`
/// resource never waits in Terminating).
pub const MONGO_INDEX_FINALIZER: &str = "realtime.dev/drop-index";

impl MongoIndexSpec {
    /// The index's name: the spec's, or MongoDB's default (`field_order` pairs joined by
    /// `_`, e.g. `tenant_id_1_seq_-1`).
    pub fn index_name(&self) -> String {
        self.name.clone().unwrap_or_else(|| {
            self.keys
                .iter()
                .map(|k| format!("{}_{}", k.field, k.order))
                .collect::<Vec<_>>()
                .join("_")
        })
    }
}

pub(crate) fn any_object(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true
    })
}
