//! Two runtimes on one store, with a lease: the holder does the fleet-wide duties, the other
//! only folds and answers, and takes over when the holder loses the lease.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use fleetops_core::lease::{Lease, LeaseHold};
use fleetops_core::{JobId, StoreError, ThingName};
use fleetops_service::link::ChannelLink;
use fleetops_service::sim::{simulate, Outcome};
use fleetops_service::{Fleet, JobSpec};
use fleetops_store_memory::MemoryStore;
use tokio::sync::watch;

/// A lease shared by the test's runtimes: one holder at a time, revoked by the test.
#[derive(Clone)]
struct TestLease {
    /// Who holds it (a runtime's number), `None` when free.
    holder: Arc<watch::Sender<Option<usize>>>,
    /// This runtime's number.
    me: usize,
    /// Poisoned while a holder must not get it back (set by `revoke`).
    barred: Arc<Mutex<Vec<usize>>>,
}

impl TestLease {
    fn family(n: usize) -> Vec<TestLease> {
        let holder = Arc::new(watch::Sender::new(None));
        let barred = Arc::new(Mutex::new(Vec::new()));
        (0..n)
            .map(|me| TestLease {
                holder: Arc::clone(&holder),
                me,
                barred: Arc::clone(&barred),
            })
            .collect()
    }

    /// Takes the lease from its holder, who may not get it again.
    fn revoke(&self) {
        if let Some(h) = *self.holder.borrow() {
            self.barred.lock().unwrap().push(h);
        }
        self.holder.send_replace(None);
    }
}

struct TestHold {
    holder: watch::Receiver<Option<usize>>,
    me: usize,
}

#[async_trait]
impl Lease for TestLease {
    async fn acquire(&self) -> Result<Box<dyn LeaseHold>, StoreError> {
        let mut rx = self.holder.subscribe();
        loop {
            let free = rx.borrow_and_update().is_none();
            if free && !self.barred.lock().unwrap().contains(&self.me) {
                let mut got = false;
                self.holder.send_if_modified(|h| {
                    if h.is_none() {
                        *h = Some(self.me);
                        got = true;
                    }
                    got
                });
                if got {
                    return Ok(Box::new(TestHold {
                        holder: self.holder.subscribe(),
                        me: self.me,
                    }));
                }
            }
            if rx.changed().await.is_err() {
                return Err(StoreError::Closed);
            }
        }
    }
}

#[async_trait]
impl LeaseHold for TestHold {
    async fn lost(&mut self) -> StoreError {
        let me = self.me;
        let _ = self.holder.wait_for(|h| *h != Some(me)).await;
        StoreError::Backend {
            detail: "revoked by the test".into(),
        }
    }
}

async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    for _ in 0..1000 {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("not within 10 s: {what}");
}

fn things(prefix: &str, n: usize) -> Vec<ThingName> {
    (0..n)
        .map(|i| ThingName::parse(&format!("{prefix}-{i}")).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_holder_rolls_out_and_another_takes_over_when_it_loses_the_lease() {
    let store = MemoryStore::new();
    let leases = TestLease::family(2);
    let (link_a, devices_a) = ChannelLink::pair(256);
    let (link_b, devices_b) = ChannelLink::pair(256);
    // Devices hang on both links: whichever runtime publishes, its devices answer it.
    let sim_a = simulate(devices_a, Outcome::Succeed);
    let sim_b = simulate(devices_b, Outcome::Succeed);

    let a = Fleet::builder(store.clone(), link_a)
        .lease(leases[0].clone())
        .start()
        .await
        .unwrap();
    eventually("A leads", || a.is_leading()).await;
    let b = Fleet::builder(store.clone(), link_b)
        .lease(leases[1].clone())
        .start()
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!b.is_leading(), "the lease has one holder");

    // A job created on B is rolled out by A, the leader: B publishes nothing.
    let first = JobId::parse("first").unwrap();
    b.create_job(JobSpec::new(first.clone(), serde_json::json!({})).things(things("t", 8)))
        .await
        .unwrap();
    eventually("A finishes the job B created", || {
        b.describe_job(&first)
            .is_ok_and(|d| d.counters.succeeded == 8)
    })
    .await;
    // B can fold the last update before A's device has heard it accepted.
    eventually("A's devices hear every update accepted", || {
        sim_a.stats().jobs_done() == 8
    })
    .await;
    assert_eq!(sim_b.stats().jobs_done(), 0, "B published nothing");
    // A folded what B stored, and B what A stored.
    a.caught_up().await.unwrap();
    assert_eq!(a.describe_job(&first).unwrap().counters.succeeded, 8);

    // A loses the lease: B takes the duties over.
    leases[0].revoke();
    eventually("B leads", || b.is_leading()).await;
    eventually("A steps down", || !a.is_leading()).await;
    let second = JobId::parse("second").unwrap();
    a.create_job(JobSpec::new(second.clone(), serde_json::json!({})).things(things("u", 8)))
        .await
        .unwrap();
    eventually("B finishes the job A created", || {
        a.describe_job(&second)
            .is_ok_and(|d| d.counters.succeeded == 8)
    })
    .await;
    eventually("B published the second job", || {
        sim_b.stats().jobs_done() == 8
    })
    .await;
    assert_eq!(sim_a.stats().jobs_done(), 8, "A published nothing more");
}
