//! Connection settings shared by the service binding and the device SDK.

use std::sync::Arc;
use std::time::Duration;

use rumqttc::v5::mqttbytes::v5::ConnectProperties;
use rumqttc::v5::MqttOptions;
use rumqttc::{NetworkOptions, TlsConfiguration, Transport};

use crate::error::Error;

/// Username and password sent in CONNECT.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The username.
    pub username: String,
    /// The password.
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the password into logs.
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

/// TLS with rustls (ring provider), from PEM material.
#[derive(Clone, PartialEq, Eq)]
pub struct TlsConfig {
    /// PEM certificates of the CAs that sign the broker's certificate.
    pub ca_pem: Vec<u8>,
    /// PEM certificate chain and private key for client authentication, if the broker asks.
    pub client_auth_pem: Option<(Vec<u8>, Vec<u8>)>,
}

impl std::fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsConfig")
            .field("ca_pem_bytes", &self.ca_pem.len())
            .field("client_auth", &self.client_auth_pem.is_some())
            .finish()
    }
}

impl TlsConfig {
    /// Builds the rustls client configuration.
    pub fn client_config(&self) -> Result<rustls::ClientConfig, Error> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};

        let tls = |e: &dyn std::fmt::Display| Error::Tls(e.to_string());
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(&self.ca_pem) {
            roots.add(cert.map_err(|e| tls(&e))?).map_err(|e| tls(&e))?;
        }
        if roots.is_empty() {
            return Err(Error::Tls("no CA certificate in ca_pem".into()));
        }
        // An explicit provider: nothing depends on a process-wide default being installed.
        let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| tls(&e))?
        .with_root_certificates(roots);
        match &self.client_auth_pem {
            None => Ok(builder.with_no_client_auth()),
            Some((chain, key)) => {
                let chain = CertificateDer::pem_slice_iter(chain)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| tls(&e))?;
                let key = PrivateKeyDer::from_pem_slice(key).map_err(|e| tls(&e))?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| tls(&e))
            }
        }
    }
}

/// Reconnect delays: doubling from `initial` up to `max`, reset by every successful connect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The first delay.
    pub initial: Duration,
    /// The longest delay.
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(5),
        }
    }
}

/// Whether the broker keeps the session (subscriptions and queued QoS 1 messages) while the
/// client is away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Session {
    /// Clean start on every connect.
    Clean,
    /// `clean_start = false` with this session expiry (both are needed in MQTT 5).
    Persistent {
        /// How long the broker keeps the session after a disconnect.
        expiry: Duration,
    },
}

/// Where and how to connect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerConfig {
    /// Host name or IP address.
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// Username and password, if the broker wants them.
    pub credentials: Option<Credentials>,
    /// TLS, if the listener speaks it.
    pub tls: Option<TlsConfig>,
    /// MQTT keep alive.
    pub keep_alive: Duration,
    /// Reconnect delays.
    pub backoff: Backoff,
    /// How long `connect` waits for the first connection with its subscriptions in place.
    pub connect_timeout: Duration,
}

impl BrokerConfig {
    /// A plain TCP broker at `host:port` with default timings.
    pub fn new(host: impl Into<String>, port: u16) -> Self {
        Self {
            host: host.into(),
            port,
            credentials: None,
            tls: None,
            keep_alive: Duration::from_secs(30),
            backoff: Backoff::default(),
            connect_timeout: Duration::from_secs(10),
        }
    }

    /// `host:port`, for messages.
    pub fn address(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

/// Per-connection knobs that differ between the service and a device.
pub(crate) struct ClientKnobs<'a> {
    pub client_id: &'a str,
    pub session: Session,
    /// Receive Maximum sent to the broker: how many QoS 1 messages it may have in flight
    /// towards us.
    pub receive_maximum: u16,
    /// The largest packet we accept (sent as Maximum Packet Size).
    pub max_packet_size: u32,
    /// Our own in-flight window; rumqttc pre-allocates a slot per unit.
    pub max_inflight: u16,
    /// Acknowledge incoming QoS 1 only once the consumer took the message.
    pub manual_acks: bool,
}

pub(crate) fn mqtt_options(
    broker: &BrokerConfig,
    knobs: &ClientKnobs<'_>,
) -> Result<MqttOptions, Error> {
    if broker.host.is_empty() {
        return Err(Error::Config {
            field: "host",
            reason: "must not be empty".into(),
        });
    }
    let mut o = MqttOptions::new(knobs.client_id, broker.host.clone(), broker.port);
    o.set_keep_alive(broker.keep_alive.max(Duration::from_secs(1)));
    // Without TCP_NODELAY a QoS 1 round trip costs ~44 ms of Nagle × delayed ACK.
    let mut net = NetworkOptions::new();
    net.set_tcp_nodelay(true);
    net.set_connection_timeout(broker.connect_timeout.as_secs().max(1));
    o.set_network_options(net);
    let mut props = ConnectProperties::new();
    // Without it mosquitto uses a small window towards us.
    props.receive_maximum = Some(knobs.receive_maximum.max(1));
    // rumqttc's default of 10 KiB is smaller than a job document.
    props.max_packet_size = Some(knobs.max_packet_size);
    match knobs.session {
        Session::Clean => o.set_clean_start(true),
        Session::Persistent { expiry } => {
            // Both are needed: clean_start=false alone gets a session that ends on disconnect.
            props.session_expiry_interval =
                Some(u32::try_from(expiry.as_secs()).unwrap_or(u32::MAX).max(1));
            o.set_clean_start(false)
        }
    };
    o.set_connect_properties(props);
    o.set_outgoing_inflight_upper_limit(knobs.max_inflight.max(1));
    o.set_manual_acks(knobs.manual_acks);
    if let Some(c) = &broker.credentials {
        o.set_credentials(c.username.clone(), c.password.clone());
    }
    if let Some(tls) = &broker.tls {
        let config = tls.client_config()?;
        o.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
            Arc::new(config),
        )));
    }
    Ok(o)
}
