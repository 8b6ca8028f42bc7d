//! Moving a fleet's data between stores (issue 16), with the real binaries:
//! `pinion-server migrate-store` copies a SQLite server's database into an empty
//! PostgreSQL one, and a replica started on it with the SQLite server's secret key file
//! and admin token carries on where that server stopped — the same poll answers byte for
//! byte under the same ETags (registry passwords sealed by the SQLite server open), the
//! same histories and listings, and device, version, release, rollout, log and event
//! numbers that continue after the copied ones. A target that is not empty or not
//! PostgreSQL, and a source that does not exist, are refused without a change; so is a
//! replica with another key file or another admin token. `pinion-server backup` takes a
//! snapshot of a SQLite database while its server writes, and a server on the snapshot
//! answers each device's poll exactly as the original did at the version the snapshot
//! holds.
//!
//! Images are pinned by digest on registry hosts that are never asked; one followed tag is
//! on a real Debian docker-registry (the digest cache, followed images, a pending update).
//! PostgreSQL is the test cluster `PINION_TEST_POSTGRES` names (`eval "$(scripts/
//! postgres-cluster start)"`), a new database per test.

use pinion_tests::fleet_api::{expect, fleet_with_key, one_service_release};
use pinion_tests::postgres::new_database;
use pinion_tests::simulated::SimulatedDevice;
use pinion_tests::util::{demo_target, free_port, random_hex, sha256_digest, wait_for, TempDir};
use pinion_tests::{push_image, run_cli, run_cli_with_env, ApiReply, Auth, CliOutput, ImageSpec, Registry, Server};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// Registry hosts of pinned images: named (credentials are kept per host), never asked.
const REGISTRY: &str = "registry.example.test:5000";
const OTHER_REGISTRY: &str = "other.example.test";
/// Bounds what the tests wait for; nothing here is a timing check.
const PATIENCE: Duration = Duration::from_secs(60);
/// gw-0's kept versions, all of them.
const GW0_HISTORY: &str = "/api/v1/devices/gw-0/target-state/history?limit=1000";
/// How long a `serve` expected to refuse may run before it is killed as having started.
const REFUSAL_DEADLINE: Duration = Duration::from_secs(60);

/// `repository@sha256:…`, the digest made from `seed`.
fn pinned(repository: &str, seed: &str) -> String {
    format!("{repository}@{}", sha256_digest(seed.as_bytes()))
}

/// A target of one app whose services run `images`, with `config` as its variables.
fn target(images: &[&str], config: Value) -> Value {
    let mut target = demo_target(images);
    target["config"] = config;
    target
}

/// `GET /device/{uuid}/state` with the device's key, and `If-None-Match` when given.
fn poll(server: &Server, uuid: &str, key: &str, if_none_match: Option<&str>) -> ApiReply {
    let mut headers = vec![("X-Device-API-Key", key)];
    headers.extend(if_none_match.map(|etag| ("If-None-Match", etag)));
    server.send_bytes("GET", &format!("/api/v1/device/{uuid}/state"), &headers, Vec::new())
}

/// A poll answer as its device received it.
#[derive(Debug, Clone, PartialEq)]
struct Answer {
    etag: String,
    body: String,
}

/// The `200` answer to a poll without `If-None-Match`; panics on anything else.
fn answer(server: &Server, uuid: &str, key: &str) -> Answer {
    let reply = poll(server, uuid, key, None);
    assert_eq!(reply.status, 200, "poll of {uuid}: {}\nserver log:\n{}", reply.body, server.log());
    let etag = reply.header("etag").unwrap_or_else(|| panic!("poll of {uuid} without an ETag: {}", reply.body));
    Answer { etag: etag.to_string(), body: reply.body.clone() }
}

/// A poll with `If-None-Match: <etag>` is `304 Not Modified` with the same ETag.
fn assert_not_modified(server: &Server, uuid: &str, key: &str, etag: &str) {
    let reply = poll(server, uuid, key, Some(etag));
    assert_eq!(reply.status, 304, "poll of {uuid} with If-None-Match {etag}: {}", reply.body);
    assert_eq!(reply.header("etag"), Some(etag), "the ETag of the 304 for {uuid}");
}

