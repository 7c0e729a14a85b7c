//! Bare MQTT clients, for publishes the SDK would never send and for watching the wire.

use std::time::Duration;

use fleetops_transport_mqtt::testing::TestBroker;
use rumqttc::v5::mqttbytes::v5::{Filter, Packet, PubAckReason, Publish, SubscribeReasonCode};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use serde_json::Value;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::timeout;

use super::WAIT;

/// A bare rumqttc client, for publishes the SDK would never send.
pub struct Raw {
    pub client: AsyncClient,
    events: mpsc::UnboundedReceiver<Packet>,
    task: JoinHandle<()>,
}

impl Drop for Raw {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub async fn raw(broker: &TestBroker, client_id: &str, service_account: bool) -> Raw {
    let mut o = MqttOptions::new(client_id, "127.0.0.1", broker.port());
    o.set_max_packet_size(Some(1024 * 1024));
    if service_account {
        let c = broker.service_config().credentials.unwrap();
        o.set_credentials(c.username, c.password);
    }
    let (client, mut eventloop) = AsyncClient::new(o, 64);
    let (tx, rx) = mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(p)) => {
                    let _ = tx.send(p);
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    });
    let mut r = Raw {
        client,
        events: rx,
        task,
    };
    r.expect(|p| matches!(p, Packet::ConnAck(_)).then_some(()))
        .await;
    r
}

impl Raw {
    async fn expect<T>(&mut self, mut pick: impl FnMut(Packet) -> Option<T>) -> T {
        timeout(WAIT, async {
            loop {
                if let Some(t) = pick(self.events.recv().await.expect("raw client alive")) {
                    return t;
                }
            }
        })
        .await
        .expect("expected packet did not come")
    }

    pub async fn subscribe(&mut self, filter: &str) -> SubscribeReasonCode {
        self.client
            .subscribe_many([Filter::new(filter, QoS::AtLeastOnce)])
            .await
            .unwrap();
        self.expect(|p| match p {
            Packet::SubAck(a) => Some(a.return_codes[0]),
            _ => None,
        })
        .await
    }

    pub async fn publish(&mut self, topic: &str, payload: impl Into<Vec<u8>>) -> PubAckReason {
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload.into())
            .await
            .unwrap();
        self.expect(|p| match p {
            Packet::PubAck(a) => Some(a.reason),
            _ => None,
        })
        .await
    }

    pub async fn message(&mut self, topic: &str) -> Publish {
        self.expect(|p| match p {
            Packet::Publish(p) if p.topic == topic.as_bytes() => Some(p),
            _ => None,
        })
        .await
    }

    pub async fn silent_for(&mut self, d: Duration) -> Vec<Publish> {
        let mut got = vec![];
        let _ = timeout(d, async {
            while let Some(p) = self.events.recv().await {
                if let Packet::Publish(p) = p {
                    got.push(p);
                }
            }
        })
        .await;
        got
    }
}

pub fn body(p: &Publish) -> Value {
    serde_json::from_slice(&p.payload).expect("JSON payload")
}
