//! Each limit against service configs as a target state writes them, mapped by
//! `desired_services` into the create body Docker would be sent: allowed, refused, and
//! the edges (`..`, trailing slashes, the Docker socket under an allowed directory,
//! `ALL`, capability spellings, `container:` networks, Docker Hub's names), and the
//! symlink swapped in by one container for another's bind source (`allowed_bind_sources`
//! rules out every path a container could write on the way).

use super::*;
use crate::spec::desired_services;
use pinion_model::TargetState;
use serde_json::json;

/// Service web of app 1001 with `config` (its image `image`).
fn service(image: &str, config: Value) -> DesiredService {
    let target: TargetState = serde_json::from_value(json!({"apps": {"1001": {"appId": 1001, "services": {"1": {
        "serviceId": 1, "serviceName": "web", "imageName": image, "config": config}}}}}))
    .unwrap();
    let (mut services, invalid) = desired_services(&target);
    assert!(invalid.is_empty(), "{invalid:?}");
    services.pop().unwrap()
}

/// A host without symlinks: every path resolves to itself.
fn no_symlinks(path: &str) -> Option<String> {
    Some(path.to_owned())
}

/// The refusals of `config` under `limits`, as sentences.
fn refused(limits: &HostLimits, config: Value) -> Vec<String> {
    check(limits, &service("reg.local/app@sha256:aa", config), &no_symlinks).iter().map(|r| r.to_string()).collect()
}

fn binds(entries: &[&str]) -> HostLimits {
    HostLimits { allowed_bind_sources: entries.iter().map(|e| path_entry(e).unwrap()).collect(), ..Default::default() }
}

fn volume(source: &str) -> Value {
    json!({"volumes": [format!("{source}:/in")]})
}

#[test]
fn a_plain_service_passes_the_defaults() {
    let config = json!({"ports": ["80:80"], "environment": {"A": "1"}, "volumes": ["data:/data", "/anon"],
                        "networks": ["backend"], "restart": "always", "capDrop": ["ALL"], "privileged": false});
    assert_eq!(refused(&HostLimits::default(), config), Vec::<String>::new());
}

#[test]
fn privileged_needs_allow_privileged() {
    let asked = json!({"privileged": true});
    assert_eq!(
        refused(&HostLimits::default(), asked.clone()),
        ["privileged is refused by this gateway; set allow_privileged = true in /etc/pinion/agent.toml to allow it"]
    );
    assert!(refused(&HostLimits { allow_privileged: true, ..Default::default() }, asked).is_empty());
}

#[test]
fn bind_sources_are_refused_unless_listed() {
    assert_eq!(
        refused(&HostLimits::default(), volume("/etc")),
        ["the bind mount of /etc is refused by this gateway; add \"/etc\" to allowed_bind_sources in \
          /etc/pinion/agent.toml to allow it"]
    );
    let limits = binds(&["/srv/app/"]);
    for allowed in ["/srv/app", "/srv/app/", "//srv//app/./"] {
        assert!(refused(&limits, volume(allowed)).is_empty(), "{allowed}");
    }
    for outside in ["/srv", "/srv/application", "/srv/app/data", "/srv/app/../etc", "/srv/app/x/../y", "/"] {
        assert_eq!(refused(&limits, volume(outside)).len(), 1, "{outside}: an entry allows itself, nothing under it");
    }
    assert_eq!(
        refused(&limits, volume("/srv/app/data")),
        ["the bind mount of /srv/app/data is refused by this gateway; add \"/srv/app/data\" to \
          allowed_bind_sources in /etc/pinion/agent.toml to allow it"]
    );
}

#[test]
fn a_children_entry_allows_each_direct_child_only() {
    let limits = binds(&["/srv/apps/*/"]);
    assert_eq!(limits.allowed_bind_sources, ["/srv/apps/*"]);
    for allowed in ["/srv/apps/web", "/srv/apps//db/"] {
        assert!(refused(&limits, volume(allowed)).is_empty(), "{allowed}");
    }
    for outside in ["/srv/apps", "/srv/apps/web/data", "/srv/other", "/srv/appsx/web"] {
        assert_eq!(refused(&limits, volume(outside)).len(), 1, "{outside}");
    }
    let root = binds(&["/*"]);
    assert!(refused(&root, volume("/srv")).is_empty());
    assert_eq!(refused(&root, volume("/srv/app")).len(), 1);
    for entry in ["/srv/*/x", "/srv/a*", "srv/*"] {
        assert!(bind_entry(entry).is_err(), "{entry}");
    }
    assert_eq!(bind_entry("/*"), Ok("/*".to_owned()));
}

