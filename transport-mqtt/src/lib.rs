//! # fleetops-transport-mqtt
//!
//! Binds fleetops to MQTT 5 (`docs/protocol.md` is the wire reference):
//!
//! - [`codec`]: the pure wire codec. Topic layout with the presets `fleets` (default),
//!   `$emqx` and `$aws`; JSON messages compatible with the AWS IoT Jobs device MQTT API and
//!   EMQX Fleets commands; size bounds; the exact wire error codes. No I/O, never panics.
//! - [`MqttLink`]: core's `DeviceLink` port on rumqttc's MQTT 5 client, for the service.
//! - [`DeviceClient`]: the device SDK.
//! - `testing` (feature `test-broker`): a mosquitto harness for tests and benchmarks.
//!
//! The crate maps; it never decides. Every business rule lives in `fleetops-core`.
//!
//! ## Features
//!
//! - `test-broker`: the `testing` module, a real mosquitto per test on a free loopback
//!   port with its own configuration, ACLs and optional TLS. For tests only.
//!
//! ```no_run
//! use fleetops_core::link::{DeviceLink, LinkEvent};
//! use fleetops_transport_mqtt::{BrokerConfig, Credentials, MqttLink, MqttLinkConfig};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let mut broker = BrokerConfig::new("127.0.0.1", 1883);
//! broker.credentials = Some(Credentials {
//!     username: "fleetops-service".into(),
//!     password: "secret".into(),
//! });
//! let link = MqttLink::connect(MqttLinkConfig::new(broker)).await?;
//! for event in link.recv(64).await? {
//!     if let LinkEvent::Request(request, receipt) = event {
//!         // Decide with fleetops-core, append, then `link.send(replies)`; once the effect
//!         // is stored, `settle` lets the broker forget the request.
//!         println!("{} asks {:?}", request.thing, request.request);
//!         link.settle(vec![receipt]).await;
//!     }
//! }
//! # Ok(())
//! # }
//! ```
//!
//! A device:
//!
//! ```no_run
//! use fleetops_core::ids::ThingName;
//! use fleetops_transport_mqtt::{BrokerConfig, DeviceClient, DeviceConfig, DeviceEvent};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let config = DeviceConfig::new(BrokerConfig::new("127.0.0.1", 1883), ThingName::parse("sensor-1")?);
//! let (device, mut events) = DeviceClient::connect(config, None).await?;
//! while let Some(event) = events.next().await {
//!     if let DeviceEvent::Pending(jobs) = event {
//!         println!("{} queued", jobs.queued.len());
//!         let next = device.describe_next().await?;
//!         println!("next: {}", next.job_id);
//!     }
//! }
//! # Ok(())
//! # }
//! ```

// On docs.rs-style builds (`--cfg docsrs`, nightly), items behind a feature are marked
// with the feature that enables them.
#![cfg_attr(docsrs, feature(doc_cfg))]

mod acks;
pub mod codec;
mod config;
mod connection;
mod device;
mod error;
mod link;
#[cfg(feature = "test-broker")]
pub mod testing;
mod warn;

pub use config::{Backoff, BrokerConfig, Credentials, Session, TlsConfig};
pub use device::{
    CommandHandler, DeviceClient, DeviceConfig, DeviceEvent, DeviceEvents, UpdateAccepted,
};
pub use error::Error;
pub use link::{LinkStats, MqttLink, MqttLinkConfig};
