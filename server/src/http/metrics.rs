//! `GET /metrics`: the runtime's and the adapters' figures in the OpenMetrics text format
//! (which Prometheus scrapes), encoded by the `prometheus-client` crate from a snapshot taken
//! at each scrape: nothing is formatted by hand, and nothing is kept between scrapes.

use std::sync::Arc;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Extension;
use fleetops_core::link::DeviceLink;
use fleetops_core::EventStore;
use fleetops_service::{FleetMetrics, HistogramSnapshot};
use fleetops_transport_mqtt::LinkStats;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use super::events::EventHub;
use super::{ApiError, ApiState};

/// The content type of the OpenMetrics text format.
const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Figures of the adapters, which the runtime does not see: the MQTT link and the store.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AdapterFigures {
    /// Whether the broker connection is up.
    pub link_up: bool,
    /// The MQTT link's counters (`None` for an in-process link).
    pub link: Option<LinkStats>,
    /// The store's group commit (`None` for a store that does not count it).
    pub store: Option<StoreFigures>,
}

/// What a store's group commit has done since it opened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreFigures {
    /// Transactions (or batches) written, each holding one or more appends.
    pub groups: u64,
    /// Appends handled.
    pub appends: u64,
    /// Events stored.
    pub events: u64,
    /// The most appends one group held, where the store tracks it.
    pub largest_group: Option<u64>,
}

/// The snapshot a scrape encodes.
#[derive(Debug)]
struct Scrape {
    fleet: FleetMetrics,
    adapters: AdapterFigures,
    /// Event stream clients connected now, and dropped for lagging since the start.
    events: (u64, u64),
}

pub(super) async fn metrics<S: EventStore, L: DeviceLink>(
    State(app): State<ApiState<S, L>>,
    Extension(hub): Extension<Arc<EventHub>>,
) -> Response {
    let scrape = Scrape {
        fleet: app.fleet.metrics(),
        adapters: (app.adapters)(),
        events: (hub.clients() as u64, hub.slow_disconnects()),
    };
    let mut registry = Registry::default();
    registry.register_collector(Box::new(scrape));
    let mut body = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut body, &registry) {
        return ApiError::new(
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            "InternalError",
            format!("cannot encode the metrics: {e}"),
        )
        .into_response();
    }
    ([(header::CONTENT_TYPE, CONTENT_TYPE)], body).into_response()
}

/// One labelled sample.
type Labelled<'a> = ([(&'static str, &'a str); 1], u64);

fn gauges(
    enc: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    samples: &[Labelled<'_>],
) -> std::fmt::Result {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, v) in samples {
        m.encode_family(labels)?.encode_gauge(v)?;
    }
    Ok(())
}

fn gauge(enc: &mut DescriptorEncoder<'_>, name: &str, help: &str, v: u64) -> std::fmt::Result {
    enc.encode_descriptor(name, help, None, MetricType::Gauge)?
        .encode_gauge(&v)
}

fn counter(enc: &mut DescriptorEncoder<'_>, name: &str, help: &str, v: u64) -> std::fmt::Result {
    enc.encode_descriptor(name, help, None, MetricType::Counter)?
        .encode_counter::<NoLabelSet, _, u64>(&v, None)
}

fn histogram(
    enc: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    h: &HistogramSnapshot,
) -> std::fmt::Result {
    enc.encode_descriptor(name, help, None, MetricType::Histogram)?
        .encode_histogram::<NoLabelSet>(h.sum, h.count, &non_cumulative(&h.buckets), None)
}

/// prometheus-client takes each bucket's own count and sums them itself, and writes `+Inf`
/// for a bound of `f64::MAX`; the snapshot is cumulative and ends at `f64::INFINITY`.
fn non_cumulative(buckets: &[(f64, u64)]) -> Vec<(f64, u64)> {
    let mut below = 0;
    buckets
        .iter()
        .map(|(bound, cumulative)| {
            let own = cumulative.saturating_sub(below);
            below = *cumulative;
            let bound = if bound.is_infinite() {
                f64::MAX
            } else {
                *bound
            };
            (bound, own)
        })
        .collect()
}

