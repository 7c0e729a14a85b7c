//! `fleetops bench`: end-to-end load through a real broker, each figure beside the raw-MQTT
//! baseline measured in the same run.
//!
//! - **commands**: sequential command round trips (`Fleet::send_command` → a `DeviceClient`
//!   answers → the outcome is resolved) for p50 and p99, then throughput with `--concurrency`
//!   commands in flight. Baseline: a rumqttc requester and an echoing responder on the same
//!   topics, same payload size, QoS 1, same window.
//! - **job**: a job to `--devices` devices, from `create_job` until every execution is
//!   `SUCCEEDED`. Baseline: the same fan-out with raw rumqttc clients and the same
//!   connection layout, five messages per device (`notify-next`, `start-next`, `accepted`,
//!   `update`, `accepted`). Each device has a connection of its own, or, with
//!   `--device-connections`, both sides simulate their devices over that many connections
//!   (see [`mux`]), which is how a job reaches 100,000 devices.
//! - **flood** (only when asked for by name): a quiet device's command round trips (p50, p99)
//!   while another device floods `--flood-messages` malformed requests at QoS 0 and at QoS 1,
//!   beside the same device's round trips without a flood on the same fleet in the same run
//!   (see [`flood`]). Its baseline is fleetops itself, not raw MQTT: the question is how much
//!   one noisy device slows the others down.
//!
//! Each scenario runs `--runs` times; within a run the raw baseline and fleetops are measured
//! back to back (alternating which goes first), and the report gives the medians of each
//! side and the median of the per-run ratios, so load changes on a shared machine hit both
//! sides alike. The service uses the real store (`SledStore` in a temporary directory, or
//! PostgreSQL with `--store`, shared by `--instances` runtimes) and `MqttLink`.

pub mod broker;
pub mod cpu;
pub mod fleetops;
pub mod flood;
pub mod mux;
pub mod raw;
pub mod stats;

use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use clap::{ArgGroup, Args, ValueEnum};
use fleetops_transport_mqtt::codec::TopicLayout;
use fleetops_transport_mqtt::BrokerConfig;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressFinish, ProgressStyle};
use serde::Serialize;

use crate::broker_url::{redact, BrokerUrl};
pub use crate::config::DurabilityArg;
use crate::config::StoreSetting;
use cpu::{CpuMeter, CpuPerOp};
use raw::Sizes;
use stats::{median, Latency};

/// Arguments of `fleetops bench`.
#[derive(Debug, Args)]
#[command(group(ArgGroup::new("broker_choice").required(true).args(["broker", "spawn_mosquitto"])))]
pub struct BenchArgs {
    /// The broker, `mqtt://[user[:password]@]host[:port]` or `mqtts://…`. The service, the
    /// simulated devices and the raw-MQTT clients all connect with these credentials.
    #[arg(long, value_name = "URL")]
    pub broker: Option<String>,
    /// CA certificate (PEM) for an `mqtts://` broker.
    #[arg(long, value_name = "FILE", requires = "broker")]
    pub broker_ca: Option<PathBuf>,
    /// Start a private mosquitto on a free loopback port, tuned for load (TCP_NODELAY, no
    /// in-flight cap, large queues, no persistence).
    #[arg(long)]
    pub spawn_mosquitto: bool,
    /// Which scenarios to run.
    #[arg(long, value_enum, default_value_t = Scenario::All)]
    pub scenario: Scenario,
    /// Runs of each scenario (medians are reported).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub runs: u32,
    /// Sequential command round trips per run (for p50 and p99).
    #[arg(long, default_value_t = 2_000, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    pub round_trips: u64,
    /// Commands in flight for the throughput figure.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..=4_096))]
    pub concurrency: u64,
    /// Commands per run for the throughput figure.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    pub requests: u64,
    /// Devices the job goes to (one MQTT connection each, unless `--device-connections`);
    /// over 10,000 they are put in a thing group first, which holds at most 100,000.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub devices: u64,
    /// Simulate the job's devices over this many MQTT connections instead of one each, on
    /// the fleetops side and the raw-MQTT side alike: each connection carries an even share
    /// of `--devices`, subscribes for each of them to that device's own topics and answers
    /// for each as its device would. Needed beyond what one connection per device reaches
    /// (file descriptors, ephemeral ports): a job to 100,000 devices. At most `--devices`;
    /// job scenario only.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub device_connections: Option<u64>,
    /// Devices that connect at the same time while the fleet is set up (with
    /// `--device-connections`: connections set up at the same time).
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub connect_wave: u64,
    /// Malformed messages the noisy device sends per flood (flood scenario).
    #[arg(long, default_value_t = 20_000, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    pub flood_messages: u64,
    /// The QoS of the flood: `zero`, `one` or `both` (flood scenario).
    #[arg(long, value_enum, default_value_t = flood::FloodQos::Both)]
    pub flood_qos: flood::FloodQos,
    /// sled's durability for the service's store.
    #[arg(long, value_enum, default_value_t = DurabilityArg::Flush)]
    pub durability: DurabilityArg,
    /// The service's store: `sled` (a temporary directory) or a PostgreSQL URL, where every
    /// run gets a schema of its own (`bench_…`, left in place: use a throwaway database).
    #[arg(long, value_name = "sled|URL", default_value = "sled")]
    pub store: String,
    /// Service instances sharing the store and the device traffic (`$share`), each with its
    /// own connections; one leads, as with `serve`. More than one needs PostgreSQL. Commands
    /// are sent and jobs created through the first.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=16))]
    pub instances: u32,
    /// Don't publish job execution status changes (`FleetConfig::publish_status_changes`
    /// off): three publishes per execution that no device reads. On by default, as in a
    /// default `Fleet`.
    #[arg(long)]
    pub no_status_changes: bool,
    /// Give up on a phase (connecting, a measurement) after this many seconds.
    #[arg(long, default_value_t = 600, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub timeout_secs: u64,
    /// Print the results as JSON on stdout instead of tables.
    #[arg(long)]
    pub json: bool,
}

