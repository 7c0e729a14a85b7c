//! A real mosquitto broker per test (feature `test-broker`).
//!
//! [`TestBroker::start`] picks a free loopback port, writes a configuration into a temporary
//! directory (listener on 127.0.0.1, `set_tcp_nodelay`, raised in-flight and queue limits,
//! persistence in the same directory, a password file for the service account and an ACL
//! file with the pattern rules of each topic layout), starts `mosquitto -c` and waits until
//! it listens. With [`BrokerOptions::client_certificates`] its TLS listener admits only
//! clients with a certificate of the test CA ([`TestBroker::client_identity`] makes one), as
//! the production recipe in `docs/operations.md` does. It is killed when dropped; [`TestBroker::restart`] brings it back on the same
//! port with the same data.
//!
//! Where mosquitto is not installed the harness panics with a message naming the package:
//! these tests must run in CI, never be skipped silently.

use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::codec::TopicLayout;
use crate::config::{BrokerConfig, Credentials};

/// How the test broker is set up.
#[derive(Debug, Clone)]
pub struct BrokerOptions {
    /// Each layout gets the device pattern ACL rules and the service account's access.
    pub layouts: Vec<TopicLayout>,
    /// The service account: authenticated by the password file, may read and write every
    /// topic under the layouts' prefixes.
    pub service: Credentials,
    /// Replaces the service account's ACL lines (default: `topic readwrite {prefix}/#` per
    /// layout, which includes the status-change events under `{prefix}/events/#`), e.g. to
    /// test refused publishes.
    pub service_acl: Option<Vec<String>>,
    /// Also open a TLS listener (certificates made with the `openssl` command line: a test
    /// CA and a server certificate for `127.0.0.1` and `localhost`).
    pub tls: bool,
    /// With `tls`: the TLS listener requires a client certificate signed by the test CA
    /// (`require_certificate true`); see [`TestBroker::client_identity`].
    pub client_certificates: bool,
    /// Appended to the TLS listener's section, e.g. `use_identity_as_username true` (the
    /// certificate's common name becomes the username, `%u` in ACL patterns).
    pub tls_listener_config: String,
    /// Replaces the device pattern lines of the ACL file (default: each layout's
    /// `TopicLayout::acl_patterns`, which bind the client id, `%c`).
    pub device_acl: Option<Vec<String>>,
    /// Log every message flow (`log_type all`); slows the broker down, off for benchmarks.
    pub verbose_log: bool,
    /// Appended verbatim to the configuration.
    pub extra_config: String,
    /// Device accounts added to the password file (username, password), for recipes where
    /// devices authenticate.
    pub device_accounts: Vec<Credentials>,
    /// Let clients connect without a username (the default: anonymous clients are devices).
    pub allow_anonymous: bool,
}

impl Default for BrokerOptions {
    fn default() -> Self {
        Self {
            layouts: vec![TopicLayout::fleets()],
            service: Credentials {
                username: "fleetops-service".into(),
                password: "test-secret".into(),
            },
            service_acl: None,
            tls: false,
            client_certificates: false,
            tls_listener_config: String::new(),
            device_acl: None,
            verbose_log: true,
            extra_config: String::new(),
            device_accounts: Vec::new(),
            allow_anonymous: true,
        }
    }
}

/// A running mosquitto, killed on drop.
pub struct TestBroker {
    options: BrokerOptions,
    dir: tempfile::TempDir,
    port: u16,
    tls_port: Option<u16>,
    child: Option<Child>,
}

/// The mosquitto binary: `$MOSQUITTO`, then `PATH`, then `/usr/sbin/mosquitto`.
///
/// # Panics
/// When none exists, with a message naming `apt-get install mosquitto`.
pub fn mosquitto_binary() -> PathBuf {
    find_binary(
        "MOSQUITTO",
        "mosquitto",
        &["/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto"],
    )
}