/// The SQLite database of a `Server`, and its secret key file (the default beside it).
fn db_of(server: &Server) -> PathBuf {
    server.dir().join("server.db")
}

fn key_file_of(server: &Server) -> PathBuf {
    server.dir().join("server.secret-key")
}

fn text(path: &Path) -> String {
    path.display().to_string()
}

/// `pinion-server migrate-store --from FROM --to TO`.
fn migrate(from: &str, to: &str) -> CliOutput {
    run_cli(&["migrate-store", "--from", from, "--to", to])
}

/// `migrate`, which must succeed.
fn migrated(from: &Path, to: &str) -> CliOutput {
    let out = migrate(&text(from), to);
    assert_eq!(out.code, Some(0), "migrate-store --from {} --to {to}: {out}", from.display());
    out
}

/// `pinion-server serve` on `db` as a replica with `key_file` and `admin_token`, expected
/// to refuse to start: what it said before it exited (or was killed, still running).
fn refused_replica(db: &str, admin_token: &str, key_file: &Path) -> CliOutput {
    let listen = format!("127.0.0.1:{}", free_port());
    let args = ["serve", "--listen", &listen, "--db", db, "--secret-key-file", &text(key_file)];
    let out = run_cli_with_env(&args, &[("PINION_ADMIN_TOKEN", admin_token)], REFUSAL_DEADLINE);
    assert!(!out.timed_out, "the replica started instead of refusing: {out}");
    assert!(out.code.is_some_and(|code| code != 0), "the replica must exit non-zero: {out}");
    out
}

/// Rows of every table of the SQLite database at `path` (SQLite's own `sqlite_*` aside).
fn sqlite_row_counts(path: &Path) -> BTreeMap<String, i64> {
    let conn = rusqlite::Connection::open(path).unwrap_or_else(|e| panic!("opening {}: {e}", path.display()));
    let tables: Vec<String> = conn
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite%'")
        .unwrap()
        .query_map([], |row| row.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    tables
        .into_iter()
        .map(|table| {
            let rows = conn.query_row(&format!("SELECT count(*) FROM {table}"), [], |row| row.get(0)).unwrap();
            (table, rows)
        })
        .collect()
}

fn postgres_client(url: &str) -> postgres::Client {
    postgres::Client::connect(url, postgres::NoTls).unwrap_or_else(|e| panic!("connecting to {url}: {e}"))
}

/// Rows of each of `tables` in the PostgreSQL database at `url`.
fn postgres_row_counts<'a>(url: &str, tables: impl IntoIterator<Item = &'a String>) -> BTreeMap<String, i64> {
    let mut client = postgres_client(url);
    tables
        .into_iter()
        .map(|table| {
            let rows = client
                .query_one(&format!("SELECT count(*) FROM {table}"), &[])
                .unwrap_or_else(|e| panic!("counting the rows of {table} in PostgreSQL: {e}"))
                .get(0);
            (table.clone(), rows)
        })
        .collect()
}

/// Every row of every table of the PostgreSQL database at `url`, as text, sorted, and
/// where each table's numbering stands: to tell whether anything changed.
fn postgres_contents(url: &str) -> BTreeMap<String, Vec<String>> {
    let mut client = postgres_client(url);
    let tables: Vec<String> = client
        .query("SELECT tablename::text FROM pg_tables WHERE schemaname = 'public'", &[])
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    let mut contents: BTreeMap<String, Vec<String>> = tables
        .into_iter()
        .map(|table| {
            let rows = client.query(&format!("SELECT t::text FROM {table} t ORDER BY 1"), &[]).unwrap();
            let rows = rows.iter().map(|row| row.get(0)).collect();
            (table, rows)
        })
        .collect();
    let sequences = client
        .query("SELECT sequencename::text || ' ' || coalesce(last_value, 0)::text FROM pg_sequences", &[])
        .unwrap();
    contents.insert("(sequences)".into(), sequences.iter().map(|row| row.get(0)).collect());
    contents
}

/// A release of fleet `plant` whose one service runs an image pinned from `n`; its number.
fn plant_release(server: &Server, n: u32) -> u64 {
    let image = pinned(&format!("{REGISTRY}/plant/app"), &format!("release {n}"));
    let body = one_service_release(1, "plant", "app", &image);
    let release = expect(server, "POST", "/api/v1/fleets/plant/releases", Some(body), 201);
    release["id"].as_u64().unwrap_or_else(|| panic!("no release number in {release:#}"))
}

