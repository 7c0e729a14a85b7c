//! The web console in a real browser: headless Chromium driven through its own chromedriver
//! (WebDriver, fantoccini) against the real `fleetops serve`, its own mosquitto, and devices
//! that run jobs when the test lets them and answer commands.
//!
//! An operator logs in (a wrong token first), creates a job from the form and watches it on
//! the job page, without reloading, go from in progress to completed; opens an execution's
//! event history; sends a command and sees its result; looks at a thing and a group; and is
//! sent back to the login page when the server refuses the token. Every step waits for a
//! condition in the page (polled, with a deadline), never for a fixed time, and saves a
//! screenshot under `$CARGO_TARGET_TMPDIR/console-screens/`.
//!
//! The browser is `$FLEETOPS_CHROMIUM` and `$FLEETOPS_CHROMEDRIVER` if set, else `chromium`
//! and `chromedriver` on the `PATH` or in `/usr/bin` (Debian's `chromium` and
//! `chromium-driver`). Without them the test says so loudly and passes, except under CI
//! (`CI` set), where it fails: CI never skips it.

use std::collections::HashSet;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use fleetops_core::device::{CommandResponse, UpdateRequest};
use fleetops_core::{CommandStatus, JobExecutionStatus, ThingName};
use fleetops_tests::{binary, quiet_broker, Serve, ServeConfig, TOKEN};
use fleetops_transport_mqtt::codec::{CommandRequest, TopicLayout};
use fleetops_transport_mqtt::{CommandHandler, DeviceClient, DeviceConfig, DeviceEvent};
use serde_json::{json, Value};
use tokio::sync::watch;

/// How long one condition in the page may take to hold.
const WAIT: Duration = Duration::from_secs(30);

const JOB: &str = "console-job";
const THINGS: [&str; 3] = ["lamp-0", "lamp-1", "lamp-2"];

/// The first of `names` found in `$PATH`, else in `/usr/bin`.
fn on_path(names: &[&str]) -> Option<PathBuf> {
    let dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    names.iter().find_map(|name| {
        dirs.iter()
            .map(|d| d.join(name))
            .chain([Path::new("/usr/bin").join(name)])
            .find(|p| p.is_file())
    })
}

