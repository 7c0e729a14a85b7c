//! `fleetops demo`: the whole system on one machine with nothing but cargo.
//!
//! An in-process MQTT broker on a free loopback port, sled in a temporary directory, a
//! `Fleet` with `MqttLink`, and a few hundred simulated devices (real `DeviceClient`s over
//! MQTT). It sends a command to every device (most succeed, some fail, some never answer and
//! time out), then runs a job with an exponential rollout, a retry policy (some devices fail
//! the first attempt and succeed on the retry) and step timeouts (some devices report
//! progress with a one-minute step timeout and go quiet), with live progress, and ends with a
//! table of executions by status.
//!
//! Job timeouts and rollout rates are whole minutes in the protocol, so the demo gives the
//! `Fleet` a clock that runs `--speed` times faster than the wall clock (the service takes
//! its clock as a parameter for exactly this kind of use): at the default 30×, a one-minute
//! step timeout passes in 2 s. Everything else — broker, MQTT sessions, sled — is real.
//!
//! Every device's role is fixed up front from `--seed`, so the demo knows what each count
//! must be; it exits non-zero if any count differs.
//!
//! The demo also serves the HTTP API and the web console ([`crate::console`]) on a free
//! loopback port, with a bearer token drawn at random for the run: it prints the console's
//! URL with the token in its fragment (`http://127.0.0.1:PORT/#token=…`), which logs the
//! browser in without the token ever reaching a server log. A token rather than no
//! authentication, because any local user or web page could otherwise drive the fleet.
//! `--keep-open` keeps the fleet, its devices and the console running after the table until
//! Ctrl-C, so a newcomer can look around, send commands and run more jobs.

use std::collections::{BTreeMap, HashMap};
use std::io::IsTerminal;
use std::sync::Arc;
use std::time::{Duration as StdDuration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use fleetops_core::config::{FailureType, IncreaseCriterion, JobConfig, RetryCriterion, Rollout};
use fleetops_core::{
    CommandStatus, Duration, JobExecutionStatus, JobId, JobStatus, ThingName, Timestamp,
};
use fleetops_service::clock::{Clock, SystemClock};
use fleetops_service::sim::{device_key, draw, unit, Behaviour, ExecTime, Outcome, Task};
use fleetops_service::{CommandFilter, Fleet, JobSpec, Page};
use fleetops_store_sled::{SledConfig, SledStore};
use fleetops_transport_mqtt::{MqttLink, MqttLinkConfig};
use futures::future::BoxFuture;
use futures::stream::{FuturesUnordered, StreamExt};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::json;
use tokio::sync::watch;

use crate::broker::EmbeddedBroker;
use crate::config::{Auth, DEFAULT_MAX_BODY_BYTES};
use crate::devices::{SimConfig, Simulation};
use crate::http::{self, AdapterFigures, ApiState};
use crate::store::AnyStore;

/// How long a command waits for its answer, in wall-clock milliseconds.
const COMMAND_TTL_WALL_MS: u64 = 3000;

/// Arguments of `fleetops demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// How many simulated devices.
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u32).range(10..=5000))]
    pub devices: u32,
    /// Seed of the devices' roles and execution times: the same seed, the same run.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// How many times faster than the wall clock the fleet's clock runs (timeouts and rollout
    /// rates are whole minutes; 30 makes a minute pass in 2 s).
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u32).range(1..=600))]
    pub speed: u32,
    /// Give up (and exit non-zero) if the demo has not finished after this many seconds.
    #[arg(long, default_value_t = 180, value_parser = clap::value_parser!(u64).range(10..))]
    pub timeout_secs: u64,
    /// After the run, keep the fleet, its devices and the web console running until Ctrl-C.
    #[arg(long)]
    pub keep_open: bool,
}

/// What a device does with the demo's job, on every attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum JobRole {
    /// Succeeds.
    Succeed,
    /// Fails the first attempt, succeeds the retry.
    FailFirst,
    /// Fails every attempt (the retry too).
    FailAlways,
    /// Rejects the job.
    Reject,
    /// Reports progress with a step timeout, then goes quiet: `TIMED_OUT`.
    Stall,
}

/// The demo's devices: roles fixed per device from the seed.
struct DemoBehaviour {
    /// Each thing's number, which the roles are indexed by.
    index: HashMap<ThingName, usize>,
    commands: Vec<Outcome>,
    jobs: Vec<JobRole>,
    exec_time: ExecTime,
    seed: u64,
}

