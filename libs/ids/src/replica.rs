//! Which running copy of a service did something: leases, claims and instance ownership name it.

use std::fmt;

/// One running process of a service, e.g. `deployer-3f2a9c1e` (or what `SLIPWAY_REPLICA_ID`
/// says, such as a Kubernetes pod name). A restarted process is a new replica: a lease it held
/// before the restart is not its own any more, so nothing held by a dead process is mistaken for
/// a live one's.
#[derive(
    Debug,
    Clone,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    serde::Serialize,
    serde::Deserialize,
    sqlx::Type,
)]
#[serde(transparent)]
#[sqlx(transparent)]
pub struct ReplicaId(String);

impl ReplicaId {
    /// `SLIPWAY_REPLICA_ID` when set and non-empty, else `<service>-<8 random hex digits>`.
    pub fn for_process(service: &str) -> Self {
        match std::env::var("SLIPWAY_REPLICA_ID") {
            Ok(id) if !id.trim().is_empty() => Self(id.trim().to_owned()),
            _ => Self::generate(service),
        }
    }

    /// A fresh id for `service`, ignoring the environment (tests run several in one process).
    pub fn generate(service: &str) -> Self {
        let random = uuid::Uuid::new_v4().simple().to_string();
        Self(format!("{service}-{}", &random[..8]))
    }

    /// An id read back from the wire or from storage (an edge router's poll names itself).
    pub fn from_name(name: &str) -> Self {
        Self(name.to_owned())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ReplicaId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_name_the_service_and_differ() {
        let a = ReplicaId::generate("builder");
        let b = ReplicaId::generate("builder");
        assert!(a.as_str().starts_with("builder-"), "{a}");
        assert_eq!(a.as_str().len(), "builder-".len() + 8);
        assert_ne!(a, b);
    }
}
