//! `desired_services` end to end: a target state in, create bodies and errors out.

use super::*;
use serde_json::json;

fn target(apps: Value) -> TargetState {
    serde_json::from_value(json!({ "apps": apps })).unwrap()
}

/// One app (1001) with one service (web) whose config is `config`.
fn one(config: Value) -> Result<DesiredService, String> {
    let t = target(json!({"1001": {"appId": 1001, "services": {"1": {
        "serviceId": 1, "serviceName": "web", "imageName": "nginx@sha256:aa", "config": config}}}}));
    let (mut ok, mut failed) = desired_services(&t);
    match (ok.pop(), failed.pop()) {
        (Some(s), None) => Ok(s),
        (None, Some((_, e))) => Err(e.to_string()),
        other => panic!("{other:?}"),
    }
}

fn body(config: Value) -> Value {
    one(config).unwrap().create_body
}

fn error(config: Value) -> String {
    one(config).unwrap_err()
}

#[test]
fn minimal_service() {
    let s = one(json!({})).unwrap();
    assert_eq!(s.key, ServiceKey { app_id: "1001".into(), service_name: "web".into() });
    assert_eq!(s.service_id.as_deref(), Some("1"));
    assert_eq!(s.image, "nginx@sha256:aa");
    assert_eq!(s.container_name, "web_1001");
    assert_eq!(s.strategy, Strategy::DownloadThenKill);
    assert!(s.keep_running);
    assert!(s.networks.is_empty() && s.volumes.is_empty() && s.warnings.is_empty());
    assert_eq!(
        s.create_body,
        json!({
            "Image": "nginx@sha256:aa",
            "Labels": {"io.pinion.app-id": "1001", "io.pinion.service-id": "1",
                       "io.pinion.service-name": "web", "io.pinion.config-hash": s.config_hash},
            "HostConfig": {"RestartPolicy": {"Name": "always"}}
        })
    );
    assert_eq!(s.config_hash.len(), 64);
}

#[test]
fn keys_come_from_ids_or_from_positions() {
    let t = target(json!([
        {"appId": "edge", "services": [{"imageName": "a"}, {"serviceName": "b", "imageName": "b"}]},
        {"services": {"x y": {"imageName": "c"}}}
    ]));
    let (ok, failed) = desired_services(&t);
    assert!(failed.is_empty());
    let keys: Vec<String> = ok.iter().map(|s| s.key.to_string()).collect();
    assert_eq!(keys, ["1/x y", "edge/0", "edge/b"]);
    let names: Vec<&str> = ok.iter().map(|s| s.container_name.as_str()).collect();
    assert_eq!(names, ["x_y_1", "0_edge", "b_edge"]);
    assert!(ok[0].create_body["Labels"].get(LABEL_SERVICE_ID).is_none());
}

#[test]
fn services_are_sorted_by_app_then_name_and_a_bad_one_does_not_stop_the_others() {
    let t = target(json!({
        "2": {"services": {"1": {"serviceName": "z", "imageName": "z"}, "2": {"serviceName": "a"}}},
        "10": {"services": {"1": {"serviceName": "m", "imageName": "m"}}}
    }));
    let (ok, failed) = desired_services(&t);
    let keys: Vec<String> = ok.iter().map(|s| s.key.to_string()).collect();
    assert_eq!(keys, ["10/m", "2/z"]);
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].0.to_string(), "2/a");
    assert_eq!(failed[0].1.to_string(), "target state cannot be run: app 2, service a: no image");
}

#[test]
fn image_from_config_or_image_name_and_they_must_agree() {
    let t = target(json!({"1": {"services": {"1": {"serviceName": "s", "config": {"image": "busybox@sha256:bb"}}}}}));
    assert_eq!(desired_services(&t).0[0].image, "busybox@sha256:bb");
    assert!(one(json!({"image": "nginx@sha256:aa"})).is_ok());
    let err = error(json!({"image": "nginx:latest"}));
    assert!(
        err.contains("app 1001, service web: imageName nginx@sha256:aa and config.image nginx:latest differ"),
        "{err}"
    );
}

