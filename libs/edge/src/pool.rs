//! Each router thread's own HTTP/1 connections to instances.
//!
//! A router thread runs a single-threaded runtime, and a connection is driven by the thread
//! that opened it, so each thread keeps its own idle connections (no lock, no atomics): a
//! connection is leased for one exchange and given back when the answer was read to its end.
//! Upgraded connections (WebSocket) are never pooled. Two kinds are kept: hyper's client
//! connections (streamed bodies, upgrades, the gateway's API) and bare TCP streams for the
//! router's own exchanges ([`crate::client`]).

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::time::Instant;

use crate::body::ReqBody;

/// An idle connection unused for this long is closed (instances close theirs too).
const IDLE_TIMEOUT: Duration = Duration::from_secs(50);
/// Idle connections kept per instance and thread.
const MAX_IDLE: usize = 256;

type Sender = SendRequest<ReqBody>;

/// A connection that can wait idle in a [`Slot`].
pub(crate) trait Reusable {
    /// Whether it still looks open (the instance may have closed it while it was idle).
    fn usable(&self) -> bool;
}

impl Reusable for Sender {
    fn usable(&self) -> bool {
        !self.is_closed()
    }
}

struct Idle<C> {
    conn: C,
    since: Instant,
}

/// The idle connections to one address.
pub(crate) struct Slot<C> {
    idle: RefCell<Vec<Idle<C>>>,
}

impl<C: Reusable> Slot<C> {
    /// The most recently used idle connection still open (the warmest, least likely closed).
    pub(crate) fn take(&self) -> Option<C> {
        loop {
            let idle = self.idle.borrow_mut().pop()?;
            if idle.conn.usable() && idle.since.elapsed() <= IDLE_TIMEOUT {
                return Some(idle.conn);
            }
        }
    }

    pub(crate) fn put(&self, conn: C) {
        let mut idle = self.idle.borrow_mut();
        if idle.len() < MAX_IDLE {
            idle.push(Idle {
                conn,
                since: Instant::now(),
            });
        }
    }
}

/// One thread's idle connections of one kind, by address.
pub(crate) struct Slots<C> {
    slots: RefCell<HashMap<Box<str>, Rc<Slot<C>>>>,
}

impl<C> Default for Slots<C> {
    fn default() -> Self {
        Self {
            slots: RefCell::default(),
        }
    }
}

impl<C: Reusable> Slots<C> {
    pub(crate) fn slot(&self, address: &str) -> Rc<Slot<C>> {
        let mut slots = self.slots.borrow_mut();
        match slots.get(address) {
            Some(slot) => slot.clone(),
            None => {
                let slot = Rc::new(Slot {
                    idle: RefCell::default(),
                });
                slots.insert(address.into(), slot.clone());
                slot
            }
        }
    }

    /// Closes expired connections and forgets addresses without any.
    pub(crate) fn sweep(&self) {
        self.slots.borrow_mut().retain(|_, slot| {
            slot.idle
                .borrow_mut()
                .retain(|i| i.conn.usable() && i.since.elapsed() <= IDLE_TIMEOUT);
            // An address leased right now (another reference) is kept.
            Rc::strong_count(slot) > 1 || !slot.idle.borrow().is_empty()
        });
    }
}

thread_local! {
    static SLOTS: Slots<Sender> = Slots::default();
}

/// Why no connection could be had.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("connect timed out")]
    Timeout,
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error("HTTP handshake failed: {0}")]
    Handshake(#[from] hyper::Error),
}

/// A connection in use for one exchange.
pub struct Lease {
    pub sender: Sender,
    /// Where it goes back; `None` for one that must not be reused.
    slot: Option<Rc<Slot<Sender>>>,
    /// Taken from the pool (it may have been closed by the instance meanwhile).
    pub reused: bool,
    /// Whether the streamed request body went out whole (`None`: a body in memory). An
    /// instance may answer before reading the body (a 401, a 413): the connection is then still
    /// busy sending it, for as long as the client takes, and is not pooled, so that no other
    /// request waits on it.
    pub body_sent: Option<Rc<Cell<bool>>>,
}

impl Lease {
    /// Returns the connection to its thread's pool (it is closed when it cannot be reused).
    pub fn give_back(self) {
        if let Some(slot) = self.slot
            && !self.sender.is_closed()
            && self.body_sent.is_none_or(|sent| sent.get())
        {
            slot.put(self.sender);
        }
    }
}

/// An idle connection to `address` when one is ready, else a new one. `upgrade`: a dedicated
/// connection able to switch protocols, never pooled.
pub async fn checkout(
    address: &str,
    connect_timeout: Duration,
    upgrade: bool,
) -> Result<Lease, ConnectError> {
    if upgrade {
        let sender = dial(address, connect_timeout, true).await?;
        return Ok(Lease {
            sender,
            slot: None,
            reused: false,
            body_sent: None,
        });
    }
    let slot = SLOTS.with(|slots| slots.slot(address));
    while let Some(mut sender) = slot.take() {
        if !sender.is_ready() && sender.ready().await.is_err() {
            continue;
        }
        return Ok(Lease {
            sender,
            slot: Some(slot),
            reused: true,
            body_sent: None,
        });
    }
    let sender = dial(address, connect_timeout, false).await?;
    Ok(Lease {
        sender,
        slot: Some(slot),
        reused: false,
        body_sent: None,
    })
}

/// A new HTTP/1 connection to `address`, driven by a task on this thread.
async fn dial(address: &str, timeout: Duration, upgrade: bool) -> Result<Sender, ConnectError> {
    let stream = connect(address, timeout).await?;
    let (sender, connection) = http1::Builder::new()
        .handshake(TokioIo::new(stream))
        .await?;
    if upgrade {
        tokio::task::spawn_local(async move {
            if let Err(e) = connection.with_upgrades().await {
                tracing::debug!(error = %e, "instance connection ended");
            }
        });
    } else {
        tokio::task::spawn_local(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "instance connection ended");
            }
        });
    }
    Ok(sender)
}

/// A new TCP connection to `address` (no Nagle delay), within `timeout`.
pub(crate) async fn connect(
    address: &str,
    timeout: Duration,
) -> Result<tokio::net::TcpStream, ConnectError> {
    let stream = tokio::time::timeout(timeout, tokio::net::TcpStream::connect(address))
        .await
        .map_err(|_| ConnectError::Timeout)??;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Closes this thread's expired connections and forgets addresses without any.
pub fn sweep() {
    SLOTS.with(Slots::sweep);
    crate::client::sweep();
}
