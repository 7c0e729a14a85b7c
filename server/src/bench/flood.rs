//! The flood scenario: does one noisy device delay the others?
//!
//! One fleet, one quiet device that answers commands (as in the commands scenario) and one
//! noisy device: a raw MQTT 5 client that publishes `--flood-messages` malformed requests
//! (a truncated JSON object on its own `jobs/get` topic, which the service refuses with a
//! `rejected` reply) as fast as the broker takes them, at QoS 0 and at QoS 1. Meanwhile the
//! quiet device's command round trips are measured one after another, and compared with the
//! same device's round trips without the flood, measured on the same fleet just before.
//!
//! A round trip counts as "during the flood" if it started before the service's last reply
//! to the noisy device arrived: the flood lasts as long as the service is busy with it, which
//! can be well after the noisy client finished publishing.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::ValueEnum;
use fleetops_core::device::Operation;
use fleetops_core::ThingName;
use fleetops_transport_mqtt::codec::TopicLayout;
use fleetops_transport_mqtt::BrokerConfig;
use rumqttc::v5::mqttbytes::QoS;
use serde::Serialize;

use super::fleetops::Commands;
use super::raw::{self, Knobs};
use super::stats::Latency;
use super::Progress;

/// Which flood variants to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FloodQos {
    /// At most once: nothing slows the noisy publisher down but TCP.
    Zero,
    /// At least once: the noisy publisher waits for PUBACKs (window of 1,024).
    One,
    /// Both, QoS 0 first.
    Both,
}

impl FloodQos {
    /// The variants to run, in order.
    pub fn levels(self) -> Vec<QoS> {
        match self {
            Self::Zero => vec![QoS::AtMostOnce],
            Self::One => vec![QoS::AtLeastOnce],
            Self::Both => vec![QoS::AtMostOnce, QoS::AtLeastOnce],
        }
    }
}

/// The noisy device's message: not JSON (an object cut short), as a broken or hostile
/// firmware would send.
pub const MALFORMED: &[u8] = b"{\"clientToken\": \"flood\", \"statusDetails\": {\"progress\": ";

/// The noisy client: as large a window as a device can ask for.
const NOISY: Knobs = Knobs {
    inflight: 1024,
    receive_maximum: 1024,
    channel: 4096,
};

/// One flood and what the quiet device saw meanwhile.
#[derive(Debug, Clone, Serialize)]
pub struct FloodSide {
    /// 0 or 1.
    pub qos: u8,
    /// The quiet device's round trips that started during the flood.
    pub during: Latency,
    /// From the first noisy publish to the service's last reply to the noisy device, s.
    pub flood_secs: f64,
    /// How long the noisy client took to hand all its messages to the broker, s.
    pub publish_secs: f64,
    /// `rejected` replies the noisy device received (fewer than sent: QoS 0 messages may be
    /// dropped on the way, counted by the service).
    pub replies: u64,
}

/// One run of the flood scenario.
#[derive(Debug, Clone, Serialize)]
pub struct FloodRun {
    /// The quiet device's round trips without a flood.
    pub quiet: Latency,
    /// Each flood variant.
    pub floods: Vec<FloodSide>,
}

/// A noisy device's flood, measured from the first publish to the last reply.
struct Flood {
    replies: Arc<AtomicU64>,
    last_reply: Arc<Mutex<Option<Instant>>>,
    client: raw::RawClient,
    topic: String,
}

impl Flood {
    async fn connect(broker: &BrokerConfig, prefix: &str, tag: &str) -> anyhow::Result<Self> {
        let layout = TopicLayout::custom(prefix).context("the bench's topic prefix")?;
        let thing = ThingName::parse("bench-noisy")?;
        let topic = layout.request_topic(&thing, &Operation::GetPending);
        let replies = Arc::new(AtomicU64::new(0));
        let last_reply = Arc::new(Mutex::new(None));
        let on_publish = {
            let (replies, last_reply) = (Arc::clone(&replies), Arc::clone(&last_reply));
            Box::new(
                move |_p: rumqttc::v5::mqttbytes::v5::Publish, _c: &rumqttc::v5::AsyncClient| {
                    replies.fetch_add(1, Ordering::Relaxed);
                    if let Ok(mut t) = last_reply.lock() {
                        *t = Some(Instant::now());
                    }
                },
            )
        };
        let client = raw::connect(
            broker,
            &format!("bench-noisy-{tag}"),
            NOISY,
            // Its replies only: a filter over its own request topic would count those too.
            vec![layout.reply_topic(&thing, &Operation::GetPending, false)],
            on_publish,
        )
        .await?;
        Ok(Self {
            replies,
            last_reply,
            client,
            topic,
        })
    }