/// `GET path` as the operator, for each of `paths`: what a migration must keep.
fn views(server: &Server, paths: &[String]) -> BTreeMap<String, Value> {
    paths.iter().map(|path| (path.clone(), expect(server, "GET", path, None, 200))).collect()
}

/// A SQLite server with one registered device (`solo`, target version 2 on `REGISTRY`,
/// whose stored credentials it receives), stopped: the database to migrate.
fn small_history() -> (Server, SimulatedDevice) {
    let mut server = Server::start(&[]);
    let provisioning_key = server.provisioning_key();
    let mut solo = SimulatedDevice::register(&server, &provisioning_key, "solo");
    for version in 1..=2 {
        let image = pinned(&format!("{REGISTRY}/solo"), &format!("solo v{version}"));
        let reply = server.set_target_state("solo", &target(&[&image], json!({})));
        assert_eq!(reply.status, 200, "{}", reply.body);
    }
    let credentials = json!({"username": "fleet", "password": "solo-password"});
    expect(&server, "PUT", &format!("/api/v1/registries/{REGISTRY}/credentials"), Some(credentials), 200);
    assert!(solo.poll().is_some(), "solo's first poll");
    server.stop();
    (server, solo)
}

#[test]
fn a_migrated_store_answers_as_the_sqlite_server_did_and_numbers_on() {
    let registry = Registry::start(Auth::Anonymous);
    // Followed tags are asked again every second: the moved tag below becomes a pending
    // update without waiting.
    let mut sqlite = Server::start(&["--refresh-interval", "1", "--rollout-interval", "1"]);
    let server = &sqlite;
    let provisioning_key = server.provisioning_key();

    // Three gateways of their own, with three versions each (gw-2's third a rollback).
    let mut devices: Vec<SimulatedDevice> = ["gw-0", "gw-1", "gw-2"]
        .iter()
        .map(|uuid| SimulatedDevice::register(server, &provisioning_key, uuid))
        .collect();
    for version in 1..=3 {
        let image = pinned("busybox", &format!("gw-0 v{version}"));
        let state = target(&[&image], json!({"SITE": "north", "VERSION": version.to_string()}));
        assert_eq!(server.set_target_state("gw-0", &state).status, 200);
        let app = pinned(&format!("{REGISTRY}/app"), &format!("gw-1 v{version}"));
        let agent = pinned(&format!("{OTHER_REGISTRY}/agent"), &format!("gw-1 v{version}"));
        assert_eq!(server.set_target_state("gw-1", &target(&[&app, &agent], json!({}))).status, 200);
    }
    let tracked = format!("{}/track/app:stable", registry.host());
    push_image(&registry, "track/app", "stable", &ImageSpec::linux_amd64("track app 1"));
    for version in 1..=2 {
        let side = pinned(&format!("{REGISTRY}/side"), &format!("gw-2 v{version}"));
        let reply = server.set_target_state("gw-2", &target(&[&tracked, &side], json!({})));
        assert_eq!(reply.status, 200, "{}", reply.body);
    }
    let rollback =
        expect(server, "POST", "/api/v1/devices/gw-2/target-state/rollback", Some(json!({"version": 1})), 200);
    assert_eq!(rollback["version"], 3, "{rollback:#}");
    // gw-2 takes moved tags only when told: the tag moves, and waits as a pending update.
    let policy = json!({"autoUpdate": false, "updateWindow": {"start": "02:00", "end": "04:00"}});
    expect(server, "PUT", "/api/v1/devices/gw-2/update-policy", Some(policy), 200);
    push_image(&registry, "track/app", "stable", &ImageSpec::linux_amd64("track app 2"));
    let pending = wait_for(PATIENCE, || {
        let pending = expect(server, "GET", "/api/v1/devices/gw-2/pending-updates", None, 200);
        (pending["pendingUpdates"].as_array().is_some_and(|p| !p.is_empty())).then_some(pending)
    });
    assert!(pending.is_some(), "the moved tag never became a pending update of gw-2:\n{}", server.log());

    // Registry credentials: for every device, and for gw-1 alone.
    let fleet_password = format!("fleet-{}", random_hex(8));
    let gw1_password = format!("gw1-{}", random_hex(8));
    let every = json!({"username": "fleet", "password": fleet_password});
    expect(server, "PUT", &format!("/api/v1/registries/{REGISTRY}/credentials"), Some(every), 200);
    let own = json!({"username": "gw1", "password": gw1_password, "devices": ["gw-1"]});
    expect(server, "PUT", &format!("/api/v1/registries/{OTHER_REGISTRY}/credentials"), Some(own), 200);

    // A fleet of two on release 1, and a rollout of release 2 paused after its first wave.
    let fleet_key = fleet_with_key(server, "plant", json!({"description": "two gateways"}));
    for uuid in ["plant-0", "plant-1"] {
        devices.push(SimulatedDevice::register(server, &fleet_key, uuid));
    }
    expect(server, "PUT", "/api/v1/devices/plant-0/labels", Some(json!({"ring": "canary"})), 200);
    let (r1, r2) = (plant_release(server, 1), plant_release(server, 2));
    let set = expect(server, "PUT", "/api/v1/fleets/plant/release", Some(json!({"release": r1})), 200);
    assert_eq!(set["devicesUpdated"], 2, "{set:#}");
    let plan = json!({"release": r2, "bakeTime": "1h", "waves": [{"labels": {"ring": "canary"}}, {"percent": 100}]});
    let rollout = expect(server, "POST", "/api/v1/fleets/plant/rollouts", Some(plan), 201)["id"].as_u64().unwrap();
    let paused = expect(server, "POST", &format!("/api/v1/fleets/plant/rollouts/{rollout}/pause"), None, 200);
    assert_eq!(paused["state"], "paused", "{paused:#}");

    // Every device polls and reports; gw-0 sends logs and a metrics sample too.
    let gw0_key = devices[0].key().to_string();
    report_metrics(server, "gw-0", &gw0_key, 12);
    for device in devices.iter_mut() {
        let target = device.poll().unwrap_or_else(|| panic!("{}: no target", device.uuid));
        device.report_running(&target, "passed");
    }
    let logs: String = (0..3)
        .map(|i| {
            format!(
                "{}\n",
                json!({"message": format!("line {i}"), "timestamp": 1_700_000_000_000i64 + i, "serviceName": "svc1"})
            )
        })
        .collect();
    let headers = [("X-Device-API-Key", gw0_key.as_str()), ("Content-Type", "application/x-ndjson")];
    let reply = server.send_bytes("POST", "/api/v1/device/gw-0/logs", &headers, logs.into_bytes());
    assert_eq!(reply.status, 200, "{}", reply.body);
    // The canary's report judged (healthy), so that nothing about the rollout is left to
    // change when the views below are recorded.
    let rollout_path = format!("/api/v1/fleets/plant/rollouts/{rollout}");
    let settled = wait_for(PATIENCE, || {
        (expect(server, "GET", &rollout_path, None, 200)["waves"][0]["healthy"] == 1).then_some(())
    });
    assert!(
        settled.is_some(),
        "the canary never counted as healthy: {:#}",
        expect(server, "GET", &rollout_path, None, 200)
    );
    // A provisioning key revoked, beside the one still in use.
    let old = expect(server, "POST", "/api/v1/provisioning-keys", Some(json!({"description": "old batch"})), 201);
    expect(server, "DELETE", &format!("/api/v1/provisioning-keys/{}", old["id"].as_str().unwrap()), None, 200);

    // What the devices and the operator see, before.
    let answers: BTreeMap<String, Answer> =
        devices.iter().map(|d| (d.uuid.clone(), answer(server, &d.uuid, d.key()))).collect();
    assert!(!answers["gw-0"].body.contains("registryAuth"), "gw-0 pulls from no registry with credentials");
    let gw1 = &answers["gw-1"].body;
    assert!(gw1.contains(&fleet_password) && gw1.contains(&gw1_password), "both of gw-1's credentials: {gw1}");
    for uuid in ["gw-2", "plant-0", "plant-1"] {
        assert!(answers[uuid].body.contains(&fleet_password), "{uuid}: {}", answers[uuid].body);
    }
    let mut paths: Vec<String> = [
        "/api/v1/devices",
        "/api/v1/registries",
        "/api/v1/provisioning-keys",
        "/api/v1/fleets",
        "/api/v1/fleets/plant",
        "/api/v1/fleets/plant/releases",
        "/api/v1/fleets/plant/rollouts",
        "/api/v1/events?limit=1000",
        "/api/v1/devices/gw-0/logs",
        "/api/v1/devices/gw-0/metrics",
        "/api/v1/devices/gw-2/update-policy",
        "/api/v1/devices/gw-2/pending-updates",
    ]
    .map(String::from)
    .to_vec();
    paths.push(rollout_path);
    paths.push(format!("/api/v1/fleets/plant/releases/{r2}"));
    for uuid in answers.keys() {
        for view in ["", "/target-state", "/target-state/history?limit=1000", "/current-state"] {
            paths.push(format!("/api/v1/devices/{uuid}{view}"));
        }
    }
    let before = views(server, &paths);
    let old_ids: Vec<u64> =
        before["/api/v1/devices"]["devices"].as_array().unwrap().iter().map(|d| d["id"].as_u64().unwrap()).collect();
    let last_event = before["/api/v1/events?limit=1000"]["events"][0]["id"].as_u64().expect("events were recorded");
    sqlite.stop();

    // The copy: every table of the SQLite database, row for row.
    let db = new_database();
    let out = migrated(&db_of(&sqlite), &db);
    let sqlite_rows = sqlite_row_counts(&db_of(&sqlite));
    for table in [
        "devices",
        "target_states",
        "device_images",
        "provisioning_keys",
        "device_logs",
        "device_metrics",
        "image_digests",
        "update_policies",
        "pending_updates",
        "registry_credentials",
        "device_registries",
        "fleets",
        "releases",
        "rollouts",
        "rollout_devices",
        "events",
        "settings",
    ] {
        assert!(sqlite_rows.get(table).is_some_and(|&n| n > 0), "the history leaves {table} empty: {sqlite_rows:?}");
    }
    assert_eq!(postgres_row_counts(&db, sqlite_rows.keys()), sqlite_rows, "rows per table, PostgreSQL against SQLite");
    for (table, rows) in &sqlite_rows {
        assert!(out.stderr.contains(&format!("{table}: {rows} rows")), "migrate-store does not report {table}: {out}");
    }
    assert!(out.stderr.contains(&text(&key_file_of(&sqlite))), "the key file the replicas need is named: {out}");

    // A replica on the copy, with the SQLite server's key file and admin token.
    let replica = Server::start_replica(&db, sqlite.admin_token(), &key_file_of(&sqlite), &[]);
    for device in &devices {
        let old = &answers[&device.uuid];
        let new = answer(&replica, &device.uuid, device.key());
        assert_eq!(new.etag, old.etag, "{}: the ETag after the migration", device.uuid);
        assert_eq!(new.body, old.body, "{}: the poll answer after the migration", device.uuid);
        assert_not_modified(&replica, &device.uuid, device.key(), &old.etag);
    }
    let after = views(&replica, &paths);
    for path in &paths {
        assert_eq!(after[path], before[path], "GET {path} after the migration");
    }

    // Registrations: a registered device keeps its key (another is refused), the
    // provisioning key registers a new device, numbered after the old ones.
    let squatter = json!({"uuid": "gw-0", "deviceApiKey": random_hex(32)});
    let reply = replica.request("POST", "/api/v1/device/register", Some(&squatter), Some(&provisioning_key));
    assert_eq!(reply.status, 409, "gw-0's registration was complete: {}", reply.body);
    let mut newcomer = SimulatedDevice::register(&replica, &provisioning_key, "gw-new");
    let id = expect(&replica, "GET", "/api/v1/devices/gw-new", None, 200)["id"].as_u64().unwrap();
    assert_eq!(id, old_ids.iter().max().unwrap() + 1, "the new device's number after {old_ids:?}");
    assert!(newcomer.poll().is_some(), "the new device polls");

    // Versions, releases, rollouts, events and logs number on.
    let gw0_versions = before[GW0_HISTORY]["versions"].as_array().unwrap().len();
    let image = pinned("busybox", "gw-0 after the migration");
    let reply = replica.set_target_state("gw-0", &target(&[&image], json!({})));
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.json()["version"], gw0_versions as u64 + 1, "gw-0's version after {gw0_versions}");
    let history = expect(&replica, "GET", GW0_HISTORY, None, 200);
    let history = history["versions"].as_array().unwrap();
    assert_eq!(history[0]["version"], gw0_versions as u64 + 1);
    assert_eq!(history[1..], before[GW0_HISTORY]["versions"].as_array().unwrap()[..], "the versions before it");
    let r3 = plant_release(&replica, 3);
    assert_eq!(r3, r2 + 1, "the release after {r2}");
    let aborted = expect(&replica, "POST", &format!("/api/v1/fleets/plant/rollouts/{rollout}/abort"), None, 200);
    assert_eq!(aborted["state"], "aborted", "{aborted:#}");
    let plan = json!({"release": r3, "bakeTime": "1h", "waves": [{"percent": 100}]});
    let new_rollout = expect(&replica, "POST", "/api/v1/fleets/plant/rollouts", Some(plan), 201);
    assert_eq!(new_rollout["id"], rollout + 1, "the rollout after {rollout}: {new_rollout:#}");
    let events = expect(&replica, "GET", "/api/v1/events?limit=1000", None, 200);
    assert!(
        events["events"][0]["id"].as_u64().unwrap() > last_event,
        "events number on after {last_event}: {events:#}"
    );
    let line = json!({"message": "after the migration", "serviceName": "svc1"}).to_string();
    let headers = [("X-Device-API-Key", gw0_key.as_str()), ("Content-Type", "application/x-ndjson")];
    let reply = replica.send_bytes("POST", "/api/v1/device/gw-0/logs", &headers, line.into_bytes());
    assert_eq!(reply.status, 200, "{}", reply.body);
    let logs = expect(&replica, "GET", "/api/v1/devices/gw-0/logs", None, 200);
    assert_eq!(logs["total"], 4, "{logs:#}");
    // A device keeps one sample per interval: gw-1's first is numbered after gw-0's.
    report_metrics(&replica, "gw-1", devices[1].key(), 34);
    let metrics = expect(&replica, "GET", "/api/v1/devices/gw-1/metrics", None, 200);
    assert_eq!(metrics["metrics"][0]["cpu_usage"], 34, "{metrics:#}");
}