impl DemoBehaviour {
    fn new(things: &[ThingName], seed: u64) -> Self {
        let n = things.len();
        // Shuffle the devices by a seeded draw, then hand out roles in fixed proportions,
        // so the counts are exact and the choice of devices depends on the seed.
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by_key(|i| draw(seed, *i as u64, 0, 10));
        let part = |percent: usize| (n * percent).div_ceil(100);
        let mut commands = vec![Outcome::Succeed; n];
        let (c_fail, c_silent) = (part(10), part(10));
        for (k, i) in order.iter().enumerate() {
            if k < c_fail {
                commands[*i] = Outcome::Fail;
            } else if k < c_fail + c_silent {
                commands[*i] = Outcome::Silent;
            }
        }
        order.sort_by_key(|i| draw(seed, *i as u64, 0, 11));
        let mut jobs = vec![JobRole::Succeed; n];
        let quotas = [
            (JobRole::FailFirst, part(10)),
            (JobRole::FailAlways, part(5)),
            (JobRole::Reject, part(5)),
            (JobRole::Stall, part(5)),
        ];
        let mut k = 0;
        for (role, count) in quotas {
            for i in order.iter().skip(k).take(count) {
                jobs[*i] = role;
            }
            k += count;
        }
        Self {
            index: things.iter().cloned().zip(0..).collect(),
            commands,
            jobs,
            exec_time: ExecTime::Uniform {
                low: StdDuration::from_millis(20),
                high: StdDuration::from_millis(200),
            },
            seed,
        }
    }

    fn expected_commands(&self) -> BTreeMap<&'static str, u64> {
        let mut m = BTreeMap::new();
        for o in &self.commands {
            let status = match o {
                Outcome::Succeed => CommandStatus::Succeeded,
                Outcome::Fail => CommandStatus::Failed,
                Outcome::Reject => CommandStatus::Rejected,
                Outcome::Silent | Outcome::Ignore => CommandStatus::TimedOut,
            };
            *m.entry(status.as_str()).or_insert(0) += 1;
        }
        m
    }

    fn expected_job(&self) -> (BTreeMap<&'static str, u64>, u64) {
        let mut m = BTreeMap::new();
        let mut retried = 0;
        for r in &self.jobs {
            let status = match r {
                JobRole::Succeed | JobRole::FailFirst => JobExecutionStatus::Succeeded,
                JobRole::FailAlways => JobExecutionStatus::Failed,
                JobRole::Reject => JobExecutionStatus::Rejected,
                JobRole::Stall => JobExecutionStatus::TimedOut,
            };
            if matches!(r, JobRole::FailFirst | JobRole::FailAlways) {
                retried += 1;
            }
            *m.entry(status.as_str()).or_insert(0) += 1;
        }
        (m, retried)
    }
}

impl Behaviour for DemoBehaviour {
    fn outcome(&self, thing: &ThingName, task: Task<'_>) -> Outcome {
        let device = self.index.get(thing).copied().unwrap_or(usize::MAX);
        match task {
            Task::Command(_) => self
                .commands
                .get(device)
                .copied()
                .unwrap_or(Outcome::Succeed),
            Task::Job { attempt, .. } => match self.jobs.get(device) {
                Some(JobRole::FailFirst) if attempt == 1 => Outcome::Fail,
                Some(JobRole::FailAlways) => Outcome::Fail,
                Some(JobRole::Reject) => Outcome::Reject,
                Some(JobRole::Stall) => Outcome::Silent,
                _ => Outcome::Succeed,
            },
        }
    }

    fn exec_time(&self, thing: &ThingName, task: Task<'_>) -> StdDuration {
        self.exec_time
            .at(unit(draw(self.seed, device_key(thing), task.key(), 2)))
    }
}

/// A clock that runs `speed` times faster than the wall clock, from the wall clock's now.
#[derive(Debug, Clone, Copy)]
struct FastClock {
    origin: Timestamp,
    started: Instant,
    speed: u64,
}

impl FastClock {
    fn new(speed: u32) -> Self {
        Self {
            origin: SystemClock.now(),
            started: Instant::now(),
            speed: u64::from(speed.max(1)),
        }
    }
}

impl Clock for FastClock {
    fn now(&self) -> Timestamp {
        let real = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.origin
            .saturating_add(Duration::from_millis(real.saturating_mul(self.speed)))
    }