/// The scenarios of `fleetops bench`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Scenario {
    /// Command round trips and throughput.
    Commands,
    /// A job fanned out to many devices.
    Job,
    /// Commands and job (not flood).
    All,
    /// A quiet device's command round trips while another device floods malformed
    /// messages, beside the same round trips without the flood.
    Flood,
}

/// A progress bar on stderr, hidden when stderr is not a terminal.
#[derive(Clone)]
pub struct Progress(ProgressBar);

impl Progress {
    fn new(len: u64, message: impl Into<String>) -> Self {
        let bar = ProgressBar::with_draw_target(
            Some(len),
            if std::io::stderr().is_terminal() {
                ProgressDrawTarget::stderr()
            } else {
                ProgressDrawTarget::hidden()
            },
        );
        if let Ok(style) =
            ProgressStyle::with_template("{msg:44} [{bar:30}] {pos}/{len} {elapsed_precise}")
        {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_message(message.into());
        // Cleared when the last clone goes, so finished phases leave no bars behind.
        Self(bar.with_finish(ProgressFinish::AndClear))
    }

    /// Counts `n` more steps done.
    pub fn inc(&self, n: u64) {
        self.0.inc(n);
    }
}

/// Where the run happened.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    /// Logical CPUs available to the process.
    pub cores: usize,
    /// `model name` from /proc/cpuinfo.
    pub cpu: String,
    /// UTC start of the run, RFC 3339.
    pub date: String,
    /// The broker: `spawned mosquitto X` or the URL (password removed).
    pub broker: String,
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".into())
}

fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| "unknown".into())
}

/// One run of the commands scenario.
#[derive(Debug, Clone, Serialize)]
pub struct CommandRun {
    /// fleetops, sequential.
    pub fleetops_sequential: Latency,
    /// Raw MQTT, sequential.
    pub raw_sequential: Latency,
    /// fleetops, `concurrency` in flight.
    pub fleetops_concurrent: Latency,
    /// Raw MQTT, `concurrency` in flight.
    pub raw_concurrent: Latency,
    /// Raw MQTT with a reply to each response, `concurrency` in flight: the three messages
    /// of fleetops' command protocol instead of two.
    pub raw_replied_concurrent: Latency,
    /// CPU per command of `fleetops_concurrent`.
    pub fleetops_concurrent_cpu: Option<CpuPerOp>,
    /// CPU per command of `raw_concurrent`.
    pub raw_concurrent_cpu: Option<CpuPerOp>,
    /// CPU per command of `raw_replied_concurrent`.
    pub raw_replied_concurrent_cpu: Option<CpuPerOp>,
    /// A lone durable append of one event to a fresh store of the same kind and durability
    /// (sled only; `None` on PostgreSQL): what one flush costs in this run.
    pub store_append: Option<Latency>,
}

/// One run of the job scenario.
#[derive(Debug, Clone, Serialize)]
pub struct JobRun {
    /// fleetops: create → every execution `SUCCEEDED`, seconds.
    pub fleetops_secs: f64,
    /// Raw MQTT: first `notify-next` → last `update`, seconds.
    pub raw_secs: f64,
    /// CPU per execution of the fleetops job.
    pub fleetops_cpu: Option<CpuPerOp>,
    /// CPU per device of the raw fan-out.
    pub raw_cpu: Option<CpuPerOp>,
}

/// A figure across runs: the medians of both sides and of the per-run ratios.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Compared {
    /// Median of fleetops' figures.
    pub fleetops: f64,
    /// Median of the raw baseline's figures.
    pub raw: f64,
    /// Median of the per-run `fleetops / raw`.
    pub ratio: f64,
}

