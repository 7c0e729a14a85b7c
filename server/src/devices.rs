//! Simulated devices over MQTT, shared by `fleetops demo` and `fleetops simulate`: the MQTT
//! adapter of [`fleetops_service::sim`], which decides what each device says.
//!
//! Each device is a real [`DeviceClient`] (one MQTT connection per thing: the SDK binds a
//! client id to one thing, which is also what the brokers' pattern ACLs expect). This module
//! keeps the connections: it connects the devices in waves, hands what each one hears to its
//! [`SimDevice`], sends what that says after the time it says, and, with [`Churn`], takes
//! devices offline now and then and back.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use fleetops_core::device::{CommandResponse, StartNextRequest};
use fleetops_core::{CommandStatus, ThingName};
use fleetops_service::sim::{
    device_key, draw, mix, unit, Behaviour, Next, Report, SimDevice, Simulator, Stats,
};
use fleetops_transport_mqtt::codec::{CommandRequest, TopicLayout};
use fleetops_transport_mqtt::{
    BrokerConfig, CommandHandler, DeviceClient, DeviceConfig, DeviceEvent, DeviceEvents,
};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Devices going offline and coming back: every `interval`, each online device goes offline
/// with `probability` and reconnects after `offline`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Churn {
    /// Chance per interval, 0 to 1.
    pub probability: f64,
    /// How often each device rolls the dice.
    pub interval: Duration,
    /// How long it stays away.
    pub offline: Duration,
}

/// The simulated devices' connections, counted as they go.
#[derive(Debug, Default)]
pub struct Connections {
    /// Devices connected right now.
    pub online: AtomicU64,
    /// Successful connects, the first ones included.
    pub connects: AtomicU64,
    /// Times a device went offline on purpose (churn).
    pub churned: AtomicU64,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// Settings of a [`Simulation`].
#[derive(Clone)]
pub struct SimConfig {
    /// Where the broker is.
    pub broker: BrokerConfig,
    /// The topic layout the service uses.
    pub layout: TopicLayout,
    /// The simulated things.
    pub things: Vec<ThingName>,
    /// What the devices do.
    pub behaviour: Arc<dyn Behaviour>,
    /// Offline churn, if any.
    pub churn: Option<Churn>,
    /// The seed for churn draws.
    pub seed: u64,
    /// How many devices connect at once while starting.
    pub connect_wave: usize,
    /// How long a device request waits for its reply.
    pub request_timeout: Duration,
}

impl std::fmt::Debug for SimConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimConfig")
            .field("broker", &self.broker.address())
            .field("things", &self.things.len())
            .field("churn", &self.churn)
            .finish_non_exhaustive()
    }
}

impl SimConfig {
    /// Defaults for `things` on `broker`, with the default topic layout and no churn.
    pub fn new(
        broker: BrokerConfig,
        things: Vec<ThingName>,
        behaviour: Arc<dyn Behaviour>,
    ) -> Self {
        Self {
            broker,
            layout: TopicLayout::default(),
            things,
            behaviour,
            churn: None,
            seed: 0,
            connect_wave: 50,
            request_timeout: Duration::from_secs(10),
        }
    }
}

/// Why the simulated devices could not start.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// A device's first connection failed.
    #[error("simulated device `{thing}` cannot connect")]
    Connect {
        /// The device.
        thing: ThingName,
        /// The transport's error.
        source: fleetops_transport_mqtt::Error,
    },
}

/// Running simulated devices. Dropping it stops them abruptly; [`Simulation::stop`]
/// disconnects each one cleanly.
pub struct Simulation {
    stats: Arc<Stats>,
    connections: Arc<Connections>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for Simulation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Simulation")
            .field("devices", &self.tasks.len())
            .finish_non_exhaustive()
    }
}

/// What one device task needs.
struct Device {
    model: SimDevice,
    sim: Simulator,
    config: Arc<SimConfig>,
    connections: Arc<Connections>,
    stop: watch::Receiver<bool>,
}

impl Simulation {
    /// Connects every device (in waves of `connect_wave`) and starts them. Returns once all
    /// are connected, or with the first connection error.
    pub async fn start(config: SimConfig) -> Result<Self, SimError> {
        Self::start_with_progress(config, |_| {}).await
    }