#[test]
fn an_empty_image_name_is_no_image() {
    let t = target(
        json!({"1": {"services": {"1": {"serviceName": "s", "imageName": "", "config": {"image": "x@sha256:cc"}}}}}),
    );
    assert_eq!(desired_services(&t).0[0].image, "x@sha256:cc");
    let t = target(json!({"1": {"services": {"1": {"serviceName": "s", "imageName": "", "config": {"image": ""}}}}}));
    assert!(desired_services(&t).1[0].1.to_string().ends_with("app 1, service s: no image"));
}

#[test]
fn two_services_of_one_name_are_refused() {
    let t = target(
        json!({"1": {"services": [{"serviceName": "s", "imageName": "a"}, {"serviceName": "s", "imageName": "b"}]}}),
    );
    let (ok, failed) = desired_services(&t);
    assert_eq!(ok.len(), 1);
    assert!(failed[0].1.to_string().ends_with("app 1 has two services named s"), "{}", failed[0].1);
}

#[test]
fn container_names_are_sanitized_and_unique() {
    let t = target(json!({"1": {"services": {
        "1": {"serviceName": "a b", "imageName": "x"},
        "2": {"serviceName": "a_b", "imageName": "x"},
        "3": {"serviceName": "_hidden", "imageName": "x"}}}}));
    let (ok, failed) = desired_services(&t);
    let names: Vec<&str> = ok.iter().map(|s| s.container_name.as_str()).collect();
    assert_eq!(names, ["pinion_hidden_1", "a_b_1"]);
    assert_eq!(ok[1].key.service_name, "a b");
    assert_eq!(failed.len(), 1);
    assert!(failed[0].1.to_string().contains("container name a_b_1 is already used by service 1/a b"));
}

#[test]
fn ports() {
    let b = body(json!({"ports": ["8080:80", "127.0.0.1:5353:53/udp", 9000, "[::1]:8443:443"]}));
    assert_eq!(b["ExposedPorts"], json!({"80/tcp": {}, "53/udp": {}, "9000/tcp": {}, "443/tcp": {}}));
    assert_eq!(
        b["HostConfig"]["PortBindings"],
        json!({
            "80/tcp": [{"HostIp": "", "HostPort": "8080"}],
            "53/udp": [{"HostIp": "127.0.0.1", "HostPort": "5353"}],
            "9000/tcp": [{"HostIp": "", "HostPort": ""}],
            "443/tcp": [{"HostIp": "::1", "HostPort": "8443"}]
        })
    );
    let err = error(json!({"ports": ["80:http"]}));
    assert!(err.contains("app 1001, service web: ports \"80:http\": \"http\" is not a port number"), "{err}");
    assert!(error(json!({"ports": "80:80"})).contains("ports: expected a list"));
}

#[test]
fn expose_without_publishing() {
    let b = body(json!({"expose": ["9000"]}));
    assert_eq!(b["ExposedPorts"], json!({"9000/tcp": {}}));
    assert!(b["HostConfig"].get("PortBindings").is_none());
}

#[test]
fn environment_as_object_or_list_sorted() {
    let from_object = body(json!({"environment": {"B": "2", "A": 1, "C": true, "D": ""}}));
    assert_eq!(from_object["Env"], json!(["A=1", "B=2", "C=true", "D="]));
    let from_list = body(json!({"environment": ["B=2", "A=1", "C=true", "D="]}));
    assert_eq!(from_list["Env"], from_object["Env"]);
    // Same variables, same hash, whichever form.
    assert_eq!(from_list["Labels"][LABEL_CONFIG_HASH], from_object["Labels"][LABEL_CONFIG_HASH]);
    assert_eq!(body(json!({"environment": ["A=1", "A=2"]}))["Env"], json!(["A=2"]));
    assert!(error(json!({"environment": {"A": {"x": 1}}})).contains("environment.A: expected a string"));
    assert!(error(json!({"environment": "A=1"})).contains("environment: expected an object or a list"));
    assert!(error(json!({"environment": ["=1"]})).contains("invalid variable name"));
}