impl Compared {
    fn of<T>(runs: &[T], fleetops: impl Fn(&T) -> f64, raw: impl Fn(&T) -> f64) -> Self {
        Self {
            fleetops: median(runs.iter().map(&fleetops)),
            raw: median(runs.iter().map(&raw)),
            ratio: median(runs.iter().map(|r| fleetops(r) / raw(r))),
        }
    }

    /// The process's and the broker's CPU per operation, each [`Compared::of`] the runs;
    /// `None` for a figure some run lacks.
    fn cpu<T>(
        runs: &[T],
        fleetops: impl Fn(&T) -> Option<CpuPerOp>,
        raw: impl Fn(&T) -> Option<CpuPerOp>,
    ) -> (Option<Self>, Option<Self>) {
        let of_all = |figure: fn(CpuPerOp) -> Option<f64>| {
            let pairs = runs
                .iter()
                .map(|r| fleetops(r).and_then(figure).zip(raw(r).and_then(figure)))
                .collect::<Option<Vec<_>>>()?;
            (!pairs.is_empty()).then(|| Self::of(&pairs, |p| p.0, |p| p.1))
        };
        (of_all(|c| Some(c.process_us)), of_all(|c| c.broker_us))
    }
}

/// The commands scenario's results.
#[derive(Debug, Clone, Serialize)]
pub struct CommandsReport {
    /// Sequential round trips per run.
    pub round_trips: u64,
    /// Commands in flight for the throughput figure.
    pub concurrency: u64,
    /// Commands per run for the throughput figure.
    pub requests: u64,
    /// Command request payload size (the raw echo uses the same).
    pub payload_bytes: usize,
    /// Sequential p50, µs.
    pub p50_us: Compared,
    /// Sequential p99, µs.
    pub p99_us: Compared,
    /// Round trips per second with `concurrency` in flight.
    pub throughput_per_sec: Compared,
    /// p50 with `concurrency` in flight, µs.
    pub concurrent_p50_us: Compared,
    /// Round trips per second with `concurrency` in flight, against raw MQTT that also
    /// replies to each response (`response/accepted`, as fleetops does): what the protocol's
    /// third message costs is then on both sides, and the ratio is the software's alone.
    pub replied_throughput_per_sec: Compared,
    /// Median p50 of a lone durable append (the flush a round trip waits for), µs; `None` on
    /// PostgreSQL.
    pub store_append_p50_us: Option<f64>,
    /// Median of the per-run `fleetops p50 / (raw p50 + store append p50)`: 1.0 means the
    /// round trip costs raw MQTT plus exactly one durable append.
    pub p50_over_raw_plus_append: Option<f64>,
    /// The bench process's CPU per command with `concurrency` in flight, µs.
    pub cpu_process_us: Option<Compared>,
    /// The spawned broker's CPU per command with `concurrency` in flight, µs; `None` with
    /// `--broker`.
    pub cpu_broker_us: Option<Compared>,
    /// `cpu_process_us` against raw MQTT replying to each response.
    pub replied_cpu_process_us: Option<Compared>,
    /// `cpu_broker_us` against raw MQTT replying to each response.
    pub replied_cpu_broker_us: Option<Compared>,
    /// Every run.
    pub runs: Vec<CommandRun>,
}

/// The job scenario's results.
#[derive(Debug, Clone, Serialize)]
pub struct JobReport {
    /// Devices.
    pub devices: u64,
    /// The connections the devices of both sides shared (`--device-connections`); `None`:
    /// one connection per device.
    pub device_connections: Option<u64>,
    /// Create → all `SUCCEEDED`, seconds.
    pub seconds: Compared,
    /// Device requests that failed in the fleetops runs (timeouts, refusals), all runs.
    pub device_errors: u64,
    /// The bench process's CPU per execution (raw: per device), µs.
    pub cpu_process_us: Option<Compared>,
    /// The spawned broker's CPU per execution (raw: per device), µs; `None` with `--broker`.
    pub cpu_broker_us: Option<Compared>,
    /// Every run.
    pub runs: Vec<JobRun>,
}

/// A flood figure across runs: the medians of both sides and of the per-run ratios.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct FloodCompared {
    /// Median during the flood.
    pub during: f64,
    /// Median of the same device without a flood.
    pub quiet: f64,
    /// Median of the per-run `during / quiet`.
    pub ratio: f64,
}

/// One flood variant across runs.
#[derive(Debug, Clone, Serialize)]
pub struct FloodFigures {
    /// 0 or 1.
    pub qos: u8,
    /// Round trip p50, µs.
    pub p50_us: FloodCompared,
    /// Round trip p99, µs.
    pub p99_us: FloodCompared,
    /// Median round trips measured during the flood per run.
    pub round_trips: f64,
    /// Median flood duration (first noisy publish → last reply to it), s.
    pub flood_secs: f64,
    /// Median replies the noisy device received.
    pub replies: f64,
}

