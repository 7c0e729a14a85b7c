//! Helpers shared by the integration tests.

#![allow(dead_code)] // each test binary uses a different subset

use fleetops_core::event::Event;
use fleetops_core::ids::StreamId;
use fleetops_core::store::{EventStore, NewEvent, StoredEvent};
use fleetops_core::time::Timestamp;
use fleetops_store_postgres::testing::TestPostgres;
use tokio_postgres::{Client, NoTls};
use uuid::Uuid;

/// A custom stream `x/{name}`.
pub fn stream(name: &str) -> StreamId {
    StreamId::custom(name).expect("valid stream name")
}

/// An event whose payload carries `tag`, with an id derived from `n`.
pub fn event(n: u128, tag: &str) -> NewEvent {
    let at = Timestamp::from_millis(1_700_000_000_000 + n as u64);
    let mut e = NewEvent::new(
        Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_0000 | n),
        Event::CommandCanceled {
            at,
            reason: Some(tag.to_owned()),
        },
        at,
    );
    e.correlation_id = Some(Uuid::from_u128(n));
    e
}

/// The tag an [`event`] carries.
pub fn tag(e: &StoredEvent) -> Option<&str> {
    match &e.event {
        Event::CommandCanceled { reason, .. } => reason.as_deref(),
        _ => None,
    }
}

/// The whole feed, read in pages.
pub async fn read_feed<S: EventStore>(store: &S) -> Vec<StoredEvent> {
    let mut out = Vec::new();
    loop {
        let page = store
            .read_all(out.len() as u64 + 1, 1000)
            .await
            .expect("read_all");
        if page.is_empty() {
            return out;
        }
        out.extend(page);
    }
}

/// A plain session on the test server, to look at or damage the tables behind the store.
pub async fn admin(pg: &TestPostgres) -> Client {
    let (client, connection) = tokio_postgres::connect(&pg.url(), NoTls)
        .await
        .expect("connect to the test server");
    tokio::spawn(connection);
    client
}
