//! The processes of a [`Stack`]: starting, killing and restarting replicas, and their logs.
//! The one-replica methods (`pid`, `kill9`, `terminate`, `restart`) act on replica `a`.

use std::time::Duration;

use super::{Replica, Stack};

impl Replica {
    pub(super) fn new(service: &str, slot: char, port: u16) -> Self {
        Self {
            id: format!("{service}-{slot}"),
            slot,
            generation: 1,
            port,
            child: None,
        }
    }

    /// Replica `a` logs to `<service>.log` (what the single-process tests read), others to
    /// `<service>-<slot>.log`; a restarted replica appends to its slot's file.
    pub(super) fn log_name(&self, service: &str) -> String {
        match self.slot {
            'a' => format!("{service}.log"),
            slot => format!("{service}-{slot}.log"),
        }
    }

    /// Whether this replica's process runs (was started and not killed).
    pub fn running(&self) -> bool {
        self.child.is_some()
    }

    /// The port this replica listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The OS process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(|c| c.id())
    }
}

impl Stack {
    /// Everything `service` has logged (all its replicas, one after the other).
    pub fn log_text(&self, service: &str) -> String {
        self.replicas[service]
            .iter()
            .map(|r| {
                std::fs::read_to_string(self.logs.join(r.log_name(service))).unwrap_or_default()
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    pub(super) fn log_tail(&self, service: &str) -> String {
        let text = self.log_text(service);
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// Where replica `a` of `service` logs.
    pub fn log_file(&self, service: &str) -> std::path::PathBuf {
        self.logs.join(self.replicas[service][0].log_name(service))
    }

    /// The replicas of `service`, running or killed.
    pub fn replicas(&self, service: &str) -> &[Replica] {
        &self.replicas[service]
    }

    /// Polls `/readyz` of every running replica of `service` until 200; fails with the
    /// service's log if one exits or times out.
    pub async fn wait_ready(&mut self, service: &'static str) {
        for index in 0..self.replicas[service].len() {
            if self.replicas[service][index].running() {
                self.wait_replica_ready(service, index).await;
            }
        }
    }

    async fn wait_replica_ready(&mut self, service: &'static str, index: usize) {
        let url = format!(
            "http://127.0.0.1:{}/readyz",
            self.replicas[service][index].port
        );
        let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
        loop {
            if let Ok(res) = self.client.get(&url).send().await
                && res.status() == 200
            {
                return;
            }
            let replica = &mut self.replicas.get_mut(service).unwrap()[index];
            let id = replica.id.clone();
            if let Some(status) = replica
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("{id} exited with {status}:\n{}", self.log_tail(service));
            }
            if tokio::time::Instant::now() > deadline {
                panic!("{id} not ready after 90s:\n{}", self.log_tail(service));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The OS process id of `service` (replica `a`).
    pub fn pid(&self, service: &str) -> u32 {
        self.replicas[service][0].pid().unwrap()
    }

    /// Resident memory of `service` (replica `a`) in KiB (VmRSS from /proc).
    pub fn rss_kib(&self, service: &str) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid(service))).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }

    /// SIGKILL of replica `a`: no shutdown hook runs.
    pub fn kill9(&mut self, service: &'static str) {
        self.kill_replica(service, 0);
    }

    /// SIGKILL of replica `index` of `service`; answers the id it ran as.
    pub fn kill_replica(&mut self, service: &'static str, index: usize) -> String {
        let replica = &mut self.replicas.get_mut(service).unwrap()[index];
        let mut child = replica.child.take().expect("the replica runs");
        child.start_kill().unwrap();
        // Reap it so its port is free for the restart.
        tokio::task::block_in_place(|| {
            tokio::runtime::Handle::current().block_on(async { child.wait().await.unwrap() })
        });
        replica.id.clone()
    }

    /// Starts replica `index` of `service` again, as a new replica (`<service>-<slot>-<n>`),
    /// and waits until it is ready; answers its id.
    pub async fn start_replica(&mut self, service: &'static str, index: usize) -> String {
        let replica = &mut self.replicas.get_mut(service).unwrap()[index];
        assert!(!replica.running(), "{} still runs", replica.id);
        replica.generation += 1;
        replica.id = format!("{service}-{}-{}", replica.slot, replica.generation);
        let id = replica.id.clone();
        self.spawn(service, index);
        self.wait_replica_ready(service, index).await;
        id
    }

    /// Sends SIGTERM (what Kubernetes and `scripts/down` send) to replica `a` and returns how
    /// the process exited, failing if it does not stop within 30 s.
    pub async fn terminate(&mut self, service: &'static str) -> std::process::ExitStatus {
        self.terminate_replica(service, 0).await
    }

    /// SIGTERM to replica `index` of `service`; see [`Stack::terminate`].
    pub async fn terminate_replica(
        &mut self,
        service: &'static str,
        index: usize,
    ) -> std::process::ExitStatus {
        let mut child = self.replicas.get_mut(service).unwrap()[index]
            .child
            .take()
            .expect("the replica runs");
        let pid = child.id().unwrap() as i32;
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        match tokio::time::timeout(Duration::from_secs(30), child.wait()).await {
            Ok(status) => status.unwrap(),
            Err(_) => panic!(
                "{service} ignored SIGTERM for 30s:\n{}",
                self.log_tail(service)
            ),
        }
    }

    /// Starts replica `a` of a terminated or killed `service` again.
    pub async fn restart(&mut self, service: &'static str) {
        self.start_replica(service, 0).await;
    }
}
