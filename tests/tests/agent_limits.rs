//! The gateway-side limits end to end (issue 13, point 6): a real `pinion-agent` on the
//! test dockerd, given a target that asks for every power a server could abuse — a
//! privileged container, a bind mount of the Docker socket, a device, an added
//! capability, the host's network, an image from a registry the gateway did not list —
//! creates none of them and reports each as an error naming the `agent.toml` setting
//! that would allow it; restarted with that setting opened (its `PINION_*` variable),
//! it runs the same target. One more service binds an allowed directory read-write and
//! a path under it (the swapped-symlink attack: a container replaces the lower path with
//! a link to the Docker socket, followed when Docker restarts the other): it is refused
//! even with both paths listed, naming the upper entry.
//!
//! One device, one server, one registry, one target; the agent restarts twice (registries
//! closed, then everything opened), so each case costs one restart at most.

use pinion_tests::docker::{take_turn, MANAGED};
use pinion_tests::util::unique;
use pinion_tests::{Agent, Auth, Docker, Registry, Server};
use serde_json::{json, Value};

const APP: u32 = 1;

/// The services of the target: name, extra config, and the setting that opens it.
fn powers(socket: &str) -> Vec<(&'static str, Value, &'static str)> {
    vec![
        ("privileged", json!({"privileged": true}), "allow_privileged"),
        ("socket", json!({"volumes": [format!("{socket}:/var/run/docker.sock")]}), "allowed_bind_sources"),
        ("device", json!({"devices": ["/dev/zero:/dev/zero-too"]}), "allowed_devices"),
        ("netadmin", json!({"cap_add": ["net_admin"]}), "allowed_capabilities"),
        ("hostnet", json!({"networkMode": "host"}), "allow_host_network"),
    ]
}

/// Binds `dir` read-write and `dir/x`: never allowed together.
fn nested(dir: &str) -> Value {
    json!({"volumes": [format!("{dir}:/data"), format!("{dir}/x:/x")]})
}

fn target(image: &str, socket: &str, dir: &str) -> Value {
    let mut services: Vec<Value> = powers(socket)
        .into_iter()
        .map(|(name, extra, _)| (name, extra))
        .chain([("plain", json!({})), ("nested", nested(dir))])
        .enumerate()
        .map(|(i, (name, extra))| {
            let mut config = json!({"image": image, "restart": "always"});
            config.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
            json!({"serviceId": i + 1, "serviceName": name, "imageName": image, "config": config})
        })
        .collect();
    services.sort_by_key(|s| s["serviceName"].as_str().unwrap_or_default().to_owned());
    json!({"apps": {APP.to_string(): {"appId": APP, "appName": "limits", "services": services}}, "config": {}})
}

/// The service's entry in the device's current state, as the operator reads it.
fn reported(server: &Server, uuid: &str, name: &str) -> Value {
    let current =
        server.request("GET", &format!("/api/v1/devices/{uuid}/current-state"), None, Some(server.admin_token()));
    current.json()["apps"][APP.to_string()]["services"][name].clone()
}

/// The service is reported refused, and the message names `setting`.
fn refused_naming(server: &Server, uuid: &str, name: &str, setting: &str) -> bool {
    let service = reported(server, uuid, name);
    service["status"] == "error"
        && service["error"]["type"] == "refused_by_gateway"
        && service["error"]["message"].as_str().is_some_and(|m| m.contains(setting))
}

/// Ids of the containers the agent made for the app, by service name.
fn containers(docker: &Docker) -> Vec<(String, String, bool)> {
    let mut found: Vec<(String, String, bool)> = docker
        .containers_with_label(&format!("{MANAGED}={APP}"))
        .into_iter()
        .map(|c| {
            let name = c["Config"]["Labels"]["io.pinion.service-name"].as_str().unwrap_or_default().to_owned();
            (name, c["Id"].as_str().unwrap_or_default().to_owned(), c["State"]["Running"] == true)
        })
        .collect();
    found.sort();
    found
}

fn running(docker: &Docker, name: &str) -> bool {
    containers(docker).iter().any(|(n, _, up)| n == name && *up)
}

