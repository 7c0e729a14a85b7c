//! An example device built on `DeviceClient`.
//!
//! ```text
//! cargo run -p fleetops-transport-mqtt --example device -- \
//!     --host 127.0.0.1 --port 1883 --thing sensor-1 [--prefix fleets|$aws|$emqx|…]
//! ```
//!
//! It answers commands (`echo` returns its parameters, `reboot` succeeds, anything else is
//! rejected) and works through its jobs: on connect and on every `notify-next` it starts the
//! next pending job, reports progress with `expectedVersion`, and marks it `SUCCEEDED`.

use std::sync::Arc;
use std::time::Duration;

use fleetops_core::device::{CommandResponse, StartNextRequest, StepTimeout, UpdateRequest};
use fleetops_core::ids::{StatusDetailKey, ThingName};
use fleetops_core::status::{CommandStatus, JobExecutionStatus};
use fleetops_transport_mqtt::codec::{CommandRequest, TopicLayout};
use fleetops_transport_mqtt::{
    BrokerConfig, CommandHandler, DeviceClient, DeviceConfig, DeviceEvent, Error,
};

struct Args {
    host: String,
    port: u16,
    thing: ThingName,
    layout: TopicLayout,
}

fn args() -> Result<Args, String> {
    let mut host = "127.0.0.1".to_owned();
    let mut port = 1883;
    let mut thing = None;
    let mut layout = TopicLayout::default();
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or(format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--host" => host = value,
            "--port" => port = value.parse().map_err(|e| format!("--port: {e}"))?,
            "--thing" => thing = Some(ThingName::parse(&value).map_err(|e| e.to_string())?),
            "--prefix" => {
                layout = TopicLayout::custom(&value).map_err(|e| format!("--prefix: {e}"))?
            }
            other => return Err(format!("unknown flag {other}")),
        }
    }
    Ok(Args {
        host,
        port,
        thing: thing.ok_or("--thing is required")?,
        layout,
    })
}

fn handler() -> Arc<dyn CommandHandler> {
    Arc::new(|c: CommandRequest| async move {
        println!("command {} {}: {}", c.execution_id, c.action, c.params);
        match c.action.as_str() {
            "echo" => CommandResponse {
                status: CommandStatus::Succeeded,
                result: Some(c.params),
                status_reason: None,
            },
            "reboot" => CommandResponse {
                status: CommandStatus::Succeeded,
                result: None,
                status_reason: Some("rebooting".into()),
            },
            other => CommandResponse {
                status: CommandStatus::Rejected,
                result: None,
                status_reason: Some(format!("unknown action {other}")),
            },
        }
    })
}

/// Runs every pending job to completion, one after another.
async fn work(device: &DeviceClient) -> Result<(), Error> {
    let key = |k: &str| StatusDetailKey::parse(k).expect("a valid key");
    while let Some(job) = device
        .start_next(StartNextRequest {
            status_details: None,
            step_timeout: StepTimeout::Minutes(10),
        })
        .await?
    {
        println!(
            "job {} v{}: {}",
            job.job_id,
            job.version_number,
            job.job_document.clone().unwrap_or_default()
        );
        let mut version = job.version_number;
        for step in ["download", "verify", "install"] {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let state = device
                .update(
                    job.job_id.clone(),
                    UpdateRequest {
                        status: Some(JobExecutionStatus::InProgress),
                        status_details: Some([(key("step"), step.to_owned())].into()),
                        expected_version: Some(version),
                        include_job_execution_state: true,
                        ..UpdateRequest::default()
                    },
                )
                .await?
                .execution_state;
            version = state.map_or(version + 1, |s| s.version_number);
        }
        device
            .update(
                job.job_id.clone(),
                UpdateRequest {
                    status: Some(JobExecutionStatus::Succeeded),
                    expected_version: Some(version),
                    ..UpdateRequest::default()
                },
            )
            .await?;
        println!("job {} succeeded", job.job_id);
    }
    Ok(())
}

#[tokio::main]
async fn main() {
    let args = match args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}\nusage: device --thing NAME [--host H] [--port P] [--prefix P]");
            std::process::exit(2);
        }
    };
    let mut config = DeviceConfig::new(BrokerConfig::new(args.host, args.port), args.thing);
    config.layout = args.layout;
    let (device, mut events) = match DeviceClient::connect(config, Some(handler())).await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("cannot connect: {e}");
            std::process::exit(1);
        }
    };
    println!("connected as {}", device.thing());
    while let Some(event) = events.next().await {
        match event {
            DeviceEvent::Pending(jobs) => {
                println!(
                    "{} in progress, {} queued",
                    jobs.in_progress.len(),
                    jobs.queued.len()
                );
                if let Err(e) = work(&device).await {
                    eprintln!("job work stopped: {e}");
                }
            }
            DeviceEvent::NotifyNext {
                execution: Some(_), ..
            } => {
                if let Err(e) = work(&device).await {
                    eprintln!("job work stopped: {e}");
                }
            }
            DeviceEvent::Disconnected { reason } => println!("disconnected: {reason}"),
            other => println!("{other:?}"),
        }
    }
}
