//! A private registry end to end: the Debian docker-registry behind htpasswd, an image
//! pushed to it with the docker CLI logged in, `pinion-server` started without any
//! `--registry-auth` and given the credentials through its API, and `pinion-agent`
//! pulling the pinned image through the real dockerd with the credentials its poll
//! carried (`X-Registry-Auth`). The password shows up in no operator answer and no log.
//!
//! The agent manages every container labelled `io.pinion.app-id` on its dockerd, so
//! these tests take turns (one agent on the test dockerd at a time).

use pinion_tests::docker::{take_turn, MANAGED};
use pinion_tests::util::unique;
use pinion_tests::{Agent, Auth, Docker, Registry, Server, TempDir};
use serde_json::{json, Value};
use std::os::unix::fs::PermissionsExt;

const USER: &str = "fleet";
const PASSWORD: &str = "s3cret-pass";

fn target(image: &str) -> Value {
    json!({"apps": {"5": {"appId": 5, "appName": "private", "services": [
        {"serviceId": 1, "serviceName": "main", "imageName": image,
         "config": {"image": image, "restart": "always"}}]}}, "config": {}})
}

fn set_target(server: &Server, uuid: &str, image: &str) -> Value {
    let reply = server.set_target_state(uuid, &target(image));
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert!(!reply.body.contains(PASSWORD), "{}", reply.body);
    reply.json()
}

/// Exactly one container for the service, running `image`.
fn runs_exactly(docker: &Docker, image: &str) -> bool {
    let containers: Vec<Value> = docker
        .containers_with_label(&format!("{MANAGED}=5"))
        .into_iter()
        .filter(|c| c["Config"]["Labels"]["io.pinion.service-name"] == "main")
        .collect();
    containers.len() == 1 && containers[0]["Config"]["Image"] == image && containers[0]["State"]["Running"] == true
}

fn file_with_wal(path: &std::path::Path) -> Vec<u8> {
    let mut bytes = std::fs::read(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    bytes.extend(std::fs::read(format!("{}-wal", path.display())).unwrap_or_default());
    bytes
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle.as_bytes())
}

#[test]
fn a_device_pulls_from_an_htpasswd_registry_with_credentials_stored_in_the_server() {
    let turn = take_turn();
    let registry = Registry::start(Auth::htpasswd(USER, PASSWORD));
    let login = TempDir::new("docker-login");
    let docker = turn.docker.logged_in(&login, &registry.host(), USER, PASSWORD);
    let latest = format!("{}/private/app:latest", registry.host());
    docker.import_busybox(&latest, "private-v1", r#"["/bin/sh", "-c", "cat /version; exec sleep 3600"]"#);
    let digest = docker.push(&latest);
    docker.run(&["rmi", &latest]);
    let pinned = format!("{}/private/app@{digest}", registry.host());

    let server = Server::start(&[]);
    let uuid = unique("private");

    // Without credentials the server cannot ask the registry: the tag is kept.
    let answer = set_target(&server, &uuid, &latest);
    let resolution = &answer["apps"]["5"]["services"][0]["imageResolution"];
    assert_eq!(resolution["status"], "fallback", "{answer}");
    assert!(resolution["error"].as_str().unwrap().contains("no credentials configured"), "{answer}");

    let path = format!("/api/v1/registries/{}/credentials", registry.host());
    let body = json!({"username": USER, "password": PASSWORD});
    let put = server.request("PUT", &path, Some(&body), Some(server.admin_token()));
    assert_eq!(put.status, 200, "{}", put.body);
    assert!(!put.body.contains(PASSWORD), "{}", put.body);
    let listed = server.request("GET", "/api/v1/registries", None, Some(server.admin_token()));
    assert_eq!(listed.json()["registries"][0]["username"], USER, "{}", listed.body);
    assert!(!listed.body.contains(PASSWORD), "{}", listed.body);

    // With them, the server pins the tag (it asked the registry with the stored ones).
    let answer = set_target(&server, &uuid, &latest);
    let service = &answer["apps"]["5"]["services"][0];
    assert_eq!(service["imageResolution"]["status"], "resolved", "{answer}");
    assert_eq!(service["imageName"], pinned.as_str());
    let read = server.get_target_state(&uuid);
    assert!(!read.body.contains(PASSWORD) && !read.body.contains("registryAuth"), "{}", read.body);

    // The agent pulls the pinned image through dockerd with the credentials its poll
    // carried: the image is nowhere else, and the registry refuses anonymous pulls.
    assert!(!turn.docker.try_run(&["image", "inspect", &pinned]), "the image must be pulled");
    let agent = Agent::start(&server.url(), &server.provisioning_key_for(&uuid), &uuid, &turn.docker);
    agent.converge("the private image running", || runs_exactly(&turn.docker, &pinned));

    assert!(!agent.log().contains(PASSWORD), "the agent logged the password:\n{}", agent.log());
    assert!(!agent.status().to_string().contains(PASSWORD), "pinion-agent status shows the password");
    let agent_db_mode = std::fs::metadata(agent.db()).unwrap().permissions().mode() & 0o777;
    assert_eq!(agent_db_mode, 0o600, "the agent's database keeps the password: owner only");
    assert!(!server.log().contains(PASSWORD), "the server logged the password:\n{}", server.log());
    let server_db = server.dir().join("server.db");
    assert!(!contains(&file_with_wal(&server_db), PASSWORD), "the password is in the server database in clear");
    let key_file = server.dir().join("server.secret-key");
    assert_eq!(std::fs::metadata(&key_file).unwrap().permissions().mode() & 0o777, 0o600);
}