/// The review's attack: the owner allows `/srv/app`; one service binds it read-write,
/// another binds `/srv/app/x` with restart always. The first swaps `/srv/app/x` for a
/// symlink to the Docker socket; Docker resolves the second's source again when it
/// restarts it. Judging where the path leads at create time cannot see a link planted
/// later, so no entry may allow a path under another's.
#[test]
fn no_container_can_write_on_the_way_to_another_bind_source() {
    let attack = json!({"volumes": ["/srv/app:/data", "/srv/app/x:/x"], "restart": "always"});
    let only_app = refused(&binds(&["/srv/app"]), attack.clone());
    assert_eq!(only_app.len(), 1, "{only_app:?}");
    assert!(only_app[0].starts_with("the bind mount of /srv/app/x is refused"), "{only_app:?}");

    // Both listed: the lower one is refused (the upper one alone still runs).
    let both = binds(&["/srv/app", "/srv/app/x"]);
    assert_eq!(
        refused(&both, volume("/srv/app/x")),
        ["the bind mount of /srv/app/x, which lies under a path the entry \"/srv/app\" allows (a container \
          binding that could plant a symlink on its way, followed at the next start), is refused by this gateway; \
          remove \"/srv/app\" from allowed_bind_sources, or bind only paths it allows in /etc/pinion/agent.toml \
          to allow it"]
    );
    assert!(refused(&both, volume("/srv/app")).is_empty());
    // Whichever service asks: the rule depends on the entries, not on what runs.
    assert_eq!(refused(&both, attack).len(), 1);

    // A children entry above an exact one, and an exact one above a children entry.
    assert_eq!(refused(&binds(&["/srv/*", "/srv/web/db"]), volume("/srv/web/db")).len(), 1);
    assert_eq!(refused(&binds(&["/srv", "/srv/apps/*"]), volume("/srv/apps/web")).len(), 1);
    assert_eq!(refused(&binds(&["/", "/srv/app"]), volume("/srv/app")).len(), 1, "/ lies above everything");
    // Siblings, and a children entry next to an exact child of it, are fine.
    let siblings = binds(&["/srv/apps/*", "/srv/apps/web", "/srv/data"]);
    for fine in ["/srv/apps/web", "/srv/apps/db", "/srv/data"] {
        assert!(refused(&siblings, volume(fine)).is_empty(), "{fine}");
    }
}

#[test]
fn entries_and_sources_are_compared_as_written_and_as_resolved() {
    // `/link` is the owner's symlink to /srv: a container binding /link/a writes /srv/a.
    let host = |path: &str| Some(path.replacen("/link/", "/srv/", 1));
    let limits = binds(&["/link/a", "/srv/a/c"]);
    let judged = |source: &str| check(&limits, &service("reg.local/app@sha256:aa", volume(source)), &host);
    assert!(judged("/link/a").is_empty());
    assert_eq!(judged("/srv/a/c").len(), 1, "under /link/a once resolved");
    let other = binds(&["/srv/a", "/link/a/c"]);
    let judged = |source: &str| check(&other, &service("reg.local/app@sha256:aa", volume(source)), &host);
    assert_eq!(judged("/link/a/c").len(), 1, "leads under /srv/a");

    // A path the agent cannot resolve (a dangling or looping link, a hidden directory) is refused.
    let unresolvable = |_: &str| None;
    let web = service("reg.local/app@sha256:aa", volume("/srv/app"));
    let refusals = check(&binds(&["/srv/app"]), &web, &unresolvable);
    assert_eq!(refusals.len(), 1);
    assert!(refusals[0].asked.contains("cannot resolve"), "{refusals:?}");
}

