//! Benchmark, not a test: the agent's memory while Docker pulls a large image for it. An
//! image with one layer of SIZE MB of random bytes (incompressible) is pushed to the
//! local Debian docker-registry and removed from the dockerd; an agent is given a target
//! naming it, and its VmRSS is sampled every 50 ms from its start until the container
//! runs; VmHWM is read at the end. Run for a small and a large image: if the agent
//! buffered the pull, its peak would grow with the image. Takes the test dockerd's turn
//! (`take_turn`), as the end-to-end tests do, so it never runs beside them.
//! Run: `cargo run --release -p pinion-tests --example bench_agent_pull -- [SIZE_MB...]`
//! (default 16 400), with PINION_TEST_DOCKER_SOCKET naming the test dockerd.

use pinion_tests::docker::take_turn;
use pinion_tests::{Agent, Auth, Docker, Registry, Server, TempDir};
use serde_json::json;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

const SERVE: &str = r#"["/bin/sh", "-c", "trap 'exit 0' TERM; while true; do sleep 1; done"]"#;

/// `VmRSS` and `VmHWM` of `pid` in kB.
fn memory(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field =
        |name: &str| status.lines().find(|l| l.starts_with(name))?.split_whitespace().nth(1)?.parse::<u64>().ok();
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

fn random_file(dir: &TempDir, megabytes: usize) -> std::path::PathBuf {
    let path = dir.join("random.bin");
    let mut file = std::fs::File::create(&path).expect("creating the random file");
    let mut urandom = std::fs::File::open("/dev/urandom").expect("opening /dev/urandom");
    let mut chunk = vec![0u8; 1 << 20];
    for _ in 0..megabytes {
        std::io::Read::read_exact(&mut urandom, &mut chunk).expect("reading /dev/urandom");
        file.write_all(&chunk).expect("writing the random file");
    }
    path
}

fn running(docker: &Docker) -> bool {
    docker.containers_with_label("io.pinion.app-id=7").iter().any(|c| c["State"]["Running"] == true)
}

fn measure(docker: &Docker, registry: &Registry, server: &Server, megabytes: usize) {
    let dir = TempDir::new("bench-pull");
    let reference = format!("{}/bench/big{megabytes}:latest", registry.host());
    let blob = random_file(&dir, megabytes);
    docker.import_busybox_with(&reference, "v1", SERVE, &[("random.bin", &blob)]);
    let digest = docker.push(&reference);
    docker.run(&["rmi", &reference]);
    let pinned = format!("{}/bench/big{megabytes}@{digest}", registry.host());
    let uuid = format!("bench-pull-{megabytes}");
    let state = json!({"apps": {"7": {"appId": 7, "appName": "big", "services": [
        {"serviceId": 1, "serviceName": "main", "imageName": reference}]}}, "config": {}});
    let reply = server.set_target_state(&uuid, &state);
    assert_eq!(reply.status, 200, "{}", reply.body);

    let started = Instant::now();
    let agent = Agent::start(&server.url(), &server.provisioning_key(), &uuid, docker);
    let pid = agent.pid().expect("the agent runs");
    let done = AtomicBool::new(false);
    let (peak_rss, samples) = std::thread::scope(|scope| {
        let sampler = scope.spawn(|| {
            let (mut peak, mut samples) = (0, 0);
            while !done.load(Ordering::Relaxed) {
                if let Some((rss, _)) = memory(pid) {
                    peak = peak.max(rss);
                    samples += 1;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            (peak, samples)
        });
        agent.converge("the large image running", || running(docker));
        done.store(true, Ordering::Relaxed);
        sampler.join().expect("the sampler")
    });
    let elapsed = started.elapsed();
    let (rss, hwm) = memory(pid).expect("the agent still runs");
    println!(
        "layer {megabytes} MB: pulled and running in {:.1} s; agent VmRSS peak while pulling {peak_rss} kB \
         ({samples} samples), VmRSS after {rss} kB, VmHWM {hwm} kB",
        elapsed.as_secs_f64()
    );
    drop(agent);
    docker.remove_labelled("io.pinion.app-id");
    docker.try_run(&["rmi", &pinned]);
}

fn main() {
    let sizes: Vec<usize> = std::env::args().skip(1).map(|a| a.parse().expect("SIZE_MB is a number")).collect();
    let sizes = if sizes.is_empty() { vec![16, 400] } else { sizes };
    // Built before any clock starts.
    pinion_tests::server::workspace_binary("pinion-agent");
    let turn = take_turn();
    let registry = Registry::start(Auth::Anonymous);
    let server = Server::start(&["--refresh-interval", "0"]);
    println!(
        "agent memory during a pull; registry {} (Debian docker-registry), dockerd {}",
        registry.host(),
        turn.docker.socket().display()
    );
    for megabytes in sizes {
        measure(&turn.docker, &registry, &server, megabytes);
    }
}