/// The flood scenario's results.
#[derive(Debug, Clone, Serialize)]
pub struct FloodReport {
    /// Malformed messages per flood.
    pub messages: u64,
    /// Their size.
    pub payload_bytes: usize,
    /// Quiet round trips per run.
    pub round_trips: u64,
    /// Each variant.
    pub floods: Vec<FloodFigures>,
    /// Every run.
    pub runs: Vec<flood::FloodRun>,
}

/// Everything `fleetops bench` measured.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Where.
    pub machine: Machine,
    /// The service's store (`sled`, or the PostgreSQL URL without its password).
    pub store: String,
    /// Service instances sharing the store.
    pub instances: u32,
    /// The store's durability (sled).
    pub durability: DurabilityArg,
    /// Whether the fleet published job execution status changes.
    pub status_changes: bool,
    /// Runs per scenario.
    pub runs: u32,
    /// Payload sizes of the raw baselines (fleetops' own message sizes).
    pub sizes: Sizes,
    /// The commands scenario, if run.
    pub commands: Option<CommandsReport>,
    /// The job scenario, if run.
    pub job: Option<JobReport>,
    /// The flood scenario, if run.
    pub flood: Option<FloodReport>,
}

/// Runs `fleetops bench`.
pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    // Ctrl-C or SIGTERM ends the run through the drops: the private mosquitto is killed and
    // the temporary stores are removed, which a process killed mid-run would leave behind.
    let stop = crate::serve::shutdown_signal();
    crate::log_errors_to_stderr();
    // Before a broker is started for nothing.
    check_device_connections(&args)?;
    let (broker, label, spawned) = if args.spawn_mosquitto {
        let spawned = broker::SpawnedBroker::start().context("start a private mosquitto")?;
        let version = broker::mosquitto_binary()
            .ok()
            .and_then(|b| broker::mosquitto_version(&b))
            .unwrap_or_else(|| "(unknown version)".into());
        (
            spawned.config(),
            format!(
                "spawned mosquitto {version} on 127.0.0.1:{}",
                spawned.port()
            ),
            Some(spawned),
        )
    } else {
        let url = args.broker.as_deref().unwrap_or_default();
        let config = BrokerUrl::parse(url)?.to_config(args.broker_ca.as_deref(), None, None)?;
        (config, redact(url), None)
    };
    let report = tokio::select! {
        report = measure(&args, broker, label, spawned.as_ref().and_then(broker::SpawnedBroker::pid)) => report?,
        () = stop => anyhow::bail!("interrupted: no figures; the private broker and the temporary stores were removed"),
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", render(&report));
    }
    Ok(())
}

