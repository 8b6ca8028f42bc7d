//! The compose reader's fixtures: a realistic file, both forms of lists and maps, every
//! unsupported key named, bad YAML, alias bombs and limits.

use super::*;

fn ok(yaml: &str) -> Value {
    target_from_compose(yaml, "shop").unwrap()
}

fn unprocessable(yaml: &str) -> String {
    match target_from_compose(yaml, "shop") {
        Err(Error::Unprocessable { reason }) => reason,
        other => panic!("expected Unprocessable, got {other:?}"),
    }
}

fn bad_request(yaml: &str) -> String {
    match target_from_compose(yaml, "shop") {
        Err(Error::BadRequest { reason }) => reason,
        other => panic!("expected BadRequest, got {other:?}"),
    }
}

const TWO_SERVICES: &str = r#"
# A gateway's web front and its worker.
services:
  web:
    image: nginx:1.27-alpine
    ports:
      - "80:80"
      - 127.0.0.1:8443:443/tcp
    environment:
      NGINX_HOST: gateway.local
      WORKERS: 4
      VERSION: 1.10
    volumes:
      - html:/usr/share/nginx/html:ro
      - /var/log/gw:/var/log/nginx
    restart: unless-stopped
    labels:
      - com.example.role=front
  worker:
    image: registry.example.com/acme/worker@sha256:4c0fdb3f4ae3e4e2a9b41f9f3a1e4a47d58d1d3c06f4f64e4b3e6e4f2b0c1d2e
    command: ["python", "-m", "worker", "--queue", "$$HOME/q"]
    restart: "no"
    privileged: true
    devices: [/dev/ttyUSB0]
    cap_add: [NET_ADMIN]
volumes:
  html:
"#;

#[test]
fn a_two_service_file_becomes_one_app() {
    let target = ok(TWO_SERVICES);
    let expected = json!({"apps": {"shop": {"appId": "shop", "appName": "shop", "services": {
            "web": {"serviceName": "web", "imageName": "nginx:1.27-alpine", "config": {
                "image": "nginx:1.27-alpine",
                "ports": ["80:80", "127.0.0.1:8443:443/tcp"],
                "environment": {"NGINX_HOST": "gateway.local", "WORKERS": "4", "VERSION": "1.10"},
                "volumes": ["html:/usr/share/nginx/html:ro", "/var/log/gw:/var/log/nginx"],
                "restart": "unless-stopped",
                "labels": {"com.example.role": "front"},
                "networks": ["default"]}},
            "worker": {"serviceName": "worker",
                "imageName": "registry.example.com/acme/worker@sha256:4c0fdb3f4ae3e4e2a9b41f9f3a1e4a47d58d1d3c06f4f64e4b3e6e4f2b0c1d2e",
                "config": {
                "image": "registry.example.com/acme/worker@sha256:4c0fdb3f4ae3e4e2a9b41f9f3a1e4a47d58d1d3c06f4f64e4b3e6e4f2b0c1d2e",
                "command": ["python", "-m", "worker", "--queue", "$HOME/q"],
                "restart": "no",
                "privileged": true,
                "devices": ["/dev/ttyUSB0"],
                "capAdd": ["NET_ADMIN"],
                "networks": ["default"]}}}}}});
    assert_eq!(target, expected);
    // The body a release stores is a target state's: it reads as one.
    let state: pinion_model::TargetState = serde_json::from_value(target).unwrap();
    assert_eq!(state.apps.len(), 1);
}

#[test]
fn the_compose_name_is_the_app_id() {
    let target = ok("name: edge-gw\nservices:\n  web:\n    image: nginx\n");
    assert_eq!(target["apps"]["edge-gw"]["appId"], "edge-gw");
    assert_eq!(target["apps"]["edge-gw"]["appName"], "edge-gw");
    let reason = unprocessable("name: Edge GW\nservices:\n  web:\n    image: nginx\n");
    assert!(reason.starts_with("name \"Edge GW\""), "{reason}");
    let err = target_from_compose("services:\n  web:\n    image: nginx\n", "no spaces").unwrap_err();
    assert!(matches!(err, Error::BadRequest { .. }), "{err:?}");
}

#[test]
fn environment_and_labels_as_list_or_map() {
    let list = ok("services:\n  s:\n    image: a\n    environment:\n      - A=1\n      - B=x=y\n      - A=2\n    labels: [a=b, flag]\n");
    let map = ok("services:\n  s:\n    image: a\n    environment:\n      A: 2\n      B: x=y\n    labels:\n      a: b\n      flag:\n");
    let config = |t: &Value| t["apps"]["shop"]["services"]["s"]["config"].clone();
    assert_eq!(config(&list), config(&map));
    assert_eq!(config(&list)["environment"], json!({"A": "2", "B": "x=y"}));
    assert_eq!(config(&list)["labels"], json!({"a": "b", "flag": ""}));
    // A variable without a value would come from compose's shell.
    for yaml in [
        "services:\n  s:\n    image: a\n    environment: [HOME]\n",
        "services:\n  s:\n    image: a\n    environment:\n      HOME:\n",
    ] {
        let reason = unprocessable(yaml);
        assert!(reason.starts_with("service s: environment.HOME (line ") && reason.contains("no value"), "{reason}");
    }
}

