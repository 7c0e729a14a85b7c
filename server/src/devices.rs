//! Simulated devices over MQTT, shared by `fleetops demo` and `fleetops simulate` (and usable
//! by `fleetops bench`).
//!
//! Each device is a real [`DeviceClient`] (one MQTT connection per thing: the SDK binds a
//! client id to one thing, which is also what the brokers' pattern ACLs expect). What a device
//! does with a command or a job attempt is asked of a [`Behaviour`]:
//!
//! - [`Outcome::Succeed`], [`Outcome::Fail`], [`Outcome::Reject`]: wait the execution time,
//!   then answer with that status;
//! - [`Outcome::Silent`]: never answer a command (so it times out); for a job, start it,
//!   report `IN_PROGRESS` with a one-minute step timeout, then go quiet (so the step timer
//!   ends it `TIMED_OUT`).
//!
//! Randomness is a pure function of `(seed, device, task)` (splitmix64), so a run is
//! reproducible with the same seed whatever order messages arrive in.

use std::collections::HashSet;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use fleetops_core::device::{
    CommandResponse, ExecutionView, StartNextRequest, StepTimeout, UpdateRequest,
};
use fleetops_core::event::StatusDetails;
use fleetops_core::ids::StatusDetailKey;
use fleetops_core::{CommandStatus, ExecutionId, JobExecutionStatus, JobId, ThingName};
use fleetops_transport_mqtt::codec::{CommandRequest, TopicLayout};
use fleetops_transport_mqtt::{
    BrokerConfig, CommandHandler, DeviceClient, DeviceConfig, DeviceEvent, DeviceEvents,
};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// What a device does with one command or one job attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// Answer `SUCCEEDED`.
    Succeed,
    /// Answer `FAILED`.
    Fail,
    /// Answer `REJECTED`.
    Reject,
    /// Never answer a command; start a job, report progress with a step timeout, go quiet.
    Silent,
}

/// The piece of work a device is deciding about.
#[derive(Debug, Clone, Copy)]
pub enum Task<'a> {
    /// A command execution.
    Command(&'a ExecutionId),
    /// An attempt (1 for the first, 2 for the first retry, …) of a job execution.
    Job {
        /// The job.
        job: &'a JobId,
        /// The execution number.
        attempt: u32,
    },
}

impl Task<'_> {
    /// A stable 64-bit key of the task, for seeded randomness.
    pub fn key(&self) -> u64 {
        match self {
            Task::Command(id) => fnv1a(id.as_str().as_bytes()),
            Task::Job { job, attempt } => mix(fnv1a(job.as_str().as_bytes()) ^ u64::from(*attempt)),
        }
    }
}

/// Decides what each simulated device does. Called from many tasks at once.
pub trait Behaviour: Send + Sync + 'static {
    /// The outcome of `task` on device number `device`.
    fn outcome(&self, device: usize, task: Task<'_>) -> Outcome;
    /// How long device `device` works on `task` before answering.
    fn exec_time(&self, device: usize, task: Task<'_>) -> Duration;
}

/// Why a ratio, duration or range given on the command line was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    /// Not a duration like `250ms`, `2s`, `1m`.
    #[error("`{0}` is not a duration (use e.g. 250ms, 2s, 1m)")]
    Duration(String),
    /// A range whose low end is above its high end.
    #[error("range `{0}` ends before it starts")]
    Range(String),
    /// A ratio that is not a finite number of at least 0.
    #[error("ratio `{name}` must be a finite number >= 0, got {value}")]
    Ratio {
        /// Which ratio.
        name: &'static str,
        /// The value given.
        value: String,
    },
    /// All ratios are zero: devices would not know what to do.
    #[error("at least one of the success, failure, reject and silent ratios must be above 0")]
    AllZero,
    /// A probability outside 0..=1.
    #[error("probability must be between 0 and 1, got {0}")]
    Probability(String),
}

