//! An in-process MQTT 5 broker on a free loopback port, for `fleetops demo` and tests that
//! must run on a machine with nothing but cargo.
//!
//! It is the `mqtt5` crate's broker with in-memory storage: no files, no `$SYS` topics, no
//! authentication (it listens on 127.0.0.1 only, on a port the OS picks, so 1883 may be
//! taken). fleetops needs QoS 1, No Local, persistent sessions, Response Topic and Correlation
//! Data, Maximum Packet Size and wildcards from it; the tests of this crate run a command and
//! a job through it with `MqttLink` and `DeviceClient` to prove that.

use std::net::SocketAddr;

use fleetops_transport_mqtt::BrokerConfig;
use mqtt5::broker::config::{BrokerConfig as Mqtt5Config, StorageBackend, StorageConfig};
use mqtt5::broker::server::{BrokerShutdownHandle, MqttBroker};
use tokio::task::JoinHandle;

/// Why the embedded broker did not start.
#[derive(Debug, thiserror::Error)]
pub enum EmbeddedBrokerError {
    /// Binding the loopback listener or setting up the broker failed.
    #[error("cannot start the embedded MQTT broker: {0}")]
    Start(String),
    /// The broker bound no listener we could read an address from.
    #[error("the embedded MQTT broker has no listening address")]
    NoAddress,
}

/// A running in-process broker. Dropping it stops it; [`EmbeddedBroker::shutdown`] also
/// waits until its tasks ended.
pub struct EmbeddedBroker {
    addr: SocketAddr,
    stop: BrokerShutdownHandle,
    task: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for EmbeddedBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedBroker")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl EmbeddedBroker {
    /// Starts a broker on 127.0.0.1 and a port the OS picks. Must be called inside a tokio
    /// runtime; the broker runs on it until stopped.
    pub async fn start() -> Result<Self, EmbeddedBrokerError> {
        let loopback: SocketAddr = SocketAddr::from(([127, 0, 0, 1], 0));
        let config = Mqtt5Config::default()
            .with_bind_address(loopback)
            // Memory only: the demo's broker state is as temporary as the demo.
            .with_storage(
                StorageConfig::default()
                    .with_backend(StorageBackend::Memory)
                    .with_persistence(false)
                    // A fan-out to a few hundred devices queues a handful per device; a
                    // generous queue keeps the broker from dropping what it acknowledged.
                    .with_max_queued_messages_per_client(100_000),
            )
            .with_sys_topics_enabled(false)
            // The service publishes thousands of QoS 1 messages in bursts; let it.
            .with_server_receive_maximum(u16::MAX)
            .with_max_outbound_inflight(1024);
        let mut broker = MqttBroker::with_config(config)
            .await
            .map_err(|e| EmbeddedBrokerError::Start(e.to_string()))?;
        let addr = broker.local_addr().ok_or(EmbeddedBrokerError::NoAddress)?;
        let stop = broker.shutdown_handle();
        let mut ready = broker.ready_receiver();
        let task = tokio::spawn(async move {
            if let Err(e) = broker.run().await {
                tracing::error!(error = %e, "embedded MQTT broker stopped");
            }
        });
        // The listener is bound already (connections queue in its backlog), but waiting for
        // "ready" means the broker's router accepts sessions before anyone connects.
        let _ =
            tokio::time::timeout(std::time::Duration::from_secs(10), ready.wait_for(|r| *r)).await;
        Ok(Self {
            addr,
            stop,
            task: Some(task),
        })
    }

    /// The TCP port it listens on.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// `mqtt://127.0.0.1:{port}`.
    pub fn url(&self) -> String {
        format!("mqtt://{}", self.addr)
    }

    /// Connection settings for the service and devices.
    pub fn config(&self) -> BrokerConfig {
        BrokerConfig::new(self.addr.ip().to_string(), self.addr.port())
    }

    /// Stops the broker and waits for its tasks to end.
    pub async fn shutdown(mut self) {
        self.stop.shutdown();
        if let Some(task) = self.task.take() {
            // Its graceful stop closes every connection; bound the wait all the same.
            if tokio::time::timeout(std::time::Duration::from_secs(5), task)
                .await
                .is_err()
            {
                tracing::warn!("embedded MQTT broker did not stop within 5 s");
            }
        }
    }
}

impl Drop for EmbeddedBroker {
    fn drop(&mut self) {
        self.stop.shutdown();
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}