#[test]
fn command_as_string_or_list() {
    let target = ok("services:\n  s:\n    image: a\n    command: sh -c 'sleep 1'\n    entrypoint: [/init]\n");
    let config = &target["apps"]["shop"]["services"]["s"]["config"];
    assert_eq!(config["command"], "sh -c 'sleep 1'"); // the agent splits it as a shell would
    assert_eq!(config["entrypoint"], json!(["/init"]));
}

#[test]
fn every_unsupported_key_is_named_with_its_service() {
    let reason = unprocessable(
            "services:\n  web:\n    build: .\n    image: a\n    healthcheck:\n      test: [CMD, true]\n    networks:\n      back:\n        aliases: [w]\n    x-note: kept out\n  db:\n    image: postgres\n    depends_on: [web]\n    container_name: db\nsecrets:\n  s:\n    file: ./s\nconfigs: {}\nnetworks:\n  back:\n    driver: overlay\n",
        );
    assert_eq!(
        reason,
        "unsupported top-level compose keys: secrets, configs; \
             network back: unsupported settings: driver (the agent creates networks with the default driver); \
             service web: unsupported compose keys: build, healthcheck, networks.back.aliases; \
             service db: unsupported compose keys: depends_on, container_name \
             (the agent runs image, command, entrypoint, environment, ports, expose, volumes, networks, \
             network_mode, restart, labels, privileged, devices, cap_add, cap_drop, working_dir, user, hostname)"
    );
}

#[test]
fn a_service_without_an_image_is_named() {
    let reason = unprocessable("services:\n  web:\n    image: nginx\n  worker:\n    command: run\n");
    assert_eq!(reason, "service worker: no image (the agent runs images; it does not build)");
}

#[test]
fn no_services() {
    for yaml in ["", "# nothing\n", "services: {}\n", "services:\n", "version: '3'\n"] {
        let reason = unprocessable(yaml);
        assert!(reason.contains("no services"), "{yaml:?}: {reason}");
    }
    assert!(unprocessable("services: [web]\n").contains("expected a mapping of services"));
    assert!(unprocessable("- a\n").contains("a compose file is a mapping"));
}

#[test]
fn invalid_yaml_is_a_bad_request_with_its_place() {
    let reason = bad_request("services:\n  web:\n    image: nginx\n   ports: [80\n");
    assert!(reason.starts_with("invalid YAML at line 4, column "), "{reason}");
    let reason = bad_request("services:\n  web:\n    image: a\n    image: b\n");
    assert_eq!(reason, "invalid YAML at line 4: duplicate key \"image\"");
    let reason = bad_request("services: {}\n---\nservices: {}\n");
    assert!(reason.contains("second YAML document"), "{reason}");
}

#[test]
fn an_alias_bomb_stops_at_the_budget() {
    let bomb = "a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n\
                    b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n\
                    c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\n\
                    d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]\n\
                    e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]\n\
                    f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]\n\
                    g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f]\n\
                    h: &h [*g, *g, *g, *g, *g, *g, *g, *g, *g]\n\
                    i: &i [*h, *h, *h, *h, *h, *h, *h, *h, *h]\n\
                    services: {}\n";
    let reason = unprocessable(bomb);
    assert!(reason.starts_with("line 5: YAML aliases copy more than 10000 nodes"), "{reason}");
}

#[test]
fn deep_nesting_is_refused() {
    // Block style: the parser would go on; the tree stops at MAX_DEPTH.
    let deep = format!("services:\n  s:\n    image: a\n    x-deep:\n      {}x\n", "- ".repeat(100_000));
    let reason = bad_request(&deep);
    assert_eq!(reason, "invalid YAML at line 5: nested deeper than 32 levels");
    // Flow style: the parser's own limit (255 levels) comes first.
    let deep = format!("services: {}{}\n", "[".repeat(100_000), "]".repeat(100_000));
    assert!(bad_request(&deep).contains("recursion limit exceeded"));
}

#[test]
fn oversized_input_is_refused() {
    let big = format!("services: {{}}\n#{}\n", "x".repeat(MAX_BYTES));
    assert!(matches!(target_from_compose(&big, "shop"), Err(Error::PayloadTooLarge { limit: MAX_BYTES })));
}

