//! Pure decisions of the MongoIndex reconciler: the index the spec asks for, and what to
//! do about what `listIndexes` reports.

use mongodb::bson::{Bson, Document, doc};

use crate::crd::MongoIndexSpec;

/// The index as `createIndexes` takes it.
pub fn wanted(spec: &MongoIndexSpec) -> Result<Document, String> {
    let mut key = Document::new();
    for k in &spec.keys {
        key.insert(k.field.clone(), k.order);
    }
    let mut index = doc! {"key": key, "name": spec.index_name()};
    if spec.unique {
        index.insert("unique", true);
    }
    if spec.sparse {
        index.insert("sparse", true);
    }
    if let Some(ttl) = spec.expire_after_seconds {
        if spec.keys.len() != 1 {
            return Err(format!(
                "expireAfterSeconds needs an index of one field (MongoDB's TTL indexes are single-field); spec.keys has {}",
                spec.keys.len()
            ));
        }
        index.insert("expireAfterSeconds", ttl);
    }
    if let Some(filter) = &spec.partial_filter_expression {
        let filter = mongodb::bson::to_document(filter)
            .map_err(|e| format!("spec.partialFilterExpression is not a document: {e}"))?;
        index.insert("partialFilterExpression", filter);
    }
    Ok(index)
}

/// What to do about the existing indexes.
#[derive(Debug, Clone, PartialEq)]
pub enum Plan {
    /// No index of that name (nor of those keys): create it.
    Create,
    /// It exists as asked.
    InSync,
    /// Only the TTL differs: `collMod` changes it in place, without a rebuild.
    ChangeTtl { from: Option<i64>, to: i64 },
    /// An index of that name differs in more than its TTL (or one with the same keys has
    /// another name): what differs.
    Conflict { existing: String, differs: String },
}

/// Compares the wanted index with those the collection has.
pub fn plan(wanted: &Document, existing: &[Document]) -> Plan {
    let name = wanted.get_str("name").unwrap_or_default();
    let key = wanted.get_document("key").ok();
    let Some(found) = existing
        .iter()
        .find(|i| i.get_str("name").ok() == Some(name))
    else {
        if let Some(other) = existing
            .iter()
            .find(|i| i.get_document("key").ok() == key && i.get_str("name").is_ok())
        {
            return Plan::Conflict {
                existing: other.get_str("name").unwrap_or_default().to_owned(),
                differs: "the same keys are indexed under another name".into(),
            };
        }
        return Plan::Create;
    };
    let mut differs = Vec::new();
    if found.get_document("key").ok() != key {
        differs.push("keys".to_owned());
    }
    for option in ["unique", "sparse"] {
        if flag(found, option) != flag(wanted, option) {
            differs.push(option.to_owned());
        }
    }
    if found.get("partialFilterExpression") != wanted.get("partialFilterExpression") {
        differs.push("partialFilterExpression".to_owned());
    }
    let (had, wants) = (ttl(found), ttl(wanted));
    if !differs.is_empty() || (had.is_some() != wants.is_some()) {
        if had != wants {
            differs.push("expireAfterSeconds".to_owned());
        }
        return Plan::Conflict {
            existing: name.to_owned(),
            differs: differs.join(", "),
        };
    }
    match (had, wants) {
        (Some(from), Some(to)) if from != to => Plan::ChangeTtl {
            from: Some(from),
            to,
        },
        _ => Plan::InSync,
    }
}

fn flag(index: &Document, option: &str) -> bool {
    index.get_bool(option).unwrap_or(false)
}

fn ttl(index: &Document) -> Option<i64> {
    match index.get("expireAfterSeconds")? {
        Bson::Int32(v) => Some(i64::from(*v)),
        Bson::Int64(v) => Some(*v),
        #[allow(clippy::cast_possible_truncation)]
        Bson::Double(v) => Some(*v as i64),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{DeletionPolicy, IndexKey, LocalRef};

    fn spec() -> MongoIndexSpec {
        MongoIndexSpec {
            database: None,
            collection: "messages".into(),
            keys: vec![
                IndexKey {
                    field: "tenant_id".into(),
                    order: 1,
                },
                IndexKey {
                    field: "seq".into(),
                    order: -1,
                },
            ],
            name: None,
            unique: true,
            sparse: false,
            expire_after_seconds: None,
            partial_filter_expression: None,
            replace_conflicting: false,
            deletion_policy: DeletionPolicy::Retain,
            cluster_ref: LocalRef { name: "rc".into() },
        }
    }

    #[test]
    fn keys_keep_their_order_and_the_default_name_is_mongodbs() {
        let w = wanted(&spec()).unwrap();
        assert_eq!(w.get_str("name").unwrap(), "tenant_id_1_seq_-1");
        let keys: Vec<_> = w.get_document("key").unwrap().keys().cloned().collect();
        assert_eq!(keys, ["tenant_id", "seq"]);
        assert_eq!(w.get_bool("unique"), Ok(true));
        assert!(w.get("sparse").is_none());
    }

    #[test]
    fn plans() {
        let w = wanted(&spec()).unwrap();
        assert_eq!(plan(&w, &[]), Plan::Create);
        let mut same = w.clone();
        same.insert("v", 2);
        assert_eq!(plan(&w, &[same.clone()]), Plan::InSync);
        // Another option: a conflict that names it.
        let mut not_unique = same.clone();
        not_unique.remove("unique");
        assert!(
            matches!(plan(&w, &[not_unique]), Plan::Conflict { differs, .. } if differs == "unique")
        );
        // The same keys under another name.
        let mut renamed = same.clone();
        renamed.insert("name", "by_seq");
        assert!(
            matches!(plan(&w, &[renamed]), Plan::Conflict { existing, .. } if existing == "by_seq")
        );
        // Only the TTL differs: changed in place; adding or removing one is a conflict.
        let mut ttl_spec = spec();
        ttl_spec.keys.truncate(1);
        ttl_spec.expire_after_seconds = Some(60);
        let w60 = wanted(&ttl_spec).unwrap();
        let mut same = w60.clone();
        same.remove("expireAfterSeconds");
        let mut had30 = same.clone();
        had30.insert("expireAfterSeconds", 30);
        assert_eq!(
            plan(&w60, &[had30]),
            Plan::ChangeTtl {
                from: Some(30),
                to: 60
            }
        );
        assert!(
            matches!(plan(&w60, &[same]), Plan::Conflict { differs, .. } if differs == "expireAfterSeconds")
        );
    }
}
