//! Output capture: an instance writes to `stdout.log` / `stderr.log` in its directory (files, not
//! pipes, so it never gets SIGPIPE when the deployer goes away), and a tailer reads what was
//! appended, numbers the lines per instance across both streams (`seq`) and sends them in
//! batches as [`TargetEvent::Logs`].
//!
//! One [`Tail`] lives as long as the instance's supervision, across restarts (the files are
//! appended to). After a recovery a new tail starts from the beginning of the files, so lines
//! are sent again with the same `seq` and the consumer recognises them.

use std::collections::VecDeque;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use slipway_events::deploy::LogLine;
use tokio::sync::mpsc::UnboundedSender;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::target::TargetEvent;

/// How often the files are checked for new output.
const POLL: Duration = Duration::from_millis(100);
/// Lines kept for [`TargetEvent::Exited::last_lines`].
const RECENT: usize = 20;
/// Longest line sent; longer output is cut into several lines.
const MAX_LINE: usize = 16 * 1024;
/// Most bytes read from one file per poll, so one chatty instance cannot hold the tailer.
const MAX_READ: u64 = 256 * 1024;

pub(crate) const STDOUT: &str = "stdout.log";
pub(crate) const STDERR: &str = "stderr.log";

/// One captured stream.
struct Stream {
    name: &'static str,
    path: PathBuf,
    /// Opened once the file exists; reading it continues where the previous read stopped.
    file: Option<File>,
    /// Bytes after the last newline.
    partial: Vec<u8>,
}

impl Stream {
    fn new(name: &'static str, path: PathBuf) -> Self {
        Self {
            name,
            path,
            file: None,
            partial: Vec::new(),
        }
    }

    /// Reads what was appended since the last call; completed lines go to `out`.
    ///
    /// These are small reads of local regular files: they do not block in any way that matters
    /// to the runtime.
    fn read_lines(&mut self, out: &mut Vec<(&'static str, String)>) {
        if self.file.is_none() {
            self.file = File::open(&self.path).ok();
        }
        let Some(file) = self.file.as_mut() else {
            return;
        };
        let mut chunk = Vec::new();
        if let Err(e) = file.take(MAX_READ).read_to_end(&mut chunk) {
            tracing::warn!(path = %self.path.display(), error = %e, "cannot read instance output");
            return;
        }
        self.partial.extend_from_slice(&chunk);
        while let Some(end) = self.partial.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.partial.drain(..=end).collect();
            out.push((self.name, decode(&line[..line.len() - 1])));
        }
        while self.partial.len() > MAX_LINE {
            let line: Vec<u8> = self.partial.drain(..MAX_LINE).collect();
            out.push((self.name, decode(&line)));
        }
    }

    /// The unterminated rest, as a line (the process ended: nothing will complete it).
    fn take_partial(&mut self) -> Option<(&'static str, String)> {
        if self.partial.is_empty() {
            return None;
        }
        let line = std::mem::take(&mut self.partial);
        Some((self.name, decode(&line)))
    }
}

fn decode(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    text.strip_suffix('\r').unwrap_or(&text).to_owned()
}

/// The output of one instance, as it is read.
pub(crate) struct Tail {
    instance_id: Uuid,
    streams: [Stream; 2],
    /// `seq` of the next line read.
    next_seq: u64,
    /// Lines read, not sent yet; the first has `seq == next_seq - pending.len()`.
    pending: Vec<LogLine>,
    /// When the oldest pending line was read.
    pending_since: Option<Instant>,
    recent: VecDeque<String>,
    batch: Duration,
    events: UnboundedSender<TargetEvent>,
}

impl Tail {
    /// A tail of the files in `dir`, from their beginning.
    pub fn new(
        instance_id: Uuid,
        dir: &Path,
        batch: Duration,
        events: UnboundedSender<TargetEvent>,
    ) -> Self {
        Self {
            instance_id,
            streams: [
                Stream::new("stdout", dir.join(STDOUT)),
                Stream::new("stderr", dir.join(STDERR)),
            ],
            next_seq: 0,
            pending: Vec::new(),
            pending_since: None,
            recent: VecDeque::with_capacity(RECENT),
            batch,
            events,
        }
    }

    fn push(&mut self, lines: Vec<(&'static str, String)>) {
        if lines.is_empty() {
            return;
        }
        self.pending_since.get_or_insert_with(Instant::now);
        let at = Utc::now();
        for (stream, line) in lines {
            if self.recent.len() == RECENT {
                self.recent.pop_front();
            }
            self.recent.push_back(line.clone());
            self.pending.push(LogLine {
                stream: stream.to_owned(),
                line,
                at,
            });
            self.next_seq += 1;
        }
    }

    /// Reads new complete lines; sends the batch if it is due.
    pub fn poll(&mut self) {
        let mut lines = Vec::new();
        for stream in &mut self.streams {
            stream.read_lines(&mut lines);
        }
        self.push(lines);
        if self
            .pending_since
            .is_some_and(|since| since.elapsed() >= self.batch)
        {
            self.flush();
        }
    }

    /// Sends the pending lines now.
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

    /// The process ended: reads and sends everything it wrote, unterminated last lines
    /// included, and answers the last lines for the exit report.
    pub fn finish(&mut self) -> Vec<String> {
        let mut lines = Vec::new();
        for stream in &mut self.streams {
            stream.read_lines(&mut lines);
            lines.extend(stream.take_partial());
        }
        self.push(lines);
        self.flush();
        self.recent.iter().cloned().collect()
    }
}

/// Polls `tail` until `cancel`.
pub(crate) fn spawn_tailer(
    tail: Arc<tokio::sync::Mutex<Tail>>,
    cancel: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tick.tick() => tail.lock().await.poll(),
            }
        }
        tail.lock().await.flush();
    })
}
