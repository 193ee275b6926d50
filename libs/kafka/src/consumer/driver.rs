//! The consumer loop shared by every runner: poll, process, store the offset; pause a
//! partition on a transient failure; recreate the client when librdkafka gives up on it.
//!
//! States of one partition: *flowing* → (its message failed transiently) *paused* until the
//! backoff passes: the partition is paused and sought back to the failed message, so the
//! other partitions keep flowing and nothing after it on this partition is processed out of
//! order → *resumed*: the message is fetched again and retried (attempt + 1) → *flowing* once it
//! succeeds (or is dead-lettered for a permanent reason). A revoked partition forgets its wait
//! (its new owner starts from the committed offset, which is never past the failed message).
//!
//! States of the member: *consuming* → *draining* (cancelled: commit stored offsets, leave) or
//! *restarting*: the client is dropped and a new one joins the group after a backoff, when
//! librdkafka reported a fatal error (e.g. a static member fenced), a pause/seek failed, or the
//! watchdog found the member outside its group for too long while the broker answers. The last
//! is what left the builder deaf after a 90 s broker hang: the session expired during the hang,
//! librdkafka revoked the assignment and then waited for ever (join state
//! `wait-unassign-to-complete`, then `wait-join`) on requests the broker never answered, with no
//! error to see; polling went on, nothing was fetched. Offsets are stored only after a message is
//! done with, so a restart redelivers, never skips.
//!
//! The watchdog counts unsettled time only while some broker has answered this client lately
//! ([`BROKER_SILENT`]; metadata is refreshed every few seconds so an idle client hears from it).
//! Recreating a client while the broker is hung helps nothing and harms: each abandoned client's
//! JoinGroup, queued in its socket, is read when the broker resumes and leaves a member behind
//! that the broker waits for until its session expires; a watchdog quicker than the session
//! timeout then abandons the next client before that, and the group never forms (seen on Tansu
//! after a 90 s hang).

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use chrono::{DateTime, Utc};
use prometheus::{IntCounterVec, IntGaugeVec, Opts, Registry};
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::KafkaError;
use rdkafka::message::BorrowedMessage;
use rdkafka::{ClientContext, Message, Offset, TopicPartitionList};
use slipway_events::Topic;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::ConsumerError;
use super::status::{Cause, ConsumerStatus};
use crate::KafkaSettings;

/// What processing one message came to.
pub(crate) enum Step {
    /// Done with it (applied, ignored, dead-lettered...): its offset may be stored.
    Done { ty: String, outcome: &'static str },
    /// Not done; retry after a backoff, the partition paused meanwhile.
    Retry { cause: Cause, error: String },
}

/// Processes one record; called in partition order, `attempt` counting from 1.
pub(crate) trait Process: Send + Sync {
    fn process(
        &self,
        message: &BorrowedMessage<'_>,
        attempt: u32,
    ) -> impl Future<Output = Step> + Send;
}

/// Counters for every consumer of a process.
#[derive(Clone)]
pub struct ConsumerMetrics {
    pub(crate) consumed: IntCounterVec,
    retries: IntCounterVec,
    waiting: IntGaugeVec,
    restarts: IntCounterVec,
}

impl ConsumerMetrics {
    /// Registers `slipway_events_consumed_total`, `slipway_consumer_retries_total`,
    /// `slipway_consumer_waiting_partitions` and `slipway_consumer_restarts_total` on
    /// `registry` (once per process; clone the result for more runners).
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let consumed = IntCounterVec::new(
            Opts::new(
                "events_consumed_total",
                "Events consumed, by consumer group, topic, CloudEvents type and outcome \
                 (applied, duplicate, ignored, dead_lettered, rejected: unsigned or not its \
                 owner's, dead-lettered too)",
            ),
            &["group", "topic", "type", "outcome"],
        )?;
        let retries = IntCounterVec::new(
            Opts::new(
                "consumer_retries_total",
                "Messages that failed transiently and will be retried, by consumer group and \
                 cause (database, broker, transient)",
            ),
            &["group", "cause"],
        )?;
        let waiting = IntGaugeVec::new(
            Opts::new(
                "consumer_waiting_partitions",
                "Partitions paused on a message that failed transiently, by consumer group",
            ),
            &["group"],
        )?;
        let restarts = IntCounterVec::new(
            Opts::new(
                "consumer_restarts_total",
                "Kafka consumer clients recreated (a fatal client error, or stuck outside the group), \
                 by consumer group",
            ),
            &["group"],
        )?;
        registry.register(Box::new(consumed.clone()))?;
        registry.register(Box::new(retries.clone()))?;
        registry.register(Box::new(waiting.clone()))?;
        registry.register(Box::new(restarts.clone()))?;
        Ok(Self {
            consumed,
            retries,
            waiting,
            restarts,
        })
    }
}