/// Chromium and chromedriver, or `None` after a loud message (a panic under CI).
fn browser_or_skip() -> Option<(PathBuf, PathBuf)> {
    // A variable naming a missing file means missing, not "look elsewhere".
    let find = |var: &str, names: &[&str]| match std::env::var_os(var) {
        Some(p) => Some(PathBuf::from(p)).filter(|p| p.is_file()),
        None => on_path(names),
    };
    let chromium = find(
        "FLEETOPS_CHROMIUM",
        &["chromium", "chromium-browser", "google-chrome"],
    );
    let driver = find("FLEETOPS_CHROMEDRIVER", &["chromedriver"]);
    if let (Some(c), Some(d)) = (chromium, driver) {
        return Some((c, d));
    }
    let message = "Chromium or chromedriver not found (looked at $FLEETOPS_CHROMIUM, \
         $FLEETOPS_CHROMEDRIVER, PATH and /usr/bin): install them with \
         `apt-get install chromium chromium-driver`";
    if std::env::var_os("CI").is_some() {
        panic!("{message}. CI never skips the console's browser test.");
    }
    eprintln!(
        "\n**********\n** SKIPPED: {message}.\n** The web console's browser test did NOT \
         run.\n**********\n"
    );
    None
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// A chromedriver of this test on a free loopback port, in a process group of its own so
/// that dropping it also ends the browsers it started, whatever state the test is in.
struct Driver {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Driver {
    async fn start(chromedriver: &Path, dir: &Path) -> Self {
        let mut log = dir.join("chromedriver.log");
        // The port is free when picked but could be taken before chromedriver binds it:
        // try again with another one if it exits.
        for _ in 0..3 {
            let port = free_port();
            let child = Command::new(chromedriver)
                .arg(format!("--port={port}"))
                .arg(format!("--log-path={}", log.display()))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .process_group(0)
                .spawn()
                .unwrap_or_else(|e| panic!("spawn {}: {e}", chromedriver.display()));
            let mut driver = Self { child, port, log };
            if driver.ready().await {
                return driver;
            }
            log = std::mem::take(&mut driver.log);
        }
        panic!(
            "chromedriver did not start:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }

    /// Waits until chromedriver answers `/status` with `ready`; `false` if it exited.
    async fn ready(&mut self) -> bool {
        let client = reqwest::Client::new();
        let url = format!("http://127.0.0.1:{}/status", self.port);
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return false;
            }
            if let Ok(r) = client.get(&url).send().await {
                if let Ok(v) = r.json::<Value>().await {
                    if v["value"]["ready"] == true {
                        return true;
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("chromedriver was not ready within {WAIT:?}");
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        // The whole group: chromedriver and every Chromium process under it.
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.child.id())])
            .status();
        let _ = self.child.wait();
    }
}

/// The browser session with the test's helpers: wait for conditions, act, take screenshots.
struct Browser {
    client: Client,
    base: String,
    screens: PathBuf,
    shots: usize,
}

impl Browser {
    async fn open(driver: &Driver, chromium: &Path, profile: &Path, base: String) -> Self {
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": chromium,
                "args": [
                    "--headless=new",
                    // Chromium refuses to sandbox itself as root, which CI containers are.
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-dev-shm-usage",
                    "--no-first-run",
                    "--no-default-browser-check",
                    "--disable-extensions",
                    "--window-size=1280,1000",
                    "--force-device-scale-factor=1",
                    format!("--user-data-dir={}", profile.display()),
                ],
            }),
        );
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let client = ClientBuilder::new(connector)
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{}", driver.port))
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "no WebDriver session: {e}\n{}",
                    std::fs::read_to_string(&driver.log).unwrap_or_default()
                )
            });
        let screens = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("console-screens");
        // A fresh set per run: screenshots of an older run must not pass for this one's.
        let _ = std::fs::remove_dir_all(&screens);
        std::fs::create_dir_all(&screens).expect("create the screenshot directory");
        Self {
            client,
            base,
            screens,
            shots: 0,
        }
    }

    async fn goto(&self, hash: &str) {
        let url = format!("{}/{hash}", self.base);
        if let Err(e) = self.client.goto(&url).await {
            panic!("{}", self.failure(&format!("cannot open {url}: {e}")).await);
        }
    }

    /// Saves a PNG of the window as `NN-name.png`.
    async fn shot(&mut self, name: &str) {
        self.shots += 1;
        let path = self.screens.join(format!("{:02}-{name}.png", self.shots));
        let png = self.client.screenshot().await.expect("a screenshot");
        std::fs::write(&path, png).expect("write the screenshot");
    }

    /// `message` with the page's address and text, after a screenshot of it, to panic with.
    async fn failure(&self, message: &str) -> String {
        let path = self.screens.join("failure.png");
        if let Ok(png) = self.client.screenshot().await {
            let _ = std::fs::write(&path, png);
        }
        let url = self.client.current_url().await.map(|u| u.to_string());
        let text = match self.client.find(Locator::Css("body")).await {
            Ok(body) => body.text().await.unwrap_or_default(),
            Err(e) => format!("(no body: {e})"),
        };
        format!(
            "{message}\nat {url:?}; screenshot {}\npage text:\n{text}",
            path.display()
        )
    }

    /// The text of the first element matching `css`, if there is one now.
    async fn text(&self, css: &str) -> Option<String> {
        // The page re-renders its live parts every second: an element found may be replaced
        // before its text is read. That is only "not yet": the caller polls again.
        let element = self.client.find(Locator::Css(css)).await.ok()?;
        element.text().await.ok()
    }

    /// How many elements match `css` now.
    async fn count(&self, css: &str) -> usize {
        self.client
            .find_all(Locator::Css(css))
            .await
            .map_or(0, |v| v.len())
    }

    /// Waits until the text of `css` satisfies `ok`; returns it.
    async fn wait_text(&self, css: &str, what: &str, ok: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + WAIT;
        let mut last = None;
        loop {
            if let Some(text) = self.text(css).await {
                if ok(&text) {
                    return text;
                }
                last = Some(text);
            }
            if Instant::now() > deadline {
                panic!(
                    "{}",
                    self.failure(&format!(
                        "{what}: `{css}` did not get there within {WAIT:?} (last text: {last:?})"
                    ))
                    .await
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until `css` matches exactly `n` elements.
    async fn wait_count(&self, css: &str, n: usize, what: &str) {
        let deadline = Instant::now() + WAIT;
        loop {
            let found = self.count(css).await;
            if found == n {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "{}",
                    self.failure(&format!(
                        "{what}: `{css}` matched {found} elements, not {n}, within {WAIT:?}"
                    ))
                    .await
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Clicks `css` once it is there (again if the element was replaced meanwhile).
    async fn click(&self, css: &str) {
        let deadline = Instant::now() + WAIT;
        loop {
            let clicked = match self.client.find(Locator::Css(css)).await {
                Ok(e) => e.click().await.is_ok(),
                Err(_) => false,
            };
            if clicked {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "{}",
                    self.failure(&format!("cannot click `{css}` within {WAIT:?}"))
                        .await
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Replaces the value of the form field `css` with `text`, as typed.
    async fn fill(&self, css: &str, text: &str) {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Ok(e) = self.client.find(Locator::Css(css)).await {
                if e.clear().await.is_ok() && e.send_keys(text).await.is_ok() {
                    return;
                }
            }
            if Instant::now() > deadline {
                panic!(
                    "{}",
                    self.failure(&format!("cannot fill `{css}` within {WAIT:?}"))
                        .await
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Devices that accept every job at once (`IN_PROGRESS`) but report it `SUCCEEDED` only once
/// `release` counts past their index, so the test sees the job move step by step; they
/// answer every command with `{"echo": action, "params": params}`.
async fn devices(
    broker: &fleetops_transport_mqtt::testing::TestBroker,
    release: watch::Receiver<usize>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let handler: Arc<dyn CommandHandler> = Arc::new(|c: CommandRequest| async move {
        CommandResponse {
            status: CommandStatus::Succeeded,
            result: Some(json!({"echo": c.action, "params": c.params})),
            status_reason: None,
        }
    });
    let mut tasks = Vec::new();
    for (index, name) in THINGS.into_iter().enumerate() {
        let mut config = DeviceConfig::new(broker.device_config(), ThingName::parse(name).unwrap());
        config.layout = TopicLayout::fleets();
        let (client, mut events) = DeviceClient::connect(config, Some(Arc::clone(&handler)))
            .await
            .expect("the device connects");
        let mut release = release.clone();
        tasks.push(tokio::spawn(async move {
            let mut seen = HashSet::new();
            while let Some(event) = events.next().await {
                let DeviceEvent::NotifyNext {
                    execution: Some(v), ..
                } = event
                else {
                    continue;
                };
                // Each attempt once: the service notifies again when the execution changes.
                if !seen.insert((v.job_id.clone(), v.execution_number)) {
                    continue;
                }
                let report = |status| UpdateRequest {
                    status: Some(status),
                    execution_number: Some(v.execution_number),
                    ..UpdateRequest::default()
                };
                // A refused report is the service's business; the test checks the outcome.
                let _ = client
                    .update(v.job_id.clone(), report(JobExecutionStatus::InProgress))
                    .await;
                if release.wait_for(|n| *n > index).await.is_err() {
                    return;
                }
                let _ = client
                    .update(v.job_id.clone(), report(JobExecutionStatus::Succeeded))
                    .await;
            }
        }));
    }
    tasks
}

/// `GET path` on the API: status and JSON body.
async fn api_get(base: &str, path: &str) -> (u16, Value) {
    let r = reqwest::Client::new()
        .get(format!("{base}{path}"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("the API answers");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// Checks an event-history card against the API's own answer for `path`: the timeline shows
/// the first page of events the history route returns, first event first.
async fn check_history(browser: &Browser, base: &str, path: &str) {
    let (status, body) = api_get(base, path).await;
    assert_eq!(status, 200, "GET {path}: {body}");
    let items = body["items"].as_array().cloned().unwrap_or_default();
    assert!(!items.is_empty(), "an execution has events: {body}");
    browser
        .wait_count(
            "#history .timeline li[data-type]",
            items.len(),
            "the timeline shows the first page of events",
        )
        .await;
    let first = items[0]["type"].as_str().expect("an event type");
    browser
        .wait_text("#history .timeline li .type", "the first event", |t| {
            t == first
        })
        .await;
}

/// The timeline's rendering, whatever the server: the page's `fetch` answers history requests
/// with a canned page in the documented shape (details holding markup, which must show as
/// text), and the history card is refreshed.
async fn check_timeline_rendering(browser: &Browser) {
    let canned = json!({
        "items": [
            {"position": 7, "streamVersion": 1, "eventId": "ev-1", "recordedAt": 1_800_000_000,
             "type": "ExecutionQueued", "details": {"executionNumber": 1}},
            {"position": 9, "streamVersion": 2, "eventId": "ev-2", "recordedAt": 1_800_000_001,
             "type": "ExecutionUpdated",
             "details": {"statusReason": "<img src=x onerror=alert(1)>"}},
        ]
    });
    let script = format!(
        "const real = window.fetch; window.realFetch = real; const canned = {canned}; \
         window.fetch = (url, init) => String(url).includes('/history') \
           ? Promise.resolve(new Response(JSON.stringify(canned), \
               {{status: 200, headers: {{'Content-Type': 'application/json'}}}})) \
           : real(url, init); \
         return true;"
    );
    browser
        .client
        .execute(&script, Vec::new())
        .await
        .expect("run a script in the page");
    browser.click("#history-refresh").await;
    browser
        .wait_count("#history .timeline li[data-type]", 2, "the canned timeline")
        .await;
    browser
        .wait_text(
            "#history .timeline li[data-position=\"9\"]",
            "the second event",
            |t| {
                t.contains("ExecutionUpdated")
                    && t.contains("position 9")
                    && t.contains("stream version 2")
                    && t.contains("2027-01-15 08:00:01 UTC")
                    && t.contains("<img src=x onerror=alert(1)>")
            },
        )
        .await;
    assert_eq!(
        browser.count("#history img").await,
        0,
        "markup in details is shown as text, never parsed"
    );
    // The page is one document across its views: the real `fetch` must come back.
    browser
        .client
        .execute("window.fetch = window.realFetch; return true;", Vec::new())
        .await
        .expect("run a script in the page");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_runs_a_job_and_a_command_from_the_console() {
    let Some((chromium, chromedriver)) = browser_or_skip() else {
        return;
    };
    let started = Instant::now();
    let broker = quiet_broker(vec![TopicLayout::fleets()]);
    let data = tempfile::tempdir().unwrap();
    let serve = Serve::start(&ServeConfig::new(
        binary(env!("CARGO_BIN_EXE_fleetops-under-test")),
        data.path(),
        &broker,
        "fleets",
    ));
    let base = format!("http://{}", serve.addr());
    let (release, released) = watch::channel(0);
    let tasks = devices(&broker, released).await;
    // A group, to look at; groups are made through the API.
    let status = reqwest::Client::new()
        .put(format!("{base}/api/v1/thing-groups/lamps"))
        .bearer_auth(TOKEN)
        .json(&json!({"description": "every lamp", "thingNames": THINGS}))
        .send()
        .await
        .expect("the API answers")
        .status();
    assert!(status.is_success(), "create the group: {status}");

    let scratch = tempfile::Builder::new()
        .prefix("fleetops-console-test-")
        .tempdir()
        .unwrap();
    let profile = scratch.path().join("profile");
    let driver = Driver::start(&chromedriver, scratch.path()).await;
    let mut b = Browser::open(&driver, &chromium, &profile, base.clone()).await;

    // Login: a wrong token is refused on the spot, the right one opens the jobs.
    b.goto("").await;
    b.wait_text("h2", "the login page", |t| t == "Log in").await;
    b.fill("#token", "not-the-token").await;
    b.click("#login").await;
    b.wait_text(".login .error", "a refused token", |t| {
        t.contains("refused")
    })
    .await;
    b.shot("login-refused").await;
    b.fill("#token", TOKEN).await;
    b.click("#login").await;
    b.wait_text("h1", "the jobs page", |t| t == "Jobs").await;
    b.shot("jobs").await;

    // A job from the form; its page follows it live, no reload.
    b.click("#create-job-toggle").await;
    b.fill("#job-id", JOB).await;
    b.fill("#job-things", &THINGS.join(", ")).await;
    b.fill("#job-document", r#"{"operation": "blink", "times": 3}"#)
        .await;
    b.fill("#job-rollout", "100").await;
    b.click("#create-job").await;
    b.wait_text("h1", "the job page", |t| t.contains(JOB)).await;
    b.wait_text("[data-counter=IN_PROGRESS] strong", "3 in progress", |t| {
        t == "3"
    })
    .await;
    b.wait_text("#job-status", "the job runs", |t| t == "IN_PROGRESS")
        .await;
    b.wait_text("[data-field=rollout]", "the rollout setting", |t| {
        t == "fixed: 100 per minute"
    })
    .await;
    b.shot("job-in-progress").await;
    // Pause and resume from the job page: the pause shows with its reason, then goes.
    b.click("#pause-job").await;
    b.wait_text("[data-field=paused]", "the pause", |t| {
        t.contains("operator")
    })
    .await;
    b.wait_text("#pause-job", "a resume button", |t| t == "Resume")
        .await;
    b.shot("job-paused").await;
    b.click("#pause-job").await;
    b.wait_count("[data-field=paused]", 0, "the pause gone")
        .await;
    b.wait_text("#pause-job", "a pause button", |t| t == "Pause")
        .await;
    // One device finishes: the bar splits, still without a reload.
    release.send(1).expect("the devices listen");
    b.wait_text("[data-counter=SUCCEEDED] strong", "1 succeeded", |t| {
        t == "1"
    })
    .await;
    b.wait_text("[data-counter=IN_PROGRESS] strong", "2 in progress", |t| {
        t == "2"
    })
    .await;
    b.wait_count("#job-progress .bar .seg", 2, "a bar in two parts")
        .await;
    b.shot("job-live").await;
    release.send(THINGS.len()).expect("the devices listen");
    b.wait_text("#job-status", "the job completes", |t| t == "COMPLETED")
        .await;
    b.wait_text("[data-counter=SUCCEEDED] strong", "3 succeeded", |t| {
        t == "3"
    })
    .await;
    b.wait_count(
        "#executions tr[data-thing] .badge[data-status=SUCCEEDED]",
        3,
        "every execution succeeded",
    )
    .await;
    b.shot("job-completed").await;

    // An execution's page and its history.
    b.click("#executions tr[data-thing=lamp-1] a").await;
    b.wait_text("#execution-status", "the execution", |t| t == "SUCCEEDED")
        .await;
    check_history(
        &b,
        &base,
        &format!("/api/v1/jobs/{JOB}/things/lamp-1/history"),
    )
    .await;
    b.shot("execution-history").await;
    check_timeline_rendering(&b).await;
    b.shot("execution-timeline-canned").await;

    // A command from the form, and its result.
    b.click("#nav a[data-section=commands]").await;
    b.fill("#cmd-thing", "lamp-2").await;
    b.fill("#cmd-action", "blink").await;
    b.fill("#cmd-params", r#"{"times": 2}"#).await;
    b.fill("#cmd-ttl", "30").await;
    b.click("#send-command").await;
    b.wait_text(
        "#cmd-result [data-field=status]",
        "the command's status",
        |t| t == "SUCCEEDED",
    )
    .await;
    let result = b
        .wait_text(
            "#cmd-result [data-field=result]",
            "the command's result",
            |t| !t.is_empty(),
        )
        .await;
    let result: Value = serde_json::from_str(&result).expect("the result is JSON");
    assert_eq!(result, json!({"echo": "blink", "params": {"times": 2}}));
    b.wait_text(
        "#commands tr[data-execution] td:nth-child(3)",
        "the list's action",
        |t| t == "blink",
    )
    .await;
    b.wait_text(
        "#commands tr[data-execution] td:nth-child(5)",
        "the list's result",
        |t| t.contains(r#""echo":"blink""#),
    )
    .await;
    b.shot("command-result").await;

    // The command's own page, with its history.
    b.click("#cmd-result dd a").await;
    b.wait_text("#command-status", "the command page", |t| t == "SUCCEEDED")
        .await;
    let id = b
        .wait_text("h1 .mono", "the command id", |t| !t.is_empty())
        .await;
    check_history(&b, &base, &format!("/api/v1/commands/{id}/history")).await;
    b.shot("command-history").await;

    // A thing: its job executions and its commands.
    b.goto("#/things/lamp-2").await;
    b.wait_text(
        &format!("#thing-jobs tr[data-job={JOB}] .badge"),
        "the thing's job",
        |t| t == "SUCCEEDED",
    )
    .await;
    b.wait_count("#commands tr[data-execution]", 1, "the thing's command")
        .await;
    b.shot("thing").await;

    // A group and its members.
    b.goto("#/groups/lamps").await;
    b.wait_text("[data-field=members]", "the group's size", |t| t == "3")
        .await;
    b.wait_count("#members tr a", 3, "the group's members")
        .await;
    b.shot("group").await;

    // A token the server no longer accepts sends the operator back to the login page.
    b.goto("#/jobs").await;
    b.wait_text("h1", "the jobs page", |t| t == "Jobs").await;
    b.client
        .execute(
            "sessionStorage.setItem('fleetops.apiToken', 'revoked'); return true;",
            Vec::new(),
        )
        .await
        .expect("run a script in the page");
    b.wait_text(".login .error", "back to login on 401", |t| {
        t.contains("refused")
    })
    .await;
    b.shot("logged-out").await;

    let screens = b.screens.clone();
    let shots = b.shots;
    b.client.close().await.expect("end the WebDriver session");
    drop(driver);
    for t in tasks {
        t.abort();
    }
    drop(serve);
    eprintln!(
        "console test passed in {:.1?}; {shots} screenshots in {}",
        started.elapsed(),
        screens.display()
    );
}