    /// Like [`Simulation::start`], calling `connected(n)` after each wave with the number
    /// of devices connected so far.
    pub async fn start_with_progress(
        config: SimConfig,
        mut connected: impl FnMut(usize),
    ) -> Result<Self, SimError> {
        let config = Arc::new(config);
        let sim = Simulator::new(Arc::clone(&config.behaviour));
        let connections = Arc::new(Connections::default());
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut simulation = Self {
            stats: Arc::clone(sim.stats()),
            connections: Arc::clone(&connections),
            stop: stop_tx,
            tasks: Vec::with_capacity(config.things.len()),
        };
        for chunk in config.things.chunks(config.connect_wave.max(1)) {
            let devices: Vec<Device> = chunk
                .iter()
                .map(|thing| Device {
                    model: sim.device(thing.clone()),
                    sim: sim.clone(),
                    config: Arc::clone(&config),
                    connections: Arc::clone(&connections),
                    stop: stop_rx.clone(),
                })
                .collect();
            let conns = futures::future::join_all(devices.iter().map(|d| d.connect())).await;
            for (device, conn) in devices.into_iter().zip(conns) {
                let conn = conn.map_err(|source| SimError::Connect {
                    thing: device.model.thing().clone(),
                    source,
                })?;
                simulation.tasks.push(tokio::spawn(device.run(conn)));
            }
            connected(simulation.tasks.len());
        }
        Ok(simulation)
    }

    /// What the devices said, live.
    pub fn stats(&self) -> &Arc<Stats> {
        &self.stats
    }

    /// The devices' connections, live.
    pub fn connections(&self) -> &Arc<Connections> {
        &self.connections
    }

    /// Disconnects every device cleanly and waits for their tasks.
    pub async fn stop(mut self) {
        let _ = self.stop.send(true);
        for t in self.tasks.drain(..) {
            if tokio::time::timeout(Duration::from_secs(5), t)
                .await
                .is_err()
            {
                tracing::warn!("a simulated device did not stop within 5 s");
            }
        }
    }
}

impl Drop for Simulation {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// One connection of a device: its client, events and the signal that ends its silent
/// command handlers.
type Conn = (DeviceClient, DeviceEvents, watch::Sender<bool>);

impl Device {
    fn thing(&self) -> &ThingName {
        self.model.thing()
    }

    async fn connect(&self) -> Result<Conn, fleetops_transport_mqtt::Error> {
        let mut config = DeviceConfig::new(self.config.broker.clone(), self.thing().clone());
        config.layout = self.config.layout.clone();
        config.request_timeout = self.config.request_timeout;
        // rumqttc allocates a slot per in-flight unit; hundreds of clients need a small window.
        config.max_inflight = 8;
        let (gone_tx, gone_rx) = watch::channel(false);
        let answers = Arc::new(Answers {
            thing: self.thing().clone(),
            sim: self.sim.clone(),
            gone: gone_rx,
        });
        let handler: Arc<dyn CommandHandler> = Arc::new(move |command: CommandRequest| {
            let answers = Arc::clone(&answers);
            async move { answers.answer(command).await }
        });
        let (client, events) = DeviceClient::connect(config, Some(handler)).await?;
        bump(&self.connections.connects);
        bump(&self.connections.online);
        Ok((client, events, gone_tx))
    }

    /// The device's life: handle events; with churn, go offline now and then and come back.
    async fn run(mut self, first: Conn) {
        let mut conn = Some(first);
        let mut round: u64 = 0;
        loop {
            let (client, mut events, gone) = match conn.take() {
                Some(c) => c,
                None => match self.reconnect().await {
                    Some(c) => c,
                    None => return,
                },
            };
            let offline_at = self.next_offline(round);
            let mut stop = self.stop.clone();
            let stopped = loop {
                tokio::select! {
                    () = until_stopped(&mut stop) => break true,
                    () = sleep_opt(offline_at) => break false,
                    event = events.next() => match event {
                        Some(event) => self.on_event(&client, event).await,
                        None => break false,
                    },
                }
            };
            // Disconnect before releasing silent handlers, so their late answers go nowhere.
            client.disconnect().await;
            let _ = gone.send(true);
            drop(client);
            self.connections.online.fetch_sub(1, Ordering::Relaxed);
            if stopped {
                return;
            }
            bump(&self.connections.churned);
            let offline = self.config.churn.map_or(Duration::ZERO, |c| c.offline);
            tokio::select! {
                () = until_stopped(&mut stop) => return,
                () = tokio::time::sleep(offline) => {}
            }
            round += 1;
        }
    }

