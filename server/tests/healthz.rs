//! `/healthz` follows the runtime's health: 200 while it serves, 503 (and writes 503 at
//! once) while its store fails, 200 again once the store is back.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use fleetops_core::store::{
    AppendBatch, Appended, EventStore, Snapshot, StoreError, StoredEvent, Subscription,
};
use fleetops_core::StreamId;
use fleetops_server::config::Auth;
use fleetops_server::http::{router, ApiState};
use fleetops_service::link::ChannelLink;
use fleetops_service::{Fleet, FleetConfig};
use fleetops_store_sled::{SledConfig, SledStore};
use serde_json::{json, Value};
use tokio::sync::watch;

/// A `SledStore` that can be told to fail every call, as one whose disk went away.
#[derive(Clone)]
struct Flaky {
    inner: SledStore,
    failing: watch::Sender<bool>,
}

impl Flaky {
    fn check(&self) -> Result<(), StoreError> {
        if *self.failing.borrow() {
            return Err(StoreError::Backend {
                detail: "disk gone".into(),
            });
        }
        Ok(())
    }
}

struct FlakySub {
    inner: Box<dyn Subscription>,
    failing: watch::Receiver<bool>,
}

#[async_trait]
impl Subscription for FlakySub {
    async fn next(&mut self) -> Result<StoredEvent, StoreError> {
        let failed = || StoreError::Backend {
            detail: "disk gone".into(),
        };
        if *self.failing.borrow_and_update() {
            return Err(failed());
        }
        tokio::select! {
            e = self.inner.next() => e,
            _ = self.failing.wait_for(|f| *f) => Err(failed()),
        }
    }
}

#[async_trait]
impl EventStore for Flaky {
    async fn append(&self, batch: AppendBatch) -> Result<Appended, StoreError> {
        self.check()?;
        self.inner.append(batch).await
    }
    async fn read_stream(
        &self,
        stream: &StreamId,
        from: u64,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        self.check()?;
        self.inner.read_stream(stream, from, limit).await
    }
    async fn stream_version(&self, stream: &StreamId) -> Result<Option<u64>, StoreError> {
        self.check()?;
        self.inner.stream_version(stream).await
    }
    async fn read_all(&self, from: u64, limit: usize) -> Result<Vec<StoredEvent>, StoreError> {
        self.check()?;
        self.inner.read_all(from, limit).await
    }
    async fn head_position(&self) -> Result<u64, StoreError> {
        self.check()?;
        self.inner.head_position().await
    }
    async fn subscribe(&self, from: u64) -> Result<Box<dyn Subscription>, StoreError> {
        self.check()?;
        Ok(Box::new(FlakySub {
            inner: self.inner.subscribe(from).await?,
            failing: self.failing.subscribe(),
        }))
    }
    async fn load_snapshot(&self, name: &str) -> Result<Option<Snapshot>, StoreError> {
        self.inner.load_snapshot(name).await
    }
    async fn save_snapshot(&self, name: &str, snapshot: Snapshot) -> Result<(), StoreError> {
        self.inner.save_snapshot(name, snapshot).await
    }
}

async fn get(client: &reqwest::Client, url: &str) -> (u16, Value) {
    let r = client.get(url).send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

async fn until(client: &reqwest::Client, url: &str, want: u16) -> Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (status, body) = get(client, url).await;
        if status == want {
            return body;
        }
        assert!(Instant::now() < deadline, "{url} still {status}: {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_is_503_and_writes_fail_fast_while_the_store_fails() {
    let dir = tempfile::tempdir().unwrap();
    let store = Flaky {
        inner: SledStore::open_async(SledConfig::new(dir.path()))
            .await
            .unwrap(),
        failing: watch::Sender::new(false),
    };
    let (link, _devices) = ChannelLink::pair(64);
    let fleet = Fleet::builder(store.clone(), link)
        .config(FleetConfig {
            apply_timeout: Duration::from_secs(2),
            ..FleetConfig::default()
        })
        .start()
        .await
        .unwrap();
    let (_stop, stopping) = watch::channel(false);
    let state = ApiState {
        fleet: Arc::new(fleet),
        link_up: Arc::new(|| true),
        stopping,
    };
    let app = router(state, Auth::Disabled, 1 << 20);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let client = reqwest::Client::new();
    let health = format!("{base}/healthz");

    let ok = until(&client, &health, 200).await;
    assert_eq!(ok["status"], "ok", "{ok}");

    store.failing.send_replace(true);
    let down = until(&client, &health, 503).await;
    assert!(
        down["message"].as_str().unwrap_or("").contains("disk gone"),
        "{down}"
    );
    // A write is refused at once with 503, not left hanging.
    let started = Instant::now();
    let r = client
        .post(format!("{base}/api/v1/jobs"))
        .json(&json!({"jobId": "j1", "targets": {"thingNames": ["t1"]}, "document": {}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 503);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );

    store.failing.send_replace(false);
    until(&client, &health, 200).await;
    let r = client
        .post(format!("{base}/api/v1/jobs"))
        .json(&json!({"jobId": "j2", "targets": {"thingNames": ["t1"]}, "document": {}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 201, "{:?}", r.text().await);
}
