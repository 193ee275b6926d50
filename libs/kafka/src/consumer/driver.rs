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
//! ([`super::context`]: 15 s of silence; metadata is refreshed every few seconds so an idle
//! client hears from it).
//! Recreating a client while the broker is hung helps nothing and harms: each abandoned client's
//! JoinGroup, queued in its socket, is read when the broker resumes and leaves a member behind
//! that the broker waits for until its session expires; a watchdog quicker than the session
//! timeout then abandons the next client before that, and the group never forms (seen on Tansu
//! after a 90 s hang).

use std::collections::HashMap;
use std::sync::PoisonError;
use std::time::Duration;

use chrono::{DateTime, Utc};
use prometheus::{IntCounterVec, IntGaugeVec, Opts, Registry};
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::BorrowedMessage;
use rdkafka::{Message, Offset, TopicPartitionList};
use slipway_events::Topic;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::ConsumerError;
use super::context::{METADATA_REFRESH_MS, RunnerContext, rejoin_timeout};
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

type Client = StreamConsumer<RunnerContext>;

/// A partition paused (or resumed and awaiting redelivery) on a failed message.
struct Wait {
    offset: i64,
    attempts: u32,
    /// `Some`: paused until then; `None`: resumed, the message not redelivered yet.
    due: Option<Instant>,
    since: DateTime<Utc>,
}

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