/// `uuid` reports no apps and a metrics sample of `cpu_usage`.
fn report_metrics(server: &Server, uuid: &str, key: &str, cpu_usage: u32) {
    let report = json!({uuid: {"apps": {}, "config": {}, "cpu_usage": cpu_usage, "memory_total": 1024}});
    let headers = [("X-Device-API-Key", key), ("Content-Type", "application/json")];
    let reply = server.send_bytes("PATCH", "/api/v1/device/state", &headers, report.to_string().into_bytes());
    assert_eq!(reply.status, 200, "{}", reply.body);
}

#[test]
fn migrate_store_refuses_a_target_with_data_a_target_that_is_not_postgres_and_a_missing_source() {
    let (server, _solo) = small_history();
    let db = new_database();
    migrated(&db_of(&server), &db);
    let copied = postgres_contents(&db);
    assert!(copied["devices"].iter().any(|row| row.contains("solo")), "{copied:#?}");

    let again = migrate(&text(&db_of(&server)), &db);
    assert!(again.code.is_some_and(|code| code != 0), "a second copy into the same database: {again}");
    assert!(again.stderr.contains("not empty"), "the refusal says why: {again}");
    assert_eq!(postgres_contents(&db), copied, "the refused copy changed the target");

    // A database a replica has started on holds only what that replica recorded (its key
    // check and admin token): not empty either.
    let used = new_database();
    let mut early = Server::start_replica(&used, server.admin_token(), &key_file_of(&server), &[]);
    early.stop();
    let before = postgres_contents(&used);
    assert!(!before["settings"].is_empty(), "the replica recorded nothing: {before:#?}");
    let out = migrate(&text(&db_of(&server)), &used);
    assert!(out.code.is_some_and(|code| code != 0), "a copy into a database a replica ran on: {out}");
    assert!(out.stderr.contains("not empty") && out.stderr.contains("settings"), "the refusal says why: {out}");
    assert_eq!(postgres_contents(&used), before, "the refused copy changed the target");

    let dir = TempDir::new("migrate-refusals");
    let not_postgres = dir.join("target.db");
    let out = migrate(&text(&db_of(&server)), &text(&not_postgres));
    assert_eq!(out.code, Some(2), "--to a file: {out}");
    assert!(out.stderr.contains("not a postgres:// URL"), "{out}");
    assert!(!not_postgres.exists(), "--to a file made it");

    let missing = dir.join("missing.db");
    let fresh = new_database();
    let out = migrate(&text(&missing), &fresh);
    assert_eq!(out.code, Some(2), "--from a missing file: {out}");
    assert!(out.stderr.contains("no such database file") && out.stderr.contains(&text(&missing)), "{out}");
    assert!(!missing.exists(), "--from a missing file made it");
    assert!(postgres_contents(&fresh).values().all(Vec::is_empty), "the refused copy wrote to {fresh}");
}

