//! A throwaway PostgreSQL server per test (feature `test-postgres`).
//!
//! [`TestPostgres::start`] finds the server binaries (`$FLEETOPS_PG_BIN`, else `PATH`, else
//! the highest `/usr/lib/postgresql/*/bin`, where Debian's `postgresql` package puts them),
//! makes a temporary directory, runs `initdb -A trust -U postgres --no-sync` in it and starts
//! the server with `pg_ctl -w`, listening only on 127.0.0.1 at a free port, its unix socket in
//! the same directory. Dropping it stops the server (`pg_ctl stop -m immediate`) and removes
//! the directory. `initdb` refuses to run as root: under euid 0 the directory is given to the
//! `postgres` OS user and the binaries run as that user through `runuser`.
//!
//! Each test takes a fresh, empty store with [`TestPostgres::fresh_store`] (a new schema per
//! call; schemas are cheap), or shares one schema between several stores with
//! [`TestPostgres::config`].
//!
//! Tests call [`TestPostgres::start_or_skip`]: where the binaries are missing it prints a loud
//! message and returns `None`, except in CI (`CI` set), where it panics: CI must never skip
//! the PostgreSQL suite silently.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::config::PostgresConfig;
use crate::error::PgError;
use crate::store::PostgresStore;

/// How the test server runs.
#[derive(Debug, Clone)]
pub struct TestPostgresOptions {
    /// `fsync`, `synchronous_commit` and `full_page_writes` (default off): off is fine for
    /// tests, whose data dies with the server anyway, and makes commits cheap. Benchmarks turn
    /// it on for honest figures.
    pub durable: bool,
    /// `max_connections` (default 300: each store holds 4 connections by default, and a test
    /// may keep many stores and leases open).
    pub max_connections: u32,
    /// More `-c name=value` server settings.
    pub settings: Vec<(String, String)>,
}

impl Default for TestPostgresOptions {
    fn default() -> Self {
        Self {
            durable: false,
            max_connections: 300,
            settings: Vec::new(),
        }
    }
}

/// A running PostgreSQL server, stopped and deleted on drop.
#[derive(Debug)]
pub struct TestPostgres {
    bin: PathBuf,
    dir: tempfile::TempDir,
    port: u16,
    as_postgres: bool,
    next_schema: AtomicU64,
}

/// The directory holding `initdb`, `pg_ctl` and `postgres`, if any: `$FLEETOPS_PG_BIN`, else
/// the directory of `pg_ctl` on `PATH`, else the highest `/usr/lib/postgresql/*/bin`.
pub fn find_bin_dir() -> Option<PathBuf> {
    let has_all = |d: &Path| {
        ["initdb", "pg_ctl", "postgres"]
            .iter()
            .all(|b| d.join(b).is_file())
    };
    if let Some(d) = std::env::var_os("FLEETOPS_PG_BIN") {
        return Some(PathBuf::from(d)).filter(|d| has_all(d));
    }
    if let Some(path) = std::env::var_os("PATH") {
        if let Some(d) = std::env::split_paths(&path).find(|d| has_all(d)) {
            return Some(d);
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| {
            let e = e.ok()?;
            let major = e.file_name().to_str()?.parse::<u32>().ok()?;
            Some((major, e.path().join("bin")))
        })
        .filter(|(_, d)| has_all(d))
        .collect();
    versions.sort();
    versions.pop().map(|(_, d)| d)
}

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral loopback port");
    listener.local_addr().expect("local address").port()
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .is_some_and(|s| s.trim() == "0")
}

fn check(what: &str, output: std::io::Result<Output>) -> Result<(), String> {
    let o = output.map_err(|e| format!("{what}: {e}"))?;
    if o.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{what} failed ({}):\n{}{}",
            o.status,
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ))
    }
}

impl TestPostgres {
    /// Starts a server with the default (fast, not durable) options.
    ///
    /// # Panics
    /// When the binaries are missing or the server does not start.
    pub fn start() -> Self {
        Self::start_with(TestPostgresOptions::default())
    }

    /// Starts a server, or returns `None` after a loud message on stderr where the PostgreSQL
    /// binaries are not installed. Under CI (`CI` set) a missing install panics instead.
    pub fn start_or_skip() -> Option<Self> {
        Self::start_or_skip_with(TestPostgresOptions::default())
    }

    /// [`TestPostgres::start_or_skip`] with options.
    pub fn start_or_skip_with(options: TestPostgresOptions) -> Option<Self> {
        if find_bin_dir().is_none() {
            let message = "PostgreSQL server binaries (initdb, pg_ctl, postgres) not found \
                 (looked at $FLEETOPS_PG_BIN, PATH and /usr/lib/postgresql/*/bin): install \
                 them with `apt-get install postgresql`, or set FLEETOPS_PG_BIN";
            if std::env::var_os("CI").is_some() {
                panic!("{message}. CI never skips the PostgreSQL tests.");
            }
            eprintln!(
                "\n**********\n** SKIPPED: {message}.\n** The PostgreSQL store tests did \
                 NOT run.\n**********\n"
            );
            return None;
        }
        Some(Self::start_with(options))
    }

