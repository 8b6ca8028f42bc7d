//! The server's SQLite file survives a SIGKILL in the middle of writes: every target
//! state the server acknowledged (200) is in the database after the kill with exactly
//! the content it answered with, versions and device rows agree, `PRAGMA
//! integrity_check` passes, and the restarted server serves the newest version. Images
//! are pinned by digest, so no registry is involved. Each round's kill moment and
//! contents come from a printed seed (`PINION_DURABILITY_SEED` replays a run).

use pinion_tests::util::random_hex;
use pinion_tests::Server;
use rusqlite::Connection;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

const ROUNDS: u64 = 10;
/// Writers 0 and 1 share a device (their versions interleave), writer 2 has its own.
const DEVICES: [&str; 3] = ["durable-shared", "durable-shared", "durable-own"];
/// Fixes the first round's seed; later rounds use the following numbers.
const SEED_ENV: &str = "PINION_DURABILITY_SEED";
/// Guards against a server that stops answering; not a timing check.
const ACK_DEADLINE: Duration = Duration::from_secs(120);
/// Keys the `POST` answer adds to the stored state.
const ANSWER_ONLY_KEYS: [&str; 4] = ["status", "uuid", "version", "resolution"];

/// SplitMix64: a small seeded stream, so a round's choices can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn hex(&mut self, chars: usize) -> String {
        (0..chars).map(|_| char::from_digit(self.below(16) as u32, 16).unwrap()).collect()
    }
}

/// A write the server acknowledged: the state it answered with is what must be stored.
#[derive(Debug)]
struct Acked {
    uuid: String,
    version: u64,
    state: Value,
}

/// What the writers share with the round.
#[derive(Default)]
struct Shared {
    acked: Mutex<Vec<Acked>>,
    acked_count: AtomicUsize,
    /// Set just before the SIGKILL: a request failing earlier is a failure of the server.
    killed: AtomicBool,
    /// Requests sent and not yet answered, by writer.
    in_flight: [AtomicBool; DEVICES.len()],
}

/// A target state with one to three services pinned by digest and a padding field of
/// seeded length (an extra key, kept as sent), so that writes span varying page counts.
fn target_state(rng: &mut Rng, writer: usize, seq: u64) -> Value {
    let services: BTreeMap<String, Value> = (1..=1 + rng.below(3))
        .map(|id| {
            let image = format!("nginx@sha256:{}", rng.hex(64));
            let service = json!({"serviceId": id, "serviceName": format!("s{id}"), "imageName": image,
                "config": {"image": image, "environment": {"SEQ": seq.to_string()}, "restart": "always"}});
            (id.to_string(), service)
        })
        .collect();
    let padding = rng.below(8192) as usize;
    json!({
        "apps": {"1": {"appId": 1, "appName": format!("writer-{writer}"), "services": services}},
        "config": {"SEQ": seq.to_string()},
        "padding": rng.hex(padding),
    })
}

/// Posts target states until a request fails (the kill). Returns why it stopped.
fn write_until_cut(url: &str, token: &str, writer: usize, seed: u64, shared: &Shared) -> String {
    let http = pinion_tests::util::http_agent(Duration::from_secs(30));
    let uuid = DEVICES[writer];
    let mut rng = Rng(seed ^ (writer as u64 + 1).wrapping_mul(0xa076_1d64_78bd_642f));
    for seq in 0.. {
        let sent = target_state(&mut rng, writer, seq);
        shared.in_flight[writer].store(true, Ordering::SeqCst);
        let reply = http
            .post(format!("{url}/api/v1/devices/{uuid}/target-state"))
            .header("Authorization", format!("Bearer {token}"))
            .content_type("application/json")
            .send(sent.to_string())
            .and_then(|mut response| Ok((response.status().as_u16(), response.body_mut().read_to_string()?)));
        shared.in_flight[writer].store(false, Ordering::SeqCst);
        let (status, body) = match reply {
            Ok(reply) => reply,
            Err(e) => {
                assert!(shared.killed.load(Ordering::SeqCst), "writer {writer}: request failed before the kill: {e}");
                return format!("cut: {e}");
            }
        };
        assert_eq!(status, 200, "writer {writer}: the server refused a target state: {body}");
        let mut answer: Value =
            serde_json::from_str(&body).unwrap_or_else(|e| panic!("answer is not JSON ({e}): {body}"));
        let version = answer["version"].as_u64().unwrap_or_else(|| panic!("no version in {body}"));
        let state = answer.as_object_mut().unwrap();
        for key in ANSWER_ONLY_KEYS {
            state.remove(key);
        }
        assert_eq!((&state["padding"], &state["config"]), (&sent["padding"], &sent["config"]), "answer: {body}");
        shared.acked.lock().unwrap().push(Acked { uuid: uuid.to_string(), version, state: answer });
        shared.acked_count.fetch_add(1, Ordering::SeqCst);
    }
    unreachable!()
}

