//! Several `pinion-server` replicas on one PostgreSQL database behind the Debian nginx
//! balancing round-robin, as a fleet runs them for availability (issue 16): plain http
//! on a loopback port, every replica started with the same admin token and secret key
//! file, one after another (the first makes the key file). A replica killed or stopped
//! is skipped by nginx (a request it cannot connect to goes to the next one); its port,
//! arguments and token stay for `restart`. Everything is stopped on drop.

use crate::nginx::Nginx;
use crate::server::Server;
use crate::util::{random_hex, TempDir};
use std::collections::BTreeSet;
use std::process::ExitStatus;

/// N replicas on one database and the balancer in front of them.
pub struct Replicas {
    /// The replicas, in the order of the `upstream` block (which is the round-robin order).
    pub servers: Vec<Server>,
    nginx: Nginx,
    admin_token: String,
    db_url: String,
    /// Holds the secret key file all replicas share.
    keys: TempDir,
}

impl Replicas {
    /// `count` replicas on `db_url` (`postgres://…`), each `serve <extra_args>`, with a
    /// new random admin token and a secret key file made by the first; nginx in front.
    pub fn start(count: usize, db_url: &str, extra_args: &[&str]) -> Replicas {
        assert!(count > 0, "no replicas");
        let keys = TempDir::new("replica-keys");
        let admin_token = random_hex(24);
        let key_file = keys.join("pinion-server.secret-key");
        let servers: Vec<Server> =
            (0..count).map(|_| Server::start_replica(db_url, &admin_token, &key_file, extra_args)).collect();
        let upstreams: String =
            servers.iter().map(|s| format!("    server {} max_fails=1 fail_timeout=2s;\n", s.address())).collect();
        // More connections than TlsProxy's 64: every proxied request holds two (client and
        // upstream), and the tests poll and write from many threads and agents at once.
        let nginx = Nginx::start(1024, |port| {
            format!(
                "  upstream pinion_replicas {{\n{upstreams}  }}\n  server {{\n    listen 127.0.0.1:{port};\n    \
                 location / {{\n      proxy_pass http://pinion_replicas;\n      proxy_http_version 1.1;\n      \
                 proxy_set_header Host $host;\n      proxy_next_upstream error timeout;\n      \
                 proxy_read_timeout 120s;\n    }}\n  }}"
            )
        });
        Replicas { servers, nginx, admin_token, db_url: db_url.to_string(), keys }
    }

    /// `http://127.0.0.1:PORT` of the balancer.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.nginx.port())
    }

    /// The admin token every replica has.
    pub fn admin_token(&self) -> &str {
        &self.admin_token
    }

    /// The database they share.
    pub fn db_url(&self) -> &str {
        &self.db_url
    }

    /// The secret key file they share.
    pub fn secret_key_file(&self) -> std::path::PathBuf {
        self.keys.join("pinion-server.secret-key")
    }

    /// SIGKILLs replica `i` (`Server::kill`); how it ended.
    pub fn kill(&mut self, i: usize) -> ExitStatus {
        self.servers[i].kill()
    }

    /// Starts replica `i` again on its port, database, token and key file.
    pub fn restart(&mut self, i: usize) {
        self.servers[i].restart();
    }

    /// nginx's error log.
    pub fn balancer_log(&self) -> String {
        self.nginx.log()
    }

    /// The requests nginx proxied, one line each, ending in `upstream=ADDR[, ADDR…]`.
    pub fn access_log(&self) -> String {
        self.nginx.full_access_log()
    }

    /// The replicas (`127.0.0.1:PORT`) nginx sent requests matching `needle` to (the last
    /// address of each request line: the one that answered).
    pub fn upstreams_of(&self, needle: &str) -> BTreeSet<String> {
        self.access_log()
            .lines()
            .filter(|line| line.contains(needle))
            .filter_map(|line| line.rsplit_once("upstream=").map(|(_, addrs)| addrs))
            .filter_map(|addrs| addrs.rsplit(", ").next().map(str::to_string))
            .filter(|addr| addr != "-")
            .collect()
    }

    /// The last lines each replica logged, and nginx's error log: for failure messages.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for (i, server) in self.servers.iter().enumerate() {
            out.push_str(&format!("--- replica {} ({}) ---\n{}\n", i + 1, server.url(), server.log()));
        }
        out.push_str(&format!("--- nginx ---\n{}\n", self.nginx.log()));
        out
    }
}
