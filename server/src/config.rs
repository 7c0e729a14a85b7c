//! Settings of `fleetops serve`: command-line flags, `FLEETOPS_*` environment variables and an
//! optional TOML file, resolved into one typed [`Settings`] value.
//!
//! Precedence is flags > environment > file > defaults. clap merges the first two (each flag
//! has an `env` name); [`Settings::resolve`] then fills what neither gave from the file and
//! the defaults, and parses every value at this boundary so the server never sees text.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use clap::{Args, ValueEnum};
use fleetops_store_sled::Durability;
use fleetops_transport_mqtt::codec::{LayoutError, PresenceSource, TopicLayout};
use fleetops_transport_mqtt::{BrokerConfig, Credentials, MqttLinkConfig, Session};
use serde::{Deserialize, Serialize};

use crate::broker_url::{redact, BrokerUrl, BrokerUrlError};

/// The broker when none is configured: a mosquitto on this machine.
pub const DEFAULT_BROKER: &str = "mqtt://127.0.0.1:1883";
/// The HTTP listen address when none is configured: loopback only, so a fresh install is not
/// reachable from the network before an operator decides so.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
/// The sled directory when none is configured, relative to the working directory.
pub const DEFAULT_DATA_DIR: &str = "fleetops-data";
/// How long the broker keeps the session of a service that does not share its traffic.
pub const DEFAULT_SESSION_EXPIRY_SECS: u64 = 3600;
/// The MQTT client id when none is configured.
pub const DEFAULT_CLIENT_ID: &str = "fleetops-service";
/// The largest request body when none is configured: 1 MiB. A job document is at most
/// 128 KiB on the wire (the codec's payload limit); the rest is room for long target lists.
pub const DEFAULT_MAX_BODY_BYTES: usize = 1024 * 1024;
/// The most HTTP connections served at once when none is configured. Connections beyond it
/// wait in the listen backlog until one closes.
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;
/// How long a client may take to send a request's headers when none is configured, in
/// seconds; a slower connection is closed. It also ends idle keep-alive connections.
pub const DEFAULT_HEADER_TIMEOUT_SECS: u64 = 10;
/// The log filter when neither `--log` nor `RUST_LOG` says otherwise.
pub const DEFAULT_LOG_FILTER: &str = "info";

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// Where presence comes from, as the command line and the TOML file name it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PresenceArg {
    /// No presence: every thing's connectivity stays `unknown`.
    #[default]
    None,
    /// Birth and last-will messages on `{prefix}/things/{thing}/presence` (any broker).
    Birth,
    /// EMQX's `$SYS/brokers/+/clients/+/connected|disconnected`.
    Emqx,
    /// AWS-style `$aws/events/presence/connected|disconnected/{clientId}`.
    Aws,
}

impl From<PresenceArg> for PresenceSource {
    fn from(p: PresenceArg) -> Self {
        match p {
            PresenceArg::None => Self::None,
            PresenceArg::Birth => Self::Birth,
            PresenceArg::Emqx => Self::Emqx,
            PresenceArg::Aws => Self::Aws,
        }
    }
}

/// What happens to a command to a thing presence says is offline.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OfflineCommandsArg {
    /// Send it; it waits for the thing until its TTL.
    #[default]
    Wait,
    /// Refuse it at once with 409 `ThingOffline`.
    Fail,
}

/// sled durability, as the command line and the TOML file name it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DurabilityArg {
    /// One sled flush per group commit before acknowledging (the store's default).
    #[default]
    Flush,
    /// Acknowledge at once; sled flushes in the background every 500 ms, so a crash can lose
    /// the last half second of acknowledged changes.
    Buffered,
}

impl From<DurabilityArg> for Durability {
    fn from(d: DurabilityArg) -> Self {
        match d {
            DurabilityArg::Flush => Durability::FlushEveryBatch,
            DurabilityArg::Buffered => Durability::Buffered,
        }
    }
}

/// Arguments of `fleetops serve`, boxed: they are many, and the subcommand enum should not be
/// as large as all of them.
#[derive(Debug, Clone, Default, Args)]
pub struct ServeArgs {
    /// The options.
    #[command(flatten)]
    pub options: Box<ServeOptions>,
}