/// Parses `250ms`, `2s`, `1.5s`, `1m` (a bare number means milliseconds).
pub fn parse_duration(text: &str) -> Result<Duration, SpecError> {
    let t = text.trim();
    let err = || SpecError::Duration(text.to_string());
    let (number, unit_ms) = if let Some(n) = t.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = t.strip_suffix('s') {
        (n, 1000.0)
    } else if let Some(n) = t.strip_suffix('m') {
        (n, 60_000.0)
    } else {
        (t, 1.0)
    };
    let value: f64 = number.trim().parse().map_err(|_| err())?;
    if !value.is_finite() || value < 0.0 {
        return Err(err());
    }
    let ms = value * unit_ms;
    // A week is far beyond any simulated execution; larger values are typos.
    if ms > 7.0 * 24.0 * 3600.0 * 1000.0 {
        return Err(err());
    }
    Ok(Duration::from_micros((ms * 1000.0).round() as u64))
}

/// How long a device works on a task: fixed, or uniform in a range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExecTime {
    /// Always this long.
    Fixed(Duration),
    /// Uniformly distributed in `low..=high`.
    Uniform {
        /// The shortest.
        low: Duration,
        /// The longest.
        high: Duration,
    },
}

impl ExecTime {
    /// The time for a draw `u` in `[0, 1)`.
    pub fn at(&self, u: f64) -> Duration {
        match *self {
            ExecTime::Fixed(d) => d,
            ExecTime::Uniform { low, high } => low + (high - low).mul_f64(u.clamp(0.0, 1.0)),
        }
    }
}

impl FromStr for ExecTime {
    type Err = SpecError;

    /// `200ms` (fixed) or `50ms..500ms` (uniform).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.split_once("..") {
            None => Ok(ExecTime::Fixed(parse_duration(s)?)),
            Some((a, b)) => {
                let (low, high) = (parse_duration(a)?, parse_duration(b)?);
                if low > high {
                    return Err(SpecError::Range(s.to_string()));
                }
                Ok(ExecTime::Uniform { low, high })
            }
        }
    }
}

/// Relative weights of the four outcomes (they need not add up to 1).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Ratios {
    success: f64,
    failure: f64,
    reject: f64,
    silent: f64,
}

impl Ratios {
    /// Checks the weights: each finite and >= 0, not all zero.
    pub fn new(success: f64, failure: f64, reject: f64, silent: f64) -> Result<Self, SpecError> {
        for (name, value) in [
            ("success", success),
            ("failure", failure),
            ("reject", reject),
            ("silent", silent),
        ] {
            if !value.is_finite() || value < 0.0 {
                return Err(SpecError::Ratio {
                    name,
                    value: value.to_string(),
                });
            }
        }
        if success + failure + reject + silent <= 0.0 {
            return Err(SpecError::AllZero);
        }
        Ok(Self {
            success,
            failure,
            reject,
            silent,
        })
    }

    /// The outcome for a draw `u` in `[0, 1)`.
    pub fn pick(&self, u: f64) -> Outcome {
        let total = self.success + self.failure + self.reject + self.silent;
        let x = u * total;
        if x < self.success {
            Outcome::Succeed
        } else if x < self.success + self.failure {
            Outcome::Fail
        } else if x < self.success + self.failure + self.reject {
            Outcome::Reject
        } else if self.silent > 0.0 {
            Outcome::Silent
        } else {
            // Only reachable through rounding at the very top of the range.
            Outcome::Succeed
        }
    }
}

/// Outcomes drawn at random with fixed [`Ratios`], the same for commands and job attempts.
#[derive(Debug, Clone)]
pub struct RandomBehaviour {
    /// The weights.
    pub ratios: Ratios,
    /// The execution time distribution.
    pub exec_time: ExecTime,
    /// The seed.
    pub seed: u64,
}

impl Behaviour for RandomBehaviour {
    fn outcome(&self, device: usize, task: Task<'_>) -> Outcome {
        self.ratios
            .pick(unit(draw(self.seed, device as u64, task.key(), 1)))
    }

    fn exec_time(&self, device: usize, task: Task<'_>) -> Duration {
        self.exec_time
            .at(unit(draw(self.seed, device as u64, task.key(), 2)))
    }
}

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

/// splitmix64's finalizer: a good 64-bit mix, enough for simulation draws.
pub fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A draw from `(seed, device, key, purpose)`.
pub fn draw(seed: u64, device: u64, key: u64, purpose: u64) -> u64 {
    mix(mix(mix(seed ^ mix(device)) ^ key) ^ purpose)
}

/// Maps a draw to `[0, 1)`.
pub fn unit(x: u64) -> f64 {
    (x >> 11) as f64 / (1u64 << 53) as f64
}

fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// What the simulated devices did, counted as they go.
#[derive(Debug, Default)]
pub struct Stats {
    /// Devices connected right now.
    pub online: AtomicU64,
    /// Successful connects, the first ones included.
    pub connects: AtomicU64,
    /// Times a device went offline on purpose (churn).
    pub churned: AtomicU64,
    /// Commands answered `SUCCEEDED` (and accepted by the service).
    pub commands_succeeded: AtomicU64,
    /// Commands answered `FAILED`.
    pub commands_failed: AtomicU64,
    /// Commands answered `REJECTED`.
    pub commands_rejected: AtomicU64,
    /// Commands left unanswered on purpose.
    pub commands_silent: AtomicU64,
    /// Job attempts reported `SUCCEEDED`.
    pub jobs_succeeded: AtomicU64,
    /// Job attempts reported `FAILED`.
    pub jobs_failed: AtomicU64,
    /// Job attempts reported `REJECTED`.
    pub jobs_rejected: AtomicU64,
    /// Job attempts left `IN_PROGRESS` with a step timeout on purpose.
    pub jobs_stalled: AtomicU64,
    /// Requests the service refused or that failed (timeouts, lost connections).
    pub errors: AtomicU64,
}

impl Stats {
    /// Commands answered, whatever the status.
    pub fn commands_answered(&self) -> u64 {
        self.commands_succeeded.load(Ordering::Relaxed)
            + self.commands_failed.load(Ordering::Relaxed)
            + self.commands_rejected.load(Ordering::Relaxed)
    }