#[test]
fn volumes_named_bind_and_anonymous() {
    let s = one(json!({"volumes": ["data:/data", "logs:/var/log:ro", "/etc/hosts:/h:ro", "/scratch"]})).unwrap();
    assert_eq!(
        s.create_body["HostConfig"]["Binds"],
        json!(["1001_data:/data", "1001_logs:/var/log:ro", "/etc/hosts:/h:ro"])
    );
    assert_eq!(s.create_body["Volumes"], json!({"/scratch": {}}));
    let labels = BTreeMap::from([
        ("io.pinion.app-id".to_owned(), "1001".to_owned()),
        ("io.pinion.managed".to_owned(), "true".to_owned()),
    ]);
    assert_eq!(s.volumes, BTreeMap::from([("1001_data".to_owned(), labels.clone()), ("1001_logs".to_owned(), labels)]));
    assert!(error(json!({"volumes": ["./data:/data"]})).contains("host path must be absolute"));
}

#[test]
fn networks_are_scoped_to_the_app_and_the_first_is_attached() {
    let s = one(json!({"networks": ["frontend", "backend"]})).unwrap();
    assert_eq!(s.networks.keys().collect::<Vec<_>>(), ["1001_backend", "1001_frontend"]);
    assert_eq!(s.networks["1001_backend"]["io.pinion.app-id"], "1001");
    assert_eq!(s.networks["1001_backend"]["io.pinion.managed"], "true");
    assert_eq!(s.create_body["HostConfig"]["NetworkMode"], "1001_backend");
    assert_eq!(s.create_body["NetworkingConfig"], json!({"EndpointsConfig": {"1001_backend": {"Aliases": ["web"]}}}));
    assert_eq!(s.extra_networks().collect::<Vec<_>>(), ["1001_frontend"]);
    assert_eq!(s.network_aliases(), ["web"]);
    // The networks connected after the create are part of the hash.
    let one_network = one(json!({"networks": ["backend"]})).unwrap();
    assert_eq!(one_network.extra_networks().count(), 0);
    assert_ne!(one_network.config_hash, s.config_hash);
    // The order they are listed in is not.
    assert_eq!(one(json!({"networks": ["backend", "frontend"]})).unwrap().config_hash, s.config_hash);
    // Compose's object form.
    let object = one(json!({"networks": {"backend": null, "frontend": {"ipv4_address": "10.0.0.2"}}})).unwrap();
    assert_eq!(object.config_hash, s.config_hash);
    assert_eq!(object.warnings, ["networks.frontend.ipv4_address: not supported by pinion-agent, ignored"]);
    assert!(error(json!({"networks": ["no/slash"]})).contains("invalid network name"));
}

#[test]
fn network_mode() {
    for mode in ["bridge", "host", "none", "container:vpn_1001"] {
        assert_eq!(body(json!({"networkMode": mode}))["HostConfig"]["NetworkMode"], mode);
        assert_eq!(body(json!({"network_mode": mode}))["HostConfig"]["NetworkMode"], mode);
    }
    assert!(error(json!({"networkMode": "macvlan0"})).contains("networkMode macvlan0: expected"));
    assert!(error(json!({"networkMode": "container:"})).contains("expected"));
    let err = error(json!({"networkMode": "host", "networks": ["backend"]}));
    assert!(err.contains("networkMode host cannot be combined with networks"), "{err}");
    assert!(error(json!({"networkMode": "host", "network_mode": "host"})).contains("are both set"));
    assert!(error(json!({"networkMode": "container:db", "ports": ["80:80"]})).contains("cannot be published"));
    // As in DESIGN.md's example: `bridge` is the default, the listed networks win.
    let s = one(json!({"networkMode": "bridge", "networks": ["backend"]})).unwrap();
    assert_eq!(s.create_body["HostConfig"]["NetworkMode"], "1001_backend");
    assert_eq!(s.warnings, ["networkMode: bridge is ignored because networks are set"]);
}

