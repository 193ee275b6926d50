//! CloudEvents to and from Kafka records (binary content mode).

use rdkafka::Message;
use rdkafka::message::{BorrowedMessage, Header, Headers, OwnedHeaders};
use slipway_events::{CloudEvent, EnvelopeError};

/// The record headers of `event`, including any extra headers (e.g. dead-letter reasons).
pub fn headers(event: &CloudEvent) -> OwnedHeaders {
    event
        .headers()
        .into_iter()
        .fold(OwnedHeaders::new(), |h, (key, value)| {
            h.insert(Header {
                key,
                value: Some(value.as_bytes()),
            })
        })
}

/// Reads a consumed record as a CloudEvent.
pub fn event_of(message: &BorrowedMessage<'_>) -> Result<CloudEvent, EnvelopeError> {
    let headers = message
        .headers()
        .map(|h| h.iter().map(|h| (h.key, h.value)).collect::<Vec<_>>())
        .unwrap_or_default();
    CloudEvent::from_record(message.key(), headers, message.payload())
}
