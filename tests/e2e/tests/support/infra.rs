//! A PostgreSQL cluster and a Tansu broker of a stack's own, as child processes on free ports,
//! so a test may stop, hang and restart them without touching the shared ones that
//! `scripts/test` started for every other test.
//!
//! - PostgreSQL: a fresh cluster (`initdb`, scram-sha-256, a generated superuser password),
//!   started and stopped with `pg_ctl` (as the `postgres` OS user when run as root, as
//!   `scripts/lib.sh` does). Its data is on disk, so a stopped server comes back with it.
//! - Tansu: its memory engine keeps topics and offsets only as long as the process lives, so an
//!   outage of the broker is a hang (SIGSTOP, SIGCONT), never a restart.
//!
//! Binaries: `PG_BIN` and `TANSU_BIN` (which `scripts/test` exports), else the newest
//! `/usr/lib/postgresql/*/bin` and `tansu` on `PATH` or in `~/.cargo/bin`.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::free_port;

/// Own PostgreSQL and broker of one stack. Dropping it stops both and deletes their data.
pub struct OwnInfra {
    pub postgres: Postgres,
    pub broker: Broker,
}

impl OwnInfra {
    pub fn start() -> Self {
        Self {
            postgres: Postgres::start(),
            broker: Broker::start(),
        }
    }
}

fn wait_port(port: u16, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(200))
            .is_ok()
        {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// A PostgreSQL server tool, as `postgres` when we are root (initdb and postgres refuse root).
fn pg_tool(bin: &Path, tool: &str) -> Command {
    let mut command = if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(bin.join(tool));
        c
    } else {
        Command::new(bin.join(tool))
    };
    // The caller's directory may be closed to `postgres`.
    command.current_dir("/");
    command
}

fn pg_bin() -> PathBuf {
    if let Ok(dir) = std::env::var("PG_BIN") {
        return PathBuf::from(dir);
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|dir| {
            dir.flatten()
                .map(|e| e.path().join("bin"))
                .filter(|bin| bin.join("initdb").exists())
                .collect()
        })
        .unwrap_or_default();
    found.sort_by_key(|p| {
        p.parent()
            .and_then(|v| v.file_name())
            .and_then(|v| v.to_str())
            .and_then(|v| v.parse::<u32>().ok())
            .unwrap_or(0)
    });
    found
        .pop()
        .expect("no PostgreSQL found: set PG_BIN or run through scripts/test, which installs it")
}

/// A private PostgreSQL cluster on 127.0.0.1.
pub struct Postgres {
    bin: PathBuf,
    home: PathBuf,
    pub port: u16,
    password: String,
}

impl Postgres {
    fn start() -> Self {
        let bin = pg_bin();
        // In the temp dir, not under a 0700 parent: `postgres` must be able to reach it.
        let home =
            std::env::temp_dir().join(format!("slipway-chaos-pg-{}", slipway_testkit::unique()));
        std::fs::create_dir_all(home.join("sock")).unwrap();
        let password = slipway_testkit::unique() + &slipway_testkit::unique();
        let pwfile = home.join("pwfile");
        std::fs::write(&pwfile, &password).unwrap();
        if is_root() {
            let status = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&home)
                .status()
                .unwrap();
            assert!(status.success(), "chown {}", home.display());
        }
        let out = pg_tool(&bin, "initdb")
            .arg("-D")
            .arg(home.join("data"))
            .args(["--auth=scram-sha-256", "-U", "postgres", "--encoding=UTF8"])
            .args(["--no-locale", "--no-sync"])
            .arg(format!("--pwfile={}", pwfile.display()))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let pg = Self {
            bin,
            home,
            port: free_port(),
            password,
        };
        pg.start_again();
        pg
    }

    /// Starts the (stopped) server again on its port, with its data; waits until it accepts.
    pub fn start_again(&self) {
        let options = format!(
            "-p {} -k '{}' -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=400",
            self.port,
            self.home.join("sock").display()
        );
        let out = pg_tool(&self.bin, "pg_ctl")
            .arg("-D")
            .arg(self.home.join("data"))
            .arg("-l")
            .arg(self.home.join("postgres.log"))
            .args(["-w", "-t", "60", "-o", &options, "start"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "pg_ctl start: {}{}",
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(self.home.join("postgres.log")).unwrap_or_default()
        );
        assert!(wait_port(self.port, Duration::from_secs(30)));
    }

    /// Stops the server (fast: open transactions are rolled back, clients disconnected).
    pub fn stop(&self) {
        let out = pg_tool(&self.bin, "pg_ctl")
            .arg("-D")
            .arg(self.home.join("data"))
            .args(["-m", "fast", "-w", "-t", "60", "stop"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "pg_ctl stop: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Settings of the superuser, database `postgres`.
    pub fn superuser(&self) -> slipway_testkit::Database {
        slipway_testkit::Database {
            host: "127.0.0.1".to_owned(),
            port: self.port,
            username: "postgres".to_owned(),
            password: secrecy::SecretString::from(self.password.clone()),
            database: "postgres".to_owned(),
            schema: "unused".to_owned(),
            max_connections: 5,
        }
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = pg_tool(&self.bin, "pg_ctl")
            .arg("-D")
            .arg(self.home.join("data"))
            .args(["-m", "immediate", "-w", "-t", "30", "stop"])
            .output();
        let _ = std::fs::remove_dir_all(&self.home);
    }
}

fn tansu_bin() -> PathBuf {
    if let Ok(bin) = std::env::var("TANSU_BIN") {
        return PathBuf::from(bin);
    }
    let on_path = std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .map(|dir| Path::new(dir).join("tansu"))
        .find(|p| p.exists());
    let in_cargo = std::env::var("HOME")
        .map(|h| Path::new(&h).join(".cargo/bin/tansu"))
        .ok()
        .filter(|p| p.exists());
    on_path
        .or(in_cargo)
        .expect("no tansu found: set TANSU_BIN or run through scripts/test, which installs it")
}

/// A Tansu broker with in-memory storage.
pub struct Broker {
    child: std::process::Child,
    dir: PathBuf,
    pub port: u16,
}

impl Broker {
    fn start() -> Self {
        let dir =
            std::env::temp_dir().join(format!("slipway-chaos-tansu-{}", slipway_testkit::unique()));
        std::fs::create_dir_all(&dir).unwrap();
        let port = free_port();
        let url = format!("tcp://127.0.0.1:{port}");
        let log = std::fs::File::create(dir.join("tansu.log")).unwrap();
        // Run in a directory of its own: Tansu reads a `.env` file from its working directory,
        // and SCHEMA_REGISTRY from the environment would turn on message validation.
        let child = Command::new(tansu_bin())
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .args(["--storage-engine", "memory://tansu/"])
            .current_dir(&dir)
            .env_remove("SCHEMA_REGISTRY")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        assert!(
            wait_port(port, Duration::from_secs(30)),
            "tansu did not listen on {port}"
        );
        Self { child, dir, port }
    }

    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn signal(&self, signal: Signal) {
        kill(Pid::from_raw(self.child.id() as i32), signal).unwrap();
    }

    /// Freezes the broker: connections stay open but nothing answers (a hung broker).
    pub fn hang(&self) {
        self.signal(Signal::SIGSTOP);
    }

    /// Lets a hung broker run again.
    pub fn resume(&self) {
        self.signal(Signal::SIGCONT);
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = kill(Pid::from_raw(self.child.id() as i32), Signal::SIGCONT);
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
