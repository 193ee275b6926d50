//! Topic names, in one place.
//!
//! Every record's key is the id of the service it concerns, so everything about one service is
//! ordered on one partition and owned by one member of each consumer group.

use std::fmt;

/// The topics slipway uses. The name on the broker is [`Topics::name`]: an optional prefix (used
/// to isolate test runs on a shared broker) followed by [`Topic::base`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Topic {
    /// Commands from the gateway: build, deploy, rollback and scale requested.
    Commands,
    /// Registry facts: services, environments and releases created or changed.
    Services,
    /// Builder facts: build queued/started/finished, artifact packaged/published.
    Builds,
    /// Deployer facts: deployment lifecycle; service deployed/upgraded/rolled back/removed.
    Deployments,
    /// Instance lifecycle (deployer) and instance health (monitor).
    Instances,
    /// Monitor facts: analysis verdicts, incidents, scale recommendations.
    Monitoring,
    /// Messages a consumer could not apply after its retries, with the reason in headers.
    DeadLetter,
}

impl Topic {
    /// Every topic, for creation at start-up.
    pub const ALL: [Topic; 7] = [
        Topic::Commands,
        Topic::Services,
        Topic::Builds,
        Topic::Deployments,
        Topic::Instances,
        Topic::Monitoring,
        Topic::DeadLetter,
    ];

    /// The topic's name without any prefix.
    pub fn base(self) -> &'static str {
        match self {
            Topic::Commands => "slipway.commands",
            Topic::Services => "slipway.services",
            Topic::Builds => "slipway.builds",
            Topic::Deployments => "slipway.deployments",
            Topic::Instances => "slipway.instances",
            Topic::Monitoring => "slipway.monitoring",
            Topic::DeadLetter => "slipway.deadletter",
        }
    }
}

impl fmt::Display for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.base())
    }
}

/// Resolves topics to broker names under a configured prefix.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Topics {
    prefix: String,
}

impl Topics {
    /// `prefix` is prepended verbatim; empty in production.
    pub fn new(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
        }
    }

    /// The name of `topic` on the broker.
    pub fn name(&self, topic: Topic) -> String {
        format!("{}{}", self.prefix, topic.base())
    }

    /// The topic a broker name stands for, if it is one of ours.
    pub fn parse(&self, name: &str) -> Option<Topic> {
        let base = name.strip_prefix(&self.prefix)?;
        Topic::ALL.into_iter().find(|t| t.base() == base)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_under_a_prefix() {
        let topics = Topics::new("t1.");
        for topic in Topic::ALL {
            let name = topics.name(topic);
            assert!(name.starts_with("t1.slipway."), "{name}");
            assert_eq!(topics.parse(&name), Some(topic));
        }
        assert_eq!(topics.parse("slipway.services"), None, "prefix is required");
        assert_eq!(topics.parse("t1.other"), None);
    }
}