#[test]
fn a_replica_with_another_key_file_or_admin_token_refuses_to_start() {
    let (server, solo) = small_history();
    let db = new_database();
    migrated(&db_of(&server), &db);
    let token = server.admin_token();

    // The passwords were sealed with the SQLite server's key: another key cannot open them.
    let dir = TempDir::new("other-key");
    let other_key = dir.join("other.secret-key");
    let out = refused_replica(&db, token, &other_key);
    assert!(out.stderr.contains(&text(&other_key)), "the refusal names the key file: {out}");
    assert!(out.stderr.contains("secret key"), "{out}");

    // The right key: the first replica starts, records its admin token, and opens them.
    let first = Server::start_replica(&db, token, &key_file_of(&server), &[]);
    let polled = answer(&first, "solo", solo.key());
    assert!(polled.body.contains("solo-password"), "the sealed password opens on the replica: {}", polled.body);

    // A second replica must have the same token.
    let out = refused_replica(&db, &random_hex(24), &key_file_of(&server));
    assert!(out.stderr.contains("PINION_ADMIN_TOKEN"), "the refusal says which token: {out}");
    let second = Server::start_replica(&db, token, &key_file_of(&server), &[]);
    assert_eq!(answer(&second, "solo", solo.key()), polled, "the second replica answers as the first");
    assert_eq!(answer(&first, "solo", solo.key()), polled, "the first replica still answers");
}