    /// Starts a server with `options`.
    ///
    /// # Panics
    /// When the binaries are missing or the server does not start.
    pub fn start_with(options: TestPostgresOptions) -> Self {
        let bin = find_bin_dir().unwrap_or_else(|| {
            panic!(
                "PostgreSQL server binaries not found: `apt-get install postgresql`, or set \
                 FLEETOPS_PG_BIN"
            )
        });
        let dir = tempfile::Builder::new()
            .prefix("fleetops-pg-")
            .tempdir()
            .expect("create a temporary directory");
        let as_postgres = is_root();
        let mut pg = Self {
            bin,
            dir,
            port: 0,
            as_postgres,
            next_schema: AtomicU64::new(1),
        };
        if as_postgres {
            check(
                "chown the test directory to postgres",
                Command::new("chown")
                    .arg("postgres:")
                    .arg(pg.dir.path())
                    .output(),
            )
            .unwrap_or_else(|e| panic!("{e}"));
        }
        let data = pg.data_dir();
        check(
            "initdb",
            pg.command("initdb")
                .args(["-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8"])
                .arg("--no-locale")
                .arg("-D")
                .arg(&data)
                .output(),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        // Another test may take the port between the probe and the server's bind: retry.
        for attempt in 1..=5 {
            pg.port = free_port();
            match pg.spawn(&options) {
                Ok(()) => return pg,
                Err(e) if attempt < 5 => eprintln!("PostgreSQL did not start ({e}); retrying"),
                Err(e) => panic!("PostgreSQL did not start: {e}\n{}", pg.log()),
            }
        }
        unreachable!("the loop returns or panics")
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn log_file(&self) -> PathBuf {
        self.dir.path().join("postgres.log")
    }

    /// The server log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_file()).unwrap_or_default()
    }

    /// A command running binary `name` of the server, as `postgres` when we are root.
    fn command(&self, name: &str) -> Command {
        let program = self.bin.join(name);
        if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(program);
            c
        } else {
            Command::new(program)
        }
    }

    fn spawn(&self, options: &TestPostgresOptions) -> Result<(), String> {
        let mut settings = vec![
            ("listen_addresses".to_owned(), "127.0.0.1".to_owned()),
            ("port".to_owned(), self.port.to_string()),
            (
                "unix_socket_directories".to_owned(),
                self.dir.path().display().to_string(),
            ),
            (
                "max_connections".to_owned(),
                options.max_connections.to_string(),
            ),
        ];
        if !options.durable {
            // Test speed only: data of a test server dies with it, so it need not survive a
            // power cut. Never set these on a real database.
            for name in ["fsync", "synchronous_commit", "full_page_writes"] {
                settings.push((name.to_owned(), "off".to_owned()));
            }
        }
        settings.extend(options.settings.iter().cloned());
        let server_options = settings
            .iter()
            .map(|(k, v)| format!("-c {k}={v}"))
            .collect::<Vec<_>>()
            .join(" ");
        check(
            "pg_ctl start",
            self.command("pg_ctl")
                .arg("-D")
                .arg(self.data_dir())
                .arg("-l")
                .arg(self.log_file())
                .args(["-w", "-t", "60", "-o", &server_options, "start"])
                .output(),
        )
    }

    /// The port the server listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The URL of the `postgres` database as the `postgres` superuser (no password: the
    /// server trusts loopback), for other processes of a test too.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// A name for a schema no other call of this server returned.
    pub fn fresh_schema(&self) -> String {
        format!("t{}", self.next_schema.fetch_add(1, Ordering::Relaxed))
    }

    /// The configuration of a store in `schema` on this server.
    pub fn config(&self, schema: &str) -> PostgresConfig {
        PostgresConfig::new(self.url()).schema(schema)
    }

    /// The configuration of a fresh, empty store (a new schema).
    pub fn fresh_config(&self) -> PostgresConfig {
        self.config(&self.fresh_schema())
    }

    /// Opens a fresh, empty store (a new schema).
    pub async fn fresh_store(&self) -> Result<PostgresStore, PgError> {
        PostgresStore::connect(self.fresh_config()).await
    }
}

impl Drop for TestPostgres {
    fn drop(&mut self) {
        let stopped = self
            .command("pg_ctl")
            .arg("-D")
            .arg(self.data_dir())
            .args(["-m", "immediate", "-w", "stop"])
            .output();
        if let Err(e) = check("pg_ctl stop", stopped) {
            eprintln!("{e}");
        }
    }
}