#[test]
fn the_docker_socket_and_root_need_an_entry_of_their_own() {
    let var = binds(&["/var/*", "/var/run/*"]);
    assert!(refused(&var, volume("/var/www")).is_empty());
    for socket in
        ["/var/run/docker.sock", "/var/run/../run/docker.sock", "/var/run//docker.sock", "/var/run", "/var/run/docker"]
    {
        assert_eq!(refused(&var, volume(socket)).len(), 1, "{socket}");
    }
    let root = binds(&["/*"]);
    assert!(refused(&root, volume("/srv")).is_empty());
    assert_eq!(refused(&root, volume("/")).len(), 1, "/ only named exactly");
    assert_eq!(refused(&root, volume("/run")).len(), 1, "/run holds the socket");
    assert!(refused(&binds(&["/"]), volume("/")).is_empty(), "/ named exactly");
    assert_eq!(refused(&binds(&["/srv"]), volume("/")).len(), 1);

    let socket = binds(&["/var/run/docker.sock"]);
    assert!(refused(&socket, volume("/var/run/docker.sock")).is_empty());
    assert!(refused(&socket, volume("/var/run/./docker.sock")).is_empty());
    assert_eq!(refused(&socket, volume("/run/docker.sock")).len(), 1, "another spelling needs its own entry");

    // The agent's own socket, wherever it is, counts as the Docker socket.
    let custom = HostLimits { docker_socket: Some("/srv/docker/docker.sock".into()), ..binds(&["/srv/*"]) };
    assert_eq!(refused(&custom, volume("/srv/docker")).len(), 1);
    assert!(refused(&custom, volume("/srv/data")).is_empty());
}

#[test]
fn docker_state_the_agent_and_the_kernel_need_an_entry_of_their_own() {
    let lib = binds(&["/var/lib/*", "/etc/*", "/*"]);
    for protected in ["/var/lib/docker", "/var/lib/containerd", "/var/lib/pinion", "/etc/pinion"] {
        assert_eq!(refused(&lib, volume(protected)).len(), 1, "{protected}");
    }
    assert!(refused(&binds(&["/var/lib/*"]), volume("/var/lib/app")).is_empty());
    let root = binds(&["/*"]);
    for protected in ["/proc", "/sys", "/boot", "/dev", "/etc", "/var", "/run"] {
        assert_eq!(refused(&root, volume(protected)).len(), 1, "{protected}");
    }
    assert!(refused(&binds(&["/etc/pinion"]), volume("/etc/pinion")).is_empty(), "named exactly");
    // The configured database's directory, wherever it is.
    let db = HostLimits { agent_db_dir: Some("/opt/pinion/".into()), ..binds(&["/opt/*"]) };
    assert_eq!(refused(&db, volume("/opt/pinion")).len(), 1);
    assert!(refused(&db, volume("/opt/app")).is_empty());
}

#[test]
fn a_symlink_under_an_allowed_directory_counts_where_it_leads() {
    let limits = binds(&["/srv/app/*", "/srv/named"]);
    let planted = |path: &str| match path {
        "/srv/app/root" => Some("/".to_owned()),
        "/srv/named" => Some("/etc".to_owned()),
        other => Some(other.to_owned()),
    };
    let web = service("reg.local/app@sha256:aa", volume("/srv/app/root"));
    let refusals: Vec<String> = check(&limits, &web, &planted).iter().map(|r| r.to_string()).collect();
    assert_eq!(
        refusals,
        ["the bind mount of /srv/app/root (which leads to /) is refused by this gateway; add \"/\" to \
          allowed_bind_sources in /etc/pinion/agent.toml to allow it"]
    );
    let named = service("reg.local/app@sha256:aa", volume("/srv/named"));
    assert!(check(&limits, &named, &planted).is_empty(), "an entry named exactly is taken as written");
}

#[test]
fn named_volumes_are_not_bind_mounts() {
    assert!(refused(&HostLimits::default(), json!({"volumes": ["data:/data", "logs:/logs:ro"]})).is_empty());
}

#[test]
fn devices_need_an_entry() {
    let asked = json!({"devices": ["/dev/mem:/dev/mem:r"]});
    assert_eq!(
        refused(&HostLimits::default(), asked.clone()),
        ["the device /dev/mem is refused by this gateway; add \"/dev/mem\" to allowed_devices in \
          /etc/pinion/agent.toml to allow it"]
    );
    let serial = HostLimits {
        allowed_devices: vec![path_entry("/dev/ttyUSB0").unwrap(), path_entry("/dev/serial/").unwrap()],
        ..Default::default()
    };
    assert_eq!(refused(&serial, asked).len(), 1);
    for allowed in ["/dev/ttyUSB0", "/dev/ttyUSB0:/dev/ttyS0", "/dev/serial/by-id/usb-x", "/dev//ttyUSB0"] {
        assert!(refused(&serial, json!({"devices": [allowed]})).is_empty(), "{allowed}");
    }
    for outside in ["/dev/ttyUSB1", "/dev/serial/../mem", "/dev/ttyUSB0x"] {
        assert_eq!(refused(&serial, json!({"devices": [outside]})).len(), 1, "{outside}");
    }
}

