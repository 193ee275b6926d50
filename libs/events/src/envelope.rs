//! The CloudEvents 1.0 envelope in Kafka binary content mode.
//!
//! Per the CloudEvents Kafka protocol binding, each context attribute travels as a header named
//! `ce_<attribute>` (UTF-8 text), the `datacontenttype` as the `content-type` header, and the
//! event data as the record value. Slipway always sends JSON data, sets the record key to the id
//! of the service the event is about, and carries W3C trace context in `traceparent` and
//! `tracestate` headers so one trace spans every hop.

use chrono::{DateTime, SecondsFormat, Utc};
use slipway_ids::{EventId, ProjectName, ServiceId};

use crate::EventData;

/// The only `specversion` slipway writes or accepts.
pub const SPEC_VERSION: &str = "1.0";
/// The `content-type` of every event body.
pub const CONTENT_TYPE: &str = "application/json";
/// The header of the `slipwayproject` extension attribute: the project of the service the
/// event concerns, so consumers can filter and attribute events without a catalog of their own.
pub const PROJECT_HEADER: &str = "ce_slipwayproject";

/// Why a record could not be read as a slipway CloudEvent.
#[derive(Debug, thiserror::Error)]
pub enum EnvelopeError {
    #[error("required header `{0}` is missing")]
    MissingHeader(&'static str),
    #[error("header `{0}` is not valid UTF-8")]
    NotUtf8(String),
    #[error("header `{name}` has an invalid value `{value}`: {reason}")]
    InvalidHeader {
        name: &'static str,
        value: String,
        reason: String,
    },
    #[error("unsupported content type `{0}` (expected application/json)")]
    ContentType(String),
    #[error("event body is not valid JSON for `{ty}`: {source}")]
    Body {
        ty: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("expected an event of type `{expected}`, got `{actual}`")]
    WrongType {
        expected: &'static str,
        actual: String,
    },
}

/// One CloudEvent as slipway publishes and consumes it.
#[derive(Debug, Clone, PartialEq)]
pub struct CloudEvent {
    /// `id`: unique per event; consumers deduplicate on it.
    pub id: EventId,
    /// `source`: a URI reference naming the producer, e.g. `/slipway/registry`.
    pub source: String,
    /// `type`: a CDEvents type or slipway's own reverse-DNS, versioned type.
    pub ty: String,
    /// `subject`: what the event is about within the source (e.g. the service name).
    pub subject: Option<String>,
    /// `time`: when the fact happened.
    pub time: DateTime<Utc>,
    /// The Kafka record key: the id of the service the event concerns.
    pub key: ServiceId,
    /// `slipwayproject`: the project of that service, when the producer knows it (never
    /// guessed: absent rather than wrong).
    pub project: Option<ProjectName>,
    /// W3C `traceparent` of the span that produced the event, when tracing is on.
    pub traceparent: Option<String>,
    /// W3C `tracestate` accompanying `traceparent`.
    pub tracestate: Option<String>,
    /// The JSON body.
    pub data: serde_json::Value,
}

impl CloudEvent {
    /// An event carrying typed slipway data.
    pub fn new<D: EventData>(
        source: &str,
        key: ServiceId,
        subject: Option<String>,
        data: &D,
    ) -> Result<Self, serde_json::Error> {
        Ok(Self {
            id: EventId::new(),
            source: source.to_owned(),
            ty: D::TYPE.to_owned(),
            subject,
            time: Utc::now(),
            key,
            project: None,
            traceparent: None,
            tracestate: None,
            data: serde_json::to_value(data)?,
        })
    }

    /// The same event naming the project of its service (`None` leaves it unnamed).
    pub fn with_project(self, project: Option<ProjectName>) -> Self {
        Self { project, ..self }
    }

    /// The typed data of an event, checking its type first.
    pub fn data_as<D: EventData>(&self) -> Result<D, EnvelopeError> {
        if self.ty != D::TYPE {
            return Err(EnvelopeError::WrongType {
                expected: D::TYPE,
                actual: self.ty.clone(),
            });
        }
        serde_json::from_value(self.data.clone()).map_err(|source| EnvelopeError::Body {
            ty: self.ty.clone(),
            source,
        })
    }

