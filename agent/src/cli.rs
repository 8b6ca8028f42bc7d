//! The `pinion-agent` command line: `run` the agent, or print its `status` from SQLite.

use crate::config::{Config, DEFAULT_CONFIG_PATH};
use crate::spec::desired_services;
use crate::store::AgentStore;
use crate::Error;
use lexopt::prelude::*;
use pinion_model::TargetState;
use serde_json::json;
use std::path::PathBuf;
use std::process::ExitCode;

const USAGE: &str = "\
pinion-agent — keeps this device's containers at the target state its server sets

USAGE:
    pinion-agent run    [--config FILE]
    pinion-agent status [--config FILE]

    --config FILE    settings file [default /etc/pinion/agent.toml; optional unless given]
    -h, --help       print this help
    -V, --version    print the version

SETTINGS (file key = environment variable):
    server           PINION_SERVER            the server's base URL: https, or http to loopback
    allow_insecure_server PINION_ALLOW_INSECURE_SERVER
                                              true allows plain http to other hosts (default false)
    ca_file          PINION_CA_FILE           PEM file of a private (fleet) CA to trust for the
                                              server besides the system's CAs ($SSL_CERT_FILE or
                                              /etc/ssl/certs/ca-certificates.crt; else built-in)
    uuid             PINION_UUID              this device's id (made when registering if unset)
    device_key       PINION_DEVICE_KEY        this device's key, or:
    provisioning_key PINION_PROVISIONING_KEY  key to register with
    device_name      PINION_DEVICE_NAME
    device_type      PINION_DEVICE_TYPE
    poll_interval    PINION_POLL_INTERVAL     default 60s (with jitter)
    report_interval  PINION_REPORT_INTERVAL   heartbeat, default 5m
    probation        PINION_PROBATION         default 60s; a new deployment that fails within it
                                              is rolled back to the one before (0: off)
    min_free_disk    PINION_MIN_FREE_DISK     default 256M; no pull starts with less free where
                                              Docker keeps images (0: off)
    docker_socket    PINION_DOCKER_SOCKET     default /var/run/docker.sock
    db               PINION_DB                default /var/lib/pinion/agent.db