impl Collector for Scrape {
    fn encode(&self, mut enc: DescriptorEncoder<'_>) -> std::fmt::Result {
        let f = &self.fleet;
        let by_status: Vec<Labelled<'_>> = f
            .executions_by_status
            .iter()
            .map(|(s, n)| ([("status", s.as_str())], *n))
            .collect();
        gauges(
            &mut enc,
            "fleetops_job_executions",
            "Job executions by current status.",
            &by_status,
        )?;
        let jobs: Vec<Labelled<'_>> = f
            .jobs_by_status
            .iter()
            .map(|(s, n)| ([("status", s.as_str())], *n))
            .collect();
        gauges(&mut enc, "fleetops_jobs", "Jobs by status.", &jobs)?;
        let commands: Vec<Labelled<'_>> = f
            .commands_by_status
            .iter()
            .map(|(s, n)| ([("status", s.as_str())], *n))
            .collect();
        gauges(
            &mut enc,
            "fleetops_command_executions",
            "Command executions by current status.",
            &commands,
        )?;
        {
            let mut m = enc.encode_descriptor(
                "fleetops_device_requests",
                "Device requests answered, by operation and result.",
                None,
                MetricType::Counter,
            )?;
            for (op, result, n) in &f.device_requests {
                m.encode_family(&[("operation", *op), ("result", *result)])?
                    .encode_counter::<NoLabelSet, _, u64>(n, None)?;
            }
        }
        {
            let mut m = enc.encode_descriptor(
                "fleetops_device_refusals",
                "Device requests refused by the runtime, by error code.",
                None,
                MetricType::Counter,
            )?;
            for (code, n) in &f.refusals {
                m.encode_family(&[("code", code.as_str())])?
                    .encode_counter::<NoLabelSet, _, u64>(n, None)?;
            }
        }
        histogram(
            &mut enc,
            "fleetops_command_seconds",
            "Time from sending a command to its terminal status, as folded here.",
            &f.command_seconds,
        )?;
        gauge(
            &mut enc,
            "fleetops_outbox_backlog",
            "Messages owed to devices and not sent yet.",
            f.outbox_backlog,
        )?;
        counter(
            &mut enc,
            "fleetops_outbox_undeliverable",
            "Messages to devices that could never be delivered.",
            f.undeliverable,
        )?;
        counter(
            &mut enc,
            "fleetops_outbox_given_up",
            "Messages whose delivery kept failing and was left to recovery.",
            f.given_up,
        )?;
        histogram(
            &mut enc,
            "fleetops_store_append_seconds",
            "Store append latency, from the call to the store's answer.",
            &f.append_seconds,
        )?;
        counter(
            &mut enc,
            "fleetops_store_append_failures",
            "Store appends that failed (version conflicts excluded).",
            f.append_failures,
        )?;
        gauge(
            &mut enc,
            "fleetops_checkpoint",
            "The global feed position the read model has folded.",
            f.checkpoint,
        )?;
        gauge(
            &mut enc,
            "fleetops_leading",
            "1 while this instance does the fleet-wide duties (timers, rollouts, outbox).",
            u64::from(f.leading),
        )?;
        let a = &self.adapters;
        gauge(
            &mut enc,
            "fleetops_mqtt_connected",
            "1 while the broker connection is up.",
            u64::from(a.link_up),
        )?;
        if let Some(link) = &a.link {
            counter(
                &mut enc,
                "fleetops_mqtt_connects",
                "Connections the broker accepted; more than one means reconnects.",
                link.connects,
            )?;
            let mut m = enc.encode_descriptor(
                "fleetops_mqtt_inbound_dropped",
                "Inbound messages not handed to the runtime, by reason.",
                None,
                MetricType::Counter,
            )?;
            for (reason, n) in [
                ("qos0_overflow", link.qos0_dropped),
                ("malformed", link.refused),
                ("topic_too_long", link.topic_too_long),
            ] {
                m.encode_family(&[("reason", reason)])?
                    .encode_counter::<NoLabelSet, _, u64>(&n, None)?;
            }
        }
        gauge(
            &mut enc,
            "fleetops_event_clients",
            "Clients of GET /api/v1/events connected now.",
            self.events.0,
        )?;
        counter(
            &mut enc,
            "fleetops_event_clients_dropped",
            "Event stream clients disconnected for falling a whole buffer behind.",
            self.events.1,
        )?;
        if let Some(store) = &a.store {
            counter(
                &mut enc,
                "fleetops_store_groups",
                "Group commits written (each holds one or more appends).",
                store.groups,
            )?;
            counter(
                &mut enc,
                "fleetops_store_grouped_appends",
                "Appends the group commits held (divide by groups for the mean group size).",
                store.appends,
            )?;
            counter(
                &mut enc,
                "fleetops_store_events",
                "Events stored.",
                store.events,
            )?;
            if let Some(largest) = store.largest_group {
                gauge(
                    &mut enc,
                    "fleetops_store_largest_group",
                    "The most appends one group commit held.",
                    largest,
                )?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_go_back_to_their_own_counts() {
        assert_eq!(
            non_cumulative(&[(0.1, 2), (1.0, 5), (f64::INFINITY, 5)]),
            vec![(0.1, 2), (1.0, 3), (f64::MAX, 0)]
        );
    }
}
