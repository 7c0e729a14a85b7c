//! # fleetops-transport-mqtt
//!
//! Binds fleetops to MQTT 5 (DESIGN §4; `docs/protocol.md` is the wire reference):
//!
//! - [`codec`]: the pure wire codec. Topic layout with the presets `fleets` (default),
//!   `$emqx` and `$aws`; JSON messages compatible with the AWS IoT Jobs device MQTT API and
//!   EMQX Fleets commands; size bounds; the exact wire error codes. No I/O, never panics.
//! - [`MqttLink`]: core's `DeviceLink` port on rumqttc's MQTT 5 client, for the service.
//! - [`DeviceClient`]: the device SDK.
//! - `testing` (feature `test-broker`): a mosquitto harness for tests and benchmarks.
//!
//! The crate maps; it never decides. Every business rule lives in `fleetops-core`.

mod acks;
pub mod codec;
mod config;
mod connection;
mod device;
mod error;
mod link;
#[cfg(feature = "test-broker")]
pub mod testing;

pub use config::{Backoff, BrokerConfig, Credentials, Session, TlsConfig};
pub use device::{
    CommandHandler, DeviceClient, DeviceConfig, DeviceEvent, DeviceEvents, UpdateAccepted,
};
pub use error::Error;
pub use link::{MqttLink, MqttLinkConfig};