    /// Job attempts finished by the device (terminal status reported).
    pub fn jobs_done(&self) -> u64 {
        self.jobs_succeeded.load(Ordering::Relaxed)
            + self.jobs_failed.load(Ordering::Relaxed)
            + self.jobs_rejected.load(Ordering::Relaxed)
    }
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
    /// The simulated things, device number = index.
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
    index: usize,
    thing: ThingName,
    config: Arc<SimConfig>,
    stats: Arc<Stats>,
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
        let stats = Arc::new(Stats::default());
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut sim = Self {
            stats: Arc::clone(&stats),
            stop: stop_tx,
            tasks: Vec::with_capacity(config.things.len()),
        };
        let wave = config.connect_wave.max(1);
        for (w, chunk) in config.things.chunks(wave).enumerate() {
            let devices: Vec<Device> = chunk
                .iter()
                .enumerate()
                .map(|(i, thing)| Device {
                    index: w * wave + i,
                    thing: thing.clone(),
                    config: Arc::clone(&config),
                    stats: Arc::clone(&stats),
                    stop: stop_rx.clone(),
                })
                .collect();
            let conns = futures::future::join_all(devices.iter().map(|d| d.connect())).await;
            for (device, conn) in devices.into_iter().zip(conns) {
                let conn = conn.map_err(|source| SimError::Connect {
                    thing: device.thing.clone(),
                    source,
                })?;
                sim.tasks.push(tokio::spawn(device.run(conn)));
            }
            connected(sim.tasks.len());
        }
        Ok(sim)
    }

    /// The live counters.
    pub fn stats(&self) -> &Arc<Stats> {
        &self.stats
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
    async fn connect(&self) -> Result<Conn, fleetops_transport_mqtt::Error> {
        let mut config = DeviceConfig::new(self.config.broker.clone(), self.thing.clone());
        config.layout = self.config.layout.clone();
        config.request_timeout = self.config.request_timeout;
        // rumqttc allocates a slot per in-flight unit; hundreds of clients need a small window.
        config.max_inflight = 8;
        let (gone_tx, gone_rx) = watch::channel(false);
        let answers = Arc::new(Answers {
            index: self.index,
            behaviour: Arc::clone(&self.config.behaviour),
            stats: Arc::clone(&self.stats),
            gone: gone_rx,
        });
        let handler: Arc<dyn CommandHandler> = Arc::new(move |command: CommandRequest| {
            let answers = Arc::clone(&answers);
            async move { answers.answer(command).await }
        });
        let (client, events) = DeviceClient::connect(config, Some(handler)).await?;
        bump(&self.stats.connects);
        self.stats.online.fetch_add(1, Ordering::Relaxed);
        Ok((client, events, gone_tx))
    }

    /// The device's life: handle events; with churn, go offline now and then and come back.
    async fn run(mut self, first: Conn) {
        let mut conn = Some(first);
        // Attempts already handled, across reconnects: a notification repeated after a
        // reconnect must not make a stalled device report progress again.
        let mut handled: HashSet<(JobId, u32)> = HashSet::new();
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
                        Some(event) => self.on_event(&client, event, &mut handled).await,
                        None => break false,
                    },
                }
            };
            // Disconnect before releasing silent handlers, so their late answers go nowhere.
            client.disconnect().await;
            let _ = gone.send(true);
            drop(client);
            self.stats.online.fetch_sub(1, Ordering::Relaxed);
            if stopped {
                return;
            }
            bump(&self.stats.churned);
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
                    bump(&self.stats.errors);
                    tracing::warn!(thing = %self.thing, error = %e, "reconnect failed");
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
        let device = self.index as u64;
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

    async fn on_event(
        &self,
        client: &DeviceClient,
        event: DeviceEvent,
        handled: &mut HashSet<(JobId, u32)>,
    ) {
        let has_work = match &event {
            DeviceEvent::NotifyNext { execution, .. } => execution
                .as_ref()
                .is_some_and(|v| !handled.contains(&(v.job_id.clone(), v.execution_number))),
            DeviceEvent::Pending(p) | DeviceEvent::Notify { jobs: p, .. } => {
                !(p.in_progress.is_empty() && p.queued.is_empty())
            }
            DeviceEvent::CommandAnswered { outcome, .. } => {
                if outcome.is_err() {
                    bump(&self.stats.errors);
                }
                false
            }
            _ => false,
        };
        if has_work {
            self.work(client, handled).await;
        }
    }

    /// Starts the next pending execution and does what the behaviour says with it.
    async fn work(&self, client: &DeviceClient, handled: &mut HashSet<(JobId, u32)>) {
        let view: ExecutionView = match client.start_next(StartNextRequest::default()).await {
            Ok(Some(v)) => v,
            Ok(None) => return,
            Err(e) => {
                bump(&self.stats.errors);
                tracing::debug!(thing = %self.thing, error = %e, "start-next failed");
                return;
            }
        };
        let key = (view.job_id.clone(), view.execution_number);
        if handled.contains(&key) {
            // Still in progress from an earlier (silent) attempt: stay quiet.
            return;
        }
        let task = Task::Job {
            job: &view.job_id,
            attempt: view.execution_number,
        };
        let behaviour = &self.config.behaviour;
        let outcome = behaviour.outcome(self.index, task);
        tokio::time::sleep(behaviour.exec_time(self.index, task)).await;
        let (status, step_timeout, counter) = match outcome {
            Outcome::Succeed => (
                JobExecutionStatus::Succeeded,
                StepTimeout::Keep,
                &self.stats.jobs_succeeded,
            ),
            Outcome::Fail => (
                JobExecutionStatus::Failed,
                StepTimeout::Keep,
                &self.stats.jobs_failed,
            ),
            Outcome::Reject => (
                JobExecutionStatus::Rejected,
                StepTimeout::Keep,
                &self.stats.jobs_rejected,
            ),
            // The smallest step timeout the protocol allows; then nothing more is said.
            Outcome::Silent => (
                JobExecutionStatus::InProgress,
                StepTimeout::Minutes(1),
                &self.stats.jobs_stalled,
            ),
        };
        let mut details = StatusDetails::new();
        if outcome == Outcome::Silent {
            if let Ok(key) = StatusDetailKey::parse("step") {
                details.insert(key, "downloading".into());
            }
        }
        let request = UpdateRequest {
            status: Some(status),
            status_details: (!details.is_empty()).then_some(details),
            execution_number: Some(view.execution_number),
            step_timeout,
            ..UpdateRequest::default()
        };
        match client.update(view.job_id.clone(), request).await {
            Ok(_) => {
                bump(counter);
                handled.insert(key);
            }
            Err(e) => {
                bump(&self.stats.errors);
                tracing::debug!(thing = %self.thing, error = %e, "update refused");
            }
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

/// Answers commands as the behaviour says.
struct Answers {
    index: usize,
    behaviour: Arc<dyn Behaviour>,
    stats: Arc<Stats>,
    /// Fires when this connection is gone: a silent command's handler returns then, and its
    /// answer has no connection left to go out on.
    gone: watch::Receiver<bool>,
}

impl Answers {
    async fn answer(&self, command: CommandRequest) -> CommandResponse {
        let task = Task::Command(&command.execution_id);
        let outcome = self.behaviour.outcome(self.index, task);
        let wait = self.behaviour.exec_time(self.index, task);
        let (status, counter) = match outcome {
            Outcome::Succeed => (CommandStatus::Succeeded, &self.stats.commands_succeeded),
            Outcome::Fail => (CommandStatus::Failed, &self.stats.commands_failed),
            Outcome::Reject => (CommandStatus::Rejected, &self.stats.commands_rejected),
            Outcome::Silent => {
                bump(&self.stats.commands_silent);
                let mut gone = self.gone.clone();
                let _ = gone.wait_for(|g| *g).await;
                return CommandResponse {
                    status: CommandStatus::Failed,
                    result: None,
                    status_reason: Some("the device went away".into()),
                };
            }
        };
        tokio::time::sleep(wait).await;
        bump(counter);
        CommandResponse {
            status,
            result: (status == CommandStatus::Succeeded)
                .then(|| serde_json::json!({"action": command.action})),
            status_reason: (status != CommandStatus::Succeeded)
                .then(|| format!("simulated {}", status.as_str())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_ranges_parse_or_say_why_not() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("40"), Ok(Duration::from_millis(40)));
        for bad in ["", "x", "-1s", "NaNs", "1h", "9999999m"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
        assert_eq!(
            "50ms..500ms".parse::<ExecTime>(),
            Ok(ExecTime::Uniform {
                low: Duration::from_millis(50),
                high: Duration::from_millis(500)
            })
        );
        assert_eq!(
            "1s..10ms".parse::<ExecTime>(),
            Err(SpecError::Range("1s..10ms".into()))
        );
        let u = ExecTime::Uniform {
            low: Duration::from_millis(100),
            high: Duration::from_millis(200),
        };
        assert_eq!(u.at(0.5), Duration::from_millis(150));
    }

    #[test]
    fn ratios_are_checked_and_honoured() {
        assert_eq!(Ratios::new(0.0, 0.0, 0.0, 0.0), Err(SpecError::AllZero));
        assert!(Ratios::new(-1.0, 1.0, 0.0, 0.0).is_err());
        assert!(Ratios::new(f64::NAN, 1.0, 0.0, 0.0).is_err());
        let only_fail = Ratios::new(0.0, 1.0, 0.0, 0.0).unwrap();
        assert!((0..1000).all(|i| only_fail.pick(unit(mix(i))) == Outcome::Fail));
        let r = Ratios::new(6.0, 2.0, 1.0, 1.0).unwrap();
        let mut counts = std::collections::HashMap::new();
        for i in 0..10_000u64 {
            *counts.entry(r.pick(unit(mix(i)))).or_insert(0) += 1;
        }
        let share = |o| f64::from(counts[&o]) / 10_000.0;
        assert!((share(Outcome::Succeed) - 0.6).abs() < 0.03, "{counts:?}");
        assert!((share(Outcome::Fail) - 0.2).abs() < 0.03, "{counts:?}");
        assert!((share(Outcome::Reject) - 0.1).abs() < 0.03, "{counts:?}");
        assert!((share(Outcome::Silent) - 0.1).abs() < 0.03, "{counts:?}");
    }

    #[test]
    fn draws_depend_on_seed_device_and_task_only() {
        let job = JobId::parse("j").unwrap();
        let a = Task::Job {
            job: &job,
            attempt: 1,
        };
        let b = Task::Job {
            job: &job,
            attempt: 2,
        };
        assert_eq!(draw(7, 1, a.key(), 1), draw(7, 1, a.key(), 1));
        assert_ne!(draw(7, 1, a.key(), 1), draw(8, 1, a.key(), 1));
        assert_ne!(draw(7, 1, a.key(), 1), draw(7, 2, a.key(), 1));
        assert_ne!(a.key(), b.key());
        let u = unit(u64::MAX);
        assert!((0.0..1.0).contains(&u));
    }
}