    fn sleep_until(&self, at: Timestamp) -> BoxFuture<'static, ()> {
        let clock = *self;
        Box::pin(async move {
            // Rounding can wake us a millisecond early: check and sleep again.
            loop {
                let now = clock.now();
                if now >= at {
                    return;
                }
                let wait = at.saturating_since(now).as_millis().div_ceil(clock.speed);
                tokio::time::sleep(StdDuration::from_millis(wait.max(1))).await;
            }
        })
    }
}

/// Live output: bars on a terminal, a few plain lines otherwise.
struct Progress {
    bars: Option<MultiProgress>,
}

impl Progress {
    fn new() -> Self {
        let bars = std::io::stdout()
            .is_terminal()
            .then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stdout()));
        Self { bars }
    }

    fn bar(&self, len: u64, prefix: &'static str) -> ProgressBar {
        match &self.bars {
            Some(m) => {
                let bar = m.add(ProgressBar::new(len));
                bar.set_style(
                    ProgressStyle::with_template(
                        "{prefix:>10} [{bar:30.cyan/blue}] {pos:>4}/{len:4} {msg}",
                    )
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> "),
                );
                bar.set_prefix(prefix);
                bar
            }
            None => ProgressBar::hidden(),
        }
    }

    /// A plain line when there are no bars (a log, CI); nothing on a terminal.
    fn line(&self, text: impl AsRef<str>) {
        if self.bars.is_none() {
            println!("{}", text.as_ref());
        }
    }

    /// A line printed above the bars, or plainly.
    fn say(&self, text: impl AsRef<str>) {
        match &self.bars {
            Some(m) => {
                let _ = m.println(text.as_ref());
            }
            None => println!("{}", text.as_ref()),
        }
    }
}

fn things(n: usize) -> anyhow::Result<Vec<ThingName>> {
    (0..n)
        .map(|i| ThingName::parse(&format!("demo-{i:04}")).context("thing name"))
        .collect()
}

fn secs(d: StdDuration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

/// Runs `fleetops demo`.
pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    crate::log_errors_to_stderr();
    demo(&args).await
}