#[test]
fn x_extensions_are_ignored_and_their_anchors_merge() {
    let target = ok(r#"
version: "3.8"
x-defaults: &defaults
  restart: always
  environment: {TZ: UTC}
services:
  web:
    <<: *defaults
    image: nginx
    environment: {TZ: Europe/Berlin}
  worker:
    <<: *defaults
    image: worker
    x-owner: ops
"#);
    let services = &target["apps"]["shop"]["services"];
    assert_eq!(services["web"]["config"]["restart"], "always");
    assert_eq!(services["web"]["config"]["environment"], json!({"TZ": "Europe/Berlin"}));
    assert_eq!(
        services["worker"]["config"],
        json!({"image": "worker", "restart": "always", "environment": {"TZ": "UTC"}, "networks": ["default"]})
    );
}

#[test]
fn networks_and_network_mode() {
    let target = ok("services:\n  a:\n    image: a\n    networks: [front, back]\n  b:\n    image: b\n    networks:\n      back:\n  c:\n    image: c\n    network_mode: host\nnetworks:\n  front: {}\n  back:\n");
    let services = &target["apps"]["shop"]["services"];
    assert_eq!(services["a"]["config"]["networks"], json!(["front", "back"]));
    assert_eq!(services["b"]["config"]["networks"], json!(["back"]));
    assert_eq!(services["c"]["config"]["networkMode"], "host");
    assert!(services["c"]["config"].get("networks").is_none());
}

#[test]
fn yaml_1_2_keeps_text_and_only_privileged_is_a_boolean() {
    let target = ok("services:\n  s:\n    image: a\n    restart: no\n    user: 1000\n    ports: [22:22, 8080]\n    privileged: false\n");
    let config = &target["apps"]["shop"]["services"]["s"]["config"];
    assert_eq!(config["restart"], "no");
    assert_eq!(config["user"], "1000");
    assert_eq!(config["ports"], json!(["22:22", "8080"]));
    assert_eq!(config["privileged"], false);
    let target = ok("services:\n  s:\n    image: a\n    hostname: !!str null\n    privileged: !!bool true\n");
    assert_eq!(target["apps"]["shop"]["services"]["s"]["config"]["hostname"], "null");
    assert_eq!(target["apps"]["shop"]["services"]["s"]["config"]["privileged"], true);
    let reason = unprocessable("services:\n  s:\n    image: a\n    privileged: \"yes\"\n");
    assert_eq!(reason, "service s: privileged (line 4): expected true or false");
}

#[test]
fn variables_are_refused_and_double_dollars_unescaped() {
    let reason = unprocessable("services:\n  s:\n    image: nginx:${TAG:-latest}\n");
    assert!(reason.starts_with("service s: image (line 3): ${TAG:-latest} is not substituted"), "{reason}");
    let reason = unprocessable("services:\n  s:\n    image: a\n    command: echo $HOME\n");
    assert!(reason.contains("$HOME is not substituted"), "{reason}");
    let target = ok("services:\n  s:\n    image: a\n    environment: [PRICE=5$, X=$$Y]\n");
    assert_eq!(target["apps"]["shop"]["services"]["s"]["config"]["environment"], json!({"PRICE": "5$", "X": "$Y"}));
}

#[test]
fn what_the_agent_cannot_read_is_refused() {
    let long =
        "services:\n  s:\n    image: a\n    volumes:\n      - type: bind\n        source: /a\n        target: /b\n";
    assert!(unprocessable(long).starts_with("service s: volumes (line 5): the long syntax is not supported"));
    let relative = "services:\n  s:\n    image: a\n    volumes: [./data:/data]\n";
    assert!(unprocessable(relative).contains("a host path must be absolute"));
    let tagged = "services:\n  s:\n    image: a\n    ports: !reset []\n";
    assert!(unprocessable(tagged).contains("YAML tag !reset is not supported"));
    assert!(unprocessable("services:\n  s:\n    image: [a]\n").contains("image (line 3): expected a string"));
    assert!(unprocessable("services:\n  s p:\n    image: a\n").starts_with("service s p: a service name"));
}

#[test]
fn a_long_text_aliased_many_times_is_a_bomb_too() {
    let big = "A".repeat(200_000);
    let aliases = vec!["*a"; 100].join(", ");
    let yaml = format!("x-a: &a \"{big}\"\nx-b: [{aliases}]\nservices:\n  web:\n    image: nginx\n");
    let err = target_from_compose(&yaml, "app").unwrap_err().to_string();
    assert!(err.contains("alias bomb"), "{err}");
    // Once is fine.
    let yaml = format!("x-a: &a \"{big}\"\nx-b: [*a]\nservices:\n  web:\n    image: nginx\n");
    target_from_compose(&yaml, "app").unwrap();
}
