//! `fleetops simulate`: simulated devices against a broker, until Ctrl-C or `--duration`.
//!
//! Devices are named `{prefix}{n:04}` (`sim-0000`, `sim-0001`, …) and run a
//! [`RandomBehaviour`] over MQTT ([`crate::devices`]): each command and each job attempt ends
//! `SUCCEEDED`, `FAILED`, `REJECTED` or silent (a command left unanswered, a job left `IN_PROGRESS` with a
//! one-minute step timeout) with the given weights, after an execution time drawn from the
//! given distribution; with `--churn`, devices go offline now and then and come back (their
//! persistent sessions keep what the service sent meanwhile). Draws depend only on
//! `--seed`, the device's name and the task, so runs are reproducible.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use fleetops_core::ThingName;
use fleetops_service::sim::{ExecTime, RandomBehaviour, Ratios, Stats};
use fleetops_transport_mqtt::codec::TopicLayout;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::broker_url::BrokerUrl;
use crate::devices::{Churn, Connections, SimConfig, Simulation};

/// Arguments of `fleetops simulate`.
#[derive(Debug, Args)]
pub struct SimulateArgs {
    /// The broker: `mqtt://[user[:password]@]host[:port]` or `mqtts://…`.
    #[arg(long, env = "FLEETOPS_BROKER", default_value = "mqtt://127.0.0.1:1883")]
    pub broker: String,
    /// TLS material for `mqtts://`.
    #[command(flatten)]
    pub tls: Box<TlsArgs>,
    /// Topic prefix: `fleets` (default), `$aws`, `$emqx` or a custom prefix; must match the
    /// service's.
    #[arg(long, default_value = "fleets")]
    pub topic_prefix: String,
    /// How many devices.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub devices: u32,
    /// Thing names are this prefix and a number: `sim-0000`, `sim-0001`, …
    #[arg(long, default_value = "sim-")]
    pub prefix: String,
    /// Number of the first device.
    #[arg(long, default_value_t = 0)]
    pub first: u32,
    /// What the devices do.
    #[command(flatten)]
    pub behaviour: Box<BehaviourArgs>,
    /// Stop after this long (default: run until Ctrl-C or SIGTERM).
    #[arg(long, value_parser = parse_std_duration)]
    pub duration: Option<Duration>,
    /// Devices that connect at once while starting.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub connect_wave: u32,
}

/// TLS files for `mqtts://` brokers.
#[derive(Debug, Args)]
pub struct TlsArgs {
    /// CA certificate (PEM) that signs the broker's certificate, for `mqtts://`.
    #[arg(long, env = "FLEETOPS_BROKER_CA")]
    pub broker_ca: Option<PathBuf>,
    /// Client certificate (PEM), if the broker asks for one (with --client-key).
    #[arg(long, requires = "client_key")]
    pub client_cert: Option<PathBuf>,
    /// Client private key (PEM), with --client-cert.
    #[arg(long, requires = "client_cert")]
    pub client_key: Option<PathBuf>,
}