    /// The record headers in binary mode, in a stable order.
    pub fn headers(&self) -> Vec<(&'static str, String)> {
        let mut headers = vec![
            ("ce_specversion", SPEC_VERSION.to_owned()),
            ("ce_id", self.id.to_string()),
            ("ce_source", self.source.clone()),
            ("ce_type", self.ty.clone()),
            (
                "ce_time",
                self.time.to_rfc3339_opts(SecondsFormat::Micros, true),
            ),
            ("content-type", CONTENT_TYPE.to_owned()),
        ];
        if let Some(subject) = &self.subject {
            headers.push(("ce_subject", subject.clone()));
        }
        if let Some(project) = &self.project {
            headers.push((PROJECT_HEADER, project.to_string()));
        }
        if let Some(tp) = &self.traceparent {
            headers.push(("traceparent", tp.clone()));
        }
        if let Some(ts) = &self.tracestate {
            headers.push(("tracestate", ts.clone()));
        }
        headers
    }

    /// The record value.
    pub fn body(&self) -> Vec<u8> {
        // Serialising a `serde_json::Value` to a Vec cannot fail: no I/O, no non-string keys.
        serde_json::to_vec(&self.data).unwrap_or_default()
    }

    /// Reads an event back from a record's key, headers and value.
    pub fn from_record<'a>(
        key: Option<&[u8]>,
        headers: impl IntoIterator<Item = (&'a str, Option<&'a [u8]>)>,
        value: Option<&[u8]>,
    ) -> Result<Self, EnvelopeError> {
        let mut found: std::collections::HashMap<&str, String> = Default::default();
        for (name, bytes) in headers {
            let Some(bytes) = bytes else { continue };
            let text =
                std::str::from_utf8(bytes).map_err(|_| EnvelopeError::NotUtf8(name.to_owned()))?;
            found.insert(name, text.to_owned());
        }
        let mut take = |name: &'static str| found.remove(name);
        let required = |v: Option<String>, name: &'static str| {
            v.filter(|s| !s.is_empty())
                .ok_or(EnvelopeError::MissingHeader(name))
        };

