//! Topic set-up at start-up.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::types::RDKafkaErrorCode;
use slipway_events::Topic;

use crate::KafkaSettings;

/// Why topics could not be created.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("cannot create the Kafka admin client: {0}")]
    Client(#[source] rdkafka::error::KafkaError),
    #[error("creating topics failed: {0}")]
    Request(#[source] rdkafka::error::KafkaError),
    #[error("creating topic `{topic}` failed: {code}")]
    Topic {
        topic: String,
        code: RDKafkaErrorCode,
    },
}

/// Creates every slipway topic that does not exist yet. Idempotent: several services (and
/// replicas) call it at start-up; "already exists" counts as success.
pub async fn ensure_topics(settings: &KafkaSettings) -> Result<(), AdminError> {
    let admin: AdminClient<DefaultClientContext> = settings
        .client_config()
        .create()
        .map_err(AdminError::Client)?;
    let topics = settings.topics();
    let names: Vec<String> = Topic::ALL.iter().map(|t| topics.name(*t)).collect();
    let new_topics: Vec<NewTopic<'_>> = names
        .iter()
        .map(|name| {
            NewTopic::new(
                name,
                settings.partitions,
                TopicReplication::Fixed(settings.replication_factor),
            )
        })
        .collect();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let results = admin
        .create_topics(&new_topics, &options)
        .await
        .map_err(AdminError::Request)?;
    for result in results {
        match result {
            Ok(_) => {}
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => return Err(AdminError::Topic { topic, code }),
        }
    }
    tracing::info!(count = names.len(), "topics ready");
    Ok(())
}
