//! A private mosquitto for `fleetops bench --spawn-mosquitto`.
//!
//! The bench has its own small launcher rather than the transport's `testing::TestBroker`:
//! that harness is a test feature (it panics when mosquitto is missing, writes password and
//! ACL files the bench does not need, and logs every message by default), and a command-line
//! tool must report a missing binary or a failed start as an error. The configuration is the
//! one recommended for load: TCP_NODELAY, no in-flight cap, a queue large enough
//! that acknowledged QoS 1 messages are never dropped, no persistence.

use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fleetops_transport_mqtt::BrokerConfig;

/// Why the private broker could not be started.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    /// No mosquitto binary at `$MOSQUITTO`, on `PATH` or in the usual places.
    #[error("mosquitto not found (looked at $MOSQUITTO, PATH, /usr/sbin and /usr/local/sbin); install it (apt-get install mosquitto) or pass --broker")]
    NotFound,
    /// A file or process operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The process exited or never listened.
    #[error("mosquitto did not start: {reason}; its log:\n{log}")]
    NotStarted {
        /// What went wrong.
        reason: String,
        /// The broker's log so far.
        log: String,
    },
}

/// A running private mosquitto on a free loopback port, killed on drop.
pub struct SpawnedBroker {
    dir: tempfile::TempDir,
    port: u16,
    child: Option<Child>,
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> SpawnError {
    let what = what.into();
    move |source| SpawnError::Io { what, source }
}

/// The mosquitto binary: `$MOSQUITTO`, then `PATH`, then the usual sbin directories.
pub fn mosquitto_binary() -> Result<PathBuf, SpawnError> {
    if let Some(p) = std::env::var_os("MOSQUITTO") {
        return Ok(PathBuf::from(p));
    }
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join("mosquitto"))
        .chain(
            ["/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto"]
                .iter()
                .map(PathBuf::from),
        )
        .find(|p| p.is_file())
        .ok_or(SpawnError::NotFound)
}

/// `mosquitto -h` prints `mosquitto version X` first; used to label the results.
pub fn mosquitto_version(binary: &Path) -> Option<String> {
    let out = Command::new(binary).arg("-h").output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.lines()
        .find_map(|l| l.trim().strip_prefix("mosquitto version "))
        .map(str::to_owned)
}

impl SpawnedBroker {
    /// Starts mosquitto and waits until it listens.
    pub fn start() -> Result<Self, SpawnError> {
        let binary = mosquitto_binary()?;
        let dir = tempfile::Builder::new()
            .prefix("fleetops-bench-mosquitto-")
            .tempdir()
            .map_err(io("create a temporary directory"))?;
        let mut broker = Self {
            dir,
            port: 0,
            child: None,
        };
        // Another process may take the probed port before mosquitto binds it: retry.
        let mut last = None;
        for _ in 0..5 {
            broker.port = free_port()?;
            broker.write_config()?;
            match broker.spawn(&binary) {
                Ok(()) => return Ok(broker),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or(SpawnError::NotStarted {
            reason: "no attempt made".into(),
            log: String::new(),
        }))
    }

    /// The listener port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The broker's process id, for its CPU time.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Connection settings for every bench client (anonymous, plain TCP).
    pub fn config(&self) -> BrokerConfig {
        BrokerConfig::new("127.0.0.1", self.port)
    }

    /// The broker's log so far.
    pub fn log(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = std::fs::File::open(self.dir.path().join("mosquitto.log")) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }

    fn write_config(&self) -> Result<(), SpawnError> {
        let d = self.dir.path().display();
        let config = format!(
            "# Written by `fleetops bench --spawn-mosquitto`.\n\
             listener {port} 127.0.0.1\n\
             allow_anonymous true\n\
             # Without it a QoS 1 round trip costs ~44 ms (Nagle x delayed ACK).\n\
             set_tcp_nodelay true\n\
             # The default 20 caps each client's window; 0 means no limit.\n\
             max_inflight_messages 0\n\
             # The default 1000 silently drops acknowledged QoS 1 messages under fan-out.\n\
             max_queued_messages 1000000\n\
             persistence false\n\
             # As root, mosquitto would otherwise switch to an unprivileged user.\n\
             user root\n\
             log_dest file {d}/mosquitto.log\n\
             log_type error\nlog_type warning\nlog_type notice\nlog_type information\n\
             # Ten thousand connects would each write a line.\n\
             connection_messages false\n",
            port = self.port,
        );
        std::fs::write(self.dir.path().join("mosquitto.conf"), config)
            .map_err(io("write mosquitto.conf"))
    }

    fn spawn(&mut self, binary: &Path) -> Result<(), SpawnError> {
        let log_start = self.log().len();
        let mut child = Command::new(binary)
            .arg("-c")
            .arg(self.dir.path().join("mosquitto.conf"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(io(format!("start {}", binary.display())))?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(SpawnError::NotStarted {
                    reason: format!("it exited with {status}"),
                    log: self.log(),
                });
            }
            // Listening is not enough (another process may own the port): our process must
            // have logged that it runs.
            let log = self.log();
            let running = log
                .get(log_start..)
                .is_some_and(|l| l.contains("mosquitto version") && l.contains("running"));
            if running && TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                self.child = Some(child);
                return Ok(());
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(SpawnError::NotStarted {
                    reason: "not listening after 10 s".into(),
                    log: self.log(),
                });
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

fn free_port() -> Result<u16, SpawnError> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(io("bind a loopback port"))?;
    Ok(listener
        .local_addr()
        .map_err(io("read the bound port"))?
        .port())
}

impl Drop for SpawnedBroker {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
