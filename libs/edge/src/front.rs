//! The router's listener: hyper's HTTP/1 server on threads of their own.
//!
//! Each thread runs a single-threaded runtime that accepts from the shared listening socket,
//! serves its connections, and keeps its own pool of connections to instances ([`crate::pool`]),
//! so the request path takes no lock and shares no connection state between threads. A request
//! that is not the router's ([`crate::target`]) goes on, unchanged, to the gateway's own API on
//! a loopback listener.
//!
//! Where the router owns its cores, each thread runs on one of them ([`crate::affinity`]).
//!
//! Connections are spread over the threads by [`Balance`]: a thread that accepts while it
//! serves two more connections than the least busy one hands the connection to that one. Left
//! to the shared socket, a burst of connects (a load balancer's pool opening) lands mostly on
//! whichever thread was awake, and that thread then serves most of the load alone.

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::sync::oneshot;
use tokio::task::{JoinSet, LocalSet};
use tokio_util::sync::CancellationToken;

use crate::forward::{self, Worker};
use crate::{Edge, EdgeError};

/// How long open connections may finish their requests at shutdown.
const DRAIN: Duration = Duration::from_secs(10);
/// How often idle instance connections are checked for expiry.
const SWEEP_EVERY: Duration = Duration::from_secs(15);

/// The running listener threads.
///
/// The threads belong to whoever holds this value: they stop when the cancel token given to
/// [`Edge::serve`] fires, and also when the `Front` (or the future of [`Front::wait`]) is
/// dropped, as when the runtime owning the gateway is dropped without being shut down (a test
/// ending). Waiting is asynchronous and parks no thread: a thread blocked joining the router's
/// threads would keep that runtime's shutdown waiting for threads nobody tells to stop.
pub struct Front {
    /// Each thread sends once when it ended normally; one that panicked drops its sender unsent.
    ended: tokio::sync::mpsc::UnboundedReceiver<()>,
    threads: usize,
    /// Tells the threads to stop when the front is dropped.
    _stop: tokio_util::sync::DropGuard,
    port: u16,
}

impl Front {
    /// The port the router listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Resolves when every thread has stopped (after the cancel token fired and connections
    /// drained); an error when one of them panicked. Dropping this future stops the threads.
    pub async fn wait(mut self) -> Result<(), String> {
        let mut ended = 0;
        // `None` once every thread dropped its sender: all of them are done.
        while self.ended.recv().await.is_some() {
            ended += 1;
        }
        match self.threads - ended {
            0 => Ok(()),
            panicked => Err(format!("{panicked} edge router thread(s) panicked")),
        }
    }
}

impl Edge {
    /// Serves `listener` until `cancel` fires: the router's requests are proxied, any other one
    /// goes to the gateway's API at `gateway` (`host:port`; `None` answers 404).
    pub fn serve(
        &self,
        listener: std::net::TcpListener,
        gateway: Option<SocketAddr>,
        cancel: CancellationToken,
    ) -> Result<Front, EdgeError> {
        let port = listener.local_addr().map_err(EdgeError::Serve)?.port();
        listener.set_nonblocking(true).map_err(EdgeError::Serve)?;
        let nodelay_inherited = inherit_nodelay(&listener);
        let threads = match self.inner.settings.workers {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        // A child token: the front's own drop stops the threads without cancelling the caller.
        let stop = cancel.child_token();
        let (ended, ended_rx) = tokio::sync::mpsc::unbounded_channel();
        let cores = crate::affinity::plan(
            self.inner.settings.pin_threads,
            threads,
            &crate::affinity::allowed_cpus(),
        );
        let (balance, receivers) = Balance::new((0..threads).map(|n| {
            let open = self
                .inner
                .metrics
                .client_connections
                .with_label_values(&[n.to_string().as_str()]);
            open.set(0);
            open
        }));
        for (n, handed) in receivers.into_iter().enumerate() {
            let listener = listener.try_clone().map_err(EdgeError::Serve)?;
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(EdgeError::Serve)?;
            let (edge, stop, ended) = (self.clone(), stop.clone(), ended.clone());
            let fallback = gateway.map(|a| a.to_string().into_boxed_str());
            let core = cores.as_ref().and_then(|cores| cores.get(n).copied());
            let thread = Thread {
                n,
                balance: balance.clone(),
                handed,
                nodelay_inherited,
            };
            std::thread::Builder::new()
                .name(format!("edge-{n}"))
                .spawn(move || {
                    if let Some(core) = core
                        && let Err(e) = crate::affinity::pin_current_thread(core)
                    {
                        tracing::warn!(thread = n, core, error = %e, "edge router thread cannot be bound to its core");
                    }
                    let worker = Rc::new(Worker { edge, fallback });
                    LocalSet::new().block_on(&runtime, accept(listener, thread, worker, stop));
                    drop(runtime);
                    let _ = ended.send(());
                })
                .map_err(EdgeError::Serve)?;
        }
        tracing::info!(port, threads, cores = ?cores, "edge router listening");
        Ok(Front {
            ended: ended_rx,
            threads,
            _stop: stop.drop_guard(),
            port,
        })
    }
}

/// Sets `TCP_NODELAY` on the listening socket, which the connections it accepts inherit
/// (Linux): one system call in all instead of one per connection. `false` when it cannot be
/// set, and each connection must set its own.
fn inherit_nodelay(listener: &std::net::TcpListener) -> bool {
    socket2::SockRef::from(listener)
        .set_tcp_nodelay(true)
        .is_ok()
}

/// A client connection handed from the thread that accepted it to a less busy one, counted as
/// that one's already.
type Handed = (std::net::TcpStream, SocketAddr, Counted);

/// How many client connections each thread serves, and the way to hand one to each.
struct Balance {
    /// Per thread (`slipway_edge_client_connections`).
    open: Box<[prometheus::IntGauge]>,
    handoff: Box<[tokio::sync::mpsc::UnboundedSender<Handed>]>,
}

impl Balance {
    /// A balance over one thread per gauge of `open`, with the receiving end of each thread's
    /// hand-offs.
    fn new(
        open: impl Iterator<Item = prometheus::IntGauge>,
    ) -> (Arc<Self>, Vec<tokio::sync::mpsc::UnboundedReceiver<Handed>>) {
        let open: Box<[prometheus::IntGauge]> = open.collect();
        let (handoff, receivers): (Vec<_>, Vec<_>) = (0..open.len())
            .map(|_| tokio::sync::mpsc::unbounded_channel())
            .unzip();
        let balance = Self {
            open,
            handoff: handoff.into_boxed_slice(),
        };
        (Arc::new(balance), receivers)
    }