/// Runs the chosen scenarios against `broker` and collects the figures; `broker_pid`, the
/// spawned broker's process id, adds its CPU per operation to them.
pub async fn measure(
    args: &BenchArgs,
    broker: BrokerConfig,
    label: String,
    broker_pid: Option<u32>,
) -> anyhow::Result<Report> {
    let sizes = fleetops::message_sizes()?;
    let machine = Machine {
        cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
        cpu: cpu_model(),
        date: now_rfc3339(),
        broker: label,
    };
    let prefix = TopicLayout::default().prefix().to_owned();
    let limit = Duration::from_secs(args.timeout_secs);
    // Client ids must not collide with another bench against the same broker.
    let tag = format!(
        "{}-{}",
        std::process::id(),
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() % 1_000_000)
    );
    let store = StoreSetting::parse(&args.store)?;
    if args.instances > 1 && store == StoreSetting::Sled {
        anyhow::bail!("--instances above 1 needs a store they can share: --store postgres://…");
    }
    check_device_connections(args)?;
    let setup = |run: u32| fleetops::Setup {
        broker: broker.clone(),
        durability: args.durability.into(),
        tag: format!("{tag}-{run}"),
        status_changes: !args.no_status_changes,
        store: store.clone(),
        instances: args.instances as usize,
        broker_pid,
    };
    let mut report = Report {
        machine,
        store: store.shown(),
        instances: args.instances,
        durability: args.durability,
        status_changes: !args.no_status_changes,
        runs: args.runs,
        sizes,
        commands: None,
        job: None,
        flood: None,
    };
    if matches!(args.scenario, Scenario::Commands | Scenario::All) {
        let mut runs = Vec::new();
        for run in 0..args.runs {
            runs.push(commands_run(args, &broker, &prefix, sizes, &setup(run), run, limit).await?);
        }
        let (cpu_process_us, cpu_broker_us) = Compared::cpu(
            &runs,
            |r| r.fleetops_concurrent_cpu,
            |r| r.raw_concurrent_cpu,
        );
        let (replied_cpu_process_us, replied_cpu_broker_us) = Compared::cpu(
            &runs,
            |r| r.fleetops_concurrent_cpu,
            |r| r.raw_replied_concurrent_cpu,
        );
        report.commands = Some(CommandsReport {
            round_trips: args.round_trips,
            concurrency: args.concurrency,
            requests: args.requests,
            payload_bytes: sizes.command,
            p50_us: Compared::of(
                &runs,
                |r| r.fleetops_sequential.p50_us,
                |r| r.raw_sequential.p50_us,
            ),
            p99_us: Compared::of(
                &runs,
                |r| r.fleetops_sequential.p99_us,
                |r| r.raw_sequential.p99_us,
            ),
            throughput_per_sec: Compared::of(
                &runs,
                |r| r.fleetops_concurrent.per_sec,
                |r| r.raw_concurrent.per_sec,
            ),
            concurrent_p50_us: Compared::of(
                &runs,
                |r| r.fleetops_concurrent.p50_us,
                |r| r.raw_concurrent.p50_us,
            ),
            replied_throughput_per_sec: Compared::of(
                &runs,
                |r| r.fleetops_concurrent.per_sec,
                |r| r.raw_replied_concurrent.per_sec,
            ),
            store_append_p50_us: runs
                .iter()
                .map(|r| r.store_append.map(|a| a.p50_us))
                .collect::<Option<Vec<_>>>()
                .map(median),
            p50_over_raw_plus_append: runs
                .iter()
                .map(|r| {
                    r.store_append.map(|a| {
                        r.fleetops_sequential.p50_us / (r.raw_sequential.p50_us + a.p50_us)
                    })
                })
                .collect::<Option<Vec<_>>>()
                .map(median),
            cpu_process_us,
            cpu_broker_us,
            replied_cpu_process_us,
            replied_cpu_broker_us,
            runs,
        });
    }
    if matches!(args.scenario, Scenario::Job | Scenario::All) {
        check_fd_limit(args.devices, args.device_connections)?;
        let mut runs = Vec::new();
        let mut device_errors = 0;
        for run in 0..args.runs {
            let (r, errors) =
                job_run(args, &broker, &prefix, sizes, &setup(run), run, limit).await?;
            runs.push(r);
            device_errors += errors;
        }
        let (cpu_process_us, cpu_broker_us) =
            Compared::cpu(&runs, |r| r.fleetops_cpu, |r| r.raw_cpu);
        report.job = Some(JobReport {
            devices: args.devices,
            device_connections: args.device_connections,
            seconds: Compared::of(&runs, |r| r.fleetops_secs, |r| r.raw_secs),
            device_errors,
            cpu_process_us,
            cpu_broker_us,
            runs,
        });
    }
    if args.scenario == Scenario::Flood {
        report.flood = Some(flood_scenario(args, &broker, &prefix, &setup, limit).await?);
    }
    Ok(report)
}

async fn flood_scenario(
    args: &BenchArgs,
    broker: &BrokerConfig,
    prefix: &str,
    setup: &dyn Fn(u32) -> fleetops::Setup,
    limit: Duration,
) -> anyhow::Result<FloodReport> {
    let levels = args.flood_qos.levels();
    let mut runs = Vec::new();
    for run in 0..args.runs {
        let setup = setup(run);
        let total = 2 * args.round_trips + args.flood_messages * levels.len() as u64;
        let progress = Progress::new(total, format!("flood {}/{}", run + 1, args.runs));
        let cmds = fleetops::Commands::start(&setup).await?;
        let r = flood::run(
            &cmds,
            broker,
            prefix,
            &setup.tag,
            args.round_trips as usize,
            args.flood_messages,
            &levels,
            limit,
            &progress,
        )
        .await;
        cmds.stop().await;
        runs.push(r?);
    }
    let floods = (0..levels.len())
        .map(|i| {
            let side = |r: &flood::FloodRun| r.floods[i].clone();
            let compared = |during: &dyn Fn(&Latency) -> f64| FloodCompared {
                during: median(runs.iter().map(|r| during(&side(r).during))),
                quiet: median(runs.iter().map(|r| during(&r.quiet))),
                ratio: median(
                    runs.iter()
                        .map(|r| during(&side(r).during) / during(&r.quiet)),
                ),
            };
            FloodFigures {
                qos: runs.first().map_or(0, |r| r.floods[i].qos),
                p50_us: compared(&|l| l.p50_us),
                p99_us: compared(&|l| l.p99_us),
                round_trips: median(runs.iter().map(|r| side(r).during.count as f64)),
                flood_secs: median(runs.iter().map(|r| side(r).flood_secs)),
                replies: median(runs.iter().map(|r| side(r).replies as f64)),
            }
        })
        .collect();
    Ok(FloodReport {
        messages: args.flood_messages,
        payload_bytes: flood::MALFORMED.len(),
        round_trips: args.round_trips,
        floods,
        runs,
    })
}

