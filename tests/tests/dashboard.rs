//! The operator's dashboard (issue 15) in a real headless Chromium (`pinion_tests::browser`:
//! Debian's `chromium` driven through `chromedriver`), against one real `pinion-server`, the
//! Debian docker-registry, one real `pinion-agent` on the shared dockerd and simulated
//! devices. The browser does what an operator does — signs in (a wrong token first), reads
//! the overview, filters the devices, opens a gateway, makes a release from the fleet view,
//! dry-runs a rollout and starts it, pauses and resumes it, rolls a device back, makes and
//! revokes a provisioning key, signs out — and every effect is read back through the JSON
//! API (and the agent's containers), not only from the page. A device whose name, service
//! names and error texts carry HTML must render it as text, with no element or script of
//! theirs in the page. The selectors are the ones the pages promise the tests (ids, `data-*`
//! attributes, `#view[data-view]`), agreed for issue 15 and kept in `server/dashboard/`.
//!
//! Each view's screenshot goes to `target/dashboard/<view>.png` (failures add
//! `failure-N.png` there); with `PINION_UPDATE_DOCS_SCREENSHOTS=1` three of them are copied
//! to `docs/dashboard-{overview,device,rollout}.png` for the README. Needs `chromium` and
//! `chromium-driver` (the test fails without them, saying so), `dockerd`, `docker-registry`
//! and busybox-static; `scripts/test` installs and starts what is missing; by hand:
//! `(setsid nohup dockerd --host unix:///var/run/docker.sock >/tmp/dockerd.log 2>&1 &)`.

use pinion_tests::browser::{css_string, Browser};
use pinion_tests::docker::take_turn;
use pinion_tests::fleet_api::{device_states, expect, one_service_release, waves_of};
use pinion_tests::simulated::{services_of, Round, SimulatedDevice, SimulatedFleet};
use pinion_tests::util::{demo_target, random_hex, unique, wait_for};
use pinion_tests::{Agent, Auth, Docker, Registry, Server};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How long a page may take to show something: its data refreshes every 5 s.
const WAIT: Duration = Duration::from_secs(20);
/// How long the agent may take to pull and start an image, or a rollout to move.
const BOUND: Duration = Duration::from_secs(90);
/// The fleet of the agent and the simulated devices.
const FLEET: &str = "lab";
const APP: u32 = 1001;
const SERVICE: &str = "web";
/// A gateway's own words, which the page must show as text.
const HOSTILE_NAME: &str = r#"<img src=x onerror="window.__pwned=1">"#;
const HOSTILE_SERVICE: &str = "<script>window.__pwned=2</script>";
const HOSTILE_ERROR: &str = r#"<img src=y onerror="window.__pwned=3">"#;
/// The test's own cookie name from the contract.
const SESSION_COOKIE: &str = "pinion_session";

/// `target/dashboard`, beside the test binary's profile dir (`<target>/<profile>/deps/<bin>`).
fn screenshot_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let target = exe.ancestors().nth(3).expect("the test binary sits in <target>/<profile>/deps");
    target.join("dashboard")
}

/// A busybox image that prints its version and waits for SIGTERM; pushed, then removed
/// from the shared dockerd so that the agent has to pull it. Its digest.
fn push_version(docker: &Docker, reference: &str, version: &str) -> String {
    let cmd = r#"["/bin/sh", "-c", "trap 'exit 0' TERM; cat /version; while true; do sleep 0.2; done"]"#;
    docker.push_busybox(reference, version, cmd)
}

/// A release (or target) of app `APP` whose service `web` runs `image`, restarted always.
fn release_body(image: &str) -> Value {
    one_service_release(APP, "web", SERVICE, image)
}

/// The hex of a `…@sha256:<hex>` reference or a `sha256:<hex>` digest.
fn hex_of(digest: &str) -> &str {
    digest.rsplit_once("sha256:").map(|(_, hex)| hex).unwrap_or_else(|| panic!("no sha256 in {digest}"))
}