#[test]
fn each_limit_refuses_its_service_by_default_and_runs_it_once_opened() {
    let turn = take_turn();
    let docker = &turn.docker;
    let registry = Registry::start(Auth::Anonymous);
    let server = Server::start(&[]);
    let image = format!("{}/limits/app:v1", registry.host());
    docker.import_busybox(&image, "v1", r#"["/bin/sh", "-c", "exec sleep 3600"]"#);
    docker.push(&image);
    let socket = docker.socket().display().to_string();

    let uuid = unique("limits");
    let dir = std::env::temp_dir().join(unique("pinion-limits")).display().to_string();
    std::fs::create_dir_all(format!("{dir}/x")).unwrap();
    let reply = server.set_target_state_uncached(&uuid, &target(&image, &socket, &dir));
    assert_eq!(reply.status, 200, "{}", reply.body);

    // The defaults, with the test registry listed: only the plain service runs.
    let mut agent = Agent::start_with_env(
        &server.url(),
        &server.provisioning_key_for(&uuid),
        &uuid,
        docker,
        &[("PINION_ALLOWED_REGISTRIES", &registry.host())],
    );
    agent.converge("the plain service runs, each other is reported refused naming its setting", || {
        running(docker, "plain")
            && powers(&socket).iter().all(|(name, _, setting)| refused_naming(&server, &uuid, name, setting))
            && refused_naming(&server, &uuid, "nested", "allowed_bind_sources")
    });
    let made = containers(docker);
    assert_eq!(made.iter().map(|(n, _, _)| n.as_str()).collect::<Vec<_>>(), ["plain"], "nothing refused was created");
    let privileged = reported(&server, &uuid, "privileged");
    assert_eq!(
        privileged["error"]["message"],
        "service privileged (app 1): privileged is refused by this gateway; set allow_privileged = true in \
         /etc/pinion/agent.toml to allow it"
    );
    let socket_message = reported(&server, &uuid, "socket")["error"]["message"].as_str().unwrap_or_default().to_owned();
    assert!(socket_message.contains(&format!("add \"{socket}\" to allowed_bind_sources")), "{socket_message}");
    // Logged when it appeared, not every cycle.
    let log = agent.log();
    assert_eq!(log.matches("privileged is refused by this gateway").count(), 1, "{log}");

    // Every power opened but the registries: all six are refused for their image, and
    // nothing new is created (the plain service's container is held as it was).
    agent.restart_with_env(&[
        ("PINION_ALLOW_PRIVILEGED", "true"),
        ("PINION_ALLOWED_BIND_SOURCES", &format!("{socket}, {dir}, {dir}/x")),
        ("PINION_ALLOWED_DEVICES", "/dev/zero"),
        ("PINION_ALLOWED_CAPABILITIES", "NET_ADMIN"),
        ("PINION_ALLOW_HOST_NETWORK", "true"),
        ("PINION_ALLOWED_REGISTRIES", "registry.example.invalid"),
    ]);
    agent.converge("every service is refused for its registry", || {
        ["plain", "privileged", "socket", "device", "netadmin", "hostnet"]
            .iter()
            .all(|name| refused_naming(&server, &uuid, name, "allowed_registries"))
    });
    assert_eq!(containers(docker), made, "a refused service's container is left as it was; nothing is created");
    let plain = reported(&server, &uuid, "plain");
    let host = registry.host();
    assert!(
        plain["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains(&format!("add \"{host}\" to allowed_registries"))),
        "{plain}"
    );

    // Everything opened: the same target runs, service by service. A dockerd that is
    // itself confined (a CI container without every capability) cannot start a
    // privileged container: there the agent must have tried, and Docker's error shows.
    let privileged_runs_here = docker.try_run(&["run", "--rm", "--privileged", &image, "true"]);
    agent.restart_with_env(&[("PINION_ALLOWED_REGISTRIES", &format!("{host}, registry.example.invalid"))]);
    agent.converge("all six services run (privileged: tried)", || {
        let privileged = if privileged_runs_here {
            running(docker, "privileged")
        } else {
            let service = reported(&server, &uuid, "privileged");
            service["status"] == "error" && service["error"]["type"] != "refused_by_gateway"
        };
        privileged
            && ["plain", "socket", "device", "netadmin", "hostnet"].iter().all(|name| running(docker, name))
            && refused_naming(&server, &uuid, "nested", &format!("remove \"{dir}\" from allowed_bind_sources"))
    });
    assert!(!containers(docker).iter().any(|(name, _, _)| name == "nested"), "the nested binds were never created");
    let inspect = |name: &str| -> Value {
        let id = containers(docker).into_iter().find(|(n, _, _)| n == name).map(|(_, id, _)| id).unwrap_or_default();
        serde_json::from_str::<Value>(&docker.run(&["inspect", &id])).unwrap()[0].clone()
    };
    if privileged_runs_here {
        assert_eq!(inspect("privileged")["HostConfig"]["Privileged"], true);
    }
    assert_eq!(inspect("hostnet")["HostConfig"]["NetworkMode"], "host");
    assert_eq!(inspect("netadmin")["HostConfig"]["CapAdd"], json!(["net_admin"]));
    assert_eq!(inspect("device")["HostConfig"]["Devices"][0]["PathOnHost"], "/dev/zero");
    assert_eq!(inspect("socket")["HostConfig"]["Binds"], json!([format!("{socket}:/var/run/docker.sock")]));
    agent.converge("the device reports them running", || {
        ["socket", "device", "netadmin", "hostnet"]
            .iter()
            .all(|name| reported(&server, &uuid, name)["status"] == "running")
    });
    let _ = std::fs::remove_dir_all(&dir);
}
