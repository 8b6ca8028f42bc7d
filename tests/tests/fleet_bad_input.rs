//! Bad input to the fleet, release and rollout routes: unknown fleets and releases,
//! wave lists that select nobody, overlapping or empty waves, percents over 100, a rollout
//! on an empty fleet, bad names and labels, a second rollout, a compose key the agent
//! does not run. Each is a clear JSON error, and the test reads back that nothing was
//! stored. The real server, the real Debian docker-registry, and *simulated devices*
//! (`pinion_tests::simulated`).

use pinion_tests::fleet_api::{call, events, expect, fleet_with_key, make_release, push_images, rollout, settle_on};
use pinion_tests::simulated::SimulatedFleet;
use pinion_tests::util::demo_target;
use pinion_tests::{Auth, Registry, Server};
use serde_json::{json, Value};

/// What the fleet routes have stored for the fleets `names`: releases, rollouts, events,
/// the fleet (and its current release) and its devices' fleets and labels.
fn stored_state(server: &Server, names: &[&str]) -> Value {
    let mut state = serde_json::Map::new();
    for name in names {
        let devices = expect(server, "GET", &format!("/api/v1/devices?fleet={name}"), None, 200);
        let devices: Vec<Value> = devices["devices"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| json!({"uuid": d["uuid"], "fleet": d["fleet"], "labels": d["labels"]}))
            .collect();
        let fleet = expect(server, "GET", &format!("/api/v1/fleets/{name}"), None, 200);
        state.insert(
            name.to_string(),
            json!({
                "releases": expect(server, "GET", &format!("/api/v1/fleets/{name}/releases"), None, 200),
                "rollouts": expect(server, "GET", &format!("/api/v1/fleets/{name}/rollouts"), None, 200),
                "events": events(server, name).len(),
                "fleet": [fleet["release"], fleet["description"], fleet["rolloutPlan"], fleet["devices"]["total"]],
                "devices": devices,
            }),
        );
    }
    Value::Object(state)
}