/// `--device-connections` shares devices out over connections: it needs a device for each,
/// and devices, which only the job scenario has.
fn check_device_connections(args: &BenchArgs) -> anyhow::Result<()> {
    let Some(connections) = args.device_connections else {
        return Ok(());
    };
    if !matches!(args.scenario, Scenario::Job | Scenario::All) {
        anyhow::bail!(
            "--device-connections applies to the job scenario only (--scenario job or all)"
        );
    }
    if connections > args.devices {
        anyhow::bail!(
            "--device-connections {connections} is more than --devices {}: every connection \
             carries at least one device",
            args.devices
        );
    }
    Ok(())
}

/// Each device is a connection (or each of `--device-connections`): fail early with a clear
/// message rather than after thousands of connects.
fn check_fd_limit(devices: u64, connections: Option<u64>) -> anyhow::Result<()> {
    let soft = std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(3))
                .and_then(|v| v.parse::<u64>().ok())
        });
    if let Some(soft) = soft {
        match connections {
            None if devices + 64 > soft => anyhow::bail!(
                "--devices {devices} needs a connection (file descriptor) per device, but the \
                 open-file limit is {soft}; raise it (ulimit -n), use fewer devices, or share \
                 connections between devices with --device-connections"
            ),
            Some(c) if c + 64 > soft => anyhow::bail!(
                "--device-connections {c} needs a file descriptor per connection, but the \
                 open-file limit is {soft}; raise it (ulimit -n) or use fewer connections"
            ),
            _ => {}
        }
    }
    Ok(())
}

async fn commands_run(
    args: &BenchArgs,
    broker: &BrokerConfig,
    prefix: &str,
    sizes: Sizes,
    setup: &fleetops::Setup,
    run: u32,
    limit: Duration,
) -> anyhow::Result<CommandRun> {
    let (seq, n, c) = (
        args.round_trips as usize,
        args.requests as usize,
        args.concurrency as usize,
    );
    let warmup = 200.min(seq);
    let runs = args.runs;
    let mut raw_figs = None;
    let mut fleet_figs = None;
    // Alternate which side goes first, so warming (page cache, allocator, broker) favours
    // neither.
    for side in if run.is_multiple_of(2) {
        [0, 1]
    } else {
        [1, 0]
    } {
        if side == 0 {
            let label = format!("commands {}/{runs}: raw MQTT", run + 1);
            let progress = Progress::new((warmup + seq + 2 * n) as u64, label);
            let mut rr = raw::RequestResponse::connect(
                broker,
                prefix,
                "bench-raw-cmd",
                sizes.command,
                None,
                &setup.tag,
                c,
            )
            .await?;
            rr.run(warmup, 1, limit, &progress).await?;
            let s = rr.run(seq, 1, limit, &progress).await?;
            let meter = CpuMeter::start(setup.broker_pid);
            let t = rr.run(n, c, limit, &progress).await?;
            let t_cpu = meter.per_op(n);
            drop(rr);
            let mut replied = raw::RequestResponse::connect(
                broker,
                prefix,
                "bench-raw-cmd",
                sizes.command,
                Some(sizes.response_accepted),
                &format!("{}-replied", setup.tag),
                c,
            )
            .await?;
            let meter = CpuMeter::start(setup.broker_pid);
            let r = replied.run(n, c, limit, &progress).await?;
            let r_cpu = meter.per_op(n);
            // The yardstick is only what it claims if every reply reached the responder.
            replied.await_replies(n, limit).await?;
            raw_figs = Some((s, (t, t_cpu), (r, r_cpu)));
        } else {
            let label = format!("commands {}/{runs}: fleetops", run + 1);
            let progress = Progress::new((warmup + seq + n) as u64, label);
            let cmds = fleetops::Commands::start(setup).await?;
            cmds.run(warmup, 1, limit, &progress).await?;
            let s = cmds.run(seq, 1, limit, &progress).await?;
            let meter = CpuMeter::start(setup.broker_pid);
            let t = cmds.run(n, c, limit, &progress).await?;
            let t_cpu = meter.per_op(n);
            cmds.stop().await;
            fleet_figs = Some((s, (t, t_cpu)));
        }
    }
    let ((raw_s, (raw_t, raw_t_cpu), (raw_r, raw_r_cpu)), (fl_s, (fl_t, fl_t_cpu))) =
        raw_figs.zip(fleet_figs).context("both sides ran")?;
    // The flush a round trip waits for, measured in this run beside it.
    let store_append = fleetops::store_append_latency(setup, seq.max(200)).await?;
    Ok(CommandRun {
        fleetops_sequential: fl_s,
        raw_sequential: raw_s,
        fleetops_concurrent: fl_t,
        raw_concurrent: raw_t,
        raw_replied_concurrent: raw_r,
        fleetops_concurrent_cpu: fl_t_cpu,
        raw_concurrent_cpu: raw_t_cpu,
        raw_replied_concurrent_cpu: raw_r_cpu,
        store_append,
    })
}