/// What the database holds after the kill, checked against every acknowledged write so
/// far. Returns the number of versions stored.
fn check_database(path: &Path, acked: &[Acked]) -> usize {
    // Opening it read-write is what the server does at start: the WAL is recovered.
    let conn = Connection::open(path).unwrap_or_else(|e| panic!("opening {}: {e}", path.display()));
    let integrity: Vec<String> = conn
        .prepare("PRAGMA integrity_check")
        .unwrap()
        .query_map([], |row| row.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(integrity, ["ok"], "PRAGMA integrity_check of {}", path.display());
    let foreign_key_violations: i64 =
        conn.query_row("SELECT COUNT(*) FROM pragma_foreign_key_check", [], |row| row.get(0)).unwrap();
    assert_eq!(foreign_key_violations, 0, "PRAGMA foreign_key_check");

    let stored: BTreeMap<(String, u64), String> = conn
        .prepare("SELECT device_uuid, version, state FROM target_states")
        .unwrap()
        .query_map([], |row| Ok(((row.get(0)?, row.get::<_, i64>(1)? as u64), row.get(2)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    for write in acked {
        let text = stored.get(&(write.uuid.clone(), write.version)).unwrap_or_else(|| {
            panic!("acknowledged version {} of {} is lost after the kill", write.version, write.uuid)
        });
        let state: Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("stored state is not JSON ({e})"));
        assert_eq!(
            state, write.state,
            "version {} of {} differs from what was acknowledged",
            write.version, write.uuid
        );
    }

    // Each device row points at its newest version, and versions run 1..=newest.
    let devices: Vec<(String, i64, i64, i64)> = conn
        .prepare(
            "SELECT uuid, target_version, \
                    (SELECT COALESCE(MAX(version), 0) FROM target_states WHERE device_uuid = uuid), \
                    (SELECT COUNT(*) FROM target_states WHERE device_uuid = uuid) \
             FROM devices",
        )
        .unwrap()
        .query_map([], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    for (uuid, target_version, newest, count) in devices {
        assert_eq!(target_version, newest, "device {uuid}: target_version against its newest stored version");
        assert_eq!(count, newest, "device {uuid}: versions 1..={newest} with a gap");
    }
    stored.len()
}

/// The restarted server serves, for each device, the newest version in the database.
fn check_served(server: &Server, path: &Path) {
    let conn = Connection::open(path).unwrap();
    let newest: Vec<(String, u64, String)> = conn
        .prepare(
            "SELECT t.device_uuid, t.version, t.state FROM target_states t \
             WHERE t.version = (SELECT MAX(version) FROM target_states WHERE device_uuid = t.device_uuid)",
        )
        .unwrap()
        .query_map([], |row| Ok((row.get(0)?, row.get::<_, i64>(1)? as u64, row.get(2)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert!(!newest.is_empty(), "no target state stored at all");
    for (uuid, version, state) in newest {
        let reply = server.get_target_state(&uuid);
        assert_eq!(reply.status, 200, "GET target state of {uuid} after the restart: {}", reply.body);
        let mut served = reply.json();
        assert_eq!(served["version"], version, "{uuid}: {}", reply.body);
        // An operator's target: the device's own, whatever fleets exist.
        assert_eq!(served["source"]["kind"], "device", "{uuid}: {}", reply.body);
        let served = served.as_object_mut().unwrap();
        for key in ["uuid", "version", "updatedAt", "source"] {
            served.remove(key);
        }
        let stored: Value = serde_json::from_str(&state).unwrap();
        assert_eq!(Value::Object(served.clone()), stored, "{uuid} v{version}: served against stored");
    }
}

#[test]
fn acknowledged_target_states_survive_sigkill_during_writes() {
    let base_seed = match std::env::var(SEED_ENV) {
        Ok(text) => text.parse().unwrap_or_else(|e| panic!("{SEED_ENV}={text}: {e}")),
        Err(_) => u64::from_str_radix(&random_hex(8), 16).unwrap(),
    };
    println!("durability: base seed {base_seed} (replay with {SEED_ENV}={base_seed})");
    // Every acknowledged version is checked, so none may be pruned (`--history-versions`).
    let mut server = Server::start(&["--history-versions", "1000000"]);
    let db = server.dir().join("server.db");
    let (url, token) = (server.url(), server.admin_token().to_string());
    let mut all_acked: Vec<Acked> = Vec::new();
    let mut kills_with_writes_in_flight = 0;

    for round in 0..ROUNDS {
        let seed = base_seed.wrapping_add(round);
        let mut rng = Rng(seed);
        let kill_after_acks = 1 + rng.below(40) as usize;
        let then_wait = Duration::from_micros(rng.below(3000));
        let shared = Shared::default();
        let (status, in_flight, ends) = std::thread::scope(|scope| {
            let writers: Vec<_> = (0..DEVICES.len())
                .map(|writer| {
                    let (url, token, shared) = (&url, &token, &shared);
                    scope.spawn(move || write_until_cut(url, token, writer, seed, shared))
                })
                .collect();
            let reached = pinion_tests::util::wait_for(ACK_DEADLINE, || {
                (shared.acked_count.load(Ordering::SeqCst) >= kill_after_acks).then_some(())
            });
            if reached.is_none() {
                shared.killed.store(true, Ordering::SeqCst);
                let _ = server.kill();
                panic!(
                    "round {round}: fewer than {kill_after_acks} writes acknowledged; server log:\n{}",
                    server.log()
                );
            }
            std::thread::sleep(then_wait);
            shared.killed.store(true, Ordering::SeqCst);
            let in_flight = shared.in_flight.iter().filter(|f| f.load(Ordering::SeqCst)).count();
            let status = server.kill();
            let ends: Vec<String> = writers.into_iter().map(|w| w.join().expect("a writer panicked")).collect();
            (status, in_flight, ends)
        });
        assert_eq!(status.signal(), Some(9), "round {round}: the server was not running at the kill: {status}");
        assert!(ends.iter().all(|end| end.starts_with("cut")), "{ends:?}");
        kills_with_writes_in_flight += usize::from(in_flight > 0);

        let acked = shared.acked.into_inner().unwrap();
        let acked_this_round = acked.len();
        all_acked.extend(acked);
        let distinct: BTreeSet<(&str, u64)> = all_acked.iter().map(|a| (a.uuid.as_str(), a.version)).collect();
        assert_eq!(distinct.len(), all_acked.len(), "two acknowledged writes got the same device and version");

        let stored = check_database(&db, &all_acked);
        println!(
            "durability: round {round} seed {seed}: SIGKILL after {kill_after_acks} acks + {}us, {in_flight} \
             requests in flight; {acked_this_round} acknowledged this round, {} in all, {stored} versions stored \
             ({} committed without an answer); integrity ok",
            then_wait.as_micros(),
            all_acked.len(),
            stored - all_acked.len()
        );
        server.restart();
        check_served(&server, &db);
    }
    assert!(kills_with_writes_in_flight > 0, "no kill happened while a write was in flight");
    println!(
        "durability: {} acknowledged writes checked over {ROUNDS} rounds ({kills_with_writes_in_flight} kills with \
         writes in flight)",
        all_acked.len()
    );
}