/// The options of `fleetops serve`. Every one can also come from its `FLEETOPS_*` environment
/// variable or from the TOML file named by `--config`.
#[derive(Debug, Clone, Default, Args)]
pub struct ServeOptions {
    /// TOML file with any of the settings below (snake_case keys, e.g. `api_token`).
    #[arg(long, env = "FLEETOPS_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Broker URL: `mqtt://[user[:password]@]host[:port]` or `mqtts://…` (TLS) (default:
    /// mqtt://127.0.0.1:1883).
    #[arg(long, env = "FLEETOPS_BROKER", value_name = "URL")]
    pub broker: Option<String>,
    /// PEM file of the CA that signs the broker's certificate (needed by mqtts://).
    #[arg(long, env = "FLEETOPS_BROKER_CA", value_name = "FILE")]
    pub broker_ca: Option<PathBuf>,
    /// PEM client certificate chain, if the broker wants client authentication.
    #[arg(
        long,
        env = "FLEETOPS_BROKER_CERT",
        value_name = "FILE",
        requires = "broker_key"
    )]
    pub broker_cert: Option<PathBuf>,
    /// PEM private key of the client certificate.
    #[arg(
        long,
        env = "FLEETOPS_BROKER_KEY",
        value_name = "FILE",
        requires = "broker_cert"
    )]
    pub broker_key: Option<PathBuf>,
    /// Broker username; replaces the one in the URL.
    #[arg(long, env = "FLEETOPS_BROKER_USERNAME", value_name = "NAME")]
    pub broker_username: Option<String>,
    /// Broker password; replaces the one in the URL (prefer the environment variable: flags
    /// show in the process list).
    #[arg(
        long,
        env = "FLEETOPS_BROKER_PASSWORD",
        value_name = "PASSWORD",
        hide_env_values = true
    )]
    pub broker_password: Option<String>,
    /// Topic preset (`fleets`, `emqx`, `aws`) or a custom prefix such as `acme/iot` [default:
    /// fleets].
    #[arg(long, env = "FLEETOPS_TOPICS", value_name = "PRESET|PREFIX")]
    pub topics: Option<String>,
    /// MQTT client id of the service (unique per instance) [default: fleetops-service].
    #[arg(long, env = "FLEETOPS_CLIENT_ID", value_name = "ID")]
    pub client_id: Option<String>,
    /// Subscribe as `$share/{group}/…` so several instances split the device traffic.
    #[arg(long, env = "FLEETOPS_SHARED_GROUP", value_name = "GROUP")]
    pub shared_group: Option<String>,
    /// How long the broker keeps the service's session (and queues device requests for it)
    /// after a disconnect; 0 ends it at once [default: 3600, or 0 with --shared-group, where
    /// a dead instance's session would keep taking its share of the requests].
    #[arg(long, env = "FLEETOPS_SESSION_EXPIRY_SECS", value_name = "SECS")]
    pub session_expiry_secs: Option<u64>,
    /// Where thing presence (online / offline) comes from [default: none].
    #[arg(long, env = "FLEETOPS_PRESENCE", value_enum)]
    pub presence: Option<PresenceArg>,
    /// A command to a thing presence says is offline: `wait` (until its TTL) or `fail` (409
    /// `ThingOffline` at once) [default: wait].
    #[arg(long, env = "FLEETOPS_OFFLINE_COMMANDS", value_enum)]
    pub offline_commands: Option<OfflineCommandsArg>,
    /// Where the events are kept: `sled` (embedded, in --data-dir; one instance) or a
    /// PostgreSQL URL `postgres://user[:password]@host[:port]/database` that several
    /// instances may share [default: sled].
    #[arg(
        long,
        env = "FLEETOPS_STORE",
        value_name = "sled|URL",
        hide_env_values = true
    )]
    pub store: Option<String>,
    /// Directory of the sled database [default: fleetops-data].
    #[arg(long, env = "FLEETOPS_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// When an append counts as stored: `flush` (flushed before it is acknowledged) or
    /// `buffered` (acknowledged at once, flushed every 500 ms; a crash can lose the last half
    /// second) [default: flush].
    #[arg(long, env = "FLEETOPS_DURABILITY", value_enum)]
    pub durability: Option<DurabilityArg>,
    /// HTTP listen address; port 0 picks a free port (printed at start) [default:
    /// 127.0.0.1:8080].
    #[arg(long, env = "FLEETOPS_LISTEN", value_name = "ADDR")]
    pub listen: Option<String>,
    /// Bearer token every API request must carry (`Authorization: Bearer …`).
    #[arg(
        long,
        env = "FLEETOPS_API_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    pub api_token: Option<String>,
    /// Serve the API without authentication. Never the default: without a token the server
    /// refuses to start unless this is given.
    #[arg(long, env = "FLEETOPS_NO_AUTH")]
    pub no_auth: bool,
    /// Allow `--no-auth` on a listen address that is not loopback. Without it the server
    /// refuses to start, so an unauthenticated API is never reachable from the network by
    /// accident.
    #[arg(long, env = "FLEETOPS_ALLOW_UNAUTHENTICATED_REMOTE")]
    pub allow_unauthenticated_remote: bool,
    /// Most HTTP connections served at once; further ones wait in the listen backlog until
    /// one closes [default: 1024].
    #[arg(long, env = "FLEETOPS_MAX_CONNECTIONS", value_name = "N")]
    pub max_connections: Option<usize>,
    /// Seconds a client may take to send a request's headers (and an idle keep-alive
    /// connection may stay open) before the connection is closed [default: 10].
    #[arg(long, env = "FLEETOPS_HEADER_TIMEOUT_SECS", value_name = "SECS")]
    pub header_timeout_secs: Option<u64>,
    /// Largest accepted request body in bytes; larger ones get 413 [default: 1048576].
    #[arg(long, env = "FLEETOPS_MAX_BODY_BYTES", value_name = "BYTES")]
    pub max_body_bytes: Option<usize>,
    /// Log format.
    #[arg(long, env = "FLEETOPS_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
    /// Log filter in `RUST_LOG` syntax, e.g. `info,fleetops_service=debug` [default:
    /// $RUST_LOG, else info].
    #[arg(long, env = "FLEETOPS_LOG", value_name = "FILTER")]
    pub log: Option<String>,
}