async fn job_run(
    args: &BenchArgs,
    broker: &BrokerConfig,
    prefix: &str,
    sizes: Sizes,
    setup: &fleetops::Setup,
    run: u32,
    limit: Duration,
) -> anyhow::Result<(JobRun, u64)> {
    let n = args.devices;
    let wave = args.connect_wave as usize;
    let runs = args.runs;
    let mut raw_secs = None;
    let mut fleet = None;
    let devices = usize::try_from(n).unwrap_or(usize::MAX);
    for side in if run.is_multiple_of(2) {
        [0, 1]
    } else {
        [1, 0]
    } {
        if side == 0 {
            let mut fanout = match args.device_connections {
                None => {
                    let label = format!("job {}/{runs}: raw, connecting", run + 1);
                    let p = Progress::new(n + 1, label);
                    raw::Fanout::connect(broker, prefix, n as usize, wave, sizes, &setup.tag, &p)
                        .await?
                }
                Some(c) => {
                    let label = format!("job {}/{runs}: raw, subscribing over {c}", run + 1);
                    let p = Progress::new(n, label);
                    raw::Fanout::connect_multiplexed(
                        broker, prefix, n as usize, c as usize, wave, sizes, &setup.tag, limit, &p,
                    )
                    .await?
                }
            };
            let p = Progress::new(n, format!("job {}/{runs}: raw fan-out", run + 1));
            let meter = CpuMeter::start(setup.broker_pid);
            let secs = fanout.run(limit, &p).await;
            let cpu = meter.per_op(devices);
            fanout.close().await;
            raw_secs = Some((secs?.as_secs_f64(), cpu));
        } else {
            let (mut job, errors) = match args.device_connections {
                None => {
                    let label = format!("job {}/{runs}: fleetops, connecting", run + 1);
                    let p = Progress::new(n, label);
                    fleetops::Job::start(setup, n as usize, wave, limit, &p).await?
                }
                Some(c) => {
                    // Each device twice: subscribed, then its pending list pulled.
                    let label = format!("job {}/{runs}: fleetops, subscribing over {c}", run + 1);
                    let p = Progress::new(2 * n, label);
                    fleetops::Job::start_multiplexed(setup, n as usize, c as usize, wave, limit, &p)
                        .await?
                }
            };
            let p = Progress::new(n, format!("job {}/{runs}: fleetops job", run + 1));
            let meter = CpuMeter::start(setup.broker_pid);
            let secs = job.run(limit, &p).await;
            let cpu = meter.per_op(devices);
            job.stop().await;
            fleet = Some((
                secs?.as_secs_f64(),
                cpu,
                errors.load(std::sync::atomic::Ordering::Relaxed),
            ));
        }
        // Ten thousand disconnects keep the broker busy for a moment: let it settle so the
        // next measurement does not pay for them.
        tokio::time::sleep(Duration::from_millis(500 + n / 10)).await;
    }
    let ((raw_secs, raw_cpu), (fleetops_secs, fleetops_cpu, errors)) =
        raw_secs.zip(fleet).context("both sides ran")?;
    Ok((
        JobRun {
            fleetops_secs,
            raw_secs,
            fleetops_cpu,
            raw_cpu,
        },
        errors,
    ))
}

fn us(v: f64) -> String {
    if v >= 10_000.0 {
        format!("{:.1} ms", v / 1000.0)
    } else if v >= 1000.0 {
        format!("{:.2} ms", v / 1000.0)
    } else {
        format!("{v:.0} µs")
    }
}

fn ratio(r: f64) -> String {
    format!("{r:.2}x")
}