/// How simulated devices behave (shared with other subcommands that simulate devices).
#[derive(Debug, Args)]
pub struct BehaviourArgs {
    /// Weight of `SUCCEEDED` answers.
    #[arg(long, default_value_t = 1.0)]
    pub success: f64,
    /// Weight of `FAILED` answers.
    #[arg(long, default_value_t = 0.0)]
    pub failure: f64,
    /// Weight of `REJECTED` answers.
    #[arg(long, default_value_t = 0.0)]
    pub reject: f64,
    /// Weight of no answer: commands time out, jobs stay in progress until their step
    /// timeout (one minute).
    #[arg(long, default_value_t = 0.0)]
    pub silent: f64,
    /// Execution time: fixed (`200ms`) or uniform in a range (`50ms..500ms`).
    #[arg(long, default_value = "50ms..500ms", value_parser = parse_exec_time_arg)]
    pub exec_time: ExecTime,
    /// Chance (0 to 1) that an online device goes offline in each --churn-interval.
    #[arg(long, default_value_t = 0.0)]
    pub churn: f64,
    /// How often each device rolls the churn dice.
    #[arg(long, default_value = "30s", value_parser = parse_std_duration)]
    pub churn_interval: Duration,
    /// How long a churned device stays offline.
    #[arg(long, default_value = "5s", value_parser = parse_std_duration)]
    pub offline_for: Duration,
    /// Seed of every draw.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

/// Why a duration, range or probability given on the command line was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    /// Not a duration like `250ms`, `2s`, `1m`.
    #[error("`{0}` is not a duration (use e.g. 250ms, 2s, 1m)")]
    Duration(String),
    /// A range whose low end is above its high end.
    #[error("range `{0}` ends before it starts")]
    Range(String),
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

/// Parses an execution time: `200ms` (fixed) or `50ms..500ms` (uniform).
pub fn parse_exec_time(s: &str) -> Result<ExecTime, SpecError> {
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

fn parse_exec_time_arg(s: &str) -> Result<ExecTime, String> {
    parse_exec_time(s).map_err(|e| e.to_string())
}

fn parse_std_duration(s: &str) -> Result<Duration, String> {
    parse_duration(s).map_err(|e| e.to_string())
}

/// Everything `simulate` needs, checked.
fn plan(args: &SimulateArgs) -> anyhow::Result<SimConfig> {
    let url = BrokerUrl::parse(&args.broker)?;
    let tls = &args.tls;
    let client = match (&tls.client_cert, &tls.client_key) {
        (Some(c), Some(k)) => Some((c.as_path(), k.as_path())),
        _ => None,
    };
    let broker = url.to_config(tls.broker_ca.as_deref(), client, None)?;
    let b = &args.behaviour;
    let layout = TopicLayout::custom(&args.topic_prefix)
        .with_context(|| format!("--topic-prefix `{}`", args.topic_prefix))?;
    let ratios = Ratios::new(b.success, b.failure, b.reject, b.silent)?;
    if !(0.0..=1.0).contains(&b.churn) {
        return Err(SpecError::Probability(b.churn.to_string()).into());
    }
    let last = u64::from(args.first) + u64::from(args.devices);
    let things = (u64::from(args.first)..last)
        .map(|i| {
            let name = format!("{}{i:04}", args.prefix);
            ThingName::parse(&name).with_context(|| format!("thing name `{name}` (--prefix)"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let behaviour = Arc::new(RandomBehaviour {
        ratios,
        exec_time: b.exec_time,
        seed: b.seed,
    });
    let mut config = SimConfig::new(broker, things, behaviour);
    config.layout = layout;
    config.seed = b.seed;
    config.connect_wave = args.connect_wave as usize;
    config.churn = (b.churn > 0.0).then_some(Churn {
        probability: b.churn,
        interval: b.churn_interval,
        offline: b.offline_for,
    });
    Ok(config)
}

/// Runs `fleetops simulate`.
pub async fn run(args: SimulateArgs) -> anyhow::Result<()> {
    crate::log_errors_to_stderr();
    let config = plan(&args)?;
    let n = config.things.len() as u64;
    println!(
        "fleetops simulate: {n} devices ({} … {}) on {}",
        config.things.first().map(ThingName::as_str).unwrap_or(""),
        config.things.last().map(ThingName::as_str).unwrap_or(""),
        crate::broker_url::redact(&args.broker)
    );
    let tty = std::io::stdout().is_terminal();
    let bars = tty.then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stdout()));
    let bar = |prefix: &'static str, len: Option<u64>| match &bars {
        Some(m) => {
            let b = m.add(match len {
                Some(l) => ProgressBar::new(l),
                None => ProgressBar::no_length(),
            });
            let template = if len.is_some() {
                "{prefix:>9} [{bar:30.cyan/blue}] {pos}/{len} {msg}"
            } else {
                "{prefix:>9} {pos} {msg}"
            };
            b.set_style(
                ProgressStyle::with_template(template)
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> "),
            );
            b.set_prefix(prefix);
            b
        }
        None => ProgressBar::hidden(),
    };
    let online = bar("online", Some(n));
    let started = Instant::now();
    let sim = Simulation::start_with_progress(config, |c| online.set_position(c as u64)).await?;
    println!(
        "{n} devices connected in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let commands = bar("commands", None);
    let jobs = bar("jobs", None);
    let stats = Arc::clone(sim.stats());
    let conns = Arc::clone(sim.connections());
    let stop = stop_signal(args.duration);
    tokio::pin!(stop);
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let mut last_line = Instant::now();
    loop {
        tokio::select! {
            reason = &mut stop => {
                println!("stopping ({reason}): {}", line(&stats, &conns));
                break;
            }
            _ = tick.tick() => {
                online.set_position(conns.online.load(Ordering::Relaxed));
                online.set_message(format!(
                    "churned {}",
                    conns.churned.load(Ordering::Relaxed)
                ));
                commands.set_position(stats.commands_answered());
                commands.set_message(command_line(&stats));
                jobs.set_position(stats.jobs_done());
                jobs.set_message(job_line(&stats));
                if !tty && last_line.elapsed() >= Duration::from_secs(5) {
                    last_line = Instant::now();
                    println!("{}", line(&stats, &conns));
                }
            }
        }
    }
    sim.stop().await;
    Ok(())
}

fn command_line(s: &Stats) -> String {
    format!(
        "answered (succeeded {}, failed {}, rejected {}), left silent {}",
        s.commands_succeeded.load(Ordering::Relaxed),
        s.commands_failed.load(Ordering::Relaxed),
        s.commands_rejected.load(Ordering::Relaxed),
        s.commands_silent.load(Ordering::Relaxed),
    )
}

fn job_line(s: &Stats) -> String {
    format!(
        "done (succeeded {}, failed {}, rejected {}), stalled {}, errors {}",
        s.jobs_succeeded.load(Ordering::Relaxed),
        s.jobs_failed.load(Ordering::Relaxed),
        s.jobs_rejected.load(Ordering::Relaxed),
        s.jobs_stalled.load(Ordering::Relaxed),
        s.errors.load(Ordering::Relaxed),
    )
}

fn line(s: &Stats, c: &Connections) -> String {
    format!(
        "online {} (churned {}); commands {}; jobs {}",
        c.online.load(Ordering::Relaxed),
        c.churned.load(Ordering::Relaxed),
        command_line(s),
        job_line(s)
    )
}

/// Resolves with the reason to stop: Ctrl-C, SIGTERM or the end of `duration`.
async fn stop_signal(duration: Option<Duration>) -> &'static str {
    let timer = async {
        match duration {
            Some(d) => tokio::time::sleep(d).await,
            None => futures::future::pending().await,
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => futures::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let term = futures::future::pending::<()>();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => "Ctrl-C",
        () = term => "SIGTERM",
        () = timer => "--duration reached",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: SimulateArgs,
    }

    fn parse(argv: &[&str]) -> Result<SimulateArgs, String> {
        Cli::try_parse_from(std::iter::once("simulate").chain(argv.iter().copied()))
            .map(|c| c.args)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn durations_and_ranges_parse_or_say_why_not() {
        let ms = Duration::from_millis;
        assert_eq!(parse_duration("250ms"), Ok(ms(250)));
        assert_eq!(parse_duration("1.5s"), Ok(ms(1500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("40"), Ok(ms(40)));
        for bad in ["", "x", "-1s", "NaNs", "1h", "9999999m"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
        assert_eq!(
            parse_exec_time("50ms..500ms"),
            Ok(ExecTime::Uniform {
                low: ms(50),
                high: ms(500)
            })
        );
        assert_eq!(
            parse_exec_time("1s..10ms"),
            Err(SpecError::Range("1s..10ms".into()))
        );
    }

    #[test]
    fn arguments_are_checked_at_the_boundary() {
        let a = parse(&["--devices", "3", "--prefix", "x-", "--first", "9"]).unwrap();
        let c = plan(&a).unwrap();
        let names: Vec<&str> = c.things.iter().map(ThingName::as_str).collect();
        assert_eq!(names, ["x-0009", "x-0010", "x-0011"]);
        assert!(parse(&["--exec-time", "5s..1s"])
            .unwrap_err()
            .contains("ends before"));
        assert!(parse(&["--devices", "0"]).is_err());
        let bad_url = parse(&["--broker", "http://h"]).unwrap();
        assert!(plan(&bad_url).unwrap_err().to_string().contains("mqtt://"));
        let zero = parse(&["--success", "0"]).unwrap();
        assert!(plan(&zero)
            .unwrap_err()
            .to_string()
            .contains("at least one"));
        let churn = parse(&["--churn", "1.5"]).unwrap();
        assert!(plan(&churn)
            .unwrap_err()
            .to_string()
            .contains("between 0 and 1"));
        let prefix = parse(&["--prefix", "a/b"]).unwrap();
        assert!(plan(&prefix).unwrap_err().to_string().contains("--prefix"));
        let topic = parse(&["--topic-prefix", "a/+"]).unwrap();
        assert!(plan(&topic)
            .unwrap_err()
            .to_string()
            .contains("--topic-prefix"));
    }
}
