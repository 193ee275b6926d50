//! CloudEvents to and from Kafka records (binary content mode).

use rdkafka::Message;
use rdkafka::message::{BorrowedMessage, Header, Headers, OwnedHeaders};
use slipway_events::trust::Signed;
use slipway_events::{CloudEvent, EnvelopeError, PROJECT_HEADER, SIGNATURE_HEADER, Service};

use crate::signing::{Rejection, Verifier};

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

/// Checks a consumed record's signature and its signer's ownership of its type, over the
/// header texts and body exactly as received. Call it on records [`event_of`] accepted.
pub fn verify(verifier: &Verifier, message: &BorrowedMessage<'_>) -> Result<Service, Rejection> {
    let all: Vec<(&str, Option<&[u8]>)> = message
        .headers()
        .map(|h| h.iter().map(|h| (h.key, h.value)).collect())
        .unwrap_or_default();
    // `event_of` keeps the last of repeated headers; a signature over the first would then
    // vouch for attributes the handler never sees. Refuse repeats of anything signed instead.
    let one = |name: &'static str| -> Result<Option<&[u8]>, Rejection> {
        let mut values = all.iter().filter(|(k, _)| *k == name).map(|(_, v)| *v);
        let first = values.next().flatten();
        match values.next() {
            Some(_) => Err(Rejection::Duplicate(name)),
            None => Ok(first),
        }
    };
    let text = |name: &'static str| -> Result<Option<&str>, Rejection> {
        // `event_of` already refused non-UTF-8 headers; treat one here as absent.
        Ok(one(name)?.and_then(|v| std::str::from_utf8(v).ok()))
    };
    let signed = Signed {
        id: text("ce_id")?.unwrap_or_default(),
        source: text("ce_source")?.unwrap_or_default(),
        ty: text("ce_type")?.unwrap_or_default(),
        subject: text("ce_subject")?,
        time: text("ce_time")?.unwrap_or_default(),
        key: message.key().and_then(|k| std::str::from_utf8(k).ok()),
        body: message.payload().unwrap_or_default(),
        project: text(PROJECT_HEADER)?,
    };
    verifier.check(&signed, one(SIGNATURE_HEADER)?)
}