/// Writes target versions of `uuid` until `stop`, each followed by the device's poll: the
/// answer of every version, by version.
fn write_versions(server: &Server, device: &SimulatedDevice, stop: &AtomicBool, acked: &AtomicUsize) -> Versions {
    let mut answers = BTreeMap::new();
    for seq in 0.. {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        let image = pinned(&format!("{REGISTRY}/{}", device.uuid), &format!("{} {seq}", device.uuid));
        let reply = server.set_target_state(&device.uuid, &target(&[&image], json!({"SEQ": seq.to_string()})));
        assert_eq!(reply.status, 200, "{}: {}", device.uuid, reply.body);
        let version = reply.json()["version"].as_u64().unwrap();
        answers.insert(version, answer(server, &device.uuid, device.key()));
        acked.fetch_add(1, Ordering::SeqCst);
    }
    answers
}

/// One device's poll answers by target version.
type Versions = BTreeMap<u64, Answer>;

#[test]
fn backup_takes_a_snapshot_while_the_server_writes_that_serves_the_same_answers() {
    let server = Server::start(&[]);
    let provisioning_key = server.provisioning_key();
    let devices: Vec<SimulatedDevice> =
        (0..3).map(|i| SimulatedDevice::register(&server, &provisioning_key, &format!("busy-{i}"))).collect();
    let credentials = json!({"username": "fleet", "password": "backup-password"});
    expect(&server, "PUT", &format!("/api/v1/registries/{REGISTRY}/credentials"), Some(credentials), 200);

    let dir = TempDir::new("backup");
    let backup = dir.join("backup.db");
    let (stop, acked) = (AtomicBool::new(false), AtomicUsize::new(0));
    let backed_up: Mutex<Option<CliOutput>> = Mutex::new(None);
    let (answers, acked_before, acked_after) = std::thread::scope(|scope| {
        let writers: Vec<_> = devices
            .iter()
            .map(|device| {
                let (server, stop, acked) = (&server, &stop, &acked);
                scope.spawn(move || (device.uuid.clone(), write_versions(server, device, stop, acked)))
            })
            .collect();
        let started = wait_for(PATIENCE, || (acked.load(Ordering::SeqCst) >= 10).then_some(()));
        let acked_before = acked.load(Ordering::SeqCst);
        if started.is_some() {
            *backed_up.lock().unwrap() =
                Some(run_cli(&["backup", "--db", &text(&db_of(&server)), "--to", &text(&backup)]));
        }
        let acked_after_backup = acked.load(Ordering::SeqCst);
        // Writes go on after the backup too: it held nothing up for good.
        let went_on = wait_for(PATIENCE, || (acked.load(Ordering::SeqCst) >= acked_after_backup + 6).then_some(()));
        stop.store(true, Ordering::SeqCst);
        let answers: BTreeMap<String, Versions> =
            writers.into_iter().map(|w| w.join().expect("a writer panicked")).collect();
        assert!(started.is_some() && went_on.is_some(), "the writers stalled:\n{}", server.log());
        (answers, acked_before, acked.load(Ordering::SeqCst))
    });
    let out = backed_up.into_inner().unwrap().unwrap();
    assert_eq!(out.code, Some(0), "backup: {out}");
    assert!(out.stderr.contains(&text(&key_file_of(&server))), "the backup's message names the key file: {out}");
    assert!(acked_before > 0 && acked_after > acked_before, "writes before and after the backup");
    println!("backup: {acked_before} versions written before it began, {acked_after} in all");

    // A whole SQLite database, private, with every device.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&backup).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the backup's mode");
    let snapshot = rusqlite::Connection::open_with_flags(&backup, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    let integrity: String = snapshot.query_row("PRAGMA integrity_check", [], |row| row.get(0)).unwrap();
    assert_eq!(integrity, "ok", "PRAGMA integrity_check of the backup");
    let versions: BTreeMap<String, u64> = snapshot
        .prepare("SELECT uuid, target_version FROM devices")
        .unwrap()
        .query_map([], |row| Ok((row.get(0)?, row.get::<_, i64>(1)? as u64)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    drop(snapshot);
    assert_eq!(versions.keys().collect::<Vec<_>>(), answers.keys().collect::<Vec<_>>(), "the devices in the backup");

    // A server on a copy of it, with the key file, answers as the original did at each
    // device's version in the backup (the sealed password included).
    let restored_db = dir.join("restored.db");
    std::fs::copy(&backup, &restored_db).unwrap();
    let restored = Server::start_replica(&text(&restored_db), server.admin_token(), &key_file_of(&server), &[]);
    for device in &devices {
        let version = versions[&device.uuid];
        let original = answers[&device.uuid]
            .get(&version)
            .unwrap_or_else(|| panic!("{}: version {version} in the backup was never acknowledged", device.uuid));
        assert!(original.body.contains("backup-password"), "{}", original.body);
        let served = answer(&restored, &device.uuid, device.key());
        assert_eq!(&served, original, "{} at version {version}: the restored server's poll answer", device.uuid);
        assert_not_modified(&restored, &device.uuid, device.key(), &original.etag);
    }

    // Never over an existing file; never of PostgreSQL.
    let kept = std::fs::read(&backup).unwrap();
    let out = run_cli(&["backup", "--db", &text(&db_of(&server)), "--to", &text(&backup)]);
    assert!(out.code.is_some_and(|code| code != 0), "a backup over an existing file: {out}");
    assert!(out.stderr.contains(&text(&backup)) && out.stderr.contains("exists"), "{out}");
    assert_eq!(std::fs::read(&backup).unwrap(), kept, "the existing file was changed");
    let out = run_cli(&["backup", "--db", "postgres://pinion@db.invalid/fleet", "--to", &text(&dir.join("pg.db"))]);
    assert_eq!(out.code, Some(2), "a backup of PostgreSQL: {out}");
    assert!(out.stderr.contains("backup is for a SQLite database") && out.stderr.contains("pg_dump"), "{out}");
    assert!(!dir.join("pg.db").exists());
}