/// The human-readable tables.
pub fn render(r: &Report) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let m = &r.machine;
    let _ = writeln!(
        s,
        "fleetops bench: {} cores ({}), {}, broker: {}, store: {} ({} instance(s)), sled durability: {:?}, status-change events: {}",
        m.cores,
        m.cpu,
        m.date,
        m.broker,
        r.store,
        r.instances,
        r.durability,
        if r.status_changes { "on" } else { "off" }
    );
    let _ = writeln!(
        s,
        "{} run(s) per scenario; medians of each side, ratio = median of the per-run fleetops / raw (flood: during / without a flood)",
        r.runs
    );
    if let Some(c) = &r.commands {
        let _ = writeln!(
            s,
            "\ncommands: {} sequential round trips, then {} with {} in flight; QoS 1, {}-byte requests",
            c.round_trips, c.requests, c.concurrency, c.payload_bytes
        );
        let _ = writeln!(s, "| figure | fleetops | raw MQTT | fleetops / raw |");
        let _ = writeln!(s, "|---|---|---|---|");
        for (name, f) in [("round trip p50", c.p50_us), ("round trip p99", c.p99_us)] {
            let _ = writeln!(
                s,
                "| {name} | {} | {} | {} |",
                us(f.fleetops),
                us(f.raw),
                ratio(f.ratio)
            );
        }
        for (t, against) in [
            (c.throughput_per_sec, ""),
            (
                c.replied_throughput_per_sec,
                ", raw replying to each response as fleetops does",
            ),
        ] {
            let _ = writeln!(
                s,
                "| throughput, {} in flight{against} | {:.0} req/s | {:.0} req/s | {} |",
                c.concurrency,
                t.fleetops,
                t.raw,
                ratio(t.ratio)
            );
        }
        let p = c.concurrent_p50_us;
        let _ = writeln!(
            s,
            "| round trip p50, {} in flight | {} | {} | {} |",
            c.concurrency,
            us(p.fleetops),
            us(p.raw),
            ratio(p.ratio)
        );
        for (what, against, f) in [
            ("bench process", "", c.cpu_process_us),
            ("broker", "", c.cpu_broker_us),
            ("bench process", ", raw replying", c.replied_cpu_process_us),
            ("broker", ", raw replying", c.replied_cpu_broker_us),
        ] {
            if let Some(f) = f {
                let _ = writeln!(
                    s,
                    "| CPU per command, {} in flight{against}: {what} | {} | {} | {} |",
                    c.concurrency,
                    us(f.fleetops),
                    us(f.raw),
                    ratio(f.ratio)
                );
            }
        }
        if let (Some(a), Some(r)) = (c.store_append_p50_us, c.p50_over_raw_plus_append) {
            let _ = writeln!(
                s,
                "| lone durable store append p50 (one flush) | {} | | |\n| round trip p50 / (raw p50 + one append) | | | {} |",
                us(a),
                ratio(r)
            );
        }
        for (i, run) in c.runs.iter().enumerate() {
            let _ = writeln!(
                s,
                "  run {}: p50 {} / {}, p99 {} / {}, {:.0} / {:.0} req/s (fleetops / raw){}",
                i + 1,
                us(run.fleetops_sequential.p50_us),
                us(run.raw_sequential.p50_us),
                us(run.fleetops_sequential.p99_us),
                us(run.raw_sequential.p99_us),
                run.fleetops_concurrent.per_sec,
                run.raw_concurrent.per_sec,
                run.store_append
                    .map(|a| format!(", store append p50 {}", us(a.p50_us)))
                    .unwrap_or_default()
            );
        }
    }
    if let Some(j) = &r.job {
        let z = r.sizes;
        let layout = match j.device_connections {
            None => "one connection each".to_owned(),
            Some(c) => format!("over {c} connections on both sides"),
        };
        let _ = writeln!(
            s,
            "\njob: {} devices, {layout}; raw = notify-next ({} B), start-next ({} B), start-next/accepted ({} B), update ({} B), update/accepted ({} B) per device",
            j.devices, z.notify, z.start_next, z.accepted, z.update, z.update_accepted
        );
        let _ = writeln!(s, "| figure | fleetops | raw MQTT | fleetops / raw |");
        let _ = writeln!(s, "|---|---|---|---|");
        let f = j.seconds;
        let _ = writeln!(
            s,
            "| job to {} devices, create → all SUCCEEDED | {:.2} s | {:.2} s | {} |",
            j.devices,
            f.fleetops,
            f.raw,
            ratio(f.ratio)
        );
        for (what, f) in [
            ("bench process", j.cpu_process_us),
            ("broker", j.cpu_broker_us),
        ] {
            if let Some(f) = f {
                let _ = writeln!(
                    s,
                    "| CPU per execution: {what} | {} | {} | {} |",
                    us(f.fleetops),
                    us(f.raw),
                    ratio(f.ratio)
                );
            }
        }
        for (i, run) in j.runs.iter().enumerate() {
            let _ = writeln!(
                s,
                "  run {}: {:.2} s / {:.2} s (fleetops / raw)",
                i + 1,
                run.fleetops_secs,
                run.raw_secs
            );
        }
        if j.device_errors > 0 {
            let _ = writeln!(s, "  device request errors: {}", j.device_errors);
        }
    }
    if let Some(f) = &r.flood {
        let _ = writeln!(
            s,
            "\nflood: a quiet device's sequential command round trips while another device sends {} malformed {}-byte requests, beside {} round trips of the same device without a flood (same fleet, same run)",
            f.messages, f.payload_bytes, f.round_trips
        );
        let _ = writeln!(
            s,
            "| figure | during the flood | without a flood | flood / quiet |"
        );
        let _ = writeln!(s, "|---|---|---|---|");
        for v in &f.floods {
            for (name, c) in [("p50", v.p50_us), ("p99", v.p99_us)] {
                let _ = writeln!(
                    s,
                    "| QoS {} flood, round trip {name} | {} | {} | {} |",
                    v.qos,
                    us(c.during),
                    us(c.quiet),
                    ratio(c.ratio)
                );
            }
        }
        for v in &f.floods {
            let _ = writeln!(
                s,
                "  QoS {} flood: {:.2} s until the last reply to the noisy device, {:.0} replies received, {:.0} round trips measured during it",
                v.qos, v.flood_secs, v.replies, v.round_trips
            );
        }
    }
    s
}
