//! Benchmark, not a test: seconds from a push to the registry to the new container
//! running on the device, through the registry's webhook. The Debian docker-registry
//! notifies the server (`POST /api/v1/webhooks/registry`, `--webhook-token`); the server
//! re-resolves the tag and stores a new target version; the agent, polling every
//! POLL seconds, replaces the container. The image download is not in the figure: each
//! version is made on the same dockerd with `docker import` and pushed from there, so
//! its layers are local when the agent asks Docker to pull it by digest. Takes the test
//! dockerd's turn (`take_turn`), as the end-to-end tests do.
//! Run: `cargo run --release -p pinion-tests --example bench_update_latency -- [ROUNDS] [POLL]`
//! (default 5 rounds, poll every 1 s), with PINION_TEST_DOCKER_SOCKET naming the test dockerd.

use pinion_tests::docker::{take_turn, MANAGED};
use pinion_tests::{Agent, Auth, Docker, Registry, RegistryOptions, Server};
use serde_json::json;
use std::time::{Duration, Instant};

const WEBHOOK_TOKEN: &str = "bench-webhook-token-0123456789abcdef";
/// Stops at once on SIGTERM, so Docker's 10 s stop grace period is not in the figure.
const SERVE: &str = r#"["/bin/sh", "-c", "trap 'exit 0' TERM; cat /version; while true; do sleep 1; done"]"#;

fn running_image(docker: &Docker) -> Vec<String> {
    docker
        .containers_with_label(&format!("{MANAGED}=5"))
        .iter()
        .filter(|c| c["State"]["Running"] == true)
        .map(|c| c["Config"]["Image"].as_str().unwrap_or_default().to_string())
        .collect()
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rounds: usize = args.first().map_or(5, |a| a.parse().expect("ROUNDS is a number"));
    let poll: u64 = args.get(1).map_or(1, |a| a.parse().expect("POLL is a number of seconds"));
    // Built before any clock starts.
    pinion_tests::server::workspace_binary("pinion-agent");
    let turn = take_turn();
    let docker = &turn.docker;
    let server = Server::start(&["--refresh-interval", "0", "--webhook-token", WEBHOOK_TOKEN]);
    let notify = (format!("{}/api/v1/webhooks/registry", server.url()), WEBHOOK_TOKEN.to_string());
    let registry =
        Registry::start_with(Auth::Anonymous, &RegistryOptions { notify: Some(notify), ..Default::default() });
    let latest = format!("{}/bench/hook:latest", registry.host());
    let pinned = |digest: &str| format!("{}/bench/hook@{digest}", registry.host());

    docker.import_busybox(&latest, "v0", SERVE);
    let v0 = pinned(&docker.push(&latest));
    let state = json!({"apps": {"5": {"appId": 5, "appName": "app", "services": [
        {"serviceId": 1, "serviceName": "main", "imageName": latest}]}}, "config": {}});
    let reply = server.set_target_state("bench-hook", &state);
    assert_eq!(reply.status, 200, "{}", reply.body);
    let poll_env = poll.to_string();
    let agent = Agent::start_with_env(
        &server.url(),
        &server.provisioning_key(),
        "bench-hook",
        docker,
        &[("PINION_POLL_INTERVAL", &poll_env), ("RUST_LOG", "warn")],
    );
    agent.converge("v0 running", || running_image(docker) == [v0.as_str()]);

    println!("push → new container running, webhook, agent polling every {poll} s, image already local");
    let mut times: Vec<(Duration, Duration)> = Vec::new();
    for round in 1..=rounds {
        docker.import_busybox(&latest, &format!("v{round}"), SERVE);
        let push_started = Instant::now();
        let next = pinned(&docker.push(&latest));
        let pushed = Instant::now();
        agent.converge("the new version running", || running_image(docker) == [next.as_str()]);
        let (from_start, from_return) = (push_started.elapsed(), pushed.elapsed());
        println!(
            "round {round}: {:.2} s from `docker push` starting, {:.2} s from it returning",
            from_start.as_secs_f64(),
            from_return.as_secs_f64()
        );
        times.push((from_start, from_return));
        // Out of phase with the poll from one round to the next.
        std::thread::sleep(Duration::from_millis(370 * round as u64 % 1000));
    }
    times.sort();
    let secs = |d: Duration| d.as_secs_f64();
    let returns: Vec<f64> = {
        let mut r: Vec<f64> = times.iter().map(|t| secs(t.1)).collect();
        r.sort_by(f64::total_cmp);
        r
    };
    println!(
        "over {rounds} rounds, from `docker push` returning: min {:.2} s, median {:.2} s, max {:.2} s \
         (from the push starting: median {:.2} s)",
        returns[0],
        returns[returns.len() / 2],
        returns[returns.len() - 1],
        secs(times[times.len() / 2].0)
    );
}