    /// The thread to serve a connection that thread `me` accepted: `me`, unless another one
    /// serves at least two fewer (the least busy of them then), the connection counted as its.
    fn assign(self: &Arc<Self>, me: usize) -> Counted {
        let mine = self.open[me].get();
        let (least, fewest) = self
            .open
            .iter()
            .map(prometheus::IntGauge::get)
            .enumerate()
            .min_by_key(|&(_, open)| open)
            .unwrap_or((me, mine));
        let to = if fewest + 2 <= mine { least } else { me };
        self.open[to].inc();
        Counted {
            balance: self.clone(),
            thread: to,
        }
    }
}

/// One client connection counted as its thread's while it is served.
struct Counted {
    balance: Arc<Balance>,
    thread: usize,
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.balance.open[self.thread].dec();
    }
}

/// What one listener thread knows of the others.
struct Thread {
    n: usize,
    balance: Arc<Balance>,
    /// Connections other threads handed to this one.
    handed: tokio::sync::mpsc::UnboundedReceiver<Handed>,
    /// Whether accepted connections come with `TCP_NODELAY` from the listening socket.
    nodelay_inherited: bool,
}

async fn accept(
    listener: std::net::TcpListener,
    mut thread: Thread,
    worker: Rc<Worker>,
    cancel: CancellationToken,
) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(listener) => listener,
        Err(e) => {
            tracing::error!(error = %e, "edge router thread cannot listen");
            return;
        }
    };
    let mut connections = JoinSet::new();
    let mut drains = Drains::default();
    let mut sweep = tokio::time::interval(SWEEP_EVERY);
    loop {
        tokio::select! {
            () = cancel.cancelled() => break,
            _ = sweep.tick() => crate::pool::sweep(),
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            Some((stream, peer, counted)) = thread.handed.recv() => {
                match tokio::net::TcpStream::from_std(stream) {
                    Ok(stream) => {
                        connections.spawn_local(serve(stream, peer, counted, worker.clone(), drains.add()));
                    }
                    Err(e) => tracing::warn!(error = %e, "edge router cannot take a handed connection"),
                }
            }
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    // Answers and streamed bodies go out as they are written, not held back
                    // for the acknowledgement of the last segment (Nagle).
                    if !thread.nodelay_inherited {
                        let _ = stream.set_nodelay(true);
                    }
                    let counted = thread.balance.assign(thread.n);
                    if counted.thread == thread.n {
                        connections.spawn_local(serve(stream, peer, counted, worker.clone(), drains.add()));
                    } else {
                        hand(stream, peer, counted);
                    }
                }
                Err(e) => {
                    // Out of file descriptors, typically: pause instead of spinning.
                    tracing::warn!(error = %e, "edge router cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
    drop(listener);
    drop(drains);
    let drained = tokio::time::timeout(DRAIN, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!("edge router connections still open after the drain; closing them");
    }
}

/// Sends `stream` to the thread it is counted as (a connection that cannot be handed, the other
/// thread stopping, is closed and uncounted).
fn hand(stream: tokio::net::TcpStream, peer: SocketAddr, counted: Counted) {
    match stream.into_std() {
        Ok(stream) => {
            let to = counted.balance.handoff[counted.thread].clone();
            let _ = to.send((stream, peer, counted));
        }
        Err(e) => tracing::warn!(error = %e, "edge router cannot hand a connection over"),
    }
}

/// One drain signal per connection a thread serves: dropped, it tells the connection to finish
/// (see [`serve`]).
#[derive(Default)]
struct Drains {
    senders: Vec<oneshot::Sender<()>>,
    /// Length past which the senders of ended connections are dropped: twice what was left the
    /// last time, so the cost stays constant per connection however fast they come and go.
    high_water: usize,
}

impl Drains {
    /// A new connection's drain signal.
    fn add(&mut self) -> oneshot::Receiver<()> {
        if self.senders.len() >= self.high_water {
            self.senders.retain(|drain| !drain.is_closed());
            self.high_water = (2 * self.senders.len()).max(64);
        }
        let (tx, rx) = oneshot::channel();
        self.senders.push(tx);
        rx
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.senders.len()
    }
}

/// Serves one client connection until it ends, or finishes its requests and closes it once
/// `drain` resolves (its sender dropped at shutdown). A oneshot rather than the cancel token:
/// both are polled on every wake of the connection, and a poll of the token takes a lock.
async fn serve(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    _counted: Counted,
    worker: Rc<Worker>,
    drain: oneshot::Receiver<()>,
) {
    let service = service_fn(move |req| forward::handle(worker.clone(), peer, req));
    let connection = http1::Builder::new()
        .timer(TokioTimer::new())
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    tokio::pin!(connection);
    let result = tokio::select! {
        result = connection.as_mut() => result,
        _ = drain => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, "client connection ended");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn balance(threads: usize) -> Arc<Balance> {
        let gauges = (0..threads).map(|_| prometheus::IntGauge::new("open", "open").unwrap());
        Balance::new(gauges).0
    }

    fn open(balance: &Balance) -> Vec<i64> {
        balance.open.iter().map(prometheus::IntGauge::get).collect()
    }

    #[test]
    fn a_burst_accepted_by_one_thread_is_spread_over_all() {
        let balance = balance(3);
        let held: Vec<Counted> = (0..32).map(|_| balance.assign(0)).collect();
        let counts = open(&balance);
        assert_eq!(counts.iter().sum::<i64>(), 32);
        assert!(
            counts.iter().max().unwrap() - counts.iter().min().unwrap() <= 2,
            "{counts:?}"
        );
        // Ties and near-ties stay where they were accepted: no hand-off for nothing.
        assert_eq!(
            held.iter().take(2).map(|c| c.thread).collect::<Vec<_>>(),
            [0, 0]
        );
        drop(held);
        assert_eq!(open(&balance), [0, 0, 0], "ended connections are uncounted");
    }

    #[test]
    fn accepted_connections_inherit_nodelay_from_the_listener() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let plain = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        assert!(inherit_nodelay(&listener));
        let accepted = |l: &std::net::TcpListener| {
            let _client = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
            l.accept().unwrap().0.nodelay().unwrap()
        };
        assert!(accepted(&listener));
        assert!(
            !accepted(&plain),
            "without it, a connection starts with Nagle on"
        );
    }

    #[test]
    fn drain_signals_of_ended_connections_do_not_pile_up() {
        let mut drains = Drains::default();
        let mut open = Vec::new();
        for n in 0..10_000 {
            let rx = drains.add();
            // One connection in a hundred still open; the others ended (receiver dropped).
            if n % 100 == 0 {
                open.push(rx);
            }
        }
        assert!(
            drains.len() <= 2 * 64 + open.len() * 2,
            "{} kept",
            drains.len()
        );
        drop(drains);
        for mut rx in open {
            assert!(
                rx.try_recv().is_err(),
                "an open connection is told to finish"
            );
        }
    }

    #[test]
    fn a_lone_thread_keeps_everything() {
        let balance = balance(1);
        let held: Vec<Counted> = (0..5).map(|_| balance.assign(0)).collect();
        assert!(held.iter().all(|c| c.thread == 0));
        assert_eq!(open(&balance), [5]);
    }
}