#[test]
fn restart_policies() {
    let policy = |restart: &str| {
        let s = one(json!({"restart": restart})).unwrap();
        (s.create_body["HostConfig"]["RestartPolicy"].clone(), s.keep_running)
    };
    assert_eq!(policy("always"), (json!({"Name": "always"}), true));
    assert_eq!(policy("unless-stopped"), (json!({"Name": "unless-stopped"}), true));
    assert_eq!(policy("no"), (json!({"Name": "no"}), false));
    assert_eq!(policy("on-failure"), (json!({"Name": "on-failure"}), false));
    assert_eq!(policy("on-failure:3"), (json!({"Name": "on-failure", "MaximumRetryCount": 3}), false));
    assert!(error(json!({"restart": "sometimes"})).contains("restart sometimes: expected"));
    assert!(error(json!({"restart": "on-failure:x"})).contains("expected"));
    assert!(error(json!({"restart": true})).contains("restart: expected a string"));
}

#[test]
fn labels_merge_with_pinions_and_pinions_win() {
    let b = body(json!({"labels": {"team": "ops", "tier": 2}}));
    assert_eq!(b["Labels"]["team"], "ops");
    assert_eq!(b["Labels"]["tier"], "2");
    assert_eq!(b["Labels"][LABEL_APP_ID], "1001");
    assert_eq!(body(json!({"labels": ["team=ops"]}))["Labels"]["team"], "ops");
    let err = error(json!({"labels": {"io.pinion.app-id": "7"}}));
    assert!(err.contains("labels: io.pinion.app-id is reserved for pinion"), "{err}");
}

#[test]
fn command_and_entrypoint() {
    let b = body(json!({"command": "sh -c 'echo hi; sleep 5'", "entrypoint": ["/bin/tini", "--"]}));
    assert_eq!(b["Cmd"], json!(["sh", "-c", "echo hi; sleep 5"]));
    assert_eq!(b["Entrypoint"], json!(["/bin/tini", "--"]));
    assert!(error(json!({"command": "echo 'oops"})).contains("command: unterminated single quote"));
    assert!(error(json!({"entrypoint": 5})).contains("entrypoint: expected a string or a list"));
}

#[test]
fn devices_privileged_and_capabilities() {
    let b = body(json!({
        "privileged": true, "devices": ["/dev/ttyUSB0", "/dev/ttyACM0:/dev/ttyS0", "/dev/gpiomem:/dev/gpiomem:rw"],
        "capAdd": ["NET_ADMIN", "SYS_TIME"], "cap_drop": ["MKNOD"]
    }));
    let host = &b["HostConfig"];
    assert_eq!(host["Privileged"], true);
    assert_eq!(
        host["Devices"],
        json!([
            {"PathOnHost": "/dev/ttyUSB0", "PathInContainer": "/dev/ttyUSB0", "CgroupPermissions": "rwm"},
            {"PathOnHost": "/dev/ttyACM0", "PathInContainer": "/dev/ttyS0", "CgroupPermissions": "rwm"},
            {"PathOnHost": "/dev/gpiomem", "PathInContainer": "/dev/gpiomem", "CgroupPermissions": "rw"}
        ])
    );
    assert_eq!(host["CapAdd"], json!(["NET_ADMIN", "SYS_TIME"]));
    assert_eq!(host["CapDrop"], json!(["MKNOD"]));
    assert_eq!(body(json!({"cap_add": ["NET_ADMIN"]}))["HostConfig"]["CapAdd"], json!(["NET_ADMIN"]));
    assert!(body(json!({"privileged": false}))["HostConfig"].get("Privileged").is_none());
    assert!(error(json!({"privileged": "yes"})).contains("privileged: expected true or false"));
    assert!(error(json!({"devices": ["ttyUSB0"]})).contains("devices \"ttyUSB0\": device paths must be absolute"));
    assert!(error(json!({"capAdd": [""]})).contains("capAdd: empty entry"));
}