        let spec = required(take("ce_specversion"), "ce_specversion")?;
        if spec != SPEC_VERSION {
            return Err(EnvelopeError::InvalidHeader {
                name: "ce_specversion",
                value: spec,
                reason: "only CloudEvents 1.0 is supported".into(),
            });
        }
        let id_text = required(take("ce_id"), "ce_id")?;
        let id = id_text
            .parse::<EventId>()
            .map_err(|e| EnvelopeError::InvalidHeader {
                name: "ce_id",
                value: id_text.clone(),
                reason: e.to_string(),
            })?;
        let source = required(take("ce_source"), "ce_source")?;
        let ty = required(take("ce_type"), "ce_type")?;
        let time = match take("ce_time") {
            Some(t) => DateTime::parse_from_rfc3339(&t)
                .map_err(|e| EnvelopeError::InvalidHeader {
                    name: "ce_time",
                    value: t.clone(),
                    reason: e.to_string(),
                })?
                .with_timezone(&Utc),
            None => Utc::now(),
        };
        if let Some(ct) = take("content-type")
            && !ct.starts_with(CONTENT_TYPE)
        {
            return Err(EnvelopeError::ContentType(ct));
        }
        let key_text = key
            .map(|k| String::from_utf8_lossy(k).into_owned())
            .ok_or(EnvelopeError::MissingHeader("record key"))?;
        let key = key_text
            .parse::<ServiceId>()
            .map_err(|e| EnvelopeError::InvalidHeader {
                name: "record key",
                value: key_text.clone(),
                reason: e.to_string(),
            })?;
        let data = match value {
            Some(v) if !v.is_empty() => {
                serde_json::from_slice(v).map_err(|source| EnvelopeError::Body {
                    ty: ty.clone(),
                    source,
                })?
            }
            _ => serde_json::Value::Null,
        };
        let project = take(PROJECT_HEADER)
            .map(|text| {
                text.parse::<ProjectName>()
                    .map_err(|e| EnvelopeError::InvalidHeader {
                        name: PROJECT_HEADER,
                        value: text.clone(),
                        reason: e.to_string(),
                    })
            })
            .transpose()?;
        Ok(Self {
            id,
            source,
            ty,
            subject: take("ce_subject"),
            time,
            key,
            project,
            traceparent: take("traceparent"),
            tracestate: take("tracestate"),
            data,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::slipway::ServiceCreated;

    fn sample() -> CloudEvent {
        let data = ServiceCreated {
            service_id: ServiceId::new(),
            name: "hello".into(),
            project: Default::default(),
            repository: Some("https://git.example/hello.git".into()),
            branch: "main".into(),
            created_at: Utc::now(),
        };
        let mut ev = CloudEvent::new(
            "/slipway/registry",
            data.service_id,
            Some("hello".into()),
            &data,
        )
        .unwrap();
        ev.traceparent = Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into());
        ev
    }

    fn record(ev: &CloudEvent) -> (String, Vec<(&'static str, String)>, Vec<u8>) {
        (ev.key.to_string(), ev.headers(), ev.body())
    }

    #[test]
    fn binary_mode_round_trip() {
        let ev = sample();
        let (key, headers, body) = record(&ev);
        let back = CloudEvent::from_record(
            Some(key.as_bytes()),
            headers.iter().map(|(n, v)| (*n, Some(v.as_bytes()))),
            Some(&body),
        )
        .unwrap();
        // Time is written with microsecond precision.
        assert_eq!(back.time.timestamp_micros(), ev.time.timestamp_micros());
        assert_eq!(
            CloudEvent {
                time: ev.time,
                ..back
            },
            ev
        );
    }

    fn read(
        headers: &[(&'static str, String)],
        key: &str,
        body: &[u8],
    ) -> Result<CloudEvent, EnvelopeError> {
        CloudEvent::from_record(
            Some(key.as_bytes()),
            headers.iter().map(|(n, v)| (*n, Some(v.as_bytes()))),
            Some(body),
        )
    }

    #[test]
    fn the_project_travels_when_known_and_only_then() {
        let absent = sample();
        let (key, headers, body) = record(&absent);
        assert!(headers.iter().all(|(n, _)| *n != PROJECT_HEADER));
        assert_eq!(read(&headers, &key, &body).unwrap().project, None);

        let payments = ProjectName::parse("payments").unwrap();
        let present = sample().with_project(Some(payments.clone()));
        let (key, headers, body) = record(&present);
        assert!(headers.contains(&(PROJECT_HEADER, "payments".to_owned())));
        assert_eq!(read(&headers, &key, &body).unwrap().project, Some(payments));

        let bad: Vec<_> = headers
            .into_iter()
            .map(|(n, v)| {
                if n == PROJECT_HEADER {
                    (n, "../etc".to_owned())
                } else {
                    (n, v)
                }
            })
            .collect();
        let err = read(&bad, &key, &body).unwrap_err();
        assert!(
            matches!(
                err,
                EnvelopeError::InvalidHeader {
                    name: PROJECT_HEADER,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn headers_follow_the_kafka_binding() {
        let ev = sample();
        let headers: std::collections::HashMap<_, _> = ev.headers().into_iter().collect();
        assert_eq!(headers["ce_specversion"], "1.0");
        assert_eq!(headers["ce_type"], "dev.slipway.service.created.v1");
        assert_eq!(headers["ce_source"], "/slipway/registry");
        assert_eq!(headers["ce_subject"], "hello");
        assert_eq!(headers["content-type"], "application/json");
        assert!(headers["ce_time"].ends_with('Z'), "{}", headers["ce_time"]);
        assert!(headers.contains_key("traceparent"));
    }

    #[test]
    fn missing_or_bad_attributes_are_named() {
        let ev = sample();
        let (key, headers, body) = record(&ev);
        let without = |drop: &str| {
            CloudEvent::from_record(
                Some(key.as_bytes()),
                headers
                    .iter()
                    .filter(|(n, _)| *n != drop)
                    .map(|(n, v)| (*n, Some(v.as_bytes()))),
                Some(&body),
            )
            .unwrap_err()
            .to_string()
        };
        assert!(without("ce_id").contains("ce_id"));
        assert!(without("ce_type").contains("ce_type"));

        let err = CloudEvent::from_record(
            Some(b"not-a-uuid"),
            headers.iter().map(|(n, v)| (*n, Some(v.as_bytes()))),
            Some(&body),
        )
        .unwrap_err();
        assert!(err.to_string().contains("record key"), "{err}");

        let err = CloudEvent::from_record(
            Some(key.as_bytes()),
            headers.iter().map(|(n, v)| (*n, Some(v.as_bytes()))),
            Some(b"{not json"),
        )
        .unwrap_err();
        assert!(matches!(err, EnvelopeError::Body { .. }), "{err}");
    }

    #[test]
    fn typed_data_checks_the_type() {
        let ev = sample();
        let data: ServiceCreated = ev.data_as().unwrap();
        assert_eq!(data.name, "hello");
        let other = CloudEvent {
            ty: "dev.slipway.something.else.v1".into(),
            ..ev
        };
        assert!(matches!(
            other.data_as::<ServiceCreated>(),
            Err(EnvelopeError::WrongType { .. })
        ));
    }
}