#[test]
fn capabilities_are_compared_as_docker_reads_them() {
    let limits = HostLimits {
        allowed_capabilities: ["net_admin", "CAP_SYS_TIME"].iter().map(|c| capability_entry(c).unwrap()).collect(),
        ..Default::default()
    };
    assert_eq!(limits.allowed_capabilities, ["NET_ADMIN", "SYS_TIME"]);
    for allowed in ["NET_ADMIN", "net_admin", "CAP_NET_ADMIN", "cap_sys_time"] {
        assert!(refused(&limits, json!({"capAdd": [allowed]})).is_empty(), "{allowed}");
    }
    assert_eq!(
        refused(&limits, json!({"cap_add": ["sys_admin"]})),
        ["cap_add sys_admin is refused by this gateway; add \"SYS_ADMIN\" to allowed_capabilities in \
          /etc/pinion/agent.toml to allow it"]
    );
    assert_eq!(refused(&limits, json!({"capAdd": ["CAP_SYS_ADMIN"]})).len(), 1);
    assert_eq!(refused(&limits, json!({"capAdd": ["ALL"]})).len(), 1, "ALL only when listed");
    let all = HostLimits { allowed_capabilities: vec!["ALL".into()], ..Default::default() };
    assert!(refused(&all, json!({"capAdd": ["ALL", "SYS_ADMIN"]})).is_empty());
    assert!(refused(&HostLimits::default(), json!({"capDrop": ["ALL"]})).is_empty(), "dropping is always fine");
}

#[test]
fn host_and_container_network_modes_need_allow_host_network() {
    let closed = HostLimits::default();
    assert_eq!(
        refused(&closed, json!({"networkMode": "host"})),
        ["networkMode host is refused by this gateway; set allow_host_network = true in /etc/pinion/agent.toml \
          to allow it"]
    );
    assert_eq!(refused(&closed, json!({"network_mode": "container:vpn"})).len(), 1);
    for fine in ["bridge", "none"] {
        assert!(refused(&closed, json!({"networkMode": fine})).is_empty(), "{fine}");
    }
    assert!(refused(&closed, json!({"networks": ["host"]})).is_empty(), "an app network is scoped: 1001_host");
    let open = HostLimits { allow_host_network: true, ..Default::default() };
    assert!(refused(&open, json!({"networkMode": "host"})).is_empty());
    assert!(refused(&open, json!({"networkMode": "container:vpn"})).is_empty());
}

#[test]
fn pid_and_ipc_host_modes_never_reach_docker() {
    // Not mapped: left out of the body with a warning, so there is nothing to refuse.
    let web = service("reg.local/app@sha256:aa", json!({"pid": "host", "ipc": "host", "securityOpt": ["x"]}));
    assert!(check(&HostLimits::default(), &web, &no_symlinks).is_empty());
    assert_eq!(web.warnings.len(), 3);
    assert_eq!(web.create_body["HostConfig"], json!({"RestartPolicy": {"Name": "always"}}));
}

#[test]
fn a_host_config_field_the_limits_do_not_know_is_refused() {
    let mut web = service("reg.local/app@sha256:aa", json!({}));
    web.create_body["HostConfig"]["PidMode"] = json!("host");
    let refusals = check(&HostLimits::default(), &web, &no_symlinks);
    assert_eq!(refusals.len(), 1);
    assert_eq!(refusals[0].asked, "HostConfig.PidMode");
}

