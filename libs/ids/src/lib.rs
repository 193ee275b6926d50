//! Typed identifiers.
//!
//! Every id that crosses a function, an HTTP or a Kafka boundary is one of these newtypes, so a
//! service id can never be passed where an event id is expected. All are UUIDs; new ones are
//! version 7 (time-ordered), which keeps B-tree inserts cheap and lets ids sort by creation.
//! Projects are named, not numbered ([`ProjectName`]): people type them in requests.

use std::fmt;
use std::str::FromStr;

mod project;
mod replica;

pub use project::{DEFAULT_PROJECT, InvalidProjectName, ProjectName};
pub use replica::ReplicaId;

macro_rules! uuid_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[derive(serde::Serialize, serde::Deserialize, sqlx::Type)]
        #[serde(transparent)]
        #[sqlx(transparent)]
        pub struct $name(uuid::Uuid);

        impl $name {
            /// A fresh, time-ordered id.
            pub fn new() -> Self {
                Self(uuid::Uuid::now_v7())
            }

            /// Wraps an existing UUID (read from storage or from the wire).
            pub fn from_uuid(id: uuid::Uuid) -> Self {
                Self(id)
            }

            /// The UUID inside.
            pub fn as_uuid(&self) -> uuid::Uuid {
                self.0
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }

        impl FromStr for $name {
            type Err = uuid::Error;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                uuid::Uuid::parse_str(s).map(Self)
            }
        }
    };
}

uuid_id!(
    /// A service registered with slipway; also the Kafka key of everything about it.
    ServiceId
);
uuid_id!(
    /// A CloudEvent's `id`: unique per event, the key of every consumer's inbox.
    EventId
);
uuid_id!(
    /// A build: one run of a service's tests, build and packaging for one commit.
    BuildId
);
uuid_id!(
    /// An API token (never the secret itself, which is only ever stored hashed).
    TokenId
);
uuid_id!(
    /// One running instance of a release (a process, container or pod); a restart after a crash
    /// keeps the id and counts up its `restarts`.
    InstanceId
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_through_text_and_json() {
        let id = ServiceId::new();
        let parsed: ServiceId = id.to_string().parse().unwrap();
        assert_eq!(parsed, id);
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(
            json,
            format!("\"{id}\""),
            "serde(transparent): a bare UUID string"
        );
        let back: ServiceId = serde_json::from_str(&json).unwrap();
        assert_eq!(back, id);
    }

    #[test]
    fn new_ids_are_time_ordered() {
        let a = EventId::new();
        let b = EventId::new();
        assert!(a < b, "v7 ids sort by creation: {a} !< {b}");
    }

    #[test]
    fn garbage_is_rejected() {
        assert!("not-a-uuid".parse::<ServiceId>().is_err());
    }
}
