//! The agent end to end: a real dockerd, the Debian docker-registry, `pinion-server` and
//! `pinion-agent` as processes. Images are busybox root filesystems made with
//! `docker import` and pushed with `docker push`, as the guide does.
//!
//! The agent manages every container labelled `io.pinion.app-id` on its dockerd, so
//! these tests take turns (one agent on the test dockerd at a time).

use pinion_tests::docker::{take_turn, MANAGED};
use pinion_tests::util::unique;
use pinion_tests::{story, Agent, Auth, Docker, Registry, Server};
use serde_json::{json, Value};
use std::time::Duration;

/// A busybox image whose container prints its version and sleeps; pushed, then removed
/// locally so that the agent has to pull it. Returns the pushed digest.
fn push_version(docker: &Docker, reference: &str, version: &str) -> String {
    docker.push_busybox(reference, version, r#"["/bin/sh", "-c", "cat /version; exec sleep 3600"]"#)
}

fn service(name: &str, image: &str, extra: Value) -> Value {
    let mut config = json!({"image": image, "restart": "always"});
    if let Value::Object(extra) = extra {
        config.as_object_mut().unwrap().extend(extra);
    }
    json!({"serviceId": 1, "serviceName": name, "imageName": image, "config": config})
}

fn target(apps: &[(u32, &str, Vec<Value>)]) -> Value {
    let apps: serde_json::Map<String, Value> = apps
        .iter()
        .map(|(id, name, services)| (id.to_string(), json!({"appId": id, "appName": name, "services": services})))
        .collect();
    json!({"apps": apps, "config": {}})
}

/// Sets the target with `Cache-Control: no-cache`: these tests push and then set at once.
fn set_target(server: &Server, uuid: &str, state: &Value) -> Value {
    let reply = server.set_target_state_uncached(uuid, state);
    assert_eq!(reply.status, 200, "{}", reply.body);
    reply.json()
}

/// The running containers of one service, by its app id and name.
fn running(docker: &Docker, app_id: u32, name: &str) -> Vec<Value> {
    docker
        .containers_with_label(&format!("{MANAGED}={app_id}"))
        .into_iter()
        .filter(|c| c["Config"]["Labels"]["io.pinion.service-name"] == name)
        .collect()
}

/// Exactly one container for the service, running the image `image`.
fn runs_exactly(docker: &Docker, app_id: u32, name: &str, image: &str) -> bool {
    let containers = running(docker, app_id, name);
    containers.len() == 1 && containers[0]["Config"]["Image"] == image && containers[0]["State"]["Running"] == true
}

/// The agent's whole story (`pinion_tests::story`), as `agent_podman` runs it on Podman.
#[test]
fn the_agents_story_on_docker() {
    let turn = take_turn();
    story::run(&turn.docker, &turn.docker);
}

#[test]
fn a_new_push_to_latest_replaces_the_container_with_exactly_one_running() {
    let turn = take_turn();
    let docker = &turn.docker;
    let registry = Registry::start(Auth::Anonymous);
    let server = Server::start(&[]);
    let latest = format!("{}/guide/web:latest", registry.host());
    let v1 = push_version(docker, &latest, "v1");

    let uuid = unique("guide");
    let state = target(&[(1001, "web", vec![service("nginx", &latest, json!({}))])]);
    let answer = set_target(&server, &uuid, &state);
    let pinned_v1 = format!("{}/guide/web@{v1}", registry.host());
    assert_eq!(answer["apps"]["1001"]["services"][0]["imageName"], pinned_v1);

    let agent = Agent::start(&server.url(), &server.provisioning_key_for(&uuid), &uuid, docker);
    agent.converge("v1 running", || runs_exactly(docker, 1001, "nginx", &pinned_v1));

    let v2 = push_version(docker, &latest, "v2");
    assert_ne!(v1, v2);
    let answer = set_target(&server, &uuid, &state);
    let pinned_v2 = format!("{}/guide/web@{v2}", registry.host());
    assert_eq!(answer["apps"]["1001"]["services"][0]["imageName"], pinned_v2);
    assert_eq!(answer["version"], 2);
    agent.converge("v2 replaces v1", || runs_exactly(docker, 1001, "nginx", &pinned_v2));

    // The device reported what it runs.
    agent.converge("report of v2 running", || {
        let current =
            server.request("GET", &format!("/api/v1/devices/{uuid}/current-state"), None, Some(server.admin_token()));
        let service = &current.json()["apps"]["1001"]["services"]["nginx"];
        service["status"] == "running" && service["imageName"] == pinned_v2.as_str()
    });
}

#[test]
fn config_changes_removals_additions_and_hand_removals_converge() {
    let turn = take_turn();
    let docker = &turn.docker;
    let registry = Registry::start(Auth::Anonymous);
    let server = Server::start(&[]);
    let image = format!("{}/shapes/app:v1", registry.host());
    let digest = push_version(docker, &image, "v1");
    let pinned = format!("{}/shapes/app@{digest}", registry.host());
    let uuid = unique("shapes");

    let two_services = target(&[(
        1,
        "front",
        vec![service("web", &image, json!({"environment": {"MODE": "a"}})), service("worker", &image, json!({}))],
    )]);
    set_target(&server, &uuid, &two_services);
    let agent = Agent::start(&server.url(), &server.provisioning_key_for(&uuid), &uuid, docker);
    agent.converge("both services running", || {
        runs_exactly(docker, 1, "web", &pinned) && runs_exactly(docker, 1, "worker", &pinned)
    });
    let web_id = running(docker, 1, "web")[0]["Id"].clone();
    let worker_id = running(docker, 1, "worker")[0]["Id"].clone();

    // A config change recreates that service only.
    let changed = target(&[(
        1,
        "front",
        vec![service("web", &image, json!({"environment": {"MODE": "b"}})), service("worker", &image, json!({}))],
    )]);
    set_target(&server, &uuid, &changed);
    agent.converge("web recreated with MODE=b", || {
        let web = running(docker, 1, "web");
        web.len() == 1
            && web[0]["Id"] != web_id
            && web[0]["Config"]["Env"].as_array().is_some_and(|env| env.iter().any(|e| e == "MODE=b"))
    });
    assert_eq!(running(docker, 1, "worker")[0]["Id"], worker_id, "the unchanged service is left alone");

    // Removing a service removes its container; adding an app creates it.
    let reshaped = target(&[
        (1, "front", vec![service("web", &image, json!({"environment": {"MODE": "b"}}))]),
        (2, "extra", vec![service("sidecar", &image, json!({}))]),
    ]);
    set_target(&server, &uuid, &reshaped);
    agent.converge("worker removed, sidecar added", || {
        running(docker, 1, "worker").is_empty() && runs_exactly(docker, 2, "sidecar", &pinned)
    });

    // A container removed by hand comes back.
    let sidecar = running(docker, 2, "sidecar")[0]["Id"].as_str().unwrap().to_string();
    docker.run(&["rm", "-f", &sidecar]);
    agent.converge("sidecar brought back", || {
        let now = running(docker, 2, "sidecar");
        now.len() == 1 && now[0]["Id"] != sidecar.as_str() && now[0]["State"]["Running"] == true
    });

    // Containers without pinion's labels are never touched.
    let bystander = unique("bystander");
    docker.run(&["create", "--name", &bystander, &pinned, "/bin/true"]);
    std::thread::sleep(Duration::from_secs(3));
    assert!(docker.try_run(&["inspect", &bystander]), "an unlabelled container was removed");
    docker.run(&["rm", "-f", &bystander]);

    let status = agent.status();
    assert_eq!(status["uuid"], uuid.as_str());
    assert_eq!(status["registered"], true);
    assert_eq!(status["services"].as_array().unwrap().len(), 2, "{status}");
}

#[test]
fn without_the_server_containers_keep_running_and_the_agent_catches_up() {
    let turn = take_turn();
    let docker = &turn.docker;
    let registry = Registry::start(Auth::Anonymous);
    let mut server = Server::start(&[]);
    let latest = format!("{}/offline/app:latest", registry.host());
    let v1 = push_version(docker, &latest, "v1");
    let uuid = unique("offline");
    let state = target(&[(7, "app", vec![service("main", &latest, json!({}))])]);
    set_target(&server, &uuid, &state);
    let mut agent = Agent::start(&server.url(), &server.provisioning_key_for(&uuid), &uuid, docker);
    let pinned_v1 = format!("{}/offline/app@{v1}", registry.host());
    agent.converge("v1 running", || runs_exactly(docker, 7, "main", &pinned_v1));

    server.stop();
    agent.converge("the agent notices the server is away", || agent.log().contains("poll failed"));
    std::thread::sleep(Duration::from_secs(3));
    assert!(runs_exactly(docker, 7, "main", &pinned_v1), "the container keeps running without the server");

    // A reboot without network: the agent restarts and runs its stored target.
    agent.kill();
    docker.remove_labelled(MANAGED);
    agent.restart();
    agent.converge("stored target run again with the server away", || runs_exactly(docker, 7, "main", &pinned_v1));

    server.restart();
    let v2 = push_version(docker, &latest, "v2");
    set_target(&server, &uuid, &state);
    let pinned_v2 = format!("{}/offline/app@{v2}", registry.host());
    agent.converge("caught up with v2 after the server came back", || runs_exactly(docker, 7, "main", &pinned_v2));
}

#[test]
fn an_agent_killed_during_a_pull_converges_without_duplicates() {
    let turn = take_turn();
    let docker = &turn.docker;
    let registry = Registry::start(Auth::Anonymous);
    let server = Server::start(&[]);
    let latest = format!("{}/crash/app:latest", registry.host());
    let v1 = push_version(docker, &latest, "v1");
    let uuid = unique("crash");
    let state = target(&[(9, "app", vec![service("main", &latest, json!({}))])]);
    set_target(&server, &uuid, &state);
    let mut agent = Agent::start(&server.url(), &server.provisioning_key_for(&uuid), &uuid, docker);
    let pinned_v1 = format!("{}/crash/app@{v1}", registry.host());
    agent.converge("v1 running", || runs_exactly(docker, 9, "main", &pinned_v1));

    // v2 carries a large layer, so that its pull takes a while.
    let big = format!("{}/crash/app:latest", registry.host());
    let v2 = {
        let dir = pinion_tests::TempDir::new("big");
        let noise: Vec<u8> = (0..48u32 << 20).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
        std::fs::write(dir.join("noise"), &noise).unwrap();
        docker.import_busybox_with(
            &big,
            "v2",
            r#"["/bin/sh", "-c", "exec sleep 3600"]"#,
            &[("noise", &dir.join("noise"))],
        );
        let digest = docker.push(&big);
        docker.run(&["rmi", &big]);
        digest
    };
    set_target(&server, &uuid, &state);
    let pinned_v2 = format!("{}/crash/app@{v2}", registry.host());
    agent.converge("the pull of v2 starts", || agent.log().contains(&format!("pulling {pinned_v2}")));
    agent.kill();
    assert!(runs_exactly(docker, 9, "main", &pinned_v1), "download-then-kill: v1 still runs during the pull");
    agent.restart();
    agent.converge("v2 running after the restart", || runs_exactly(docker, 9, "main", &pinned_v2));
    assert!(
        !agent.log().contains("new target state"),
        "the restarted agent polled with its stored ETag and did not refetch:\n{}",
        agent.log()
    );
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(running(docker, 9, "main").len(), 1, "no duplicate containers");
}

#[test]
fn a_tag_kept_as_fallback_still_runs_on_the_device() {
    let turn = take_turn();
    let docker = &turn.docker;
    let mut registry = Registry::start(Auth::Anonymous);
    let server = Server::start(&["--registry-timeout", "2", "--resolve-deadline", "5"]);
    let image = format!("{}/fallback/app:v1", registry.host());
    push_version(docker, &image, "v1");
    let uuid = unique("fallback");

    registry.stop();
    let answer = set_target(&server, &uuid, &target(&[(3, "app", vec![service("main", &image, json!({}))])]));
    let service = &answer["apps"]["3"]["services"][0];
    assert_eq!(service["imageResolution"]["status"], "fallback", "{answer}");
    assert_eq!(service["imageName"], image.as_str());

    registry.restart();
    let agent = Agent::start(&server.url(), &server.provisioning_key_for(&uuid), &uuid, docker);
    agent.converge("the tag runs", || runs_exactly(docker, 3, "main", &image));
}

/// Docker copies an image's labels onto its containers: a registry image labelled as
/// pinion's app, run by hand beside the agent, must not become the agent's to remove.
#[test]
fn a_container_run_by_hand_from_an_image_with_pinions_labels_is_left_alone() {
    let turn = take_turn();
    let docker = &turn.docker;
    let registry = Registry::start(Auth::Anonymous);
    let server = Server::start(&[]);
    let image = format!("{}/owned/app:v1", registry.host());
    let digest = push_version(docker, &image, "v1");
    let pinned = format!("{}/owned/app@{digest}", registry.host());

    // The intruding image: labelled as app 1001's service `web`, as a registry image may be.
    let labelled = format!("{}/intruder/app:v1", registry.host());
    docker.import_busybox(&labelled, "intruder", r#"["/bin/sh", "-c", "exec sleep 3600"]"#);
    let maker = unique("labeller");
    docker.run(&["create", "--name", &maker, &labelled]);
    let labels = ["LABEL io.pinion.app-id=1001", "LABEL io.pinion.service-name=web"];
    docker.run(&["commit", "--change", labels[0], "--change", labels[1], &maker, &labelled]);
    docker.run(&["rm", &maker]);
    let by_hand = unique("by-hand");
    docker.run(&["run", "-d", "--name", &by_hand, &labelled]);

    let uuid = unique("owner");
    set_target(&server, &uuid, &target(&[(1001, "web", vec![service("nginx", &image, json!({}))])]));
    let agent = Agent::start(&server.url(), &server.provisioning_key_for(&uuid), &uuid, docker);
    agent.converge("its own service running", || runs_exactly(docker, 1001, "nginx", &pinned));
    agent.converge("the intruder noticed", || agent.log().contains("was not made by this agent"));
    let state = docker.run(&["inspect", "-f", "{{.State.Running}}", &by_hand]);
    assert_eq!(state.trim(), "true", "the container run by hand was touched:\n{}", agent.log());
}
