//! `PostgresLease`: one holder at a time among the instances sharing a schema, hand-over when
//! the holder lets go or its session ends, and `lost()` when the server ends the session.

mod common;

use std::io::Write as _;
use std::time::{Duration, Instant};

use common::admin;
use fleetops_core::lease::{Lease, LeaseHold};
use fleetops_store_postgres::testing::TestPostgres;
use fleetops_store_postgres::PostgresLease;

/// A lease of `schema` that retries every 100 ms, with a 2 s TTL.
fn lease(pg: &TestPostgres, schema: &str) -> PostgresLease {
    PostgresLease::new(
        pg.config(schema)
            .lease_retry(Duration::from_millis(100))
            .lease_ttl(Duration::from_secs(2)),
    )
}

async fn acquire(l: &PostgresLease) -> Box<dyn LeaseHold> {
    tokio::time::timeout(Duration::from_secs(10), l.acquire())
        .await
        .expect("the free lease was not granted within 10 s")
        .expect("acquire")
}

/// The backend pids holding an advisory lock with `key`.
async fn holders(db: &tokio_postgres::Client, key: i64) -> Vec<i32> {
    let (hi, lo) = ((key >> 32) as u32 as i64, key as u32 as i64);
    db.query(
        "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted \
         AND classid::bigint = $1 AND objid::bigint = $2",
        &[&hi, &lo],
    )
    .await
    .expect("read pg_locks")
    .iter()
    .map(|r| r.get(0))
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_holder_at_a_time_and_hand_over_on_drop() {
    let Some(pg) = TestPostgres::start_or_skip() else {
        return;
    };
    let db = admin(&pg).await;
    let (a, b) = (lease(&pg, "fleet"), lease(&pg, "fleet"));
    let held = acquire(&a).await;
    assert_eq!(holders(&db, a.key()).await.len(), 1);

    let waiting = tokio::spawn(async move { (b.acquire().await.map(|_| ()), Instant::now()) });
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(!waiting.is_finished(), "a second instance got a held lease");

    // Another schema's lease is independent.
    let other = acquire(&lease(&pg, "other_fleet")).await;

    let released = Instant::now();
    drop(held);
    let (got, at) = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("the waiting instance did not take the released lease")
        .unwrap();
    got.expect("acquire after release");
    let took = at - released;
    assert!(took < Duration::from_secs(1), "hand-over took {took:?}");
    drop(other);
}

/// The server terminating the holder's session (as it does after `idle_session_timeout`, or
/// an operator with `pg_terminate_backend`) resolves `lost()` and frees the lease for the
/// next instance, which gets it within about a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lost_when_the_server_ends_the_session() {
    let Some(pg) = TestPostgres::start_or_skip() else {
        return;
    };
    let db = admin(&pg).await;
    let (a, b) = (lease(&pg, "fleet"), lease(&pg, "fleet"));
    let mut held = acquire(&a).await;
    let waiting = tokio::spawn(async move { b.acquire().await.map(|h| (h, Instant::now())) });

    // Still held after several ping rounds (TTL 2 s, pings every 500 ms).
    let quiet = tokio::time::timeout(Duration::from_millis(2500), held.lost()).await;
    assert!(
        quiet.is_err(),
        "lost() resolved on a healthy lease: {quiet:?}"
    );
    assert!(!waiting.is_finished());

    let pids = holders(&db, a.key()).await;
    assert_eq!(pids.len(), 1, "one session holds the lease");
    let killed = Instant::now();
    db.execute("SELECT pg_terminate_backend($1)", &[&pids[0]])
        .await
        .unwrap();
    let why = tokio::time::timeout(Duration::from_secs(3), held.lost())
        .await
        .expect("lost() did not resolve after the session was terminated");
    eprintln!("lost after {:?}: {why}", killed.elapsed());
    let (_next, at) = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("the next instance did not take the lease")
        .unwrap()
        .expect("acquire");
    assert!(
        at - killed < Duration::from_secs(1),
        "took {:?}",
        at - killed
    );
    // And `lost()` stays resolved.
    let _ = tokio::time::timeout(Duration::from_secs(1), held.lost())
        .await
        .expect("lost() resolves again");
}

/// A holder that stops talking (a paused process) has its session ended by the server after
/// the TTL, through `idle_session_timeout`, which frees the lock. Shown with a raw session
/// set up like the lease's (the lease's own pings would keep it alive).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_silent_holder_loses_the_lock_after_the_ttl() {
    let Some(pg) = TestPostgres::start_or_skip() else {
        return;
    };
    let l = lease(&pg, "fleet");
    let (silent, connection) = tokio_postgres::connect(
        &format!("{} options='-c idle_session_timeout=1000'", {
            format!(
                "host=127.0.0.1 port={} user=postgres dbname=postgres",
                pg.port()
            )
        }),
        tokio_postgres::NoTls,
    )
    .await
    .unwrap();
    tokio::spawn(connection);
    let granted: bool = silent
        .query_one("SELECT pg_try_advisory_lock($1)", &[&l.key()])
        .await
        .unwrap()
        .get(0);
    assert!(granted);
    let start = Instant::now();
    let _hold = acquire(&l).await;
    let took = start.elapsed();
    eprintln!("the lease went to the next instance after {took:?}");
    assert!(
        took >= Duration::from_millis(900),
        "granted while held: {took:?}"
    );
    assert!(took < Duration::from_secs(3), "took {took:?}");
}

/// A holder process killed with SIGKILL frees the lock as soon as the server sees its socket
/// close. The holder is `psql` holding the same advisory lock (any client process would do:
/// the lock belongs to the server session).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_holder_process_frees_the_lock() {
    let Some(pg) = TestPostgres::start_or_skip() else {
        return;
    };
    // Beside the server binaries, else on PATH (Debian's wrapper in /usr/bin).
    let path = std::env::var_os("PATH").unwrap_or_default();
    let psql = fleetops_store_postgres::testing::find_bin_dir()
        .into_iter()
        .chain(std::env::split_paths(&path))
        .map(|d| d.join("psql"))
        .find(|p| p.is_file());
    let Some(psql) = psql else {
        eprintln!("psql not found: skipping the SIGKILL case");
        return;
    };
    let l = lease(&pg, "fleet");
    let db = admin(&pg).await;
    // psql takes the lock, then waits for more input with its session idle, as a lease
    // holder's session is between pings. (A backend busy in a query would notice a dead
    // client only when the query ends.)
    let mut holder = std::process::Command::new(psql)
        .arg(pg.url())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("start psql");
    let mut stdin = holder.stdin.take().expect("psql's stdin");
    writeln!(stdin, "SELECT pg_advisory_lock({});", l.key()).expect("talk to psql");
    stdin.flush().expect("talk to psql");
    let deadline = Instant::now() + Duration::from_secs(10);
    while holders(&db, l.key()).await.is_empty() {
        assert!(Instant::now() < deadline, "psql never took the lock");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let waiting = tokio::spawn(async move { l.acquire().await.map(|_| Instant::now()) });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiting.is_finished(), "granted while psql holds the lock");
    let killed = Instant::now();
    holder.kill().expect("SIGKILL psql");
    let _ = holder.wait();
    drop(stdin);
    let at = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("the lease was not granted after the holder was killed")
        .unwrap()
        .expect("acquire");
    assert!(
        at - killed < Duration::from_secs(1),
        "took {:?}",
        at - killed
    );
}