    /// Publishes `n` malformed messages at `qos`; returns how long handing them over took.
    async fn publish(&self, n: u64, qos: QoS, progress: &Progress) -> anyhow::Result<Duration> {
        let t0 = Instant::now();
        for i in 0..n {
            self.client
                .client
                .publish(self.topic.clone(), qos, false, MALFORMED.to_vec())
                .await
                .context("the noisy client's connection")?;
            if i % 256 == 0 {
                // Let the poll task write what is queued: publish only fills a channel.
                tokio::task::yield_now().await;
            }
        }
        progress.inc(n);
        Ok(t0.elapsed())
    }

    /// Waits until the replies stop coming for `quiet_for` (or reach `n`); returns the
    /// instant of the last one.
    async fn settle(&self, n: u64, quiet_for: Duration, limit: Duration) -> Option<Instant> {
        let deadline = Instant::now() + limit;
        let mut seen = self.replies.load(Ordering::Relaxed);
        let mut since = Instant::now();
        loop {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let now = self.replies.load(Ordering::Relaxed);
            if now != seen {
                (seen, since) = (now, Instant::now());
            }
            if now >= n || since.elapsed() >= quiet_for || Instant::now() > deadline {
                return self.last_reply.lock().ok().and_then(|t| *t);
            }
        }
    }
}

/// One run: quiet round trips, then each flood variant with round trips alongside.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    cmds: &Commands,
    broker: &BrokerConfig,
    prefix: &str,
    tag: &str,
    round_trips: usize,
    messages: u64,
    levels: &[QoS],
    limit: Duration,
    progress: &Progress,
) -> anyhow::Result<FloodRun> {
    cmds.run(200.min(round_trips), 1, limit, progress).await?;
    let quiet = cmds.run(round_trips, 1, limit, progress).await?;
    let mut floods = Vec::new();
    for (i, &qos) in levels.iter().enumerate() {
        let flood = Flood::connect(broker, prefix, &format!("{tag}-{i}")).await?;
        // The quiet device keeps sending commands, one at a time, until told to stop.
        let stop = Arc::new(AtomicBool::new(false));
        let samples = {
            let stop = Arc::clone(&stop);
            cmds.run_until(stop, limit)
        };
        let flooding = async {
            // A few quiet round trips first, so the flood meets a fleet at work.
            tokio::time::sleep(Duration::from_millis(50)).await;
            let started = Instant::now();
            let publish = flood.publish(messages, qos, progress).await?;
            let last = flood
                .settle(messages, Duration::from_secs(1), limit)
                .await
                .unwrap_or(started + publish);
            stop.store(true, Ordering::Relaxed);
            anyhow::Ok((started, publish, last))
        };
        let (samples, flooded) = tokio::join!(samples, flooding);
        let (started, publish, last) = flooded?;
        let during: Vec<Duration> = samples?
            .into_iter()
            .filter(|(t0, _)| *t0 >= started && *t0 <= last)
            .map(|(_, d)| d)
            .collect();
        let window = last.saturating_duration_since(started);
        floods.push(FloodSide {
            qos: if qos == QoS::AtMostOnce { 0 } else { 1 },
            during: Latency::from_samples(during, window),
            flood_secs: window.as_secs_f64(),
            publish_secs: publish.as_secs_f64(),
            replies: flood.replies.load(Ordering::Relaxed),
        });
        drop(flood);
        // Let the broker and the service finish with the noisy client's leftovers.
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Ok(FloodRun { quiet, floods })
}
