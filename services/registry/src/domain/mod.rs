//! Types that cannot hold invalid values: parse, don't validate.

mod service;

pub use service::{Branch, NewService, NewServiceRequest, Repository, ServiceName, repository_key};

/// A value rejected by `parse`, naming the field and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{field}`: {message}")]
pub struct Invalid {
    pub field: &'static str,
    pub message: String,
}

impl Invalid {
    pub fn new(field: &'static str, message: impl Into<String>) -> Self {
        Self {
            field,
            message: message.into(),
        }
    }
}
