//! `/healthz` follows the runtime's health: 200 while it serves, 503 (and writes 503 at
//! once) while its store fails, 200 again once the store is back.

use std::sync::Arc;
use std::time::{Duration, Instant};

use fleetops_core::testkit::FaultyStore;
use fleetops_server::config::Auth;
use fleetops_server::http::{router, ApiState};
use fleetops_service::link::ChannelLink;
use fleetops_service::{Fleet, FleetConfig};
use fleetops_store_sled::{SledConfig, SledStore};
use serde_json::{json, Value};
use tokio::sync::watch;

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
    // A `SledStore` that can be told to fail every call, as one whose disk went away.
    let store = FaultyStore::new(
        SledStore::open_async(SledConfig::new(dir.path()))
            .await
            .unwrap(),
    );
    let faults = store.handle();
    let (link, _devices) = ChannelLink::pair(64);
    let fleet = Fleet::builder(store, link)
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
        adapters: Arc::new(Default::default),
    };
    let app = router(state, Auth::Disabled, 1 << 20);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let client = reqwest::Client::new();
    let health = format!("{base}/healthz");

    let ok = until(&client, &health, 200).await;
    assert_eq!(ok["status"], "ok", "{ok}");

    faults.fail();
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

    faults.heal();
    until(&client, &health, 200).await;
    let r = client
        .post(format!("{base}/api/v1/jobs"))
        .json(&json!({"jobId": "j2", "targets": {"thingNames": ["t1"]}, "document": {}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 201, "{:?}", r.text().await);
}