#[test]
fn bad_input_is_refused_with_nothing_stored() {
    let registry = Registry::start(Auth::Anonymous);
    let server = Server::start(&["--rollout-interval", "1", "--registrations-per-minute", "0"]);
    let (server, registry) = (&server, &registry);
    let key = fleet_with_key(server, "strict", json!({"description": "refuses"}));
    let mut devices = SimulatedFleet::register(server, &key, "strict", 3);
    expect(server, "PUT", "/api/v1/devices/strict-00/labels", Some(json!({"site": "berlin"})), 200);
    let (r1, images1) = make_release(server, "strict", &push_images(registry, "strict", "1", &["app"]));
    expect(server, "PUT", "/api/v1/fleets/strict/release", Some(json!({"release": r1})), 200);
    settle_on(&mut devices, &images1);
    let (r2, _) = make_release(server, "strict", &push_images(registry, "strict", "2", &["app"]));
    // A rollout that stays in its first wave for the whole test.
    let active = json!({"release": r2, "bakeTime": "1h", "waves": [{"devices": 1}, {"percent": 100}]});
    let active = expect(server, "POST", "/api/v1/fleets/strict/rollouts", Some(active), 201)["id"].as_u64().unwrap();
    // A fleet with a release and no devices.
    fleet_with_key(server, "strict-empty", json!({}));
    let (other, _) = make_release(server, "strict-empty", &images1);

    let fleets = ["strict", "strict-empty"];
    let before = stored_state(server, &fleets);
    let waves = |waves: Value| json!({"release": r2, "waves": waves});
    let seventeen: serde_json::Map<String, Value> = (0..17).map(|i| (format!("k{i}"), json!("v"))).collect();
    let nowhere = "/api/v1/fleets/nowhere";
    #[rustfmt::skip]
    let cases: Vec<(&str, &str, String, Option<Value>, u16)> = vec![
        // Unknown fleet, on every fleet route.
        ("unknown fleet", "GET", nowhere.into(), None, 404),
        ("unknown fleet", "PUT", nowhere.into(), Some(json!({"description": "x"})), 404),
        ("unknown fleet", "DELETE", nowhere.into(), None, 404),
        ("unknown fleet", "GET", format!("{nowhere}/releases"), None, 404),
        ("unknown fleet", "POST", format!("{nowhere}/releases"), Some(demo_target(&[&images1[0]])), 404),
        ("unknown fleet", "GET", format!("{nowhere}/releases/{r1}"), None, 404),
        ("unknown fleet", "PUT", format!("{nowhere}/release"), Some(json!({"release": r1})), 404),
        ("unknown fleet", "GET", format!("{nowhere}/rollouts"), None, 404),
        ("unknown fleet", "POST", format!("{nowhere}/rollouts"), Some(json!({"release": r1})), 404),
        ("unknown fleet", "GET", format!("{nowhere}/rollouts/{active}"), None, 404),
        ("unknown fleet", "POST", format!("{nowhere}/rollouts/{active}/pause"), None, 404),
        ("unknown fleet", "POST", format!("{nowhere}/rollouts/{active}/resume"), None, 404),
        ("unknown fleet", "POST", format!("{nowhere}/rollouts/{active}/promote"), None, 404),
        ("unknown fleet", "POST", format!("{nowhere}/rollouts/{active}/abort"), Some(json!({"rollback": true})), 404),
        ("unknown fleet", "PUT", "/api/v1/devices/strict-01/fleet".into(), Some(json!({"fleet": "nowhere"})), 404),
        ("unknown fleet", "POST", "/api/v1/provisioning-keys".into(), Some(json!({"fleet": "nowhere"})), 404),
        // Unknown release (and one of another fleet), unknown rollout.
        ("unknown release", "POST", "/api/v1/fleets/strict/rollouts".into(), Some(json!({"release": 999_999})), 404),
        ("another fleet's release", "POST", "/api/v1/fleets/strict/rollouts".into(), Some(json!({"release": other})), 404),
        ("unknown release", "PUT", "/api/v1/fleets/strict/release".into(), Some(json!({"release": 999_999})), 404),
        ("another fleet's release", "PUT", "/api/v1/fleets/strict/release".into(), Some(json!({"release": other})), 404),
        ("unknown release", "GET", "/api/v1/fleets/strict/releases/999999".into(), None, 404),
        ("unknown rollout", "POST", "/api/v1/fleets/strict/rollouts/999999/abort".into(), None, 404),
        // Plans that cannot be carried out.
        ("labels matching nobody", "POST", "/api/v1/fleets/strict/rollouts".into(), Some(waves(json!([{"devices": 1}, {"labels": {"site": "tokyo"}}]))), 422),
        ("labels taken by an earlier wave", "POST", "/api/v1/fleets/strict/rollouts".into(), Some(waves(json!([{"devices": 1}, {"labels": {"site": "berlin"}}]))), 422),
        ("percents going down", "POST", "/api/v1/fleets/strict/rollouts".into(), Some(waves(json!([{"percent": 50}, {"percent": 20}]))), 422),
        ("percent 101", "POST", "/api/v1/fleets/strict/rollouts".into(), Some(waves(json!([{"percent": 101}]))), 422),
        ("two selectors in a wave", "POST", "/api/v1/fleets/strict/rollouts".into(), Some(waves(json!([{"devices": 1, "percent": 10}]))), 422),
        ("no selector in a wave", "POST", "/api/v1/fleets/strict/rollouts".into(), Some(waves(json!([{}]))), 422),
        ("a dry run of a bad plan", "POST", "/api/v1/fleets/strict/rollouts".into(), Some(json!({"release": r2, "dryRun": true, "waves": [{"percent": 101}]})), 422),
        ("a rollout of an empty fleet", "POST", "/api/v1/fleets/strict-empty/rollouts".into(), Some(json!({"release": other})), 422),
        ("a bad fleet rollout plan", "PUT", "/api/v1/fleets/strict".into(), Some(json!({"rolloutPlan": {"waves": [{"percent": 0}]}})), 422),
        // Bad names and labels.
        ("upper case and _ in a fleet name", "POST", "/api/v1/fleets".into(), Some(json!({"name": "Bad_Name"})), 400),
        ("a fleet name starting with -", "POST", "/api/v1/fleets".into(), Some(json!({"name": "-lead"})), 400),
        ("an empty fleet name", "POST", "/api/v1/fleets".into(), Some(json!({"name": ""})), 400),
        ("a 64-character fleet name", "POST", "/api/v1/fleets".into(), Some(json!({"name": "a".repeat(64)})), 400),
        ("a fleet name in a path", "GET", "/api/v1/fleets/Bad_Name".into(), None, 400),
        ("a bad fleet name for a device", "PUT", "/api/v1/devices/strict-01/fleet".into(), Some(json!({"fleet": "Bad_Name"})), 400),
        ("an upper-case label key", "PUT", "/api/v1/devices/strict-01/labels".into(), Some(json!({"Site": "berlin"})), 400),
        ("a label value with a space", "PUT", "/api/v1/devices/strict-01/labels".into(), Some(json!({"site": "two words"})), 400),
        ("an empty label key", "PUT", "/api/v1/devices/strict-01/labels".into(), Some(json!({"": "x"})), 400),
        ("a 64-character label value", "PUT", "/api/v1/devices/strict-01/labels".into(), Some(json!({"site": "x".repeat(64)})), 400),
        ("17 labels", "PUT", "/api/v1/devices/strict-01/labels".into(), Some(Value::Object(seventeen)), 400),
        // Conflicts.
        ("a second rollout without supersede", "POST", "/api/v1/fleets/strict/rollouts".into(), Some(json!({"release": r1})), 409),
        ("the fleet's release set during a rollout", "PUT", "/api/v1/fleets/strict/release".into(), Some(json!({"release": r1})), 409),
        ("a fleet with devices deleted", "DELETE", "/api/v1/fleets/strict".into(), None, 409),
        ("a fleet name taken", "POST", "/api/v1/fleets".into(), Some(json!({"name": "strict"})), 409),
        ("resuming a running rollout", "POST", format!("/api/v1/fleets/strict/rollouts/{active}/resume"), None, 409),
    ];
    let mut problems = Vec::new();
    let code = |status| match status {
        400 => "bad_request",
        404 => "not_found",
        409 => "conflict",
        _ => "unprocessable",
    };
    for (label, method, path, body, status) in &cases {
        let reply = call(server, method, path, body.clone());
        let error =
            serde_json::from_str::<Value>(&reply.body).ok().and_then(|b| b["error"].as_str().map(str::to_string));
        if reply.status != *status || error.as_deref() != Some(code(*status)) {
            problems.push(format!("{label}: {method} {path}: expected {status}, got {} {}", reply.status, reply.body));
        }
        let after = stored_state(server, &fleets);
        if after != before {
            problems.push(format!(
                "{label}: {method} {path} ({}) changed what is stored:\n{before:#}\n→\n{after:#}",
                reply.status
            ));
            break;
        }
    }

    // A compose file with a key the agent does not run: refused by name.
    let compose =
        format!("services:\n  web:\n    image: {}\n    healthcheck:\n      test: [\"CMD\", \"true\"]\n", images1[0]);
    let headers =
        [("Authorization", format!("Bearer {}", server.admin_token())), ("Content-Type", "application/yaml".into())];
    let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let reply = server.send_bytes("POST", "/api/v1/fleets/strict/releases", &headers, compose.clone().into_bytes());
    if reply.status != 422 || !reply.body.contains("healthcheck") {
        problems.push(format!("compose with healthcheck: expected 422 naming it, got {} {}", reply.status, reply.body));
    }
    // The same file without it is a release: the route does take compose files.
    let fine = compose.split("    healthcheck:").next().unwrap().to_string();
    assert_eq!(stored_state(server, &fleets), before, "the refused compose file stored something");

    let listed = expect(server, "GET", "/api/v1/fleets", None, 200);
    let names: Vec<&str> = listed["fleets"].as_array().unwrap().iter().map(|f| f["name"].as_str().unwrap()).collect();
    for bad in ["Bad_Name", "-lead", ""] {
        assert!(!names.contains(&bad), "{bad:?} was stored: {names:?}");
    }
    assert!(
        problems.is_empty(),
        "{} of {} cases went wrong:\n{}",
        problems.len(),
        cases.len() + 1,
        problems.join("\n")
    );

    let reply = server.send_bytes("POST", "/api/v1/fleets/strict/releases", &headers, fine.into_bytes());
    assert_eq!(reply.status, 201, "{}", reply.body);
    assert_eq!(reply.json()["source"], "operator");
    // Still one active rollout, in its first wave; the fleet still on release 1.
    let still = rollout(server, "strict", active);
    assert_eq!((still["state"].as_str(), still["currentWave"].as_u64()), (Some("running"), Some(1)), "{still:#}");
    assert_eq!(expect(server, "GET", "/api/v1/fleets/strict", None, 200)["release"], r1);
}