/// The TOML file: the same settings as the flags, all optional, unknown keys refused.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// See [`ServeOptions::broker`].
    pub broker: Option<String>,
    /// See [`ServeOptions::broker_ca`].
    pub broker_ca: Option<PathBuf>,
    /// See [`ServeOptions::broker_cert`].
    pub broker_cert: Option<PathBuf>,
    /// See [`ServeOptions::broker_key`].
    pub broker_key: Option<PathBuf>,
    /// See [`ServeOptions::broker_username`].
    pub broker_username: Option<String>,
    /// See [`ServeOptions::broker_password`].
    pub broker_password: Option<String>,
    /// See [`ServeOptions::topics`].
    pub topics: Option<String>,
    /// See [`ServeOptions::client_id`].
    pub client_id: Option<String>,
    /// See [`ServeOptions::shared_group`].
    pub shared_group: Option<String>,
    /// See [`ServeOptions::session_expiry_secs`].
    pub session_expiry_secs: Option<u64>,
    /// See [`ServeOptions::presence`].
    pub presence: Option<PresenceArg>,
    /// See [`ServeOptions::offline_commands`].
    pub offline_commands: Option<OfflineCommandsArg>,
    /// See [`ServeOptions::store`].
    pub store: Option<String>,
    /// See [`ServeOptions::data_dir`].
    pub data_dir: Option<PathBuf>,
    /// See [`ServeOptions::durability`].
    pub durability: Option<DurabilityArg>,
    /// See [`ServeOptions::listen`].
    pub listen: Option<String>,
    /// See [`ServeOptions::api_token`].
    pub api_token: Option<String>,
    /// See [`ServeOptions::no_auth`].
    pub no_auth: Option<bool>,
    /// See [`ServeOptions::allow_unauthenticated_remote`].
    pub allow_unauthenticated_remote: Option<bool>,
    /// See [`ServeOptions::max_connections`].
    pub max_connections: Option<usize>,
    /// See [`ServeOptions::header_timeout_secs`].
    pub header_timeout_secs: Option<u64>,
    /// See [`ServeOptions::max_body_bytes`].
    pub max_body_bytes: Option<usize>,
    /// See [`ServeOptions::log_format`].
    pub log_format: Option<LogFormat>,
    /// See [`ServeOptions::log`].
    pub log: Option<String>,
}

impl FileConfig {
    /// Reads and parses a TOML file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::ReadFile {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
        toml::from_str(&text).map_err(|e| ConfigError::ParseFile {
            path: path.to_owned(),
            reason: e.message().to_owned(),
        })
    }
}

