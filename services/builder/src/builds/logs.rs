//! Build output: every line stored in order (`build_logs`), the last few kept for the reason a
//! failed build gives. Bounded: a line keeps at most `max_line_bytes` (the rest is said by a
//! marker, see [`super::output`]), and a build keeps at most `max_log_bytes` of command output;
//! past that, lines are counted and dropped, and one marker line says how many. The builder's
//! own narration (`slipway` lines, a handful per step) is always kept.
//!
//! Writes are fenced on the build's lease: a replica that lost the build stores nothing more.

use std::collections::VecDeque;

use sqlx::PgPool;

use super::lease::{Lease, LeaseError};
use super::output::cut;

/// Which stream a line came from; `slipway` lines are the builder's own narration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
    Slipway,
}

impl Stream {
    fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
            Stream::Slipway => "slipway",
        }
    }
}

/// How much output a build keeps.
#[derive(Debug, Clone, Copy)]
pub struct LogLimits {
    /// Output lines kept for a failed build's reason.
    pub tail_lines: usize,
    pub max_line_bytes: usize,
    pub max_log_bytes: usize,
}

/// Lines counted after the log limit, shown by the marker line.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
struct Dropped {
    lines: u64,
    bytes: u64,
}

/// Writes one build's lines, batching inserts; sequence numbers follow arrival order.
pub struct LogWriter {
    pool: PgPool,
    lease: Lease,
    limits: LogLimits,
    next_seq: i64,
    /// Bytes of command output stored so far (an earlier attempt's lines count too).
    kept_bytes: usize,
    /// The marker line's seq once the log limit was reached, and what it last said.
    marker: Option<(i64, Dropped)>,
    dropped: Dropped,
    pending: Vec<(i64, String, &'static str, String)>,
    tail: VecDeque<String>,
}

impl LogWriter {
    /// Continues after the build's last stored line (a build taken over appends).
    pub async fn open(pool: PgPool, lease: Lease, limits: LogLimits) -> Result<Self, LeaseError> {
        let (last, bytes): (Option<i64>, Option<i64>) = sqlx::query_as(
            "SELECT max(seq), (sum(octet_length(line)) FILTER (WHERE stream <> 'slipway'))::bigint \
             FROM build_logs WHERE build_id = $1",
        )
        .bind(lease.build())
        .fetch_one(&pool)
        .await?;
        Ok(Self {
            pool,
            lease,
            limits,
            next_seq: last.map_or(0, |s| s + 1),
            kept_bytes: usize::try_from(bytes.unwrap_or(0)).unwrap_or(usize::MAX),
            marker: None,
            dropped: Dropped::default(),
            pending: Vec::new(),
            tail: VecDeque::new(),
        })
    }

    /// Adds a line (flushed in batches; call [`LogWriter::flush`] when output pauses).
    pub async fn line(&mut self, step: &str, stream: Stream, text: &str) -> Result<(), LeaseError> {
        // Lines are text; a NUL would be rejected by PostgreSQL.
        let text = cut(text, self.limits.max_line_bytes).replace('\0', "\u{FFFD}");
        if stream != Stream::Slipway {
            if self.tail.len() >= self.limits.tail_lines {
                self.tail.pop_front();
            }
            if self.limits.tail_lines > 0 {
                self.tail.push_back(text.clone());
            }
            // Sticky: once over, later (even short) lines are dropped too, keeping order.
            if self.marker.is_some() || self.kept_bytes + text.len() > self.limits.max_log_bytes {
                self.dropped.lines += 1;
                self.dropped.bytes += text.len() as u64;
                if self.marker.is_none() {
                    self.marker = Some((self.next_seq, self.dropped));
                    let marker = self.marker_text();
                    self.push(step, Stream::Slipway, marker);
                }
                return self.flush_if_full().await;
            }
            self.kept_bytes += text.len();
        }
        self.push(step, stream, text);
        self.flush_if_full().await
    }

    fn push(&mut self, step: &str, stream: Stream, text: String) {
        self.pending
            .push((self.next_seq, step.to_owned(), stream.as_str(), text));
        self.next_seq += 1;
    }

    async fn flush_if_full(&mut self) -> Result<(), LeaseError> {
        if self.pending.len() >= 200 {
            self.flush().await?;
        }
        Ok(())
    }

    fn marker_text(&self) -> String {
        format!(
            "… [log limit of {} bytes reached: {} later lines ({} bytes) not kept]",
            self.limits.max_log_bytes, self.dropped.lines, self.dropped.bytes
        )
    }

    /// Stores the pending lines (and the marker's count, when it changed).
    pub async fn flush(&mut self) -> Result<(), LeaseError> {
        if !self.pending.is_empty() {
            self.insert_pending().await?;
        }
        if let Some((seq, shown)) = self.marker
            && shown != self.dropped
        {
            let done = sqlx::query(
                "UPDATE build_logs SET line = $3 WHERE build_id = $1 AND seq = $2 \
                 AND EXISTS (SELECT 1 FROM builds WHERE id = $1 AND lease_owner = $4 \
                             AND lease_epoch = $5 AND status = 'running')",
            )
            .bind(self.lease.build())
            .bind(seq)
            .bind(self.marker_text())
            .bind(self.lease.owner().as_str())
            .bind(self.lease.epoch())
            .execute(&self.pool)
            .await?;
            if done.rows_affected() == 0 {
                return Err(LeaseError::Lost);
            }
            self.marker = Some((seq, self.dropped));
        }
        Ok(())
    }

    async fn insert_pending(&mut self) -> Result<(), LeaseError> {
        let count = self.pending.len();
        let (mut seqs, mut steps, mut streams, mut lines) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for (seq, step, stream, line) in self.pending.drain(..) {
            seqs.push(seq);
            steps.push(step);
            streams.push(stream.to_owned());
            lines.push(line);
        }
        // `FOR SHARE`: a claim of the build (which updates its row) waits for this insert, so
        // the next owner numbers its lines after these; once it claimed, this inserts nothing.
        let done = sqlx::query(
            "INSERT INTO build_logs (build_id, seq, step, stream, line) \
             SELECT $1, l.* FROM UNNEST($2::bigint[], $3::text[], $4::text[], $5::text[]) AS l \
             WHERE EXISTS (SELECT 1 FROM builds WHERE id = $1 AND lease_owner = $6 \
                           AND lease_epoch = $7 AND status = 'running' FOR SHARE) \
             ON CONFLICT DO NOTHING",
        )
        .bind(self.lease.build())
        .bind(&seqs)
        .bind(&steps)
        .bind(&streams)
        .bind(&lines)
        .bind(self.lease.owner().as_str())
        .bind(self.lease.epoch())
        .execute(&self.pool)
        .await?;
        if done.rows_affected() == 0 && count > 0 {
            return Err(LeaseError::Lost);
        }
        Ok(())
    }

    /// The longest line kept (longer ones are cut, with a marker).
    pub fn max_line_bytes(&self) -> usize {
        self.limits.max_line_bytes
    }

    /// The last lines of command output, oldest first.
    pub fn tail(&self) -> Vec<String> {
        self.tail.iter().cloned().collect()
    }

    /// Forgets the tail (a new step starts).
    pub fn clear_tail(&mut self) {
        self.tail.clear();
    }
}
