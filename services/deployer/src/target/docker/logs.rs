//! Output: the engine keeps each container's output across its restarts (one container per
//! instance, started again after a crash), so a line's `seq` is its position in that output,
//! as on the process target. A follower per run streams the container's log (`follow`) from
//! the beginning, skips the lines already read (the earlier runs', or none after a deployer
//! restart: then lines are sent again with the same `seq`, which the consumer recognises) and
//! batches the rest as [`TargetEvent::Logs`]. The stream ends when the run ends.
//!
//! The engine's log driver must keep the whole output for the numbering to hold (the default
//! `json-file` without rotation does; with rotation, lines read after a deployer restart get
//! smaller numbers and may be taken for repeats).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use bollard::Docker;
use bollard::container::LogOutput;
use bollard::query_parameters::LogsOptionsBuilder;
use chrono::Utc;
use futures::StreamExt;
use slipway_events::deploy::LogLine;
use tokio::sync::Mutex;
use tokio::sync::mpsc::UnboundedSender;
use tokio::time::Instant;
use uuid::Uuid;

use crate::target::TargetEvent;

/// Lines kept for [`TargetEvent::Exited::last_lines`].
const RECENT: usize = 20;
/// Longest line sent; longer output is cut into several lines.
const MAX_LINE: usize = 16 * 1024;
/// How often pending lines are checked for being due.
const TICK: Duration = Duration::from_millis(50);
/// How long to wait before opening a lost log stream again.
const REOPEN: Duration = Duration::from_millis(500);

/// The output of one instance, across its runs.
pub(crate) struct Tail {
    instance_id: Uuid,
    /// Lines of the container's output read so far (the next line's `seq`).
    next_seq: u64,
    /// Bytes after the last newline, per stream (stdout, stderr).
    partial: [Vec<u8>; 2],
    pending: Vec<LogLine>,
    pending_since: Option<Instant>,
    recent: VecDeque<String>,
    batch: Duration,
    events: UnboundedSender<TargetEvent>,
}

impl Tail {
    pub fn new(instance_id: Uuid, batch: Duration, events: UnboundedSender<TargetEvent>) -> Self {
        Self {
            instance_id,
            next_seq: 0,
            partial: [Vec::new(), Vec::new()],
            pending: Vec::new(),
            pending_since: None,
            recent: VecDeque::with_capacity(RECENT),
            batch,
            events,
        }
    }

    /// Lines read so far: a new follower skips that many.
    pub fn read(&self) -> u64 {
        self.next_seq
    }

    fn push(&mut self, stream: usize, line: String, skip: &mut u64) {
        if *skip > 0 {
            *skip -= 1;
            return;
        }
        self.pending_since.get_or_insert_with(Instant::now);
        if self.recent.len() == RECENT {
            self.recent.pop_front();
        }
        self.recent.push_back(line.clone());
        self.pending.push(LogLine {
            stream: if stream == 0 { "stdout" } else { "stderr" }.to_owned(),
            line,
            at: Utc::now(),
        });
        self.next_seq += 1;
    }

    /// Takes a chunk of output; completed lines are queued (after `skip` of them).
    fn take(&mut self, stream: usize, bytes: &[u8], skip: &mut u64) {
        let mut partial = std::mem::take(&mut self.partial[stream]);
        partial.extend_from_slice(bytes);
        while let Some(end) = partial.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = partial.drain(..=end).collect();
            self.push(stream, decode(&line[..line.len() - 1]), skip);
        }
        while partial.len() > MAX_LINE {
            let line: Vec<u8> = partial.drain(..MAX_LINE).collect();
            self.push(stream, decode(&line), skip);
        }
        self.partial[stream] = partial;
    }

    fn due(&self) -> bool {
        self.pending_since
            .is_some_and(|since| since.elapsed() >= self.batch)
    }

    pub fn flush(&mut self) {
        self.pending_since = None;
        if self.pending.is_empty() {
            return;
        }
        let lines = std::mem::take(&mut self.pending);
        let first_seq = self.next_seq - lines.len() as u64;
        let _ = self.events.send(TargetEvent::Logs {
            instance_id: self.instance_id,
            first_seq,
            lines,
        });
    }

    /// The run ended: sends everything, unterminated last lines included, and answers the
    /// last lines for the exit report.
    pub fn finish(&mut self) -> Vec<String> {
        let mut none = 0;
        for stream in 0..2 {
            let rest = std::mem::take(&mut self.partial[stream]);
            if !rest.is_empty() {
                self.push(stream, decode(&rest), &mut none);
            }
        }
        self.flush();
        self.recent.iter().cloned().collect()
    }
}

fn decode(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    text.strip_suffix('\r').unwrap_or(&text).to_owned()
}

/// Streams the container's output into `tail` until the run ends (the engine closes the
/// stream) or the task is aborted. Skips the lines `tail` has read already; a stream lost while
/// the container still runs (the engine restarted, a connection dropped) is opened again.
pub(crate) fn follow(
    docker: Docker,
    container: String,
    tail: Arc<Mutex<Tail>>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            stream_once(&docker, &container, &tail).await;
            let running = docker
                .inspect_container(&container, None)
                .await
                .ok()
                .and_then(|i| i.state?.running)
                .unwrap_or(false);
            if !running {
                break;
            }
            tracing::debug!(container = %container, "log stream lost; opening it again");
            tokio::time::sleep(REOPEN).await;
            // What was after the last newline is read again from the start.
            tail.lock().await.partial = [Vec::new(), Vec::new()];
        }
        tail.lock().await.flush();
    })
}

async fn stream_once(docker: &Docker, container: &str, tail: &Mutex<Tail>) {
    let mut skip = tail.lock().await.read();
    let options = LogsOptionsBuilder::default()
        .follow(true)
        .stdout(true)
        .stderr(true)
        .build();
    let mut stream = std::pin::pin!(docker.logs(container, Some(options)));
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            chunk = stream.next() => match chunk {
                Some(Ok(LogOutput::StdOut { message } | LogOutput::Console { message })) => {
                    tail.lock().await.take(0, &message, &mut skip);
                }
                Some(Ok(LogOutput::StdErr { message })) => {
                    tail.lock().await.take(1, &message, &mut skip);
                }
                Some(Ok(LogOutput::StdIn { .. })) => {}
                Some(Err(e)) => {
                    tracing::debug!(container, error = %e, "log stream ended");
                    return;
                }
                None => return,
            },
            _ = tick.tick() => {
                let mut tail = tail.lock().await;
                if tail.due() {
                    tail.flush();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_numbered_across_runs_and_skipped_when_read_again() {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let id = Uuid::new_v4();
        let mut tail = Tail::new(id, Duration::ZERO, tx);
        let mut skip = 0;
        tail.take(0, b"one\ntw", &mut skip);
        tail.take(1, b"err\n", &mut skip);
        tail.take(0, b"o\n", &mut skip);
        tail.flush();
        assert_eq!(tail.read(), 3);
        // A second follower reads the same output from the start: nothing is sent twice.
        let mut skip = tail.read();
        tail.take(0, b"one\ntwo\n", &mut skip);
        tail.take(1, b"err\nthree\n", &mut skip);
        let last = tail.finish();
        assert_eq!(last, ["one", "err", "two", "three"]);
        let mut seqs = Vec::new();
        while let Ok(TargetEvent::Logs {
            first_seq, lines, ..
        }) = rx.try_recv()
        {
            seqs.push((first_seq, lines.len()));
        }
        assert_eq!(seqs, [(0, 3), (3, 1)]);
    }
}
