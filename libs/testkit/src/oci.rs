//! An OCI registry that requires a login: Debian's `docker-registry` (the same program
//! `scripts/test` runs anonymously) started by the test itself with an htpasswd file, on a free
//! loopback port. Dropping it stops the registry and deletes its storage.

use std::io::Write;
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A running registry that accepts `username` / `password` (HTTP basic) only.
pub struct AuthRegistry {
    /// `127.0.0.1:<port>`, plain HTTP.
    pub address: String,
    child: Child,
    dir: std::path::PathBuf,
}

impl AuthRegistry {
    pub async fn start(username: &str, password: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("slipway-auth-registry-{}", crate::unique()));
        std::fs::create_dir_all(dir.join("storage")).unwrap();
        // Cost 4, the lowest: the hash only guards a throwaway test registry.
        let hash = bcrypt::hash_with_result(password, 4)
            .unwrap()
            .format_for_version(bcrypt::Version::TwoY);
        std::fs::write(dir.join("htpasswd"), format!("{username}:{hash}\n")).unwrap();
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let address = format!("127.0.0.1:{port}");
        let mut config = std::fs::File::create(dir.join("config.yml")).unwrap();
        write!(
            config,
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n\
             http:\n  addr: {address}\nauth:\n  htpasswd:\n    realm: slipway-test\n    path: {}\n",
            dir.join("storage").display(),
            dir.join("htpasswd").display(),
        )
        .unwrap();
        let log = std::fs::File::create(dir.join("registry.log")).unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(dir.join("config.yml"))
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("docker-registry runs (scripts/test installs it)");
        let registry = Self {
            address,
            child,
            dir,
        };
        let up = crate::wait_until(Duration::from_secs(30), || async {
            tokio::net::TcpStream::connect(&registry.address)
                .await
                .is_ok()
        })
        .await;
        assert!(
            up,
            "the authenticated registry did not start: {}",
            std::fs::read_to_string(registry.dir.join("registry.log")).unwrap_or_default()
        );
        registry
    }
}

impl Drop for AuthRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
