//! Benchmark, not a test: wall time of one target-state POST naming 10 distinct images
//! on the local Debian docker-registry, anonymous and with token auth, cold (first POST)
//! and warm (tokens cached); then through a proxy that delays every request by 100 ms,
//! against one POST naming a single image (the slowest single resolution). Run:
//! `cargo run --profile release-server -p pinion-tests --example bench_target_post`
//! (the server it starts is built in that profile, as shipped).

use pinion_tests::{push_image, Auth, ImageSpec, Registry, RegistryOptions, Server};
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

const IMAGES: usize = 10;
const ROUNDS: usize = 20;

fn target(registry: &Registry) -> Value {
    target_on(&registry.host(), IMAGES)
}

fn target_on(host: &str, images: usize) -> Value {
    let services: Vec<Value> = (0..images)
        .map(|i| {
            let image = format!("{host}/bench/app{i}:latest");
            json!({"serviceId": i, "serviceName": format!("s{i}"), "imageName": image})
        })
        .collect();
    json!({"apps": {"1": {"appId": 1, "services": services}}, "config": {}})
}

fn measure(label: &str, auth: Auth, server_args: &[&str]) {
    let registry = Registry::start_with(auth, &RegistryOptions { access_log: true, ..Default::default() });
    for i in 0..IMAGES {
        push_image(&registry, &format!("bench/app{i}"), "latest", &ImageSpec::linux_amd64(format!("app {i}")));
    }
    // The harness's own pushes ask the token server once per repository.
    let pushes = registry.token_requests();
    let config = registry.dir().write("config.json", registry.docker_config());
    let mut args = vec!["--registry-auth", config.to_str().unwrap()];
    args.extend_from_slice(server_args);
    let server = Server::start(&args);
    let mut served = registry.requests_served();
    let mut requests_per_post = Vec::new();
    let state = target(&registry);
    let mut times: Vec<Duration> = Vec::new();
    for round in 0..=ROUNDS {
        let started = Instant::now();
        let reply = server.set_target_state("bench-device", &state);
        let elapsed = started.elapsed();
        assert_eq!(reply.status, 200, "{}", reply.body);
        let now_served = registry.requests_served();
        requests_per_post.push(now_served - served);
        served = now_served;
        assert_eq!(reply.json()["resolution"]["resolved"], IMAGES, "{}", reply.body);
        if round == 0 {
            println!("{label}: cold POST {:.1} ms, {} registry requests", ms(elapsed), requests_per_post[0]);
        } else {
            times.push(elapsed);
        }
    }
    times.sort();
    let started = Instant::now();
    for _ in 0..20 {
        server.request("GET", "/api/v1/devices/bench-device/target-state", None, Some(server.admin_token()));
    }
    println!("{label}: target-state GET (10 services), mean of 20: {:.2} ms", ms(started.elapsed()) / 20.0);
    println!(
        "{label}: warm POST over {ROUNDS} rounds: median {:.1} ms, p90 {:.1} ms, max {:.1} ms; \
         registry requests per warm POST (max): {}; token requests by the server in all: {}",
        ms(times[ROUNDS / 2]),
        ms(times[ROUNDS * 9 / 10]),
        ms(times[ROUNDS - 1]),
        requests_per_post[1..].iter().max().unwrap_or(&0),
        registry.token_requests() - pushes
    );
}

/// A TCP proxy on 127.0.0.1 in front of `upstream` that holds every chunk a client sends
/// for `delay` before passing it on (one chunk is one request here); returns its port.
fn delaying_proxy(upstream: String, delay: Duration) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("binding the delaying proxy");
    let port = listener.local_addr().expect("the proxy's address").port();
    std::thread::spawn(move || {
        for client in listener.incoming().flatten() {
            let Ok(server) = TcpStream::connect(&upstream) else { continue };
            let (mut client_in, mut server_out) =
                (client.try_clone().expect("clone"), server.try_clone().expect("clone"));
            std::thread::spawn(move || {
                let mut buf = [0u8; 16 * 1024];
                while let Ok(n @ 1..) = client_in.read(&mut buf) {
                    std::thread::sleep(delay);
                    if server_out.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
                let _ = server_out.shutdown(std::net::Shutdown::Write);
            });
            let (mut server_in, mut client_out) = (server, client);
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut server_in, &mut client_out);
                let _ = client_out.shutdown(std::net::Shutdown::Write);
            });
        }
    });
    port
}

/// 10 images against 1 through the delaying proxy, the digest cache off: how much of the
/// 10 resolutions' time overlaps.
fn measure_delayed(delay: Duration) {
    let registry = Registry::start_with(Auth::Anonymous, &RegistryOptions { access_log: true, ..Default::default() });
    for i in 0..IMAGES {
        push_image(&registry, &format!("bench/app{i}"), "latest", &ImageSpec::linux_amd64(format!("app {i}")));
    }
    let port = delaying_proxy(registry.host(), delay);
    let server = Server::start(&["--cache-ttl", "0"]);
    let host = format!("127.0.0.1:{port}");
    for (images, label) in [(1, "one image"), (IMAGES, "ten images")] {
        let state = target_on(&host, images);
        let mut times = Vec::new();
        let served = registry.requests_served();
        for _ in 0..5 {
            let started = Instant::now();
            let reply = server.set_target_state(&format!("delayed-{images}"), &state);
            times.push(started.elapsed());
            assert_eq!(reply.status, 200, "{}", reply.body);
            assert_eq!(reply.json()["resolution"]["resolved"], images, "{}", reply.body);
        }
        times.sort();
        println!(
            "{}ms delay per request, {label}: POST median {:.0} ms, min {:.0} ms, max {:.0} ms over 5; \
             registry requests per POST: {}",
            delay.as_millis(),
            ms(times[2]),
            ms(times[0]),
            ms(times[4]),
            (registry.requests_served() - served) / 5
        );
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn main() {
    println!("target-state POST with {IMAGES} distinct images, local docker-registry on 127.0.0.1");
    // The digest cache off (TTL 0): every POST asks the registry.
    measure("anonymous, no cache", Auth::Anonymous, &["--cache-ttl", "0"]);
    measure("token auth, no cache", Auth::token("bench", "bench-password"), &["--cache-ttl", "0"]);
    // The default 5-minute cache: after the first POST, answers come from the database.
    measure("token auth, cache 5m", Auth::token("bench", "bench-password"), &[]);
    // Every request through a proxy that holds it 100 ms: one image against ten.
    measure_delayed(Duration::from_millis(100));
}
