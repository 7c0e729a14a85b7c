//! Simulated devices: one behaviour model for every transport.
//!
//! A [`Behaviour`] chooses, for each device and each command or job attempt ([`Task`]), an
//! [`Outcome`] and an execution time; a [`Simulator`] and its [`SimDevice`]s turn that into
//! what a device says (`start-next` on `notify-next`, the job update, the command answer) and
//! count it in [`Stats`]. Transports only carry it out: [`simulate`] drives every device
//! behind an in-process [`DeviceEnd`](crate::link::DeviceEnd); `fleetops-server`'s
//! `devices` module gives each device its own MQTT `DeviceClient`.
//!
//! [`RandomBehaviour`] draws outcomes with fixed [`Ratios`] and times from an [`ExecTime`];
//! its draws ([`draw`]) are a pure function of the seed, the thing and the task, so a run is
//! reproducible whatever order messages arrive in.
//!
//! ```
//! use fleetops_service::sim::{from_fn, simulate, Outcome, Task};
//! use fleetops_service::{link::ChannelLink, Fleet};
//! use fleetops_store_memory::MemoryStore;
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let (link, devices) = ChannelLink::pair(256);
//! let _fleet = Fleet::start(MemoryStore::new(), link).await?;
//! // `lamp-0` fails its first attempt of every job; everything else succeeds.
//! let _sim = simulate(
//!     devices,
//!     from_fn(|thing, task| match task {
//!         Task::Job { attempt: 1, .. } if thing.as_str() == "lamp-0" => Outcome::Fail,
//!         _ => Outcome::Succeed,
//!     }),
//! );
//! # Ok(()) }
//! ```

mod behaviour;
mod channel;
mod device;

pub use behaviour::{
    device_key, draw, from_fn, mix, unit, Behaviour, ExecTime, FromFn, Outcome, RandomBehaviour,
    RatioError, Ratios, Task,
};
pub use channel::{simulate, Simulation};
pub use device::{Answer, Next, Report, SimDevice, Simulator, Stats};