#[test]
fn working_dir_user_hostname() {
    let b = body(json!({"workingDir": "/app", "user": 1000, "hostname": "gw"}));
    assert_eq!((&b["WorkingDir"], &b["User"], &b["Hostname"]), (&json!("/app"), &json!("1000"), &json!("gw")));
    assert_eq!(body(json!({"working_dir": "/srv"}))["WorkingDir"], "/srv");
    assert!(error(json!({"workingDir": "app"})).contains("must be an absolute path"));
}

#[test]
fn update_strategy_from_config_or_label_and_not_sent_to_docker() {
    let ktd = |config: Value| one(config).unwrap().strategy == Strategy::KillThenDownload;
    assert!(ktd(json!({"strategy": "kill-then-download"})));
    assert!(ktd(json!({"updateStrategy": "kill-then-download"})));
    assert!(ktd(json!({"update_strategy": "delete-then-download"})));
    assert!(ktd(json!({"labels": {"io.pinion.update-strategy": "kill-then-download"}})));
    assert!(!ktd(json!({"strategy": "download-then-kill"})));
    assert!(error(json!({"strategy": "hand-over"})).contains("strategy hand-over: expected"));
    // Changing only the strategy does not recreate the container.
    let plain = one(json!({})).unwrap();
    let labelled = one(json!({"labels": {"io.pinion.update-strategy": "kill-then-download"}})).unwrap();
    assert_eq!(plain.create_body, labelled.create_body);
    assert_eq!(plain.config_hash, one(json!({"strategy": "kill-then-download"})).unwrap().config_hash);
}

#[test]
fn unsupported_keys_are_reported_not_sent() {
    let s = one(json!({"tmpfs": ["/run"], "sysctls": {"a": 1}, "restart": "always"})).unwrap();
    assert_eq!(
        s.warnings,
        ["sysctls: not supported by pinion-agent, ignored", "tmpfs: not supported by pinion-agent, ignored"]
    );
    assert_eq!(s.config_hash, one(json!({})).unwrap().config_hash);
    // A supported key set to null is as if absent.
    assert_eq!(one(json!({"command": null})).unwrap().config_hash, s.config_hash);
}

#[test]
fn hash_does_not_depend_on_key_order() {
    let a: Map<String, Value> = serde_json::from_str(
        r#"{"ports": ["80:80"], "environment": {"A": "1", "B": "2"}, "labels": {"x": "1", "y": "2"}, "restart": "always"}"#,
    )
    .unwrap();
    let b: Map<String, Value> = serde_json::from_str(
        r#"{"restart": "always", "labels": {"y": "2", "x": "1"}, "environment": {"B": "2", "A": "1"}, "ports": ["80:80"]}"#,
    )
    .unwrap();
    assert_eq!(one(Value::Object(a)).unwrap().config_hash, one(Value::Object(b)).unwrap().config_hash);
}

#[test]
fn hash_changes_with_image_or_any_supported_config() {
    let base = one(json!({"ports": ["80:80"]})).unwrap().config_hash;
    for changed in [
        json!({"ports": ["8080:80"]}),
        json!({"ports": ["80:80"], "environment": {"A": "1"}}),
        json!({"ports": ["80:80"], "restart": "no"}),
        json!({"ports": ["80:80"], "volumes": ["data:/data"]}),
        json!({"ports": ["80:80"], "labels": {"a": "b"}}),
        json!({"ports": ["80:80"], "command": "run"}),
        json!({"ports": ["80:80"], "privileged": true}),
    ] {
        assert_ne!(one(changed.clone()).unwrap().config_hash, base, "{changed}");
    }
    let t = target(json!({"1001": {"appId": 1001, "services": {"1": {
        "serviceId": 1, "serviceName": "web", "imageName": "nginx@sha256:bb", "config": {"ports": ["80:80"]}}}}}));
    assert_ne!(desired_services(&t).0[0].config_hash, base);
}

#[test]
fn canonical_json_sorts_keys_at_every_level() {
    let mut out = String::new();
    canonical_json(&json!({"b": [{"d": 1, "c": "x\"y"}], "a": null}), &mut out);
    assert_eq!(out, r#"{"a":null,"b":[{"c":"x\"y","d":1}]}"#);
}