/// The `/api/v1/...` answer as the operator, with the status asserted.
fn api(server: &Server, method: &str, path: &str, body: Option<Value>, status: u16) -> Value {
    expect(server, method, &format!("/api/v1{path}"), body, status)
}

/// The service `web` as a device last reported it.
fn reported(server: &Server, uuid: &str) -> Value {
    api(server, "GET", &format!("/devices/{uuid}/current-state"), None, 200)["apps"][APP.to_string()]["services"]
        [SERVICE]
        .clone()
}

/// What the page shows, and the screenshots it leaves.
struct Ui<'a> {
    browser: &'a Browser,
    base: String,
    shots: PathBuf,
}

impl Ui<'_> {
    /// Waits for `<main id="view" data-view="name">`.
    fn view(&self, name: &str) {
        self.browser.wait_for(&format!("main#view[data-view={}]", css_string(name)), WAIT);
    }

    /// Goes to `#/route` of the dashboard.
    fn open(&self, route: &str) {
        self.browser.goto(&format!("{}/#{route}", self.base));
    }

    fn shot(&self, name: &str) -> PathBuf {
        let path = self.shots.join(format!("{name}.png"));
        self.browser.screenshot(&path);
        path
    }

    /// The visible text of the whole page.
    fn page_text(&self) -> String {
        self.browser.execute("return document.body.innerText", &[]).as_str().unwrap_or_default().to_string()
    }

    /// `fetch(path)` from the page with its cookie: the answer's status.
    fn fetch_status(&self, path: &str) -> Value {
        self.browser.execute_async(
            "const done = arguments[arguments.length - 1]; \
             fetch(arguments[0], {credentials: 'same-origin'}).then(r => done(r.status), e => done(String(e)));",
            &[json!(path)],
        )
    }

    /// Texts of the `li` of a dry run's wave.
    fn dry_run_wave(&self, wave: usize) -> Vec<String> {
        let css = format!("#dryrun-result .dryrun-wave[data-wave=\"{wave}\"] li");
        self.browser.find_all(&css).iter().map(|li| li.text().unwrap_or_default()).collect()
    }

    /// No element or script of a device's own in the page, and none of theirs ran.
    fn assert_nothing_injected(&self, where_: &str) {
        let injected = self
            .browser
            .execute("return document.querySelectorAll('img[src=x],img[src=y],script:not([src])').length", &[]);
        assert_eq!(injected, 0, "{where_}: elements made from a device's text:\n{}", self.browser.diagnostics());
        let pwned = self.browser.execute("return window.__pwned === undefined", &[]);
        assert_eq!(pwned, true, "{where_}: a device's script ran (window.__pwned is set)");
    }
}