GATEWAY LIMITS (what a target state may ask of this host; all closed by default):
    allow_privileged     PINION_ALLOW_PRIVILEGED     true allows privileged containers
    allowed_bind_sources PINION_ALLOWED_BIND_SOURCES host paths bind mounts may come from:
                         each allows exactly itself, or with /* each direct child (not
                         `/`, the Docker socket, Docker, containerd and pinion state, /proc,
                         /sys, /boot, /dev: those only when named). A path under another
                         entry's is refused. Named volumes are always allowed
    allowed_devices      PINION_ALLOWED_DEVICES      device paths (each with what is under it)
    allowed_capabilities PINION_ALLOWED_CAPABILITIES cap_add values (NET_ADMIN; ALL allows any)
    allow_host_network   PINION_ALLOW_HOST_NETWORK   true allows networkMode host, container:<x>
    allowed_registries   PINION_ALLOWED_REGISTRIES   registry hosts images may come from
                         (docker.io for Docker Hub); unset: any registry
A service asking for more is not created and is reported as refused_by_gateway.
Durations are whole seconds or a number with s, m or h. Lists are one quoted string,
comma-separated: allowed_devices = \"/dev/ttyUSB0, /dev/i2c-1\". Logs: RUST_LOG=debug for more.
Exit status: 2 for usage, 78 for unusable settings, 1 for other errors.
";

pub fn main() -> ExitCode {
    pinion_systemd::init_logging();
    match run_cli(std::env::args_os().skip(1).collect()) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("pinion-agent: {error}");
            if let Error::Usage { .. } = error {
                eprintln!("Try 'pinion-agent --help'.");
                return ExitCode::from(2);
            }
            if let Error::Config { .. } = error {
                // EX_CONFIG: the systemd unit does not restart on it (RestartPreventExitStatus).
                return ExitCode::from(78);
            }
            ExitCode::FAILURE
        }
    }
}

fn usage(reason: impl ToString) -> Error {
    Error::Usage { reason: reason.to_string() }
}

fn run_cli(args: Vec<std::ffi::OsString>) -> Result<ExitCode, Error> {
    let mut parser = lexopt::Parser::from_args(args);
    let mut command: Option<String> = None;
    let mut config_path: Option<PathBuf> = None;
    while let Some(arg) = parser.next().map_err(usage)? {
        match arg {
            Short('h') | Long("help") => {
                print!("{USAGE}");
                return Ok(ExitCode::SUCCESS);
            }
            Short('V') | Long("version") => {
                println!("pinion-agent {}", env!("CARGO_PKG_VERSION"));
                return Ok(ExitCode::SUCCESS);
            }
            Short('c') | Long("config") => config_path = Some(parser.value().map_err(usage)?.into()),
            Value(word) if command.is_none() => command = Some(word.string().map_err(usage)?),
            other => return Err(usage(other.unexpected())),
        }
    }
    let required = config_path.is_some();
    let path = config_path.unwrap_or_else(|| DEFAULT_CONFIG_PATH.into());
    let load = || Config::load(&path, required, &|var| std::env::var(var).ok());
    match command.as_deref() {
        Some("run") => crate::run::run(load()?).map(|()| ExitCode::SUCCESS),
        Some("status") => status(&load()?),
        Some(other) => Err(usage(format!("unknown command {other:?}"))),
        None => Err(usage("no command given")),
    }
}

/// What the agent runs and why, from its database, as JSON.
fn status(config: &Config) -> Result<ExitCode, Error> {
    if !config.db.exists() {
        return Err(Error::Store {
            op: "reading the status",
            reason: format!("{} does not exist; has the agent run yet?", config.db.display()),
        });
    }
    let store = AgentStore::open(&config.db)?;
    let identity = store.identity()?;
    let target = store.target()?;
    let state: TargetState = target.as_ref().and_then(|t| serde_json::from_str(&t.state).ok()).unwrap_or_default();
    let (desired, mut invalid) = desired_services(&state);
    let desired =
        crate::host_limits::enforce(&config.host_limits(), desired, &mut invalid, &crate::host_limits::real_path);
    let records = store.services()?;
    let services: Vec<_> = desired
        .iter()
        .map(|d| {
            let record = records.iter().find(|r| r.key == d.key);
            json!({
                "app": d.key.app_id,
                "service": d.key.service_name,
                "image": d.image,
                "container": d.container_name,
                "deployedImage": record.map(|r| r.image.clone()),
                "containerId": record.and_then(|r| r.container_id.clone()),
                "upToDate": record.is_some_and(|r| r.config_hash == d.config_hash && r.last_error.is_none()),
                "failures": record.map(|r| r.failures).unwrap_or(0),
                "lastError": record.and_then(|r| r.last_error.clone()),
                "deployedAt": record.map(|r| r.deployed_at).filter(|at| *at > 0),
                // The target's image failed probation: `to` runs until the target changes.
                "rollback": record
                    .and_then(|r| r.rollback.as_ref())
                    .filter(|rb| rb.from_image == d.image && rb.from_config_hash == d.config_hash)
                    .map(|rb| json!({
                    "from": rb.from_image, "to": rb.to.image, "reason": rb.reason, "at": rb.at,
                })),
                "warnings": d.warnings,
            })
        })
        .collect();
    let invalid: Vec<_> = invalid
        .iter()
        .map(|(key, e)| json!({"app": key.app_id, "service": key.service_name, "error": e.to_string()}))
        .collect();
    let events: Vec<_> = store
        .recent_events(20)?
        .into_iter()
        .map(|e| json!({"at": e.at, "level": e.level, "message": e.message}))
        .collect();
    let answer = json!({
        "uuid": identity.as_ref().map(|i| i.uuid.clone()),
        "registered": identity.as_ref().is_some_and(|i| i.registered),
        "server": config.server,
        "target": target.as_ref().map(|t| json!({"etag": t.etag, "fetchedAt": t.fetched_at})),
        "services": services,
        "invalidServices": invalid,
        "recentEvents": events,
    });
    println!("{}", serde_json::to_string_pretty(&answer).unwrap_or_default());
    Ok(ExitCode::SUCCESS)
}