/// The HTTP API and the web console of the demo's fleet, on a free loopback port.
struct Console {
    url: String,
    token: String,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Console {
    async fn start(
        fleet: &Arc<Fleet<SledStore, Arc<MqttLink>>>,
        link: &Arc<MqttLink>,
    ) -> anyhow::Result<Self> {
        // 122 random bits: unguessable for the minutes the demo lives.
        let token = uuid::Uuid::new_v4().simple().to_string();
        let (stop, stopping) = watch::channel(false);
        let probe = Arc::clone(link);
        let (figures, sled) = (Arc::clone(link), Arc::clone(fleet));
        let state = ApiState {
            fleet: Arc::clone(fleet),
            link_up: Arc::new(move || probe.is_connected()),
            stopping: stopping.clone(),
            adapters: Arc::new(move || AdapterFigures {
                link_up: figures.is_connected(),
                link: Some(figures.stats()),
                store: Some(AnyStore::Sled(sled.store().clone()).figures()),
            }),
        };
        let app = http::router(state, Auth::Bearer(token.clone()), DEFAULT_MAX_BODY_BYTES);
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
            .await
            .context("cannot listen on a loopback port for the console")?;
        let addr = listener
            .local_addr()
            .context("the console's listening address")?;
        let mut stopped = stopping;
        let task = tokio::spawn(async move {
            let shutdown = async move {
                let _ = stopped.wait_for(|s| *s).await.is_ok();
            };
            if let Err(e) = axum::serve(listener, app)
                .with_graceful_shutdown(shutdown)
                .await
            {
                tracing::error!(error = %e, "the demo's HTTP server stopped");
            }
        });
        Ok(Self {
            url: format!("http://{addr}/"),
            token,
            stop,
            task,
        })
    }

    /// Stops accepting, lets requests in flight finish, and drops the router's fleet handle.
    async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

async fn demo(args: &DemoArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let deadline =
        tokio::time::Instant::from_std(started + StdDuration::from_secs(args.timeout_secs));
    let too_slow = || {
        anyhow::anyhow!(
            "the demo did not finish within {} s (--timeout-secs)",
            args.timeout_secs
        )
    };
    let n = args.devices as usize;
    let speed = args.speed;
    let minute_real = StdDuration::from_millis(60_000 / u64::from(speed));
    println!(
        "fleetops demo: {n} simulated devices, seed {}, fleet clock {speed}x faster than the \
         wall clock (a minute passes in {})",
        args.seed,
        secs(minute_real)
    );

    let setup = async {
        let broker = EmbeddedBroker::start().await?;
        let dir = tempfile::Builder::new()
            .prefix("fleetops-demo-")
            .tempdir()
            .context("cannot create a temporary directory for sled")?;
        let store = SledStore::open_async(SledConfig::new(dir.path()))
            .await
            .context("cannot open sled")?;
        let link = MqttLink::connect(MqttLinkConfig::new(broker.config()))
            .await
            .context("the service cannot connect to the embedded broker")?;
        let link = Arc::new(link);
        let fleet = Fleet::builder(store, Arc::clone(&link))
            .clock(FastClock::new(speed))
            .start()
            .await
            .context("the fleet does not start")?;
        let fleet = Arc::new(fleet);
        let console = Console::start(&fleet, &link).await?;
        anyhow::Ok((broker, dir, fleet, console))
    };
    let (broker, dir, fleet, console) = tokio::time::timeout_at(deadline, setup)
        .await
        .map_err(|_| too_slow())??;
    println!(
        "broker at {}, sled in {}",
        broker.url(),
        dir.path().display()
    );
    // The fragment logs the browser in; it is never sent to the server.
    println!(
        "console at {url}#token={token} (API token {token}; the fleet's clock runs {speed}x \
         fast, so its times run ahead)",
        url = console.url,
        token = console.token
    );

    let run = scenario(args, &broker, &fleet, started);
    let (sim, mismatches) = tokio::time::timeout_at(deadline, run)
        .await
        .map_err(|_| too_slow())??;

    if args.keep_open {
        println!();
        println!(
            "--keep-open: the fleet, its devices and the console at {} stay up; Ctrl-C to stop",
            console.url
        );
        tokio::signal::ctrl_c()
            .await
            .context("cannot wait for Ctrl-C")?;
        println!("stopping");
    }

    sim.stop().await;
    // The router holds a handle on the fleet: stop serving first, then the fleet is ours.
    console.stop().await;
    match Arc::try_unwrap(fleet) {
        Ok(fleet) => fleet.shutdown().await,
        Err(_) => tracing::warn!("the fleet is still shared; stopping it by dropping it"),
    }
    broker.shutdown().await;
    drop(dir);

    if !mismatches.is_empty() {
        bail!(
            "the counts differ from what the devices did: {}",
            mismatches.join("; ")
        );
    }
    Ok(())
}

/// The devices, the commands, the job and the table; the devices keep running for
/// `--keep-open`. Returns the counts that differ from what the devices' roles imply.
async fn scenario(
    args: &DemoArgs,
    broker: &EmbeddedBroker,
    fleet: &Fleet<SledStore, Arc<MqttLink>>,
    started: Instant,
) -> anyhow::Result<(Simulation, Vec<String>)> {
    let n = args.devices as usize;
    let speed = args.speed;

    let progress = Progress::new();
    let targets = things(n)?;
    let behaviour = Arc::new(DemoBehaviour::new(&targets, args.seed));

    // Devices.
    let t = Instant::now();
    let bar = progress.bar(n as u64, "devices");
    let mut config = SimConfig::new(broker.config(), targets.clone(), behaviour.clone());
    config.seed = args.seed;
    let sim = Simulation::start_with_progress(config, |c| bar.set_position(c as u64)).await?;
    bar.finish_with_message("connected");
    let connect_time = t.elapsed();
    progress.say(format!("{n} devices connected in {}", secs(connect_time)));

    // Commands: one per device, sent 64 at a time, outcomes awaited as they come.
    let t = Instant::now();
    // Commands take any TTL; give them 3 s of wall time whatever the clock's speed, so a
    // loaded machine does not turn slow answers into timeouts.
    let ttl = Duration::from_millis(COMMAND_TTL_WALL_MS * u64::from(speed));
    progress.say(format!(
        "sending a command to every device (TTL {} s of fleet time = {} of wall time)",
        ttl.as_secs(),
        secs(StdDuration::from_millis(COMMAND_TTL_WALL_MS))
    ));
    let bar = progress.bar(n as u64, "commands");
    let fleet_ref = fleet;
    let mut sends = futures::stream::iter(targets.iter().cloned())
        .map(|thing| async move {
            fleet_ref
                .send_command(thing.clone(), "reboot", json!({"delaySeconds": 0}), ttl)
                .await
                .with_context(|| format!("send a command to {thing}"))
        })
        .buffer_unordered(64);
    let mut outcomes = FuturesUnordered::new();
    let mut seen: BTreeMap<&'static str, u64> = BTreeMap::new();
    let mut last_line = Instant::now();
    loop {
        tokio::select! {
            Some(handle) = sends.next() => outcomes.push(handle?.outcome()),
            Some(outcome) = outcomes.next(), if !outcomes.is_empty() => {
                let command = outcome.context("a command's outcome")?;
                *seen.entry(command.status.as_str()).or_insert(0) += 1;
                bar.inc(1);
                bar.set_message(summary(&seen));
                if last_line.elapsed() > StdDuration::from_secs(2) {
                    last_line = Instant::now();
                    progress.line(format!("commands: {}", summary(&seen)));
                }
            }
            else => break,
        }
    }
    drop(sends);
    bar.finish();
    let command_time = t.elapsed();
    progress.say(format!(
        "commands done in {}: {}",
        secs(command_time),
        summary(&seen)
    ));

    // The job.
    let t = Instant::now();
    let job = JobId::parse("demo-firmware-2").context("job id")?;
    let base = (n as u32 / 10).max(1);
    let config = JobConfig {
        rollout: Rollout::Exponential {
            base_per_minute: base,
            factor: 2.0,
            criterion: IncreaseCriterion::SucceededThings(base),
            max_per_minute: (n as u32 / 3).max(base),
        },
        retry: vec![RetryCriterion {
            failure_type: FailureType::Failed,
            number_of_retries: 1,
        }],
        // A safety net: nothing stays in progress for ever, whatever goes wrong.
        in_progress_timeout: Some(Duration::from_minutes(10)),
        ..JobConfig::default()
    };
    progress.say(format!(
        "job {job}: {n} targets, exponential rollout from {base}/min (x2 every {base} \
         successes, at most {}/min), 1 retry on FAILED, devices set 1-min step timeouts",
        (n as u32 / 3).max(base)
    ));
    fleet
        .create_job(
            JobSpec::new(
                job.clone(),
                json!({"firmware": "2.0", "url": "https://example.invalid/fw-2.0.bin"}),
            )
            .description("demo: firmware 2.0")
            .things(targets.clone())
            .config(config),
        )
        .await
        .context("create the job")?;
    let bar = progress.bar(n as u64, "job");
    let mut last_line = Instant::now();
    let description = loop {
        let d = fleet.describe_job(&job).context("describe the job")?;
        let c = &d.counters;
        let terminal = c.succeeded + c.failed + c.rejected + c.timed_out + c.canceled + c.removed;
        bar.set_position(terminal);
        let text =
            format!(
            "queued {} in progress {} succeeded {} failed {} rejected {} timed out {} to queue {}",
            c.queued, c.in_progress, c.succeeded, c.failed, c.rejected, c.timed_out,
            d.remaining_targets
        );
        bar.set_message(text.clone());
        if last_line.elapsed() > StdDuration::from_secs(2) {
            last_line = Instant::now();
            progress.line(format!("job: {text}"));
        }
        match d.job.status {
            JobStatus::Completed => break d,
            JobStatus::Canceled => {
                bail!("the job ended {:?} instead of completing", d.job.status)
            }
            _ => {}
        }
        tokio::time::sleep(StdDuration::from_millis(100)).await;
    };
    bar.finish();
    let job_time = t.elapsed();
    progress.say(format!("job completed in {}", secs(job_time)));

    // The table, from what the fleet stored.
    let commands = command_counts(fleet)?;
    let c = &description.counters;
    let mut job_counts: BTreeMap<&'static str, u64> = BTreeMap::new();
    for (status, count) in [
        (JobExecutionStatus::Succeeded, c.succeeded),
        (JobExecutionStatus::Failed, c.failed),
        (JobExecutionStatus::Rejected, c.rejected),
        (JobExecutionStatus::TimedOut, c.timed_out),
        (JobExecutionStatus::Queued, c.queued),
        (JobExecutionStatus::InProgress, c.in_progress),
        (JobExecutionStatus::Canceled, c.canceled),
        (JobExecutionStatus::Removed, c.removed),
    ] {
        if count > 0 {
            job_counts.insert(status.as_str(), count);
        }
    }
    let retried = retried_count(fleet, &job)?;
    let expected_commands = behaviour.expected_commands();
    let (expected_job, expected_retried) = behaviour.expected_job();

    println!();
    println!("Executions by status");
    println!(
        "{:<9} {:<12} {:>7} {:>9}",
        "kind", "status", "count", "expected"
    );
    let mut mismatches = Vec::new();
    let mut rows = |kind: &str,
                    actual: &BTreeMap<&'static str, u64>,
                    expected: &BTreeMap<&'static str, u64>| {
        let mut keys: Vec<&&str> = actual.keys().chain(expected.keys()).collect();
        keys.sort();
        keys.dedup();
        for k in keys {
            let (a, e) = (
                actual.get(*k).copied().unwrap_or(0),
                expected.get(*k).copied().unwrap_or(0),
            );
            println!("{kind:<9} {k:<12} {a:>7} {e:>9}");
            if a != e {
                mismatches.push(format!("{kind} {k}: {a}, expected {e}"));
            }
        }
    };
    rows("command", &commands, &expected_commands);
    rows("job", &job_counts, &expected_job);
    println!(
        "{:<9} {:<12} {:>7} {:>9}   (executions that needed a second attempt)",
        "job", "retried", retried, expected_retried
    );
    if retried != expected_retried {
        mismatches.push(format!(
            "job retried: {retried}, expected {expected_retried}"
        ));
    }
    let total = started.elapsed();
    println!();
    println!(
        "Time taken: {} (devices connected {}, commands {}, job {})",
        secs(total),
        secs(connect_time),
        secs(command_time),
        secs(job_time)
    );

    Ok((sim, mismatches))
}

fn summary(counts: &BTreeMap<&'static str, u64>) -> String {
    counts
        .iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn command_counts(
    fleet: &Fleet<SledStore, Arc<MqttLink>>,
) -> anyhow::Result<BTreeMap<&'static str, u64>> {
    let mut counts = BTreeMap::new();
    let mut page = Page::first(Page::MAX_LIMIT);
    loop {
        let p = fleet.list_commands(&CommandFilter::default(), &page);
        for row in &p.items {
            *counts.entry(row.status.as_str()).or_insert(0) += 1;
        }
        match p.next {
            Some(next) => page = Page::after(next, Page::MAX_LIMIT),
            None => return Ok(counts),
        }
    }
}

fn retried_count(fleet: &Fleet<SledStore, Arc<MqttLink>>, job: &JobId) -> anyhow::Result<u64> {
    let mut retried = 0;
    let mut page = Page::first(Page::MAX_LIMIT);
    loop {
        let p = fleet
            .list_job_executions(job, None, &page)
            .context("list the job's executions")?;
        retried += p
            .items
            .iter()
            .filter(|r| r.execution.execution_number > 1)
            .count() as u64;
        match p.next {
            Some(next) => page = Page::after(next, Page::MAX_LIMIT),
            None => return Ok(retried),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_have_exact_proportions_and_follow_the_seed() {
        let things = things(300).unwrap();
        let b = DemoBehaviour::new(&things, 42);
        let c = b.expected_commands();
        assert_eq!(c["SUCCEEDED"], 240);
        assert_eq!(c["FAILED"], 30);
        assert_eq!(c["TIMED_OUT"], 30);
        let (j, retried) = b.expected_job();
        assert_eq!(j["SUCCEEDED"], 255);
        assert_eq!((j["FAILED"], j["REJECTED"], j["TIMED_OUT"]), (15, 15, 15));
        assert_eq!(retried, 45);
        let other = DemoBehaviour::new(&things, 43);
        assert_ne!(b.jobs, other.jobs);
        assert_eq!(b.jobs, DemoBehaviour::new(&things, 42).jobs);
    }

    #[tokio::test]
    async fn the_fast_clock_runs_fast_and_wakes_on_time() {
        let clock = FastClock::new(60);
        let t0 = clock.now();
        let real = Instant::now();
        clock.sleep_until(t0 + Duration::from_secs(6)).await;
        assert!(clock.now() >= t0 + Duration::from_secs(6));
        let took = real.elapsed();
        assert!(took >= StdDuration::from_millis(95), "{took:?}");
        assert!(took < StdDuration::from_secs(2), "{took:?}");
    }
}