#[test]
fn an_operator_runs_the_fleet_from_the_dashboard() {
    let started = Instant::now();
    // The browser first: without chromium this fails at once, saying what to install.
    let mut browser = Browser::start();
    let shots = screenshot_dir();
    let _ = std::fs::remove_dir_all(&shots);
    browser.set_failure_dir(&shots);

    let turn = take_turn();
    let docker = &turn.docker;
    let registry = Registry::start(Auth::Anonymous);
    let server = Server::start(&["--rollout-interval", "1"]);
    let ui = Ui { browser: &browser, base: server.url(), shots: shots.clone() };

    // Two versions of one image, pushed to the registry.
    let repository = format!("{}/dash/web", registry.host());
    let v1_digest = push_version(docker, &format!("{repository}:v1"), "v1");
    let v2_digest = push_version(docker, &format!("{repository}:v2"), "v2");
    let (pinned_v1, pinned_v2) = (format!("{repository}@{v1_digest}"), format!("{repository}@{v2_digest}"));

    // The fleet runs release 1; one real gateway and three simulated ones join it. Waves by
    // percent take devices in uuid order: the gateway's sorts first.
    let run = unique("dash");
    api(&server, "POST", "/fleets", Some(json!({"name": FLEET, "description": "the dashboard's fleet"})), 201);
    let release1 = api(
        &server,
        "POST",
        &format!("/fleets/{FLEET}/releases"),
        Some(release_body(&format!("{repository}:v1"))),
        201,
    );
    let r1 = release1["id"].as_u64().expect("release id");
    assert_eq!(services_of(&release1)[0].3, pinned_v1, "{release1:#}");
    api(&server, "PUT", &format!("/fleets/{FLEET}/release"), Some(json!({"release": r1})), 200);
    let fleet_key = api(&server, "POST", "/provisioning-keys", Some(json!({"fleet": FLEET})), 201)["key"]
        .as_str()
        .expect("a provisioning key")
        .to_string();
    let gateway = format!("{run}-a-gateway");
    let agent = Agent::start_with_env(&server.url(), &fleet_key, &gateway, docker, &[("PINION_PROBATION", "3")]);
    let mut sims = SimulatedFleet::register(&server, &fleet_key, &format!("{run}-sim"), 3);
    for device in sims.devices.iter_mut() {
        device.poll();
        assert_eq!(device.images(), std::slice::from_ref(&pinned_v1), "{}", device.uuid);
        let target = device.target().unwrap().clone();
        device.report_running(&target, "passed");
    }
    agent.converge("the gateway runs release 1 and reports it passed", || {
        let service = reported(&server, &gateway);
        service["imageName"] == pinned_v1.as_str() && service["status"] == "running" && service["probation"] == "passed"
    });

    // Outside the fleet: a device with two target versions (to roll back), and one whose
    // name, service and error text are HTML.
    let solo = format!("{run}-solo");
    SimulatedDevice::register(&server, &server.provisioning_key(), &solo);
    for tag in ["v1", "v2"] {
        let reply = server.set_target_state(&solo, &demo_target(&[&format!("{repository}:{tag}")]));
        assert_eq!(reply.status, 200, "{}", reply.body);
    }
    let hostile = format!("{run}-hostile");
    let hostile_key = random_hex(32);
    let registration = json!({"uuid": hostile, "deviceName": HOSTILE_NAME, "deviceType": "simulated",
                              "deviceApiKey": hostile_key});
    let reply =
        server.request("POST", "/api/v1/device/register", Some(&registration), Some(&server.provisioning_key()));
    assert_eq!(reply.status, 200, "{}", reply.body);
    let hostile_target = json!({"apps": {"1": {"appId": 1, "appName": "demo", "services": [
        {"serviceId": 1, "serviceName": HOSTILE_SERVICE, "imageName": format!("{repository}:v1")}]}}, "config": {}});
    let reply = server.set_target_state(&hostile, &hostile_target);
    assert_eq!(reply.status, 200, "{}", reply.body);
    let report = json!({&hostile: {"apps": {"1": {"services": {HOSTILE_SERVICE: {
        "serviceId": 1, "imageName": pinned_v1, "status": "error",
        "error": {"type": "start", "message": HOSTILE_ERROR}}}}},
        "config": {}, "agent_version": "simulated", "os_version": "simulated"}});
    let reply = server.send_bytes(
        "PATCH",
        "/api/v1/device/state",
        &[("X-Device-API-Key", &hostile_key), ("Content-Type", "application/json")],
        report.to_string().into_bytes(),
    );
    assert!((200..300).contains(&reply.status), "the hostile report: {} {}", reply.status, reply.body);
    let status = api(&server, "GET", &format!("/status/devices/{hostile}"), None, 200);
    assert_eq!(status["deviceName"], HOSTILE_NAME, "{status:#}");
    let setup = started.elapsed();
    eprintln!("dashboard: the fleet is set up after {setup:?}");

    // Sign-in: a wrong token is refused and says so; no session cookie.
    ui.open("/");
    ui.view("signin");
    ui.shot("signin");
    browser.fill("#signin-token", "not-the-admin-token");
    browser.click("#signin-submit");
    let refused = browser.wait_until("#signin-error to say why", WAIT, || {
        browser.try_find("#signin-error").and_then(|e| e.text().ok()).filter(|t| !t.trim().is_empty())
    });
    ui.view("signin");
    assert!(browser.cookie(SESSION_COOKIE).is_none(), "a refused sign-in set a cookie: {:?}", browser.cookies());
    ui.shot("signin-refused");

    // The right token: the overview, and an HttpOnly, SameSite=Strict session cookie.
    browser.fill("#signin-token", server.admin_token());
    browser.click("#signin-submit");
    ui.view("overview");
    let cookie =
        browser.cookie(SESSION_COOKIE).unwrap_or_else(|| panic!("no {SESSION_COOKIE}: {:?}", browser.cookies()));
    assert_eq!(cookie["httpOnly"], true, "{cookie}");
    assert_eq!(cookie["sameSite"], "Strict", "{cookie}");
    let session = cookie["value"].as_str().expect("cookie value").to_string();
    assert!(!session.contains(server.admin_token()), "the cookie carries the admin token itself");
    let by_cookie = |path: &str| {
        server.request_with("GET", path, None, None, &[("Cookie", &format!("{SESSION_COOKIE}={session}"))]).status
    };
    assert_eq!(by_cookie("/api/v1/status/overview"), 200, "the browser's cookie works for the API");

    // Overview: the fleet's card with its four devices, the devices of no fleet.
    let card = browser.wait_for_text(&format!(".fleet-card[data-fleet=\"{FLEET}\"]"), FLEET, WAIT);
    let card_text = card.text().unwrap();
    assert!(card_text.contains('4'), "the card counts 4 devices: {card_text:?}");
    browser.wait_for(".fleet-card[data-fleet=\"\"]", WAIT);
    ui.shot("overview");

    // Devices: every one listed; the fleet filter keeps the fleet's four.
    browser.click("nav a[href=\"#/devices\"]");
    ui.view("devices");
    let row = |uuid: &str| format!("#devices tbody tr[data-uuid={}]", css_string(uuid));
    for uuid in
        [gateway.as_str(), solo.as_str(), hostile.as_str()].into_iter().chain(sims.uuids().iter().map(String::as_str))
    {
        browser.wait_for(&row(uuid), WAIT);
    }
    browser.wait_for_text("#page-info", "of 6", WAIT);
    for uuid in [&gateway, &solo] {
        let differs = api(&server, "GET", &format!("/status/devices/{uuid}"), None, 200)["services"]
            .as_array()
            .expect("services")
            .iter()
            .any(|s| s["differs"] == true);
        let shown = browser.count(&format!("{} .differs", row(uuid))) > 0;
        assert_eq!(shown, differs, "{uuid}: the row marks .differs exactly when the API says a service differs");
    }
    ui.shot("devices");
    browser.select_option("#filter-fleet", FLEET);
    browser.wait_until("the fleet filter to leave the fleet's 4 devices", WAIT, || {
        (browser.count("#devices tbody tr[data-uuid]") == 4 && browser.try_find(&row(&hostile)).is_none()).then_some(())
    });
    assert!(browser.url().contains("fleet=lab"), "the filter is in the hash: {}", browser.url());
    ui.shot("devices-filtered");

    // The real gateway: its services table shows the digest it runs.
    browser.click(&format!("{} a.device-link", row(&gateway)));
    ui.view("device");
    assert_eq!(browser.attribute("#view", "data-uuid").as_deref(), Some(gateway.as_str()));
    browser.wait_for_text("#services tbody tr", &hex_of(&v1_digest)[..12], WAIT);
    ui.shot("device");

    // Fleet: release 1 current; release 2 made from the form as JSON.
    browser.click("nav a[href=\"#/fleets\"]");
    ui.view("fleets");
    browser.click(&format!("#fleets tbody tr[data-fleet=\"{FLEET}\"] a.fleet-link"));
    ui.view("fleet");
    browser.wait_for(&format!("#releases tbody tr.current[data-release=\"{r1}\"]"), WAIT);
    browser.select_option("#release-format", "json");
    browser.fill("#release-body", &release_body(&format!("{repository}:v2")).to_string());
    browser.click("#release-create");
    let r2 = browser.wait_until("release 2 in the API", WAIT, || {
        let releases = api(&server, "GET", &format!("/fleets/{FLEET}/releases"), None, 200);
        releases["releases"].as_array()?.iter().filter_map(|r| r["id"].as_u64()).find(|id| *id != r1)
    });
    let release2 = api(&server, "GET", &format!("/fleets/{FLEET}/releases/{r2}"), None, 200);
    assert_eq!(services_of(&release2)[0].3, pinned_v2, "the form's release pinned v2: {release2:#}");
    browser.wait_for(&format!("#releases tbody tr[data-release=\"{r2}\"]"), WAIT);
    browser.wait_for(&format!("#rollout-release option[value=\"{r2}\"]"), WAIT);

    // A rollout of release 2: the dry run's waves, then confirmed.
    browser.select_option("#rollout-release", &r2.to_string());
    browser.fill("#rollout-waves", "25,100");
    browser.fill("#rollout-bake", "0s");
    browser.fill("#rollout-success", "100");
    browser.fill("#rollout-max-failures", "0");
    browser.click("#rollout-dryrun");
    browser.wait_for("#dryrun-result .dryrun-wave[data-wave=\"2\"]", WAIT);
    let plan = json!({"release": r2, "waves": [{"percent": 25}, {"percent": 100}], "bakeTime": "0s",
                      "successPercent": 100, "maxFailures": {"count": 0}, "dryRun": true});
    let dry = api(&server, "POST", &format!("/fleets/{FLEET}/rollouts"), Some(plan), 200);
    let expected: Vec<Vec<String>> = vec![vec![gateway.clone()], sims.uuids()];
    for (i, uuids) in expected.iter().enumerate() {
        assert_eq!(dry["waves"][i]["devices"], json!(uuids), "the API's dry run: {dry:#}");
        let shown = ui.dry_run_wave(i + 1);
        assert_eq!(shown.len(), uuids.len(), "wave {}: {shown:?}", i + 1);
        for (li, uuid) in shown.iter().zip(uuids) {
            assert!(li.contains(uuid.as_str()), "wave {} lists {uuid}: {shown:?}", i + 1);
        }
    }
    assert_eq!(browser.count("#dryrun-result .dryrun-wave"), 2);
    assert_eq!(
        api(&server, "GET", &format!("/fleets/{FLEET}/rollouts"), None, 200)["rollouts"],
        json!([]),
        "a dry run stores nothing"
    );
    ui.shot("fleet-dryrun");
    browser.click("#rollout-confirm");
    ui.view("rollout");
    let id: u64 = browser
        .attribute("#view", "data-rollout")
        .and_then(|id| id.parse().ok())
        .unwrap_or_else(|| panic!("no data-rollout on the rollout view\n{}", browser.diagnostics()));
    let rollout_path = format!("/fleets/{FLEET}/rollouts/{id}");
    let rollout = api(&server, "GET", &rollout_path, None, 200);
    assert_eq!(rollout["release"], r2, "{rollout:#}");
    assert_eq!(waves_of(&rollout), expected, "the rollout got the dry run's waves: {rollout:#}");
    assert_eq!(rollout["plan"]["bakeTime"], "0s", "{rollout:#}");
    assert_eq!(rollout["plan"]["maxFailures"]["count"], 0, "{rollout:#}");

    // Pause and resume from the page; the API agrees. The simulated devices hold the
    // rollout open: they report nothing of release 2 until told to below.
    browser.wait_for_text("#rollout-state", "running", WAIT);
    ui.shot("rollout");
    browser.click("button[data-action=\"pause\"]");
    browser.wait_for_text("#rollout-state", "paused", WAIT);
    assert_eq!(api(&server, "GET", &rollout_path, None, 200)["state"], "paused");
    ui.shot("rollout-paused");
    browser.click("button[data-action=\"resume\"]");
    browser.wait_for_text("#rollout-state", "running", WAIT);
    assert_eq!(api(&server, "GET", &rollout_path, None, 200)["state"], "running");

    // The overview shows the rollout, one bar per wave; and reads on a phone.
    browser.click("nav a[href=\"#/\"]");
    ui.view("overview");
    let bars = format!(".rollout[data-rollout=\"{id}\"] progress");
    browser
        .wait_until("the rollout's two wave bars on the overview", WAIT, || (browser.count(&bars) == 2).then_some(()));
    ui.shot("overview-rollout");
    browser.set_window_size(390, 844);
    browser.wait_for(&format!(".fleet-card[data-fleet=\"{FLEET}\"]"), WAIT);
    let widths = browser.execute("return [document.documentElement.scrollWidth, window.innerWidth]", &[]);
    assert!(widths[0].as_u64() <= widths[1].as_u64(), "the overview is wider than a 390 px phone: {widths}");
    ui.shot("overview-phone");
    browser.set_window_size(1280, 900);

    // The gateway takes release 2 (wave 1); the simulated devices then take it (wave 2) and
    // the rollout ends; its page says so by itself.
    agent.converge("the gateway runs release 2 and reports it passed", || {
        let service = reported(&server, &gateway);
        service["imageName"] == pinned_v2.as_str() && service["probation"] == "passed"
    });
    let running = docker.containers_with_label(&format!("io.pinion.app-id={APP}"));
    assert!(
        running.iter().any(|c| c["Config"]["Image"] == pinned_v2.as_str() && c["State"]["Running"] == true),
        "the gateway's container runs v2: {running:#?}"
    );

    // Wave 2 starts once the gateway is healthy. Midway through it (one simulated device
    // healthy, one in probation, one yet to poll) each row shows the state the API gives.
    let wave2 = wait_for(BOUND, || (api(&server, "GET", &rollout_path, None, 200)["currentWave"] == 2).then_some(()));
    assert!(wave2.is_some(), "wave 2 never started: {:#}", api(&server, "GET", &rollout_path, None, 200));
    let sim = sims.uuids();
    assert!(matches!(sims.device(&sim[0]).step_healthy(), Round::NewTarget(_)), "{} gets release 2", sim[0]);
    assert_eq!(sims.device(&sim[0]).step_healthy(), Round::Passed);
    assert!(matches!(sims.device(&sim[1]).step_healthy(), Round::NewTarget(_)), "{} gets release 2", sim[1]);
    let states = wait_for(BOUND, || {
        let states = device_states(&api(&server, "GET", &rollout_path, None, 200));
        (states[&sim[0]].1 == "healthy" && states[&sim[1]].1 == "updating").then_some(states)
    })
    .unwrap_or_else(|| panic!("midway states: {:#}", api(&server, "GET", &rollout_path, None, 200)));
    ui.open(&format!("/fleet/{FLEET}/rollout/{id}"));
    ui.view("rollout");
    for (uuid, (wave, state, _)) in &states {
        let shown = browser.wait_for_text(&format!("#rollout-devices tbody tr[data-uuid=\"{uuid}\"]"), state, WAIT);
        let text = shown.text().unwrap_or_default();
        assert!(text.contains(&wave.to_string()), "{uuid}: wave {wave} in {text:?}");
    }
    browser.set_window_size(1280, 1180);
    ui.shot("rollout-midway");
    browser.set_window_size(1280, 900);

    let done = wait_for(BOUND, || {
        sims.step_healthy(|_| true);
        (api(&server, "GET", &rollout_path, None, 200)["state"] == "succeeded").then_some(())
    });
    assert!(
        done.is_some(),
        "the rollout did not succeed: {:#}\n{}",
        api(&server, "GET", &rollout_path, None, 200),
        server.log()
    );
    ui.open(&format!("/fleet/{FLEET}/rollout/{id}"));
    ui.view("rollout");
    browser.wait_for_text("#rollout-state", "succeeded", WAIT);
    browser.wait_for(".wave[data-wave=\"2\"] progress", WAIT);
    for uuid in expected.concat() {
        browser.wait_for_text(&format!("#rollout-devices tbody tr[data-uuid=\"{uuid}\"]"), "healthy", WAIT);
    }
    ui.shot("rollout-succeeded");

    // The gateway's page after it: v2 runs, version 1 is there to roll back to.
    ui.open(&format!("/device/{gateway}"));
    ui.view("device");
    browser.wait_for_text("#services tbody tr", &hex_of(&v2_digest)[..12], WAIT);
    browser.wait_for("#history li[data-version=\"1\"] button[data-action=\"rollback\"]", WAIT);
    assert_eq!(browser.count("#history li[data-version=\"2\"] button[data-action=\"rollback\"]"), 0);
    ui.shot("device-after-rollout");

    // Device rollback from its history: version 1 again, as version 3.
    ui.open(&format!("/device/{solo}"));
    ui.view("device");
    browser.wait_for("#history li[data-version=\"2\"]", WAIT);
    assert_eq!(
        browser.count("#history li[data-version=\"2\"] button[data-action=\"rollback\"]"),
        0,
        "no rollback to the current version"
    );
    browser.click("#history li[data-version=\"1\"] button[data-action=\"rollback\"]");
    browser.wait_for("#history li[data-version=\"3\"]", WAIT);
    let target = server.get_target_state(&solo).json();
    assert_eq!(target["version"], 3, "{target:#}");
    assert_eq!(services_of(&target)[0].3, pinned_v1, "version 3 is version 1's: {target:#}");
    let history = api(&server, "GET", &format!("/devices/{solo}/target-state/history"), None, 200);
    assert_eq!(history["versions"][0]["source"], "rollback", "{history:#}");
    ui.shot("device-rollback");

    // Provisioning keys: the secret once, working; gone from the page afterwards; revoked.
    browser.click("nav a[href=\"#/keys\"]");
    ui.view("keys");
    let description = format!("dashboard key {run}");
    browser.fill("#key-description", &description);
    browser.click("#key-create");
    let secret = browser.wait_until("#key-secret to show the secret", WAIT, || {
        browser
            .try_find("#key-secret")
            .and_then(|e| e.text().ok())
            .map(|t| t.trim().to_string())
            .filter(|t| t.len() >= 16)
    });
    let keys = api(&server, "GET", "/provisioning-keys", None, 200);
    let key = keys["provisioningKeys"]
        .as_array()
        .expect("keys")
        .iter()
        .find(|k| k["description"] == description.as_str())
        .unwrap_or_else(|| panic!("the key made in the page is not in the API: {keys:#}"))
        .clone();
    let key_id = key["id"].as_str().expect("key id").to_string();
    assert!(!keys.to_string().contains(&secret), "the API lists the secret");
    SimulatedDevice::register(&server, &secret, &format!("{run}-keyed"));
    ui.shot("keys-created");
    browser.click("nav a[href=\"#/\"]");
    ui.view("overview");
    browser.click("nav a[href=\"#/keys\"]");
    ui.view("keys");
    let key_row = format!("#keys tbody tr[data-key={}]", css_string(&key_id));
    browser.wait_for(&key_row, WAIT);
    assert!(!ui.page_text().contains(&secret), "the secret is shown again:\n{}", ui.page_text());
    let html = browser.execute("return document.documentElement.outerHTML", &[]);
    assert!(!html.as_str().unwrap_or_default().contains(&secret), "the secret is still in the page");
    ui.shot("keys");
    browser.click(&format!("{key_row} button[data-action=\"revoke\"]"));
    browser.wait_until("the key revoked in the API", WAIT, || {
        let keys = api(&server, "GET", "/provisioning-keys", None, 200);
        keys["provisioningKeys"].as_array()?.iter().find(|k| k["id"] == key_id.as_str())?["revokedAt"]
            .as_str()
            .map(drop)
    });
    let again = json!({"uuid": format!("{run}-late"), "deviceName": "late", "deviceApiKey": random_hex(32)});
    let reply = server.request("POST", "/api/v1/device/register", Some(&again), Some(&secret));
    assert_eq!(reply.status, 401, "a revoked key registers nothing: {}", reply.body);

    // The images view answers.
    browser.click("nav a[href=\"#/images\"]");
    ui.view("images");
    ui.shot("images");

    // Hostile text: shown as text in the list and on the device's page, nothing injected.
    browser.click("nav a[href=\"#/devices\"]");
    ui.view("devices");
    browser.wait_for_text(&row(&hostile), HOSTILE_NAME, WAIT);
    ui.assert_nothing_injected("the devices list");
    ui.shot("hostile-devices");
    browser.click(&format!("{} a.device-link", row(&hostile)));
    ui.view("device");
    browser.wait_for_text("#services tbody tr", HOSTILE_SERVICE, WAIT);
    browser.wait_for_text("#services tbody tr", HOSTILE_ERROR, WAIT);
    assert!(ui.page_text().contains(HOSTILE_NAME), "the device's name is shown as text:\n{}", ui.page_text());
    ui.assert_nothing_injected("the device view");
    ui.shot("hostile-device");

    // A session that goes away (the cookie deleted, as when it expires): the next refresh
    // is refused, the sign-in view shows and keeps the place; signing in returns to it.
    let place = browser.url();
    browser.delete_cookies();
    ui.view("signin");
    assert_eq!(browser.url(), place, "the sign-in view keeps the hash");
    browser.fill("#signin-token", server.admin_token());
    browser.click("#signin-submit");
    ui.view("device");
    assert_eq!(browser.attribute("#view", "data-uuid").as_deref(), Some(hostile.as_str()));
    let cookie = browser.cookie(SESSION_COOKIE).expect("a new session cookie");
    let session = cookie["value"].as_str().expect("cookie value").to_string();
    let by_cookie = |path: &str| {
        server.request_with("GET", path, None, None, &[("Cookie", &format!("{SESSION_COOKIE}={session}"))]).status
    };
    assert_eq!(by_cookie("/api/v1/session"), 200);

    // Sign-out: the sign-in view; the browser's cookie is gone and the old session dead.
    browser.click("#signout");
    ui.view("signin");
    assert_eq!(ui.fetch_status("/api/v1/status/overview"), 401, "the page's fetch after sign-out");
    assert!(browser.cookie(SESSION_COOKIE).is_none_or(|c| c["value"] == ""), "{:?}", browser.cookies());
    assert_eq!(by_cookie("/api/v1/status/overview"), 401, "the old session's cookie still works after sign-out");
    assert_eq!(by_cookie("/api/v1/session"), 401);
    ui.shot("signed-out");

    // The pages broke no rule of their CSP and threw nothing.
    let console = browser.console();
    let broken: Vec<&String> =
        console.iter().filter(|l| l.contains("Content Security Policy") || l.contains("Uncaught")).collect();
    assert!(broken.is_empty(), "the browser console:\n{}", console.join("\n"));

    if std::env::var("PINION_UPDATE_DOCS_SCREENSHOTS").as_deref() == Ok("1") {
        let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs");
        std::fs::create_dir_all(&docs).expect("creating docs/");
        for (shot, name) in
            [("overview-rollout", "overview"), ("device-after-rollout", "device"), ("rollout-midway", "rollout")]
        {
            let to = docs.join(format!("dashboard-{name}.png"));
            std::fs::copy(shots.join(format!("{shot}.png")), &to).unwrap_or_else(|e| panic!("{}: {e}", to.display()));
        }
    }
    eprintln!(
        "dashboard: {:?} in all ({setup:?} setting up), screenshots in {}; {refused:?} for a wrong token",
        started.elapsed(),
        shots.display()
    );
}
