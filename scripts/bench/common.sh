# Sourced by the scripts in scripts/bench/: the machine line every figure carries, the
# apt installs they need, the release pinion-server (profile release-server, as it
# ships) on loopback with a provisioned fleet, and one wrk run reduced to a summary line.
# Not run on its own.

bench_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo_dir=$(cd "$bench_dir/../.." && pwd)

# need TOOL PACKAGE: installs the Debian PACKAGE when TOOL is missing.
need() {
    command -v "$1" >/dev/null 2>&1 && return
    echo "installing $2 (apt-get)" >&2
    apt-get install -y -q "$2" >/dev/null 2>&1 || { apt-get update -q >/dev/null && apt-get install -y -q "$2" >/dev/null; }
}

# The machine and its load, printed before and after every benchmark: other work on a
# 2-core machine moves these figures.
machine() {
    echo "machine: $(nproc) cores, $(lscpu | sed -n 's/^Model name: *//p'), $(uname -m); $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo "load: $(uptime | sed 's/.*load average/load average/')"
}

free_port() {
    local port
    while :; do
        port=$((20000 + RANDOM % 30000))
        ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && { echo "$port"; return; }
    done
}

# wait_http URL: until anything answers (30 s at most).
wait_http() {
    for _ in $(seq 300); do
        curl -s -o /dev/null "$1" && return
        sleep 0.1
    done
    echo "nothing answers at $1" >&2
    return 1
}

# release_server: builds the server as it ships (`cargo build --profile release-server`,
# panic = unwind; target/release-server/pinion-server) unless PINION_SERVER_BIN already
# names a build (a before/after comparison), and exports PINION_SERVER_BIN, which the
# benchmark examples (tests/src/server.rs) and start_fleet run. Without it, an example
# run with --release would build and run the server with the agent's release profile.
release_server() {
    if [[ -z ${PINION_SERVER_BIN:-} ]]; then
        (cd "$repo_dir" && cargo build --profile release-server -q -p pinion-server)
        export PINION_SERVER_BIN=$repo_dir/target/release-server/pinion-server
    fi
}

# start_fleet WORK N: the release pinion-server (release_server) on 127.0.0.1 with N
# devices, each with a 5-app/10-service target, registered with its own key
# (tests/examples/bench_fleet.rs). PINION_SERVER_BIN names another build (a before/after
# comparison). Sets server_pid, server_url, admin_token; writes WORK/fleet.txt and
# WORK/report.json.
start_fleet() {
    local work=$1 devices=$2 server
    release_server
    server=$PINION_SERVER_BIN
    (cd "$repo_dir" && cargo build --release -q -p pinion-tests --example bench_fleet)
    echo "server: $server"
    local port
    port=$(free_port)
    admin_token=bench-admin-token-0123456789abcdef
    server_url=http://127.0.0.1:$port
    # 10,000 registrations from one address: off the per-address registration limit
    # (builds from before it have no such option).
    local limits=()
    if "$server" --help 2>&1 | grep -q -- --registrations-per-minute; then limits=(--registrations-per-minute 0); fi
    PINION_ADMIN_TOKEN=$admin_token RUST_LOG=warn "$server" serve "${limits[@]}" \
        --listen "127.0.0.1:$port" --db "$work/server.db" --refresh-interval 0 >"$work/server.log" 2>&1 &
    server_pid=$!
    wait_http "$server_url/api/v1/health"
    "$repo_dir/target/release/examples/bench_fleet" "$server_url" "$admin_token" "$devices" "$work"
}

# run_wrk LABEL WRK-ARGS...: runs wrk with --latency and prints
# "LABEL: N req/s, p50 X, p99 Y, non-2xx/3xx N, socket errors ..." (the full output in $work).
run_wrk() {
    local label=$1 out
    shift
    out="$work/wrk-${label//[^A-Za-z0-9]/_}.txt"
    wrk --latency "$@" >"$out" 2>&1
    local rps p50 p99 bad errors
    rps=$(awk '/^Requests\/sec:/ {print $2}' "$out")
    p50=$(awk '$1 == "50%" {print $2}' "$out")
    p99=$(awk '$1 == "99%" {print $2}' "$out")
    bad=$(awk '/Non-2xx or 3xx responses:/ {print $NF}' "$out")
    errors=$(grep -o 'Socket errors:.*' "$out" || true)
    unexpected=$(grep -o 'unexpected status: .*' "$out" || true)
    echo "$label: ${rps:-?} req/s, p50 ${p50:-?}, p99 ${p99:-?}, non-2xx/3xx ${bad:-0}${errors:+, $errors}${unexpected:+, $unexpected}"
    last_rps=${rps:-0}
}

# ratio A B: A/B to two decimals.
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "?" }'; }

# rss PID LABEL: VmRSS and VmHWM from /proc.
rss() {
    echo "$2: $(grep -E '^(VmRSS|VmHWM)' "/proc/$1/status" | tr -s ' \t' ' ' | paste -sd, -)"
}
