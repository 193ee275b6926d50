//! Event handlers, one per event type the builder acts on.

mod build_requests;

use slipway_events::CloudEvent;
use slipway_kafka::{Handled, Handler, HandlerError};

pub use build_requests::BuildRequests;
pub use slipway_runtime::catalog::ServiceCatalog;

/// The builder's one consumer: routes each event to the handler for its type.
pub struct Events {
    pub catalog: ServiceCatalog,
    pub builds: BuildRequests,
}

impl Handler for Events {
    async fn handle(&self, event: &CloudEvent) -> Result<Handled, HandlerError> {
        match self.catalog.handle(event).await? {
            Handled::Ignored => self.builds.handle(event).await,
            handled => Ok(handled),
        }
    }
}
