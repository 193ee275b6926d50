//! The consumer client's context: what librdkafka's callbacks (run inside `recv`) tell the
//! member loop in [`super::driver`]: partitions revoked since it last looked, and the watchdog's
//! clock, since when the member has not been settled in its group while the broker answers (see
//! the driver's module doc for why time while the broker is silent does not count).

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use rdkafka::ClientContext;
use rdkafka::consumer::{BaseConsumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaError;
use tokio::time::Instant;

/// How long a client may wait on its own unassignment (join states `wait-unassign-*`) while the
/// broker answers: that is local bookkeeping, done in a moment unless librdkafka is stuck.
const UNASSIGN_TIMEOUT: Duration = Duration::from_secs(15);

/// How long a client may stay in the other unsettled join states (`wait-join`, `wait-sync`, ...)
/// while the broker answers, beyond the session timeout: a rebalance legitimately waits for a
/// member that vanished until its session expires, so giving up sooner would only add members.
const REJOIN_MARGIN: Duration = Duration::from_secs(15);

/// A broker that sent this client nothing for this long is taken as away (down or hung): time
/// outside the group is not counted then (see the module doc).
const BROKER_SILENT: Duration = Duration::from_secs(15);

/// How often the client refreshes metadata: what makes an idle but reachable broker answer well
/// within [`BROKER_SILENT`].
pub(super) const METADATA_REFRESH_MS: &str = "5000";

/// What the client's callbacks (run inside `recv`) tell the loop: partitions revoked since
/// it last looked, and since when the member has not been settled in its group.
#[derive(Default)]
pub(crate) struct RunnerContext {
    pub(super) revoked: Mutex<Vec<(String, i32)>>,
    /// The group join state librdkafka last reported (statistics) when it was not `steady`,
    /// and since when it has not been.
    unsettled: Mutex<Option<(String, Instant)>>,
}

impl RunnerContext {
    pub(super) fn group_state(&self) -> Option<(String, Instant)> {
        self.unsettled
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// librdkafka's own logs and errors (session timeouts, fatal errors) go to the service's logs;
/// rdkafka's default sends them to the `log` crate, which nothing here listens to.
impl ClientContext for RunnerContext {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, log_message: &str) {
        use rdkafka::config::RDKafkaLogLevel as L;
        match level {
            L::Emerg | L::Alert | L::Critical | L::Error => {
                tracing::error!(target: "librdkafka", fac, "{log_message}");
            }
            L::Warning => tracing::warn!(target: "librdkafka", fac, "{log_message}"),
            L::Notice | L::Info => tracing::info!(target: "librdkafka", fac, "{log_message}"),
            L::Debug => tracing::debug!(target: "librdkafka", fac, "{log_message}"),
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        tracing::warn!(target: "librdkafka", error = %error, "{reason}");
    }

    fn stats(&self, statistics: rdkafka::Statistics) {
        // `rxidle`: microseconds since the broker last sent anything, -1 when it never did.
        let silent_us = i64::try_from(BROKER_SILENT.as_micros()).unwrap_or(i64::MAX);
        let answering = statistics
            .brokers
            .values()
            .any(|b| b.state == "UP" && (0..silent_us).contains(&b.rxidle));
        let Some(cgrp) = statistics.cgrp else {
            return;
        };
        let mut unsettled = self
            .unsettled
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        *unsettled = next_unsettled(
            unsettled.take(),
            &cgrp.join_state,
            answering,
            Instant::now(),
        );
    }
}

/// The watchdog's clock after a statistics report: cleared once the member is `steady`, restarted
/// while the broker is silent (that time does not count), else kept from when the member left
/// `steady` (its join state updated).
fn next_unsettled(
    previous: Option<(String, Instant)>,
    join_state: &str,
    broker_answering: bool,
    now: Instant,
) -> Option<(String, Instant)> {
    if join_state == "steady" {
        return None;
    }
    let since = match previous {
        Some((_, since)) if broker_answering => since,
        _ => now,
    };
    Some((join_state.to_owned(), since))
}

/// How long a member may stay in `join_state` while the broker answers before its client is
/// recreated.
pub(super) fn rejoin_timeout(join_state: &str, session_timeout: Duration) -> Duration {
    if join_state.starts_with("wait-unassign") {
        UNASSIGN_TIMEOUT
    } else {
        session_timeout + REJOIN_MARGIN
    }
}

impl ConsumerContext for RunnerContext {
    fn pre_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            let mut revoked = self.revoked.lock().unwrap_or_else(PoisonError::into_inner);
            revoked.extend(
                tpl.elements()
                    .iter()
                    .map(|e| (e.topic().to_owned(), e.partition())),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_watchdog_counts_only_time_the_broker_answers() {
        let t0 = Instant::now();
        let later = t0 + Duration::from_secs(40);
        // Left `steady` while the broker answers: the clock starts and keeps its start.
        let first = next_unsettled(None, "wait-join", true, t0);
        assert_eq!(first, Some(("wait-join".to_owned(), t0)));
        let kept = next_unsettled(first.clone(), "wait-sync", true, later);
        assert_eq!(kept, Some(("wait-sync".to_owned(), t0)));
        // A silent broker (hung, down) restarts the clock: that time does not count.
        let hung = next_unsettled(first, "wait-join", false, later);
        assert_eq!(hung, Some(("wait-join".to_owned(), later)));
        // Steady clears it, whatever the broker did.
        assert_eq!(next_unsettled(hung, "steady", false, later), None);
    }

    #[test]
    fn a_rebalance_may_wait_out_a_vanished_members_session() {
        let session = Duration::from_secs(45);
        assert_eq!(
            rejoin_timeout("wait-unassign-to-complete", session),
            UNASSIGN_TIMEOUT
        );
        assert_eq!(
            rejoin_timeout("wait-unassign-call", session),
            UNASSIGN_TIMEOUT
        );
        let join = rejoin_timeout("wait-join", session);
        assert!(join > session, "{join:?}");
        assert_eq!(rejoin_timeout("wait-sync", session), join);
    }
}