/// Why the settings were refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// The configuration file could not be read.
    #[error("cannot read the configuration file {}: {reason}", path.display())]
    ReadFile {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        reason: String,
    },
    /// The configuration file is not valid TOML or has unknown or mistyped keys.
    #[error("invalid configuration file {}: {reason}", path.display())]
    ParseFile {
        /// The file.
        path: PathBuf,
        /// What the parser said.
        reason: String,
    },
    /// The broker URL or its TLS files were refused.
    #[error(transparent)]
    Broker(#[from] BrokerUrlError),
    /// A client certificate without its key, or the other way round (from the file).
    #[error("broker_cert and broker_key must be given together")]
    ClientCertPair,
    /// A password without a username.
    #[error("a broker password needs a broker username")]
    PasswordWithoutUser,
    /// The topic prefix was refused.
    #[error("invalid topics `{value}`: {source}")]
    Topics {
        /// The value given.
        value: String,
        /// Why.
        source: LayoutError,
    },
    /// The listen address is not `host:port`.
    #[error("invalid listen address `{0}`: expected IP:PORT such as 127.0.0.1:8080")]
    Listen(String),
    /// An empty client id.
    #[error("the MQTT client id must not be empty")]
    ClientId,
    /// An empty API token, which would accept `Authorization: Bearer ` .
    #[error("the API token must not be empty")]
    EmptyToken,
    /// Neither a token nor an explicit `--no-auth`.
    #[error(
        "no API token: set --api-token (or FLEETOPS_API_TOKEN), or pass --no-auth to serve \
         the API without authentication"
    )]
    NoToken,
    /// Both a token and `--no-auth`: one of them is a mistake.
    #[error("both an API token and --no-auth were given; choose one")]
    TokenAndNoAuth,
    /// A zero body limit.
    #[error("max_body_bytes must be at least 1")]
    BodyLimit,
    /// `--no-auth` on an address other machines can reach, without the explicit flag.
    #[error(
        "--no-auth on {0}, which is not a loopback address, would serve the API to the \
         network without authentication; listen on 127.0.0.1, set --api-token, or add \
         --allow-unauthenticated-remote if that is really meant"
    )]
    UnauthenticatedRemote(SocketAddr),
    /// A zero connection cap.
    #[error("max_connections must be at least 1")]
    MaxConnections,
    /// A zero header timeout.
    #[error("header_timeout_secs must be at least 1")]
    HeaderTimeout,
    /// The store is neither `sled` nor a PostgreSQL URL (password redacted).
    #[error("invalid store `{0}`: expected `sled` or postgres://user@host[:port]/database")]
    Store(String),
}

/// How API requests are authenticated.
#[derive(Clone, PartialEq, Eq)]
pub enum Auth {
    /// `Authorization: Bearer <token>` on every API request.
    Bearer(String),
    /// No authentication (explicitly asked for).
    Disabled,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the token into logs.
        match self {
            Self::Bearer(_) => f.write_str("Bearer(***)"),
            Self::Disabled => f.write_str("Disabled"),
        }
    }
}

/// Everything `fleetops serve` needs, parsed and checked.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The broker URL with any password replaced by `***`, for logs.
    pub broker_shown: String,
    /// The MQTT link's settings (broker, TLS, credentials, topics, client id).
    pub link: MqttLinkConfig,
    /// Where the events are kept.
    pub store: StoreSetting,
    /// The sled directory.
    pub data_dir: PathBuf,
    /// sled's durability.
    pub durability: Durability,
    /// The HTTP listen address.
    pub listen: SocketAddr,
    /// API authentication.
    pub auth: Auth,
    /// Largest request body in bytes.
    pub max_body_bytes: usize,
    /// Most HTTP connections served at once.
    pub max_connections: usize,
    /// How long a client may take to send a request's headers.
    pub header_timeout: std::time::Duration,
    /// Log format.
    pub log_format: LogFormat,
    /// Log filter (`RUST_LOG` syntax).
    pub log_filter: String,
    /// Whether commands to offline things are refused at once.
    pub offline_commands: OfflineCommandsArg,
}

/// Where `fleetops serve` keeps its events.
#[derive(Clone, PartialEq, Eq)]
pub enum StoreSetting {
    /// sled in the data directory: embedded, one instance.
    Sled,
    /// PostgreSQL: several instances may share it (see `docs/operations.md`).
    Postgres {
        /// The connection URL, password included.
        url: String,
    },
}

impl StoreSetting {
    /// Parses `sled` or a `postgres://` / `postgresql://` URL.
    pub fn parse(value: &str) -> Result<Self, ConfigError> {
        if value == "sled" {
            Ok(Self::Sled)
        } else if value.starts_with("postgres://") || value.starts_with("postgresql://") {
            Ok(Self::Postgres {
                url: value.to_owned(),
            })
        } else {
            Err(ConfigError::Store(redact(value)))
        }
    }

    /// What to show in logs: `sled`, or the URL with its password replaced by `***`.
    pub fn shown(&self) -> String {
        match self {
            Self::Sled => "sled".to_owned(),
            Self::Postgres { url } => redact(url),
        }
    }
}

impl std::fmt::Debug for StoreSetting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the database password into logs.
        f.write_str(&self.shown())
    }
}

/// Parses `fleets`, `emqx`, `aws` (with or without the `$`) or a custom prefix.
pub fn parse_topics(value: &str) -> Result<TopicLayout, ConfigError> {
    match value {
        "fleets" => Ok(TopicLayout::fleets()),
        "emqx" | "$emqx" => Ok(TopicLayout::emqx()),
        "aws" | "$aws" => Ok(TopicLayout::aws()),
        custom => TopicLayout::custom(custom).map_err(|source| ConfigError::Topics {
            value: custom.to_owned(),
            source,
        }),
    }
}