/// What the client's callbacks (run inside `recv`) tell the loop: partitions revoked since
/// it last looked, and since when the member has not been settled in its group.
#[derive(Default)]
pub(crate) struct RunnerContext {
    revoked: Mutex<Vec<(String, i32)>>,
    /// The group join state librdkafka last reported (statistics) when it was not `steady`,
    /// and since when it has not been.
    unsettled: Mutex<Option<(String, Instant)>>,
}

impl RunnerContext {
    fn group_state(&self) -> Option<(String, Instant)> {
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
fn rejoin_timeout(join_state: &str, session_timeout: Duration) -> Duration {
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

type Client = StreamConsumer<RunnerContext>;

/// A partition paused (or resumed and awaiting redelivery) on a failed message.
struct Wait {
    offset: i64,
    attempts: u32,
    /// `Some`: paused until then; `None`: resumed, the message not redelivered yet.
    due: Option<Instant>,
    since: DateTime<Utc>,
}

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
const METADATA_REFRESH_MS: &str = "5000";

/// How one member run ended.
enum Exit {
    Cancelled,
    /// Drop the client and join again, for `reason`.
    Restart {
        reason: String,
    },
}

/// One consumer group member: what it consumes and with what.
pub(crate) struct Driver<'a, P> {
    pub settings: &'a KafkaSettings,
    pub group: &'a str,
    pub topics: &'a [Topic],
    pub process: &'a P,
    pub metrics: &'a ConsumerMetrics,
    pub status: &'a ConsumerStatus,
}

impl<P: Process> Driver<'_, P> {
    fn client(&self) -> Result<Client, ConsumerError> {
        let mut config = self.settings.client_config();
        if let Some(instance) = self.settings.group_instance_id(self.group) {
            config.set("group.instance.id", instance);
        }
        config
            .set("group.id", self.group)
            .set("enable.auto.commit", "true")
            .set("auto.commit.interval.ms", "1000")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set(
                "session.timeout.ms",
                self.settings.session_timeout_ms.to_string(),
            )
            .set(
                "heartbeat.interval.ms",
                (self.settings.session_timeout_ms / 15).max(500).to_string(),
            )
            .set("fetch.wait.max.ms", self.settings.fetch_wait_ms.to_string())
            // The watchdog reads the group join state from the statistics, and hears from an
            // idle broker through the metadata refresh.
            .set("statistics.interval.ms", "5000")
            .set("topic.metadata.refresh.interval.ms", METADATA_REFRESH_MS);
        config
            .create_with_context(RunnerContext::default())
            .map_err(|source| ConsumerError::Create {
                group: self.group.to_owned(),
                source,
            })
    }

    /// Consumes until `cancel` fires, recreating the client whenever it breaks.
    pub async fn run(&self, cancel: &CancellationToken) -> Result<(), ConsumerError> {
        let names: Vec<String> = self
            .topics
            .iter()
            .map(|t| self.settings.topics().name(*t))
            .collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let mut restarts: u32 = 0;
        loop {
            let client = self.client()?;
            client
                .subscribe(&refs)
                .map_err(|source| ConsumerError::Subscribe {
                    group: self.group.to_owned(),
                    topics: names.clone(),
                    source,
                })?;
            tracing::info!(group = %self.group, topics = ?names, restarts, "consuming");
            self.status.member_running();
            let started = Instant::now();
            let exit = self.consume(&client, cancel).await;
            // A member that ran a good while starts its restart backoff afresh.
            if started.elapsed() > Duration::from_secs(120) {
                restarts = 0;
            }
            self.status.no_partitions();
            self.metrics.waiting.with_label_values(&[self.group]).set(0);
            let reason = match exit {
                Exit::Cancelled => {
                    self.finish(&client);
                    tracing::info!(group = %self.group, "consumer stopped");
                    return Ok(());
                }
                Exit::Restart { reason } => reason,
            };
            // No final commit: a client being given up on may block on it (a broker that does
            // not answer). Auto-commit has committed what was stored up to a second ago; the
            // rest is redelivered, which handlers make harmless.
            drop(client);
            restarts = restarts.saturating_add(1);
            self.metrics.restarts.with_label_values(&[self.group]).inc();
            self.status.member_restarting(Utc::now(), &reason);
            let delay = self.settings.backoff(restarts.min(8));
            tracing::error!(group = %self.group, reason = %reason, ?delay, "recreating the consumer");
            tokio::select! {
                () = cancel.cancelled() => return Ok(()),
                () = tokio::time::sleep(delay) => {}
            }
        }
    }

    /// Commits the stored offsets and leaves the group.
    fn finish(&self, client: &Client) {
        match client.commit_consumer_state(CommitMode::Sync) {
            Ok(()) => {}
            // Nothing was stored since the last commit.
            Err(KafkaError::ConsumerCommit(rdkafka::types::RDKafkaErrorCode::NoOffset)) => {}
            Err(e) => tracing::warn!(group = %self.group, error = %e, "final commit failed"),
        }
        client.unsubscribe();
    }

    async fn consume(&self, client: &Client, cancel: &CancellationToken) -> Exit {
        let mut waits: HashMap<(String, i32), Wait> = HashMap::new();
        let mut watchdog = tokio::time::interval(Duration::from_secs(5));
        let mut last_poll_warning: Option<Instant> = None;
        loop {
            let due = waits.values().filter_map(|w| w.due).min();
            enum Next<'m> {
                Due,
                Watch,
                Polled(Result<BorrowedMessage<'m>, KafkaError>),
            }
            let next = tokio::select! {
                biased;
                () = cancel.cancelled() => return Exit::Cancelled,
                () = until(due) => Next::Due,
                _ = watchdog.tick() => Next::Watch,
                m = client.recv() => Next::Polled(m),
            };
            if let Err(exit) = self.forget_revoked(client, &mut waits) {
                return exit;
            }
            match next {
                Next::Due => {
                    if let Err(exit) = self.resume_due(client, &mut waits) {
                        return exit;
                    }
                }
                Next::Watch => {
                    if let Some((code, reason)) = client.client().fatal_error() {
                        return Exit::Restart {
                            reason: format!("fatal client error {code:?}: {reason}"),
                        };
                    }
                    let state = client.context().group_state();
                    tracing::debug!(group = %self.group, ?state, "consumer watchdog");
                    let session = Duration::from_millis(self.settings.session_timeout_ms.into());
                    if let Some((join_state, since)) = state
                        && since.elapsed() > rejoin_timeout(&join_state, session)
                    {
                        return Exit::Restart {
                            reason: format!(
                                "not a settled member of the group for {:?} while the broker \
                                 answers (join state {join_state}): a rejoin that never completed",
                                since.elapsed()
                            ),
                        };
                    }
                }
                Next::Polled(Err(e)) => {
                    if let Some((code, reason)) = client.client().fatal_error() {
                        return Exit::Restart {
                            reason: format!("fatal client error {code:?}: {reason}"),
                        };
                    }
                    if matches!(e, KafkaError::MessageConsumptionFatal(_)) {
                        return Exit::Restart {
                            reason: e.to_string(),
                        };
                    }
                    // librdkafka reconnects by itself; one warning per half minute is enough.
                    if last_poll_warning.is_none_or(|t| t.elapsed() > Duration::from_secs(30)) {
                        tracing::warn!(group = %self.group, error = %e, "poll error");
                        last_poll_warning = Some(Instant::now());
                    }
                    // Not a hot loop while the broker is away.
                    tokio::select! {
                        () = cancel.cancelled() => return Exit::Cancelled,
                        () = tokio::time::sleep(Duration::from_millis(200)) => {}
                    }
                }
                Next::Polled(Ok(message)) => {
                    if let Err(exit) = self.handle(client, &message, &mut waits).await {
                        return exit;
                    }
                }
            }
            self.metrics
                .waiting
                .with_label_values(&[self.group])
                .set(i64::try_from(waits.len()).unwrap_or(i64::MAX));
        }
    }

    /// Processes one polled message in the light of its partition's wait, if any.
    async fn handle(
        &self,
        client: &Client,
        message: &BorrowedMessage<'_>,
        waits: &mut HashMap<(String, i32), Wait>,
    ) -> Result<(), Exit> {
        let (topic, partition, offset) = (message.topic(), message.partition(), message.offset());
        let key = (topic.to_owned(), partition);
        let attempt = match waits.get_mut(&key) {
            None => 1,
            // Earlier messages again: the partition was re-fetched from its committed offset
            // (reassigned); it flows, so the wait's backoff is over too.
            Some(w) if offset < w.offset => {
                w.due = None;
                1
            }
            Some(w) if offset == w.offset && w.due.is_none() => w.attempts + 1,
            // Paused but delivered, or past the failed message: put the partition back.
            Some(w) => {
                tracing::debug!(group = %self.group, topic, partition, offset, wait = w.offset, "repositioning a waiting partition");
                return self.hold(client, topic, partition, w.offset, w.due.is_some());
            }
        };
        let step = self.process.process(message, attempt).await;
        match step {
            Step::Done { ty, outcome } => {
                if waits.remove(&key).is_some() {
                    self.status.partition_flows(topic, partition);
                    tracing::info!(group = %self.group, topic, partition, offset, attempt, "recovered; the partition flows again");
                }
                // Failing to store is no reason to stop: the partition was revoked meanwhile and
                // its new owner redelivers this message, which handlers make harmless.
                if let Err(e) = client.store_offset_from_message(message) {
                    tracing::warn!(group = %self.group, topic, partition, offset, error = %e, "offset not stored; the message will be redelivered");
                }
                self.metrics
                    .consumed
                    .with_label_values(&[self.group, topic, ty.as_str(), outcome])
                    .inc();
                Ok(())
            }
            Step::Retry { cause, error } => {
                let delay = self.settings.backoff(attempt);
                let since = waits.get(&key).map_or_else(Utc::now, |w| w.since);
                tracing::warn!(group = %self.group, topic, partition, offset, attempt, ?delay, ?cause, error = %error, "transient failure; the partition waits and retries");
                self.metrics
                    .retries
                    .with_label_values(&[self.group, cause_label(cause)])
                    .inc();
                self.status
                    .partition_waits(topic, partition, since, cause, &error);
                waits.insert(
                    key,
                    Wait {
                        offset,
                        attempts: attempt,
                        due: Some(Instant::now() + delay),
                        since,
                    },
                );
                self.hold(client, topic, partition, offset, true)
            }
        }
    }

    /// Seeks `topic`/`partition` back to `offset`, pausing it first when `pause`. A failure
    /// leaves the fetch position unknown: only a new client (from the committed offsets) is
    /// safe then.
    fn hold(
        &self,
        client: &Client,
        topic: &str,
        partition: i32,
        offset: i64,
        pause: bool,
    ) -> Result<(), Exit> {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(topic, partition);
        let held = if pause { client.pause(&tpl) } else { Ok(()) }.and_then(|()| {
            client.seek(
                topic,
                partition,
                Offset::Offset(offset),
                Duration::from_secs(2),
            )
        });
        held.map_err(|e| Exit::Restart {
            reason: format!("cannot hold {topic}/{partition} at {offset}: {e}"),
        })
    }

    /// Resumes the paused partitions whose backoff has passed.
    fn resume_due(
        &self,
        client: &Client,
        waits: &mut HashMap<(String, i32), Wait>,
    ) -> Result<(), Exit> {
        let now = Instant::now();
        let mut tpl = TopicPartitionList::new();
        for ((topic, partition), w) in waits.iter_mut() {
            if w.due.is_some_and(|d| d <= now) {
                w.due = None;
                tpl.add_partition(topic, *partition);
            }
        }
        if tpl.count() == 0 {
            return Ok(());
        }
        client.resume(&tpl).map_err(|e| Exit::Restart {
            reason: format!("cannot resume paused partitions: {e}"),
        })
    }

    /// Drops the waits of revoked partitions and unpauses them: an application pause outlives
    /// a rebalance in librdkafka, and a reassigned partition must start flowing again.
    fn forget_revoked(
        &self,
        client: &Client,
        waits: &mut HashMap<(String, i32), Wait>,
    ) -> Result<(), Exit> {
        let revoked: Vec<(String, i32)> = {
            let mut r = client
                .context()
                .revoked
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            std::mem::take(&mut *r)
        };
        let mut tpl = TopicPartitionList::new();
        for key in revoked {
            if waits.remove(&key).is_some() {
                self.status.partition_flows(&key.0, key.1);
                tpl.add_partition(&key.0, key.1);
            }
        }
        if tpl.count() == 0 {
            return Ok(());
        }
        client.resume(&tpl).map_err(|e| Exit::Restart {
            reason: format!("cannot unpause revoked partitions: {e}"),
        })
    }
}

fn cause_label(cause: Cause) -> &'static str {
    match cause {
        Cause::Database => "database",
        Cause::Broker => "broker",
        Cause::Transient => "transient",
    }
}

async fn until(due: Option<Instant>) {
    match due {
        Some(due) => tokio::time::sleep_until(due).await,
        None => std::future::pending().await,
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