#[test]
fn registries_as_docker_normalises_them() {
    let limits = HostLimits {
        allowed_registries: ["Registry.Example.com:5000", "index.docker.io"]
            .iter()
            .map(|r| registry_entry(r).unwrap())
            .collect(),
        ..Default::default()
    };
    assert_eq!(limits.allowed_registries, ["registry.example.com:5000", "docker.io"]);
    let digest = format!("sha256:{}", "a".repeat(64));
    let judged = |image: &str| check(&limits, &service(image, json!({})), &no_symlinks);
    for allowed in [
        "registry.example.com:5000/app:v1",
        "nginx:latest",
        "library/nginx",
        "docker.io/library/nginx",
        "index.docker.io/acme/app",
    ] {
        assert!(judged(allowed).is_empty(), "{allowed}");
    }
    assert!(judged(&digest).is_empty(), "an image ID pulls nothing");
    let refusals = judged("evil.example.com/app:v1");
    assert_eq!(
        refusals.iter().map(|r| r.to_string()).collect::<Vec<_>>(),
        ["the image evil.example.com/app:v1 from registry evil.example.com is refused by this gateway; add \
          \"evil.example.com\" to allowed_registries in /etc/pinion/agent.toml to allow it"]
    );
    assert_eq!(judged("registry.example.com/app:v1").len(), 1, "the port is part of the host");
    assert_eq!(judged("localhost:5000/app").len(), 1);
    assert!(check(&HostLimits::default(), &service("evil.example.com/app", json!({})), &no_symlinks).is_empty());
}

#[test]
fn every_refusal_of_a_service_is_named_and_it_is_moved_to_invalid() {
    let web = service("reg.local/app@sha256:aa", json!({"privileged": true, "networkMode": "host"}));
    let mut other = web.clone();
    other.key.service_name = "db".into();
    other.create_body = json!({"Image": "reg.local/db@sha256:bb", "HostConfig": {}});
    let mut invalid = Vec::new();
    let allowed = enforce(&HostLimits::default(), vec![web, other], &mut invalid, &no_symlinks);
    assert_eq!(allowed.iter().map(|s| s.key.service_name.as_str()).collect::<Vec<_>>(), ["db"]);
    assert_eq!(invalid.len(), 1);
    assert_eq!(invalid[0].0.service_name, "web");
    assert_eq!(
        invalid[0].1.to_string(),
        "service web (app 1001): privileged is refused by this gateway; set allow_privileged = true in \
         /etc/pinion/agent.toml to allow it; also, networkMode host is refused by this gateway; set \
         allow_host_network = true in /etc/pinion/agent.toml to allow it"
    );
}

#[test]
fn list_entries_are_checked_when_read() {
    assert_eq!(parse_list("k", " /a/ , /b//c,,", path_entry).unwrap(), ["/a", "/b/c"]);
    assert_eq!(parse_list("k", "", path_entry).unwrap(), Vec::<String>::new());
    assert!(parse_list("allowed_devices", "dev/mem", path_entry).unwrap_err().contains("absolute"));
    assert!(parse_list("k", "/a/../b", path_entry).is_err());
    assert!(parse_list("k", "NET ADMIN", capability_entry).is_err());
    assert!(parse_list("k", "reg.example.com/path", registry_entry).is_err());
    assert_eq!(normalise("/"), Some("/".into()));
    assert_eq!(normalise("/a/./b/"), Some("/a/b".into()));
    assert_eq!(normalise("a/b"), None);
}

#[test]
fn real_paths_follow_symlinks_up_to_what_exists() {
    let dir = std::env::temp_dir().join(format!("pinion-limits-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let link = dir.join("root");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink("/", &link).unwrap();
    let real_dir = std::fs::canonicalize(&dir).unwrap().display().to_string();
    assert_eq!(real_path(&format!("{}/root", dir.display())).as_deref(), Some("/"));
    assert_eq!(real_path(&format!("{}/root/etc", dir.display())).as_deref(), Some("/etc"));
    assert_eq!(real_path(&format!("{}/missing/x", dir.display())), Some(format!("{real_dir}/missing/x")));
    // A link that exists but leads nowhere (yet) does not resolve: Docker would follow it.
    let dangling = dir.join("dangling");
    std::os::unix::fs::symlink(dir.join("nowhere"), &dangling).unwrap();
    assert_eq!(real_path(&dangling.display().to_string()), None);
    assert_eq!(real_path(&format!("{}/below", dangling.display())), None);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn an_error_is_logged_once_while_it_lasts() {
    let key = ServiceKey { app_id: "1".into(), service_name: "web".into() };
    let error = || vec![(key.clone(), Error::InvalidTarget { reason: "no image".into() })];
    let mut logged = LoggedOnce::default();
    assert_eq!(logged.fresh(&error()).len(), 1);
    assert!(logged.fresh(&error()).is_empty());
    assert!(logged.fresh(&[]).is_empty());
    assert_eq!(logged.fresh(&error()).len(), 1, "gone and back: logged again");
}
