//! The `pinion-server` command line: `serve`, `image parse`, `image resolve`.

use crate::api::rate_limit::{DEFAULT_AUTH_FAILURES_PER_MINUTE, DEFAULT_REGISTRATIONS_PER_MINUTE};
use crate::api::{self, Api, ClientLimits, ScrapeAccess};
use crate::digest_cache::CachedResolver;
use crate::keys::hash_secret;
use crate::metrics::{CountingResolver, Metrics};
use crate::pinning::ResolveDigests;
use crate::policy::{UpdatePolicy, UpdateWindow};
use crate::refresh::Refresher;
use crate::registry::{CredentialSource, Credentials, RegistryAccess, Resolver, ResolverConfig};
use crate::registry_auth::StoredCredentials;
use crate::secrets::{default_key_path, SECRET_KEY_FILE_ENV};
use crate::sessions::{Sessions, DEFAULT_LIFETIME as DEFAULT_SESSION_LIFETIME};
use crate::store::{SqlStore, Store};
use crate::{admin_token, Error};
use lexopt::prelude::*;
use pinion_model::duration::parse_duration;
use pinion_model::Reference;
use serde_json::json;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

const USAGE: &str = "\
pinion-server — pins image tags to registry digests and serves device target state

USAGE:
    pinion-server serve [OPTIONS]
    pinion-server backup --to FILE [--db PATH]
    pinion-server migrate-store --from PATH --to URL [--db-ca-file PATH]
    pinion-server image parse REF
    pinion-server image resolve REF [REGISTRY OPTIONS] [--timeout DURATION]

    backup          copies the SQLite database (a running server's too) into a new file
                    FILE, one consistent snapshot; keep the secret key file with it
    migrate-store   copies a SQLite database into an empty PostgreSQL one (devices and
                    their keys, every target version, policies, credentials, provisioning
                    keys, fleets, rollouts, the digest cache); stop the server first, then
                    start the replicas on --db URL with the same secret key file

SERVE OPTIONS:
    --listen ADDR              address to listen on [env PINION_LISTEN, default 0.0.0.0:3002]
    --tls-cert FILE            serve https with this PEM certificate chain (leaf first, as
                               certbot's fullchain.pem) instead of plain http; needs --tls-key.
                               Checked at start (readable, valid now, matching the key: else
                               the server does not start); a changed file is served to new
                               connections within seconds, no restart [env PINION_TLS_CERT]
    --tls-key FILE             its PEM private key (PKCS#8, RSA or EC; certbot's privkey.pem)
                               [env PINION_TLS_KEY]
    --db PATH|URL              SQLite database file, or a PostgreSQL URL for several replicas
                               (postgres://USER:PASSWORD@HOST:PORT/DBNAME?sslmode=require;
                               a socket directory as HOST: postgres://USER@%2Frun%2Fpostgresql/DB)
                               [env PINION_DATABASE_URL or PINION_DB, default ./pinion-server.db]
    --db-ca-file PATH          PEM certificates that may sign PostgreSQL's (sslmode=require,
                               which pinion always verifies) [default: the Mozilla roots]
    --db-connections N         PostgreSQL connections per replica at most [default 16]
    --secret-key-file PATH     key that encrypts the registry passwords stored in the database;
                               made (mode 0600) on first start; keep it with the database, and
                               give every replica on one PostgreSQL the same file
                               [env PINION_SECRET_KEY_FILE, default DB with extension .secret-key;
                               with PostgreSQL $STATE_DIRECTORY/server.secret-key under systemd,
                               else ./pinion-server.secret-key]
    --replace-admin-token      on PostgreSQL, every replica must have the same admin token
                               (PINION_ADMIN_TOKEN, or the file beside the key); this one's
                               becomes the token the others must have
    --resolve-deadline DUR     time one target-state request may spend on registries [default 15s]
    --cache-ttl DUR            setting a target asks the registry for every tag (a manifest
                               HEAD); with a TTL, a digest it gave less than DUR ago answers
                               instead, marked cached with its age; a request with
                               Cache-Control: no-cache asks regardless. Whatever the TTL, the
                               last digest answers (as cached) when the registry cannot
                               [default 0: off]
    --refresh-interval DUR     every followed tag is asked again within this time, spread out;
                               0 turns the background re-resolution off [default 15m]
    --rollout-interval DUR     how often running rollouts look at their devices and fleets'
                               moved tags become releases [default 5s]
    --session-lifetime DUR     how long a dashboard sign-in lasts (http://HOST:PORT/ signs in
                               with the admin token; sessions end on restart) [default 12h]
    --webhook-token TOKEN      token registries send to POST /api/v1/webhooks/registry
                               (Bearer or ?token=) [env PINION_WEBHOOK_TOKEN; off when unset]
    --auto-update true|false   default policy: false only records a moved tag as a pending
                               update, to be applied by the operator [default true]
    --update-window WINDOW     default policy: moved tags are applied only inside this daily
                               window, HH:MM-HH:MM[@ZONE], e.g. 02:00-04:00@Europe/Berlin or
                               22:00-02:00 (across midnight; ZONE defaults to UTC); outside
                               it they wait as pending updates [default: none, any time]
    --workers N                HTTP worker threads [default 16]
    --max-body BYTES           largest request body accepted [default 1048576]
    --max-connections N        open connections at most; past it the connections that have
                               waited longest (idle, or slow to send their request) are
                               closed [default: what the open-files limit allows, which the
                               server raises to its hard limit, less 128]
    --idle-timeout DUR         how long a keep-alive connection may wait for its next
                               request [default 75s: longer than a device's 60 s poll]
    --head-timeout DUR         from a connection's opening or first byte to the end of its
                               request head [default 10s]
    --body-timeout DUR         for a request's body after its head [default 30s]
    --history-versions N       target versions kept per device, oldest deleted first; a
                               rollback reaches only kept ones [default 100, at least 2]
    --auth-failures-per-minute N
                               refused credentials (401/403) one client address may have per
                               minute (a burst of N, then one every 60/N s); over it, every
                               call but /health is answered 429 with Retry-After, without
                               looking at its credentials, except credentials that worked
                               from that address within the hour; 0 = no limit [default 20]
    --trusted-proxy ADDR[,ADDR…]
                               reverse proxies (addresses or networks, 10.0.0.0/8) whose
                               Forwarded / X-Forwarded-For name the client: the limits then
                               count the client's address, not the proxy's [default: none]
    --registrations-per-minute N
                               POST /api/v1/device/register calls per minute and client
                               address, same rule; 0 = no limit [default 30]
    --metrics-token TOKEN      token (Bearer) that may scrape GET /metrics, Prometheus' text
                               format; the admin token may too [env PINION_METRICS_TOKEN]
    --metrics-allow ADDR[,ADDR…]
                               client addresses or networks (127.0.0.1, 10.0.0.0/8) that may
                               scrape GET /metrics without a token; with neither of these two
                               options /metrics is off (404) [default: none]

REGISTRY OPTIONS:
    --registry-auth FILE       Docker config.json with registry credentials (auths); credentials
                               stored with PUT /api/v1/registries/HOST/credentials win over it
    --insecure-registry HOST   speak plain http to HOST[:PORT] (loopback registries always are)
    --registry-timeout DUR     timeout of each registry request [default 10s]
    --allowed-registries HOST[,HOST...]
                               resolve only images of these registries (HOST or HOST:PORT;
                               docker.io for Docker Hub; repeatable): a target state naming
                               another registry is refused (HTTP 422) and nothing is stored,
                               webhook and refresh references to others are ignored; every
                               redirect and token realm must lead to a listed host too (or to
                               one a listed entry implies: docker.io implies its API host
                               registry-1.docker.io and its token realm auth.docker.io)
                               [default: any registry]
    --allow-link-local-registries
                               let registries, token realms and redirects reach link-local
                               (169.254.0.0/16, fe80::/10) and cloud metadata addresses
                               (169.254.169.254, fd00:ec2::254, 100.100.100.200,
                               metadata.google.internal), refused by default even when a name
                               resolves to one; naming such a host in --allowed-registries
                               allows that host only

Durations are whole seconds or a number with s, m or h (30s, 15m, 2h).
--auto-update and --update-window apply to devices without their own policy
(PUT /api/v1/devices/UUID/update-policy); a target the operator sets applies at once.
Time zones come from the system time zone database (/usr/share/zoneinfo, package tzdata).
The admin token comes from PINION_ADMIN_TOKEN, or is made on first start and saved
beside the database (DB with extension .admin-token). Logs: RUST_LOG=debug for more;
the HTTP client and TLS library (ureq, ureq_proto, rustls) log at most info, whatever
RUST_LOG says, as below that they print requests, credentials included.

    -h, --help       print this help
    -V, --version    print the version
";

/// Runs the command line and turns errors into an exit code: 2 for usage and invalid
/// references, 1 for everything else.
pub fn main() -> ExitCode {
    pinion_systemd::init_logging();
    match run(std::env::args_os().skip(1).collect()) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("pinion-server: {error}");
            match error {
                Error::Usage { .. } => {
                    eprintln!("Try 'pinion-server --help'.");
                    ExitCode::from(2)
                }
                Error::BadRequest { .. } => ExitCode::from(2),
                _ => ExitCode::FAILURE,
            }
        }
    }
}

fn usage(reason: impl ToString) -> Error {
    Error::Usage { reason: reason.to_string() }
}

fn run(args: Vec<std::ffi::OsString>) -> Result<ExitCode, Error> {
    let mut parser = lexopt::Parser::from_args(args);
    let mut words: Vec<String> = Vec::new();
    let mut options = Options::default();
    while let Some(arg) = parser.next().map_err(usage)? {
        match arg {
            Short('h') | Long("help") => {
                print!("{USAGE}");
                return Ok(ExitCode::SUCCESS);
            }
            Short('V') | Long("version") => {
                println!("pinion-server {}", env!("CARGO_PKG_VERSION"));
                return Ok(ExitCode::SUCCESS);
            }
            Long("allow-link-local-registries") => {
                options.allow_link_local_registries = match parser.optional_value() {
                    None => true,
                    Some(value) => match value.string().map_err(usage)?.as_str() {
                        "true" => true,
                        "false" => false,
                        other => {
                            return Err(usage(format!("--allow-link-local-registries={other:?}: use true or false")))
                        }
                    },
                };
            }
            Long("replace-admin-token") => options.replace_admin_token = true,
            Long(name) => {
                let name = name.to_string();
                let value = parser.value().map_err(usage)?.string().map_err(usage)?;
                options.set(&name, value)?;
            }
            Value(word) => words.push(word.string().map_err(usage)?),
            Short(c) => return Err(usage(format!("unknown option -{c}"))),
        }
    }
    let words: Vec<&str> = words.iter().map(String::as_str).collect();
    match words.as_slice() {
        ["serve"] => serve(options),
        ["backup"] => backup(options),
        ["migrate-store"] => migrate_store(options),
        ["image", "parse", reference] => image_parse(reference),
        ["image", "resolve", reference] => image_resolve(reference, options),
        [] => Err(usage("no command given")),
        _ => Err(usage(format!("unknown command: {}", words.join(" ")))),
    }
}

#[derive(Default)]
struct Options {
    listen: Option<String>,
    db: Option<String>,
    from: Option<String>,
    to: Option<String>,
    db_ca_file: Option<PathBuf>,
    db_connections: Option<usize>,
    replace_admin_token: bool,
    secret_key_file: Option<PathBuf>,
    resolve_deadline: Option<Duration>,
    cache_ttl: Option<Duration>,
    refresh_interval: Option<Duration>,
    rollout_interval: Option<Duration>,
    session_lifetime: Option<Duration>,
    webhook_token: Option<String>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    workers: Option<usize>,
    max_body: Option<usize>,
    max_connections: Option<usize>,
    idle_timeout: Option<Duration>,
    head_timeout: Option<Duration>,
    body_timeout: Option<Duration>,
    history_versions: Option<u64>,
    auth_failures_per_minute: Option<u32>,
    registrations_per_minute: Option<u32>,
    registry_auth: Option<PathBuf>,
    insecure_registries: Vec<String>,
    registry_timeout: Option<Duration>,
    allowed_registries: Vec<String>,
    trusted_proxies: Vec<crate::api::client_address::TrustedProxy>,
    metrics_token: Option<String>,
    metrics_allow: Vec<crate::api::client_address::Network>,
    allow_link_local_registries: bool,
    auto_update: Option<bool>,
    update_window: Option<UpdateWindow>,
}

impl Options {
    /// The HTTP server's limits: each flag, or its default (`http_server::Limits`).
    fn server_limits(&self) -> crate::http_server::Limits {
        let default = crate::http_server::Limits::default();
        crate::http_server::Limits {
            max_connections: crate::http_server::connection_limit(self.max_connections),
            workers: self.workers.unwrap_or(default.workers).max(1),
            head_timeout: self.head_timeout.unwrap_or(default.head_timeout),
            body_timeout: self.body_timeout.unwrap_or(default.body_timeout),
            idle_timeout: self.idle_timeout.unwrap_or(default.idle_timeout),
            write_timeout: default.write_timeout,
            max_body: self.max_body.unwrap_or(default.max_body),
        }
    }

    fn set(&mut self, name: &str, value: String) -> Result<(), Error> {
        let duration = |v: &str| parse_duration(v).map_err(|e| usage(format!("--{name}: {e}")));
        let number = |v: &str| v.parse::<usize>().map_err(|_| usage(format!("--{name}: {v:?} is not a number")));
        let per_minute = |v: &str| v.parse::<u32>().map_err(|_| usage(format!("--{name}: {v:?} is not a number")));
        match name {
            "listen" => self.listen = Some(value),
            "db" => self.db = Some(value),
            "from" => self.from = Some(value),
            "to" => self.to = Some(value),
            "db-ca-file" => self.db_ca_file = Some(value.into()),
            "db-connections" => self.db_connections = Some(number(&value)?.max(1)),
            "secret-key-file" => self.secret_key_file = Some(value.into()),
            "resolve-deadline" => self.resolve_deadline = Some(duration(&value)?),
            "cache-ttl" => self.cache_ttl = Some(duration(&value)?),
            "refresh-interval" => self.refresh_interval = Some(duration(&value)?),
            "rollout-interval" => self.rollout_interval = Some(duration(&value)?).filter(|d| !d.is_zero()),
            "session-lifetime" => {
                let lifetime = duration(&value)?;
                if lifetime.is_zero() || lifetime > crate::sessions::MAX_LIFETIME {
                    return Err(usage(format!("--{name}: a session lasts from a second to 366 days")));
                }
                self.session_lifetime = Some(lifetime);
            }
            "webhook-token" => self.webhook_token = Some(value),
            "tls-cert" => self.tls_cert = Some(value.into()),
            "tls-key" => self.tls_key = Some(value.into()),
            "workers" => self.workers = Some(number(&value)?),
            "max-body" => self.max_body = Some(number(&value)?),
            "max-connections" => self.max_connections = Some(number(&value)?),
            "idle-timeout" => self.idle_timeout = Some(duration(&value)?),
            "head-timeout" => self.head_timeout = Some(duration(&value)?),
            "body-timeout" => self.body_timeout = Some(duration(&value)?),
            "history-versions" => self.history_versions = Some(number(&value)? as u64),
            "auth-failures-per-minute" => self.auth_failures_per_minute = Some(per_minute(&value)?),
            "registrations-per-minute" => self.registrations_per_minute = Some(per_minute(&value)?),
            "registry-auth" => self.registry_auth = Some(value.into()),
            "insecure-registry" => self.insecure_registries.push(value),
            "allowed-registries" => {
                let hosts = value.split(',').map(str::trim).filter(|h| !h.is_empty()).map(str::to_string);
                self.allowed_registries.extend(hosts);
                RegistryAccess::new(&self.allowed_registries, false).map_err(|e| usage(format!("--{name}: {e}")))?;
            }
            "registry-timeout" | "timeout" => self.registry_timeout = Some(duration(&value)?),
            "trusted-proxy" => {
                for entry in value.split(',').map(str::trim).filter(|e| !e.is_empty()) {
                    let proxy = crate::api::client_address::TrustedProxy::parse(entry)
                        .map_err(|e| usage(format!("--{name}: {e}")))?;
                    self.trusted_proxies.push(proxy);
                }
            }
            "metrics-token" => self.metrics_token = Some(value),
            "metrics-allow" => {
                for entry in value.split(',').map(str::trim).filter(|e| !e.is_empty()) {
                    let network = crate::api::client_address::Network::parse(entry)
                        .map_err(|e| usage(format!("--{name}: {e}")))?;
                    self.metrics_allow.push(network);
                }
            }
            "auto-update" => {
                self.auto_update = Some(match value.as_str() {
                    "true" => true,
                    "false" => false,
                    _ => return Err(usage(format!("--auto-update: {value:?} is neither true nor false"))),
                })
            }
            "update-window" => {
                self.update_window = match value.as_str() {
                    "none" => None,
                    _ => Some(value.parse().map_err(|e| usage(format!("--update-window: {e}")))?),
                }
            }
            _ => return Err(usage(format!("unknown option --{name}"))),
        }
        Ok(())
    }

    /// The update policy of devices without their own.
    fn default_policy(&self) -> UpdatePolicy {
        UpdatePolicy { auto_update: self.auto_update.unwrap_or(true), update_window: self.update_window.clone() }
    }

    /// The resolver, with the credentials stored through the API when there is a store;
    /// its registry requests are timed into `metrics`.
    fn resolver(
        &self,
        stored_credentials: Option<Arc<dyn CredentialSource>>,
        metrics: Arc<Metrics>,
    ) -> Result<Resolver, Error> {
        let credentials = match &self.registry_auth {
            Some(path) => Credentials::from_docker_config(path)?,
            None => Credentials::default(),
        };
        Ok(Resolver::new(ResolverConfig {
            credentials,
            stored_credentials,
            insecure_registries: self.insecure_registries.clone(),
            request_timeout: self.registry_timeout.unwrap_or(Duration::from_secs(10)),
            access: RegistryAccess::new(&self.allowed_registries, self.allow_link_local_registries)
                .map_err(|e| usage(format!("--allowed-registries: {e}")))?,
            metrics,
        }))
    }
}

/// `--tls-cert` and `--tls-key` (or `PINION_TLS_CERT`, `PINION_TLS_KEY`; empty is unset):
/// both or neither.
fn tls_files(options: &Options) -> Result<Option<crate::tls::TlsFiles>, Error> {
    let from_env = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from);
    let cert = options.tls_cert.clone().or_else(|| from_env("PINION_TLS_CERT"));
    let key = options.tls_key.clone().or_else(|| from_env("PINION_TLS_KEY"));
    match (cert, key) {
        (Some(cert), Some(key)) => Ok(Some(crate::tls::TlsFiles { cert, key })),
        (None, None) => Ok(None),
        (Some(_), None) => Err(usage("--tls-cert needs --tls-key (PINION_TLS_KEY): the certificate's private key")),
        (None, Some(_)) => {
            Err(usage("--tls-key needs --tls-cert (PINION_TLS_CERT): the certificate chain it belongs to"))
        }
    }
}

/// Shortest webhook (and metrics) token accepted: guessing it must be as hard as any key's.
const MIN_WEBHOOK_TOKEN_LEN: usize = 16;

/// Who may scrape `/metrics`: `--metrics-token` (or `PINION_METRICS_TOKEN`) and
/// `--metrics-allow`.
fn metrics_access(options: &Options) -> Result<ScrapeAccess, Error> {
    let token = options.metrics_token.clone().or_else(|| std::env::var("PINION_METRICS_TOKEN").ok());
    let token = token.filter(|t| !t.trim().is_empty());
    if let Some(token) = &token {
        if token.trim().len() < MIN_WEBHOOK_TOKEN_LEN {
            return Err(usage(format!(
                "the metrics token (--metrics-token or PINION_METRICS_TOKEN) must be at least \
                 {MIN_WEBHOOK_TOKEN_LEN} characters; leave it unset to scrape only from --metrics-allow"
            )));
        }
    }
    Ok(ScrapeAccess {
        token_hash: token.as_deref().map(|t| hash_secret(t.trim())),
        allowed: options.metrics_allow.clone(),
    })
}

fn serve(options: Options) -> Result<ExitCode, Error> {
    let listen = options.listen.clone().or_else(|| std::env::var("PINION_LISTEN").ok());
    let listen = listen.unwrap_or_else(|| "0.0.0.0:3002".into());
    let db = database(&options);
    let webhook_token = options.webhook_token.clone().or_else(|| std::env::var("PINION_WEBHOOK_TOKEN").ok());
    if let Some(token) = &webhook_token {
        if token.trim().len() < MIN_WEBHOOK_TOKEN_LEN {
            return Err(usage(format!(
                "the webhook token (--webhook-token or PINION_WEBHOOK_TOKEN) must be at least \
                 {MIN_WEBHOOK_TOKEN_LEN} characters; leave it unset to turn webhooks off"
            )));
        }
    }
    // Checked before anything is opened: a certificate that cannot be served stops the start.
    let tls = tls_files(&options)?.map(crate::tls::server_config).transpose()?;
    let (store, files_beside, replicated) = open_store(&options, &db)?;
    let secret_key_file =
        options.secret_key_file.clone().or_else(|| std::env::var_os(SECRET_KEY_FILE_ENV).map(PathBuf::from));
    let secret_key_file = secret_key_file.unwrap_or_else(|| default_key_path(&files_beside));
    let secret_key = crate::replicas::load_secret_key(&store, &secret_key_file, replicated)?;
    crate::replicas::check_secret_key(&store, &secret_key, &secret_key_file, replicated)?;
    let admin_token_hash = admin_token::load_or_create(&files_beside)?;
    if replicated && options.replace_admin_token {
        crate::replicas::replace_admin_token(&store, &admin_token_hash)?;
    } else if replicated {
        crate::replicas::check_admin_token(&store, &admin_token_hash)?;
    }
    let history_versions = options.history_versions.unwrap_or(crate::store::DEFAULT_HISTORY_LIMIT);
    let store: Arc<dyn Store> = Arc::new(store.with_secret_key(secret_key).with_history_limit(history_versions));
    let metrics_access = metrics_access(&options)?;
    let metrics = Arc::new(Metrics::default());
    let cache_ttl = options.cache_ttl.unwrap_or(Duration::ZERO);
    let stored_credentials: Arc<dyn CredentialSource> = Arc::new(StoredCredentials(Arc::clone(&store)));
    let registry = options.resolver(Some(stored_credentials), Arc::clone(&metrics))?;
    let cached = Arc::new(CachedResolver::new(Box::new(registry), Arc::clone(&store), cache_ttl));
    let resolver: Arc<dyn ResolveDigests + Send + Sync> =
        Arc::new(CountingResolver { inner: cached, metrics: Arc::clone(&metrics) });
    let resolve_deadline = options.resolve_deadline.unwrap_or(Duration::from_secs(15));
    let refresh_requests = Arc::new(crate::refresh_queue::RefreshQueue::default());
    let refresh_queue = Arc::clone(&refresh_requests);
    let refresher = Refresher {
        store: Arc::clone(&store),
        resolver: Arc::clone(&resolver),
        default_policy: options.default_policy(),
        deadline: resolve_deadline,
        metrics: Arc::clone(&metrics),
    };
    let refresh_interval = options.refresh_interval.unwrap_or(Duration::from_secs(15 * 60));
    std::thread::Builder::new()
        .name("refresh".into())
        .spawn(move || refresher.run(refresh_interval, &refresh_queue))
        .map_err(|source| Error::Io { path: "refresh thread".into(), source })?;
    let presence = Arc::new(match replicated {
        false => crate::presence::Presence::new(std::time::Instant::now()),
        true => crate::presence::Presence::shared(std::time::Instant::now()),
    });
    let limits = ClientLimits::per_minute(
        options.auth_failures_per_minute.unwrap_or(DEFAULT_AUTH_FAILURES_PER_MINUTE),
        options.registrations_per_minute.unwrap_or(DEFAULT_REGISTRATIONS_PER_MINUTE),
    );
    let limits = Arc::new(if replicated { limits.shared() } else { limits });
    if replicated {
        let sync = crate::replica_sync::ReplicaSync {
            store: Arc::clone(&store),
            presence: Arc::clone(&presence),
            limits: Arc::clone(&limits),
            replica: crate::keys::new_id(),
        };
        sync.spawn(crate::replica_sync::SHARE_EVERY)
            .map_err(|source| Error::Io { path: "replica sync thread".into(), source })?;
    }
    let rollout_lock = Arc::new(std::sync::Mutex::new(()));
    crate::rollout_driver::spawn(
        Arc::clone(&store),
        Arc::clone(&presence),
        Arc::clone(&rollout_lock),
        options.default_policy(),
        options.rollout_interval.unwrap_or(Duration::from_secs(5)),
    )
    .map_err(|source| Error::Io { path: "rollout thread".into(), source })?;
    let session_lifetime = options.session_lifetime.unwrap_or(DEFAULT_SESSION_LIFETIME);
    let sessions = Arc::new(match replicated {
        false => Sessions::new(session_lifetime),
        true => Sessions::shared(session_lifetime, Arc::clone(&store)),
    });
    let api = Api {
        store,
        resolver,
        admin_token_hash,
        webhook_token_hash: webhook_token.as_deref().map(hash_secret),
        resolve_deadline,
        refresh_requests: Some(refresh_requests),
        default_policy: options.default_policy(),
        poll_cache: Default::default(),
        log_retention: Default::default(),
        trusted_proxies: options.trusted_proxies.clone(),
        presence,
        rollout_lock,
        metrics,
        metrics_access,
        sessions,
        verdicts: Default::default(),
    };
    if !crate::policy::time_zone_database_found() {
        log::warn!("no time zone database found (install tzdata, or set TZDIR): update windows can only use UTC");
    }
    let listener = crate::listener::bind(&listen)?;
    let database = if replicated { crate::store::redacted_url(&db) } else { db };
    let scheme = if tls.is_some() { "https" } else { "http" };
    log::info!("pinion-server {} listening on {listen} ({scheme}; database {database})", env!("CARGO_PKG_VERSION"));
    pinion_systemd::ready();
    let server_limits = options.server_limits();
    api::serve(listener, api, limits, server_limits, tls)
        .map_err(|source| Error::Io { path: listen.into(), source })?;
    Ok(ExitCode::SUCCESS)
}

/// The store `--db` names; where the files kept beside it go (the secret key, the admin
/// token: beside a SQLite file; for PostgreSQL in systemd's `STATE_DIRECTORY` or the
/// working directory); and whether it is PostgreSQL, which replicas may share.
fn open_store(options: &Options, db: &str) -> Result<(SqlStore, PathBuf, bool), Error> {
    if crate::store::is_postgres_url(db) {
        #[cfg(feature = "postgres")]
        {
            let mut postgres = crate::store::PostgresOptions::new(db);
            postgres.ca_file = options.db_ca_file.clone();
            postgres.max_connections = options.db_connections.unwrap_or(postgres.max_connections);
            // The key and token files: in systemd's state directory, else the working one.
            let beside = match std::env::var_os("STATE_DIRECTORY") {
                Some(dir) => PathBuf::from(dir).join("server.db"),
                None => PathBuf::from("pinion-server.db"),
            };
            return Ok((SqlStore::connect(&postgres)?, beside, true));
        }
        #[cfg(not(feature = "postgres"))]
        return Err(usage("this pinion-server was built without PostgreSQL (cargo feature postgres)"));
    }
    if crate::store::is_conninfo(db) {
        return Err(usage(
            "--db: that is a libpq connection string (host=… dbname=…); give PostgreSQL as a URL: \
             postgres://USER:PASSWORD@HOST:PORT/DBNAME",
        ));
    }
    if let Some(scheme) = crate::store::url_scheme(db) {
        return Err(usage(format!(
            "--db {}: a {scheme}:// URL is neither a SQLite file nor a postgres:// URL",
            crate::store::redacted_url(db)
        )));
    }
    if options.db_ca_file.is_some() || options.db_connections.is_some() {
        return Err(usage("--db-ca-file and --db-connections are for a PostgreSQL --db"));
    }
    // The database, its WAL and shared memory, the token and key files: the server's alone.
    let db = PathBuf::from(db);
    crate::secret_file::make_new_files_private();
    let beside = |suffix: &str| PathBuf::from(format!("{}{suffix}", db.display()));
    for file in [db.clone(), beside("-wal"), beside("-shm")] {
        crate::secret_file::make_private_if_open(&file);
    }
    Ok((SqlStore::open(&db)?, db, false))
}

/// `--db`, `PINION_DATABASE_URL`, `PINION_DB`, or the default file.
fn database(options: &Options) -> String {
    let db = options.db.clone().or_else(|| std::env::var("PINION_DATABASE_URL").ok());
    db.or_else(|| std::env::var("PINION_DB").ok()).unwrap_or_else(|| "pinion-server.db".into())
}

fn backup(options: Options) -> Result<ExitCode, Error> {
    let to = options.to.clone().ok_or_else(|| usage("backup needs --to FILE"))?;
    let db = database(&options);
    if crate::store::is_postgres_url(&db) {
        return Err(usage("backup is for a SQLite database; back PostgreSQL up with pg_dump"));
    }
    if !std::path::Path::new(&db).exists() {
        return Err(usage(format!("{}: no such database file", crate::store::redacted_url(&db))));
    }
    crate::store::transfer::backup(std::path::Path::new(&db), std::path::Path::new(&to))?;
    eprintln!(
        "pinion-server: {db} backed up to {to}; its registry passwords open only with the secret key file \
         ({}), so keep a copy of that too",
        default_key_path(std::path::Path::new(&db)).display()
    );
    Ok(ExitCode::SUCCESS)
}

fn migrate_store(options: Options) -> Result<ExitCode, Error> {
    let from = options.from.clone().ok_or_else(|| usage("migrate-store needs --from PATH (the SQLite database)"))?;
    let to = options.to.clone().ok_or_else(|| usage("migrate-store needs --to URL (the PostgreSQL database)"))?;
    let redacted = crate::store::redacted_url;
    if !crate::store::is_postgres_url(&to) {
        return Err(usage(format!("--to {}: not a postgres:// URL", redacted(&to))));
    }
    if !std::path::Path::new(&from).exists() {
        return Err(usage(format!("--from {}: no such database file", redacted(&from))));
    }
    let source = SqlStore::open(std::path::Path::new(&from))?;
    let (target, _, _) = open_store(&options, &to)?;
    let copied = crate::store::transfer::copy_store(&source, &target)?;
    for (table, rows) in &copied {
        eprintln!("pinion-server: {table}: {rows} rows");
    }
    eprintln!(
        "pinion-server: {from} copied to {}; start every replica with --db URL and the secret key file {}",
        crate::store::redacted_url(&to),
        options.secret_key_file.clone().unwrap_or_else(|| default_key_path(std::path::Path::new(&from))).display()
    );
    Ok(ExitCode::SUCCESS)
}

fn parse_reference(input: &str) -> Result<Reference, Error> {
    Reference::parse(input).map_err(|e| Error::BadRequest { reason: e.to_string() })
}

fn image_parse(input: &str) -> Result<ExitCode, Error> {
    let reference = parse_reference(input)?;
    let line = json!({
        "name": reference.name(),
        "domain": reference.domain(),
        "path": reference.path(),
        "tag": reference.tag(),
        "digest": reference.digest(),
        "familiar": reference.familiar_name(),
        "canonical": reference.canonical(),
    });
    println!("{line}");
    Ok(ExitCode::SUCCESS)
}

fn image_resolve(input: &str, options: Options) -> Result<ExitCode, Error> {
    let reference = parse_reference(input)?;
    let resolved = options.resolver(None, Arc::default())?.resolve(&reference)?;
    let line = json!({
        "requested": input,
        "digest": resolved.digest,
        "mediaType": resolved.media_type,
        "pinned": reference.pinned(&resolved.digest),
    });
    println!("{line}");
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fails(args: &[&str]) -> String {
        let args = args.iter().map(Into::into).collect();
        run(args).expect_err("refused").to_string()
    }

    /// A database password never reaches a message: `POSTGRES://` was taken for a SQLite
    /// file name (and printed whole when it could not be opened), and the paths of
    /// `migrate-store` were printed as given.
    #[test]
    fn a_database_password_is_never_printed() {
        let cases: &[&[&str]] = &[
            &["serve", "--listen", "127.0.0.1:0", "--db", "POSTGRES://pinion:hunter2@127.0.0.1:1/fleet"],
            &["serve", "--listen", "127.0.0.1:0", "--db", "postgress://pinion:hunter2@127.0.0.1:1/fleet"],
            &["serve", "--listen", "127.0.0.1:0", "--db", "postgres://pinion:hun/ter2@127.0.0.1:1/fleet"],
            &["serve", "--listen", "127.0.0.1:0", "--db", "postgres://127.0.0.1:1/fleet?password=hunter2&sslmode=x"],
            &["migrate-store", "--from", "postgres://pinion:hunter2@127.0.0.1:1/a", "--to", "postgres://127.0.0.1:1/b"],
            &["migrate-store", "--from", "/nonexistent/server.db", "--to", "mysql://pinion:hunter2@db/fleet"],
            &["backup", "--db", "postgresql://pinion:hunter2@db/fleet", "--to", "/nonexistent/backup.db"],
            // libpq's other form: a SQLite file of that name, the password in the log.
            &["serve", "--listen", "127.0.0.1:0", "--db", "host=/nonexistent dbname=fleet password=hunter2"],
        ];
        for args in cases {
            let message = fails(args);
            assert!(!message.contains("hunter2") && !message.contains("ter2"), "{args:?}: {message}");
        }
    }

    /// `backup` opened the database as the server does, migrating its schema: a backup
    /// taken with a newer binary (before restarting the server) changed the live
    /// database under the server, and one of a database a newer pinion wrote was refused.
    #[test]
    fn backup_copies_a_database_of_any_schema_version_and_leaves_it_as_it_was() {
        let dir = std::env::temp_dir().join(format!("pinion-cli-backup-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let db = dir.join("server.db");
        drop(SqlStore::open(&db).unwrap());
        let version = |path: &std::path::Path| -> i64 {
            let conn = rusqlite::Connection::open(path).unwrap();
            conn.pragma_query_value(None, "user_version", |r| r.get(0)).unwrap()
        };
        let set_version = |sql: &str| rusqlite::Connection::open(&db).unwrap().execute_batch(sql).unwrap();
        set_version(
            "DROP TABLE rate_events; DROP TABLE sessions; DROP TABLE device_presence; DROP TABLE settings;
             PRAGMA user_version = 5;",
        );
        for (n, expected) in [(1, 5), (2, 99)] {
            let copy = dir.join(format!("copy-{n}.db"));
            let args = ["backup", "--db", db.to_str().unwrap(), "--to", copy.to_str().unwrap()];
            run(args.iter().map(Into::into).collect()).unwrap_or_else(|e| panic!("backup of version {expected}: {e}"));
            assert_eq!((version(&db), version(&copy)), (expected, expected), "the database and its copy as they were");
            set_version("PRAGMA user_version = 99;");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