fn find_binary(env: &str, name: &str, fallbacks: &[&str]) -> PathBuf {
    if let Some(p) = std::env::var_os(env) {
        return PathBuf::from(p);
    }
    let in_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join(name));
    in_path
        .chain(fallbacks.iter().map(PathBuf::from))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "`{name}` not found (looked at ${env}, PATH and {fallbacks:?}). The MQTT test \
                 suite runs against a real mosquitto broker and is never skipped: install it \
                 with `apt-get install mosquitto` (CI's .ci/run does), or set {env}."
            )
        })
}

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral loopback port");
    listener.local_addr().expect("local address").port()
}

impl TestBroker {
    /// Starts a broker with the default options (`fleets` layout).
    pub fn start() -> Self {
        Self::start_with(BrokerOptions::default())
    }

    /// Starts a broker with `options`.
    pub fn start_with(options: BrokerOptions) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("fleetops-mosquitto-")
            .tempdir()
            .expect("create a temporary directory");
        let mut broker = Self {
            options,
            dir,
            port: 0,
            tls_port: None,
            child: None,
        };
        broker.write_auth_files();
        if broker.options.tls {
            broker.write_certificates();
        }
        // Another test may grab the port between our probe and mosquitto's bind: try again
        // with a new one.
        for attempt in 1..=5 {
            broker.port = free_port();
            if broker.options.tls {
                broker.tls_port = Some(free_port());
            }
            broker.write_config();
            match broker.spawn() {
                Ok(()) => return broker,
                Err(e) if attempt < 5 => eprintln!("mosquitto did not start ({e}); retrying"),
                Err(e) => panic!("mosquitto did not start: {e}\n{}", broker.log()),
            }
        }
        unreachable!("the loop returns or panics")
    }

    /// The listener port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The TLS listener's port, with [`BrokerOptions::tls`].
    pub fn tls_port(&self) -> Option<u16> {
        self.tls_port
    }

    /// The test CA's certificate (PEM), with [`BrokerOptions::tls`].
    pub fn ca_pem(&self) -> Option<Vec<u8>> {
        self.tls_port?;
        std::fs::read(self.dir.path().join("ca.pem")).ok()
    }

    /// Connection settings for an anonymous client over TLS, with [`BrokerOptions::tls`].
    ///
    /// # Panics
    /// Without a TLS listener.
    pub fn device_config_tls(&self) -> BrokerConfig {
        let mut c = self.device_config();
        c.port = self.tls_port.expect("the broker was started without tls");
        c.tls = Some(crate::config::TlsConfig {
            ca_pem: self.ca_pem().expect("the test CA"),
            client_auth_pem: None,
        });
        c
    }

    /// A client certificate and its private key (PEM) with common name `cn`, signed by the
    /// test CA, with [`BrokerOptions::tls`]. On a listener with
    /// [`BrokerOptions::client_certificates`], `cn` is the client's username.
    ///
    /// # Panics
    /// Without a TLS listener, or when `openssl` fails.
    pub fn client_identity(&self, cn: &str) -> (Vec<u8>, Vec<u8>) {
        assert!(
            self.tls_port.is_some(),
            "the broker was started without tls"
        );
        let d = self.dir.path();
        // The CN becomes a file name: keep it to the characters thing names use.
        let file = cn.replace(|c: char| !c.is_ascii_alphanumeric() && c != '-', "_");
        let (key, csr, pem, ext) = (
            format!("client-{file}.key"),
            format!("client-{file}.csr"),
            format!("client-{file}.pem"),
            "client.ext",
        );
        std::fs::write(
            d.join(ext),
            "basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature
             extendedKeyUsage=clientAuth
",
        )
        .expect("write client.ext");
        let subject = format!("/CN={cn}");
        run_openssl(
            d,
            &[
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                &key,
                "-out",
                &csr,
                "-subj",
                &subject,
            ],
        );
        run_openssl(
            d,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &pem,
                "-days",
                "3",
                "-extfile",
                ext,
            ],
        );
        (
            std::fs::read(d.join(&pem)).expect("the client certificate"),
            std::fs::read(d.join(&key)).expect("the client key"),
        )
    }

    /// Connection settings for a client over TLS that authenticates with `identity` (a
    /// certificate and key from [`TestBroker::client_identity`]), with [`BrokerOptions::tls`].
    ///
    /// # Panics
    /// Without a TLS listener.
    pub fn device_config_tls_with(&self, identity: (Vec<u8>, Vec<u8>)) -> BrokerConfig {
        let mut c = self.device_config_tls();
        if let Some(tls) = c.tls.as_mut() {
            tls.client_auth_pem = Some(identity);
        }
        c
    }

    /// The temporary directory (configuration, persistence, log).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Connection settings for an anonymous client (a device).
    pub fn device_config(&self) -> BrokerConfig {
        let mut c = BrokerConfig::new("127.0.0.1", self.port);
        // Tests restart brokers: reconnect quickly.
        c.backoff.initial = Duration::from_millis(20);
        c.backoff.max = Duration::from_millis(500);
        c.connect_timeout = Duration::from_secs(5);
        c
    }

    /// Connection settings for the service account.
    pub fn service_config(&self) -> BrokerConfig {
        let mut c = self.device_config();
        c.credentials = Some(self.options.service.clone());
        c
    }

    /// The broker's log so far.
    pub fn log(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = std::fs::File::open(self.dir.path().join("mosquitto.log")) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }

    /// Stops the broker with SIGTERM, so it writes its persistence file, and waits for it.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if matches!(child.try_wait(), Ok(Some(_))) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills the broker without letting it save anything.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts a stopped broker again on the same port with the same data directory.
    ///
    /// # Panics
    /// When it does not come up (for instance because the port was taken meanwhile).
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "the broker is still running");
        if let Err(e) = self.spawn() {
            panic!(
                "mosquitto did not restart on port {}: {e}\n{}",
                self.port,
                self.log()
            );
        }
    }

    /// [`TestBroker::stop`] then [`TestBroker::start_again`].
    pub fn restart(&mut self) {
        self.stop();
        self.start_again();
    }

    fn write_auth_files(&self) {
        let passwd = self.dir.path().join("passwd");
        let tool = find_binary(
            "MOSQUITTO_PASSWD",
            "mosquitto_passwd",
            &["/usr/bin/mosquitto_passwd"],
        );
        let out = Command::new(&tool)
            .arg("-b")
            .arg("-c")
            .arg(&passwd)
            .arg(&self.options.service.username)
            .arg(&self.options.service.password)
            .output()
            .unwrap_or_else(|e| panic!("run {}: {e}", tool.display()));
        assert!(
            out.status.success(),
            "mosquitto_passwd failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        for account in &self.options.device_accounts {
            let out = Command::new(&tool)
                .arg("-b")
                .arg(&passwd)
                .arg(&account.username)
                .arg(&account.password)
                .output()
                .unwrap_or_else(|e| panic!("run {}: {e}", tool.display()));
            assert!(out.status.success(), "mosquitto_passwd failed");
        }
        let mut acl = String::from(
            "# Devices connect with client id = thing name and are confined to their own topics.\n",
        );
        let patterns = match &self.options.device_acl {
            Some(lines) => lines.clone(),
            None => self
                .options
                .layouts
                .iter()
                .flat_map(TopicLayout::acl_patterns)
                .collect(),
        };
        for line in patterns {
            acl.push_str(&line);
            acl.push('\n');
        }
        acl.push_str(&format!(
            "\n# The service account: every thing's topics and the status-change events.\nuser {}\n",
            self.options.service.username
        ));
        match &self.options.service_acl {
            Some(lines) => {
                for line in lines {
                    acl.push_str(line);
                    acl.push('\n');
                }
            }
            None => {
                for layout in &self.options.layouts {
                    acl.push_str(&format!("topic readwrite {}/#\n", layout.prefix()));
                }
            }
        }
        std::fs::write(self.dir.path().join("acl"), acl).expect("write the ACL file");
    }

    fn write_certificates(&self) {
        let d = self.dir.path();
        std::fs::write(
            d.join("server.ext"),
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n\
             keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n",
        )
        .expect("write server.ext");
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        let steps: [Vec<&str>; 3] = [
            [
                &["req", "-x509"][..],
                &ec,
                &[
                    "-keyout",
                    "ca.key",
                    "-out",
                    "ca.pem",
                    "-days",
                    "3",
                    "-subj",
                    "/CN=fleetops test CA",
                    "-addext",
                    "basicConstraints=critical,CA:TRUE",
                    "-addext",
                    "keyUsage=critical,keyCertSign,cRLSign",
                ],
            ]
            .concat(),
            [
                &["req"][..],
                &ec,
                &[
                    "-keyout",
                    "server.key",
                    "-out",
                    "server.csr",
                    "-subj",
                    "/CN=localhost",
                ],
            ]
            .concat(),
            vec![
                "x509",
                "-req",
                "-in",
                "server.csr",
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                "server.pem",
                "-days",
                "3",
                "-extfile",
                "server.ext",
            ],
        ];
        for args in steps {
            run_openssl(d, &args);
        }
    }

    fn write_config(&self) {
        let d = self.dir.path().display();
        let log_types = if self.options.verbose_log {
            "log_type all\n"
        } else {
            "log_type error\nlog_type warning\nlog_type notice\nlog_type information\n"
        };
        let config = format!(
            "# Written by fleetops-transport-mqtt's test harness.\n\
             listener {port} 127.0.0.1\n\
             # Anonymous clients are devices (pattern ACLs); the service has a password.\n\
             allow_anonymous {anonymous}\n\
             password_file {d}/passwd\n\
             acl_file {d}/acl\n\
             # Without it a QoS 1 round trip costs ~44 ms (Nagle x delayed ACK).\n\
             set_tcp_nodelay true\n\
             # The default 20 caps each client's window; 0 means no limit.\n\
             max_inflight_messages 0\n\
             # The default 1000 silently drops acknowledged QoS 1 messages under fan-out.\n\
             max_queued_messages 1000000\n\
             persistence true\n\
             persistence_location {d}/\n\
             # Running as root, mosquitto would otherwise switch to an unprivileged user.\n\
             user root\n\
             log_dest file {d}/mosquitto.log\n\
             log_timestamp_format %H:%M:%S\n\
             {log_types}\
             {tls}\
             {extra}\n",
            port = self.port,
            anonymous = self.options.allow_anonymous,
            tls = match self.tls_port {
                Some(p) => format!(
                    "listener {p} 127.0.0.1\ncafile {d}/ca.pem\ncertfile {d}/server.pem\n\
                     keyfile {d}/server.key\n{}",
                    if self.options.client_certificates {
                        "require_certificate true\n"
                    } else {
                        ""
                    }
                    .to_owned()
                        + &self.options.tls_listener_config
                ),
                None => String::new(),
            },
            extra = self.options.extra_config,
        );
        std::fs::write(self.dir.path().join("mosquitto.conf"), config)
            .expect("write mosquitto.conf");
    }

    fn spawn(&mut self) -> Result<(), String> {
        let binary = mosquitto_binary();
        // On a restart the log already says "running": only look at what this run writes.
        let log_start = self.log().len();
        let mut child = Command::new(&binary)
            .arg("-c")
            .arg(self.dir.path().join("mosquitto.conf"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("spawn {}: {e}", binary.display()))?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!("mosquitto exited with {status}"));
            }
            // Listening is not enough (another process may own the port): our own process
            // must have logged that it runs, and still be alive.
            let log = self.log();
            let running = log
                .get(log_start..)
                .is_some_and(|l| l.contains("mosquitto version") && l.contains("running"));
            if running && TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                if let Ok(Some(status)) = child.try_wait() {
                    return Err(format!("mosquitto exited with {status}"));
                }
                self.child = Some(child);
                return Ok(());
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err("not listening after 10 s".into());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

fn run_openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| {
            panic!("run openssl (the TLS tests need the openssl command line): {e}")
        });
    assert!(
        out.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Drop for TestBroker {
    fn drop(&mut self) {
        self.kill();
    }
}
