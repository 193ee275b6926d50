//! Build output: every line stored in order (`build_logs`), the last few kept for the reason a
//! failed build gives.

use std::collections::VecDeque;

use slipway_ids::BuildId;
use sqlx::PgPool;

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

/// Writes one build's lines, batching inserts; sequence numbers follow arrival order.
pub struct LogWriter {
    pool: PgPool,
    build: BuildId,
    next_seq: i64,
    pending: Vec<(i64, String, &'static str, String)>,
    tail: VecDeque<String>,
    tail_len: usize,
}

impl LogWriter {
    /// Continues after the build's last stored line (a resumed build appends).
    pub async fn open(pool: PgPool, build: BuildId, tail_len: usize) -> Result<Self, sqlx::Error> {
        let last: Option<i64> =
            sqlx::query_scalar("SELECT max(seq) FROM build_logs WHERE build_id = $1")
                .bind(build)
                .fetch_one(&pool)
                .await?;
        Ok(Self {
            pool,
            build,
            next_seq: last.map_or(0, |s| s + 1),
            pending: Vec::new(),
            tail: VecDeque::new(),
            tail_len,
        })
    }

    /// Adds a line (flushed in batches; call [`LogWriter::flush`] when output pauses).
    pub async fn line(
        &mut self,
        step: &str,
        stream: Stream,
        text: &str,
    ) -> Result<(), sqlx::Error> {
        // Lines are text; a NUL would be rejected by PostgreSQL.
        let text = text.replace('\0', "\u{FFFD}");
        if stream != Stream::Slipway {
            if self.tail.len() == self.tail_len {
                self.tail.pop_front();
            }
            self.tail.push_back(text.clone());
        }
        self.pending
            .push((self.next_seq, step.to_owned(), stream.as_str(), text));
        self.next_seq += 1;
        if self.pending.len() >= 200 {
            self.flush().await?;
        }
        Ok(())
    }

    /// Stores the pending lines.
    pub async fn flush(&mut self) -> Result<(), sqlx::Error> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let (mut seqs, mut steps, mut streams, mut lines) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for (seq, step, stream, line) in self.pending.drain(..) {
            seqs.push(seq);
            steps.push(step);
            streams.push(stream.to_owned());
            lines.push(line);
        }
        sqlx::query(
            "INSERT INTO build_logs (build_id, seq, step, stream, line) \
             SELECT $1, * FROM UNNEST($2::bigint[], $3::text[], $4::text[], $5::text[])",
        )
        .bind(self.build)
        .bind(&seqs)
        .bind(&steps)
        .bind(&streams)
        .bind(&lines)
        .execute(&self.pool)
        .await?;
        Ok(())
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