    /// Connects again after churn, backing off while the broker refuses; `None` on stop.
    async fn reconnect(&mut self) -> Option<Conn> {
        let mut delay = Duration::from_millis(200);
        loop {
            match self.connect().await {
                Ok(c) => return Some(c),
                Err(e) => {
                    bump(&self.sim.stats().errors);
                    tracing::warn!(thing = %self.thing(), error = %e, "reconnect failed");
                }
            }
            tokio::select! {
                () = until_stopped(&mut self.stop) => return None,
                () = tokio::time::sleep(delay) => {}
            }
            delay = (delay * 2).min(Duration::from_secs(5));
        }
    }

    /// When this connection ends on purpose, if churn is on.
    fn next_offline(&self, round: u64) -> Option<tokio::time::Instant> {
        let churn = self.config.churn?;
        if churn.probability <= 0.0 || churn.interval.is_zero() {
            return None;
        }
        let device = device_key(self.thing());
        // Count intervals until the dice say "go"; bounded so p close to 0 cannot spin.
        let intervals = (1..=100_000u32).find(|k| {
            unit(draw(
                self.config.seed,
                device,
                mix(round) ^ u64::from(*k),
                3,
            )) < churn.probability
        })?;
        Some(tokio::time::Instant::now() + churn.interval * intervals)
    }

    async fn on_event(&mut self, client: &DeviceClient, event: DeviceEvent) {
        let next = match &event {
            DeviceEvent::NotifyNext { execution, .. } => self.model.on_next(execution.as_ref()),
            DeviceEvent::Pending(jobs) => self.model.on_pending(jobs),
            DeviceEvent::CommandAnswered { outcome, .. } => {
                if outcome.is_err() {
                    bump(&self.sim.stats().errors);
                }
                Next::Wait
            }
            _ => Next::Wait,
        };
        let report = match next {
            Next::Wait => None,
            Next::Report(report) => Some(report),
            Next::StartNext => {
                let started =
                    again_on_timeout(|| client.start_next(StartNextRequest::default())).await;
                match started {
                    Ok(view) => self.model.on_started(view.as_ref()),
                    Err(e) => {
                        bump(&self.sim.stats().errors);
                        tracing::debug!(thing = %self.thing(), error = %e, "start-next failed");
                        None
                    }
                }
            }
        };
        if let Some(report) = report {
            self.report(client, report).await;
        }
    }

    /// Works for the report's execution time, then sends it.
    async fn report(&mut self, client: &DeviceClient, report: Report) {
        tokio::time::sleep(report.after()).await;
        let sent =
            again_on_timeout(|| client.update(report.job_id().clone(), report.request().clone()))
                .await;
        match sent {
            Ok(_) => self.sim.reported(&report),
            Err(e) => {
                self.model.unreported(&report);
                tracing::debug!(thing = %self.thing(), error = %e, "update refused");
            }
        }
    }
}

/// Times a request that got no answer is sent again.
const RETRIES_ON_TIMEOUT: u32 = 2;

/// Sends a request, and sends it again when no answer comes: the service instance that took
/// it may have died with it (with several instances, the broker ends a dead instance's
/// session and what it held is gone), and a device cannot tell a lost request from a slow
/// one. A request that was stored after all is refused the second time (the execution moved
/// on), which changes nothing.
async fn again_on_timeout<T, F, Fut>(mut send: F) -> Result<T, fleetops_transport_mqtt::Error>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, fleetops_transport_mqtt::Error>>,
{
    let mut tries = 0;
    loop {
        match send().await {
            Err(fleetops_transport_mqtt::Error::Timeout(_)) if tries < RETRIES_ON_TIMEOUT => {
                tries += 1;
            }
            done => return done,
        }
    }
}

async fn until_stopped(stop: &mut watch::Receiver<bool>) {
    // An error means the simulation is gone: that is a stop too.
    let _ = stop.wait_for(|s| *s).await;
}

async fn sleep_opt(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => futures::future::pending().await,
    }
}

/// Answers one device's commands as the simulator says.
struct Answers {
    thing: ThingName,
    sim: Simulator,
    /// Fires when this connection is gone: a silent command's handler returns then, and its
    /// answer has no connection left to go out on.
    gone: watch::Receiver<bool>,
}

impl Answers {
    async fn answer(&self, command: CommandRequest) -> CommandResponse {
        let answer = self
            .sim
            .answer(&self.thing, &command.execution_id, &command.action);
        let Some(response) = answer.response().cloned() else {
            self.sim.answered(&answer);
            let mut gone = self.gone.clone();
            let _ = gone.wait_for(|g| *g).await;
            return CommandResponse {
                status: CommandStatus::Failed,
                result: None,
                status_reason: Some("the device went away".into()),
            };
        };
        tokio::time::sleep(answer.after()).await;
        self.sim.answered(&answer);
        response
    }
}