impl Settings {
    /// Loads the file named by `args.config` (if any) and resolves.
    pub fn from_args(args: ServeArgs) -> Result<Self, ConfigError> {
        let args = *args.options;
        let file = match &args.config {
            Some(path) => FileConfig::load(path)?,
            None => FileConfig::default(),
        };
        Self::resolve(args, file, std::env::var("RUST_LOG").ok())
    }

    /// Flags and environment (already merged by clap in `args`) over `file` over defaults.
    /// `rust_log` is the `RUST_LOG` variable, the filter's last fallback before `info`.
    pub fn resolve(
        args: ServeOptions,
        file: FileConfig,
        rust_log: Option<String>,
    ) -> Result<Self, ConfigError> {
        let broker = args
            .broker
            .or(file.broker)
            .unwrap_or_else(|| DEFAULT_BROKER.to_owned());
        let url = BrokerUrl::parse(&broker)?;
        let ca = args.broker_ca.or(file.broker_ca);
        // A pair comes from one source: a flag's certificate never meets the file's key.
        let client_cert = match (args.broker_cert, args.broker_key) {
            (Some(c), Some(k)) => Some((c, k)),
            (None, None) => match (file.broker_cert, file.broker_key) {
                (Some(c), Some(k)) => Some((c, k)),
                (None, None) => None,
                _ => return Err(ConfigError::ClientCertPair),
            },
            _ => return Err(ConfigError::ClientCertPair),
        };
        // Each part given separately replaces the same part of the URL, so a URL naming the
        // user can take its password from FLEETOPS_BROKER_PASSWORD (kept out of `ps`).
        let from_url = url.credentials.clone();
        let username = args
            .broker_username
            .or(file.broker_username)
            .or_else(|| from_url.as_ref().map(|c| c.username.clone()));
        let password = args
            .broker_password
            .or(file.broker_password)
            .or_else(|| from_url.map(|c| c.password));
        let credentials = match (username, password) {
            (Some(username), password) => Some(Credentials {
                username,
                password: password.unwrap_or_default(),
            }),
            (None, Some(_)) => return Err(ConfigError::PasswordWithoutUser),
            (None, None) => None,
        };
        let broker_config: BrokerConfig = url.to_config(
            ca.as_deref(),
            client_cert
                .as_ref()
                .map(|(c, k)| (c.as_path(), k.as_path())),
            credentials,
        )?;

        let layout = parse_topics(args.topics.or(file.topics).as_deref().unwrap_or("fleets"))?;
        let client_id = args
            .client_id
            .or(file.client_id)
            .unwrap_or_else(|| DEFAULT_CLIENT_ID.to_owned());
        if client_id.is_empty() {
            return Err(ConfigError::ClientId);
        }
        let mut link = MqttLinkConfig::new(broker_config);
        link.client_id = client_id;
        link.layout = layout;
        link.shared_group = args.shared_group.or(file.shared_group);
        link.presence = args.presence.or(file.presence).unwrap_or_default().into();
        // A persistent member of a shared subscription keeps receiving its share of the
        // device requests while it is down (they wait in its session), so instances that
        // share the traffic end their sessions when they go: the others then get it all.
        let expiry = args
            .session_expiry_secs
            .or(file.session_expiry_secs)
            .unwrap_or(if link.shared_group.is_some() {
                0
            } else {
                DEFAULT_SESSION_EXPIRY_SECS
            });
        link.session = if expiry == 0 {
            Session::Clean
        } else {
            Session::Persistent {
                expiry: std::time::Duration::from_secs(expiry),
            }
        };

        let listen_text = args
            .listen
            .or(file.listen)
            .unwrap_or_else(|| DEFAULT_LISTEN.to_owned());
        let listen = listen_text
            .parse::<SocketAddr>()
            .map_err(|_| ConfigError::Listen(listen_text.clone()))?;

        let token = args.api_token.or(file.api_token);
        let no_auth = args.no_auth || file.no_auth.unwrap_or(false);
        let auth = match (token, no_auth) {
            (Some(t), false) if t.is_empty() => return Err(ConfigError::EmptyToken),
            (Some(t), false) => Auth::Bearer(t),
            (None, true) => Auth::Disabled,
            (Some(_), true) => return Err(ConfigError::TokenAndNoAuth),
            (None, false) => return Err(ConfigError::NoToken),
        };
        let allow_remote =
            args.allow_unauthenticated_remote || file.allow_unauthenticated_remote.unwrap_or(false);
        if auth == Auth::Disabled && !listen.ip().is_loopback() && !allow_remote {
            return Err(ConfigError::UnauthenticatedRemote(listen));
        }
        let max_connections = args
            .max_connections
            .or(file.max_connections)
            .unwrap_or(DEFAULT_MAX_CONNECTIONS);
        if max_connections == 0 {
            return Err(ConfigError::MaxConnections);
        }
        let header_timeout_secs = args
            .header_timeout_secs
            .or(file.header_timeout_secs)
            .unwrap_or(DEFAULT_HEADER_TIMEOUT_SECS);
        if header_timeout_secs == 0 {
            return Err(ConfigError::HeaderTimeout);
        }

        let max_body_bytes = args
            .max_body_bytes
            .or(file.max_body_bytes)
            .unwrap_or(DEFAULT_MAX_BODY_BYTES);
        if max_body_bytes == 0 {
            return Err(ConfigError::BodyLimit);
        }

        let store = match args.store.or(file.store) {
            Some(value) => StoreSetting::parse(&value)?,
            None => StoreSetting::Sled,
        };

        Ok(Self {
            broker_shown: redact(&broker),
            link,
            store,
            data_dir: args
                .data_dir
                .or(file.data_dir)
                .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR)),
            durability: args
                .durability
                .or(file.durability)
                .unwrap_or_default()
                .into(),
            listen,
            auth,
            max_body_bytes,
            max_connections,
            header_timeout: std::time::Duration::from_secs(header_timeout_secs),
            log_format: args.log_format.or(file.log_format).unwrap_or_default(),
            log_filter: args
                .log
                .or(file.log)
                .or(rust_log)
                .unwrap_or_else(|| DEFAULT_LOG_FILTER.to_owned()),
            offline_commands: args
                .offline_commands
                .or(file.offline_commands)
                .unwrap_or_default(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> ServeOptions {
        ServeOptions {
            api_token: Some("t".into()),
            ..ServeOptions::default()
        }
    }

    #[test]
    fn defaults_apply_when_nothing_is_given() {
        let s = Settings::resolve(args(), FileConfig::default(), None).unwrap();
        assert_eq!(s.link.broker.address(), "127.0.0.1:1883");
        assert_eq!(s.link.layout.prefix(), "fleets");
        assert_eq!(s.link.client_id, DEFAULT_CLIENT_ID);
        assert_eq!(s.listen, DEFAULT_LISTEN.parse().unwrap());
        assert_eq!(s.data_dir, PathBuf::from(DEFAULT_DATA_DIR));
        assert_eq!(s.durability, Durability::FlushEveryBatch);
        assert_eq!(s.max_body_bytes, DEFAULT_MAX_BODY_BYTES);
        assert_eq!(s.max_connections, DEFAULT_MAX_CONNECTIONS);
        assert_eq!(
            s.header_timeout,
            std::time::Duration::from_secs(DEFAULT_HEADER_TIMEOUT_SECS)
        );
        assert_eq!(s.log_filter, "info");
        assert_eq!(s.auth, Auth::Bearer("t".into()));
    }

    #[test]
    fn the_store_is_sled_unless_a_postgres_url_is_given() {
        let s = Settings::resolve(args(), FileConfig::default(), None).unwrap();
        assert_eq!(s.store, StoreSetting::Sled);
        let file: FileConfig =
            toml::from_str(r#"store = "postgres://fleetops:secret@db:5432/fleet""#).unwrap();
        let s = Settings::resolve(args(), file, None).unwrap();
        assert_eq!(
            s.store,
            StoreSetting::Postgres {
                url: "postgres://fleetops:secret@db:5432/fleet".into()
            }
        );
        // The password never reaches a log line.
        assert_eq!(
            format!("{:?}", s.store),
            "postgres://fleetops:***@db:5432/fleet"
        );
        let mut a = args();
        a.store = Some("postgresql://db/fleet".into());
        assert!(matches!(
            Settings::resolve(a, FileConfig::default(), None)
                .unwrap()
                .store,
            StoreSetting::Postgres { .. }
        ));
        let mut a = args();
        a.store = Some("mysql://root:pw@db/fleet".into());
        let err = Settings::resolve(a, FileConfig::default(), None).unwrap_err();
        assert_eq!(err, ConfigError::Store("mysql://root:***@db/fleet".into()));
    }

    #[test]
    fn a_shared_group_ends_the_session_with_the_connection() {
        let s = Settings::resolve(args(), FileConfig::default(), None).unwrap();
        assert_eq!(
            s.link.session,
            Session::Persistent {
                expiry: std::time::Duration::from_secs(DEFAULT_SESSION_EXPIRY_SECS)
            }
        );
        let mut a = args();
        a.shared_group = Some("fleetops".into());
        let s = Settings::resolve(a, FileConfig::default(), None).unwrap();
        assert_eq!(s.link.session, Session::Clean);
        // An explicit expiry wins, with or without a group.
        let mut a = args();
        a.shared_group = Some("fleetops".into());
        a.session_expiry_secs = Some(30);
        let s = Settings::resolve(a, FileConfig::default(), None).unwrap();
        assert_eq!(
            s.link.session,
            Session::Persistent {
                expiry: std::time::Duration::from_secs(30)
            }
        );
    }

    #[test]
    fn flags_win_over_the_file_and_the_file_over_defaults() {
        let file: FileConfig = toml::from_str(
            r#"
            broker = "mqtt://file-host:1884"
            topics = "aws"
            listen = "0.0.0.0:9000"
            api_token = "from-file"
            log_format = "json"
            durability = "buffered"
            "#,
        )
        .unwrap();
        let a = ServeOptions {
            broker: Some("mqtt://flag-host".into()),
            api_token: Some("from-flag".into()),
            ..ServeOptions::default()
        };
        let s = Settings::resolve(a, file, Some("warn".into())).unwrap();
        assert_eq!(s.link.broker.address(), "flag-host:1883");
        assert_eq!(s.link.layout.prefix(), "$aws");
        assert_eq!(s.listen.port(), 9000);
        assert_eq!(s.auth, Auth::Bearer("from-flag".into()));
        assert_eq!(s.log_format, LogFormat::Json);
        assert_eq!(s.log_filter, "warn");
        assert_eq!(s.durability, Durability::Buffered);
    }

    #[test]
    fn separate_credentials_replace_those_of_the_url() {
        let a = ServeOptions {
            broker: Some("mqtt://u:p@h".into()),
            broker_username: Some("svc".into()),
            broker_password: Some("pw".into()),
            ..args()
        };
        let s = Settings::resolve(a, FileConfig::default(), None).unwrap();
        let c = s.link.broker.credentials.unwrap();
        assert_eq!((c.username.as_str(), c.password.as_str()), ("svc", "pw"));
        assert_eq!(s.broker_shown, "mqtt://u:p@h".replace(":p@", ":***@"));
        // The user from the URL, the password from elsewhere (FLEETOPS_BROKER_PASSWORD).
        let a = ServeOptions {
            broker: Some("mqtt://svc@h".into()),
            broker_password: Some("from-env".into()),
            ..args()
        };
        let s = Settings::resolve(a, FileConfig::default(), None).unwrap();
        let c = s.link.broker.credentials.unwrap();
        assert_eq!(
            (c.username.as_str(), c.password.as_str()),
            ("svc", "from-env")
        );
        // A password for nobody is refused.
        let a = ServeOptions {
            broker_password: Some("pw".into()),
            ..args()
        };
        assert_eq!(
            Settings::resolve(a, FileConfig::default(), None).unwrap_err(),
            ConfigError::PasswordWithoutUser
        );
    }

    #[test]
    fn refuses_to_start_without_a_token_unless_told_so() {
        let none = ServeOptions::default();
        assert_eq!(
            Settings::resolve(none.clone(), FileConfig::default(), None).unwrap_err(),
            ConfigError::NoToken
        );
        let open = ServeOptions {
            no_auth: true,
            ..none
        };
        let s = Settings::resolve(open.clone(), FileConfig::default(), None).unwrap();
        assert_eq!(s.auth, Auth::Disabled);
        let both = ServeOptions {
            api_token: Some("t".into()),
            ..open
        };
        assert_eq!(
            Settings::resolve(both, FileConfig::default(), None).unwrap_err(),
            ConfigError::TokenAndNoAuth
        );
        let empty = ServeOptions {
            api_token: Some(String::new()),
            ..ServeOptions::default()
        };
        assert_eq!(
            Settings::resolve(empty, FileConfig::default(), None).unwrap_err(),
            ConfigError::EmptyToken
        );
    }

    #[test]
    fn no_auth_on_a_remote_address_needs_the_explicit_flag() {
        let open = |listen: &str, allow: bool| ServeOptions {
            no_auth: true,
            allow_unauthenticated_remote: allow,
            listen: Some(listen.into()),
            ..ServeOptions::default()
        };
        for remote in ["0.0.0.0:8080", "192.168.1.5:8080", "[::]:8080"] {
            assert_eq!(
                Settings::resolve(open(remote, false), FileConfig::default(), None).unwrap_err(),
                ConfigError::UnauthenticatedRemote(remote.parse().unwrap()),
                "{remote}"
            );
            let s = Settings::resolve(open(remote, true), FileConfig::default(), None).unwrap();
            assert_eq!(s.auth, Auth::Disabled);
        }
        // The file can allow it too.
        let file = FileConfig {
            allow_unauthenticated_remote: Some(true),
            ..FileConfig::default()
        };
        assert!(Settings::resolve(open("0.0.0.0:1", false), file, None).is_ok());
        for local in ["127.0.0.1:8080", "127.0.0.2:0", "[::1]:8080"] {
            assert!(
                Settings::resolve(open(local, false), FileConfig::default(), None).is_ok(),
                "{local}"
            );
        }
        // A token makes any address fine.
        let remote_token = ServeOptions {
            listen: Some("0.0.0.0:8080".into()),
            ..args()
        };
        assert!(Settings::resolve(remote_token, FileConfig::default(), None).is_ok());
    }

    #[test]
    fn connection_limits_must_be_positive() {
        let zero_conns = ServeOptions {
            max_connections: Some(0),
            ..args()
        };
        assert_eq!(
            Settings::resolve(zero_conns, FileConfig::default(), None).unwrap_err(),
            ConfigError::MaxConnections
        );
        let zero_timeout = ServeOptions {
            header_timeout_secs: Some(0),
            ..args()
        };
        assert_eq!(
            Settings::resolve(zero_timeout, FileConfig::default(), None).unwrap_err(),
            ConfigError::HeaderTimeout
        );
        let file: FileConfig =
            toml::from_str("max_connections = 7\nheader_timeout_secs = 3\n").unwrap();
        let s = Settings::resolve(args(), file, None).unwrap();
        assert_eq!(s.max_connections, 7);
        assert_eq!(s.header_timeout, std::time::Duration::from_secs(3));
    }

    #[test]
    fn bad_values_are_refused_with_their_reason() {
        let bad_listen = ServeOptions {
            listen: Some("localhost".into()),
            ..args()
        };
        assert!(matches!(
            Settings::resolve(bad_listen, FileConfig::default(), None),
            Err(ConfigError::Listen(_))
        ));
        let bad_topics = ServeOptions {
            topics: Some("a/#".into()),
            ..args()
        };
        assert!(matches!(
            Settings::resolve(bad_topics, FileConfig::default(), None),
            Err(ConfigError::Topics { .. })
        ));
        let half_pair = FileConfig {
            broker_cert: Some("c.pem".into()),
            ..FileConfig::default()
        };
        assert_eq!(
            Settings::resolve(args(), half_pair, None).unwrap_err(),
            ConfigError::ClientCertPair
        );
        assert!(toml::from_str::<FileConfig>("brokr = \"x\"").is_err());
    }

    #[test]
    fn the_toml_example_of_the_operations_guide_parses() {
        let guide = include_str!("../../docs/operations.md");
        let start = guide.find("```toml\n").expect("a TOML example") + "```toml\n".len();
        let len = guide[start..].find("```").expect("closed");
        let file: FileConfig = toml::from_str(&guide[start..start + len]).expect("valid");
        assert_eq!(file.data_dir, Some(PathBuf::from("/var/lib/fleetops")));
        assert_eq!(file.log_format, Some(LogFormat::Json));
        assert_eq!(file.presence, Some(PresenceArg::Birth));
        assert_eq!(file.offline_commands, Some(OfflineCommandsArg::Wait));
    }

    #[test]
    fn presence_and_offline_commands_come_from_flags_over_the_file() {
        let s = Settings::resolve(args(), FileConfig::default(), None).unwrap();
        assert_eq!(s.link.presence, PresenceSource::None);
        assert_eq!(s.offline_commands, OfflineCommandsArg::Wait);
        let file = FileConfig {
            presence: Some(PresenceArg::Emqx),
            offline_commands: Some(OfflineCommandsArg::Fail),
            ..FileConfig::default()
        };
        let s = Settings::resolve(args(), file.clone(), None).unwrap();
        assert_eq!(s.link.presence, PresenceSource::Emqx);
        assert_eq!(s.offline_commands, OfflineCommandsArg::Fail);
        let mut a = args();
        a.presence = Some(PresenceArg::Aws);
        a.offline_commands = Some(OfflineCommandsArg::Wait);
        let s = Settings::resolve(a, file, None).unwrap();
        assert_eq!(s.link.presence, PresenceSource::Aws);
        assert_eq!(s.offline_commands, OfflineCommandsArg::Wait);
        assert!(toml::from_str::<FileConfig>("presence = \"sometimes\"").is_err());
        assert!(toml::from_str::<FileConfig>("offline_commands = \"drop\"").is_err());
    }

    #[test]
    fn the_file_is_read_and_its_errors_name_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fleetops.toml");
        std::fs::write(&path, "listen = \"127.0.0.1:0\"\napi_token = \"x\"\n").unwrap();
        let a = ServeOptions {
            config: Some(path.clone()),
            ..ServeOptions::default()
        };
        let s = Settings::from_args(ServeArgs {
            options: Box::new(a),
        })
        .unwrap();
        assert_eq!(s.listen.port(), 0);
        std::fs::write(&path, "listen = 8080\n").unwrap();
        let e = FileConfig::load(&path).unwrap_err().to_string();
        assert!(e.contains("fleetops.toml"), "{e}");
    }
}
