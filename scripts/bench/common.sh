# Sourced by the scripts in scripts/bench/: the machine line every figure carries, the
# apt installs they need, the release pinion-server (profile release-server, as it ships)
# on loopback with a provisioned fleet, and one wrk run reduced to a summary line (and
# where the CPU went during it). Not run on its own.

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

# start_server LOG DB [SERVE-OPTIONS...]: the release pinion-server (release_server) on a
# free port of 127.0.0.1 on DB (a SQLite file, or a PostgreSQL URL for a replica), with
# the benchmarks' admin token, RUST_LOG=warn and the tag refresh off; its output in LOG.
# Waits until it answers. Sets server_pid, server_url, admin_token.
start_server() {
    local log=$1 db=$2 port
    shift 2
    release_server
    port=$(free_port)
    admin_token=bench-admin-token-0123456789abcdef
    server_url=http://127.0.0.1:$port
    PINION_ADMIN_TOKEN=$admin_token RUST_LOG=warn "$PINION_SERVER_BIN" serve "$@" \
        --listen "127.0.0.1:$port" --db "$db" --refresh-interval 0 >"$log" 2>&1 &
    server_pid=$!
    wait_http "$server_url/api/v1/health"
}

# stop_server PID: SIGTERM, and waits until it has exited (a stopped server's database
# may be copied).
stop_server() {
    kill "$1" 2>/dev/null || true
    while kill -0 "$1" 2>/dev/null; do sleep 0.1; done
}

# start_fleet WORK N: the release pinion-server (start_server) on WORK/server.db with N
# devices, each with a 5-app/10-service target, registered with its own key
# (tests/examples/bench_fleet.rs). PINION_SERVER_BIN names another build (a before/after
# comparison). Sets server_pid, server_url, admin_token; writes WORK/fleet.txt and
# WORK/report.json.
start_fleet() {
    local work=$1 devices=$2
    release_server
    (cd "$repo_dir" && cargo build --release -q -p pinion-tests --example bench_fleet)
    echo "server: $PINION_SERVER_BIN"
    # 10,000 registrations from one address: off the per-address registration limit
    # (builds from before it have no such option).
    local limits=()
    if "$PINION_SERVER_BIN" --help 2>&1 | grep -q -- --registrations-per-minute; then limits=(--registrations-per-minute 0); fi
    start_server "$work/server.log" "$work/server.db" "${limits[@]}"
    "$repo_dir/target/release/examples/bench_fleet" "$server_url" "$admin_token" "$devices" "$work"
}

# start_nginx DIR CONFIG: nginx (Debian nginx-light) with its own prefix DIR, 2 workers
# (one per core), access log off, daemon off; CONFIG is the rest of its http block (its
# server blocks, an upstream). Sets nginx_pid.
start_nginx() {
    local dir=$1 config=$2
    mkdir -p "$dir/logs" "$dir/tmp"
    cat >"$dir/nginx.conf" <<CONF
worker_processes 2;
daemon off;
pid $dir/nginx.pid;
error_log $dir/logs/error.log warn;
events { worker_connections 1024; }
http {
    access_log off;
    client_body_temp_path $dir/tmp/body;
    proxy_temp_path $dir/tmp/proxy;
    fastcgi_temp_path $dir/tmp/fastcgi;
    uwsgi_temp_path $dir/tmp/uwsgi;
    scgi_temp_path $dir/tmp/scgi;
$config
}
CONF
    nginx -p "$dir" -c "$dir/nginx.conf" -e "$dir/logs/error.log" &
    nginx_pid=$!
}

# run_wrk LABEL WRK-ARGS...: runs wrk with --latency and prints
# "LABEL: N req/s, p50 X, p99 Y, non-2xx/3xx N, socket errors ..." (the full output in $work).
# When the script defines cpu_groups (printing "NAME SECONDS" lines: CPU seconds used so
# far, cpu_seconds), a second line says where the CPU went during the run, wrk's own too.
run_wrk() {
    local label=$1 out
    shift
    out="$work/wrk-${label//[^A-Za-z0-9]/_}.txt"
    need /usr/bin/time time
    local before=""
    if declare -F cpu_groups >/dev/null; then before=$(cpu_groups; echo "machine $(cpu_busy)"); fi
    local started=$EPOCHREALTIME
    /usr/bin/time -f '%U %S' -o "$out.cpu" wrk --latency "$@" >"$out" 2>&1
    local rps p50 p99 bad errors
    rps=$(awk '/^Requests\/sec:/ {print $2}' "$out")
    p50=$(awk '$1 == "50%" {print $2}' "$out")
    p99=$(awk '$1 == "99%" {print $2}' "$out")
    bad=$(awk '/Non-2xx or 3xx responses:/ {print $NF}' "$out")
    errors=$(grep -o 'Socket errors:.*' "$out" || true)
    unexpected=$(grep -o 'unexpected status: .*' "$out" || true)
    echo "$label: ${rps:-?} req/s, p50 ${p50:-?}, p99 ${p99:-?}, non-2xx/3xx ${bad:-0}${errors:+, $errors}${unexpected:+, $unexpected}"
    last_rps=${rps:-0}
    if [[ -n $before ]]; then
        local wall
        wall=$(awk -v a="$started" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }')
        # Everything the machine's cores ran less the groups and wrk: other work.
        echo "  CPU seconds during it ($(nproc) cores × $wall s):" \
            "$(awk 'NR == FNR { was[$1] = $2; next }
                    $1 == "machine" { busy = $2 - was[$1]; next }
                    { used = $2 - was[$1]; ours += used; printf "%s %.1f, ", $1, used }
                    END { getline wrk < "/dev/stdin"; printf "wrk %.1f, the rest of the machine %.1f", wrk, busy - ours - wrk }' \
                <(echo "$before") <(cpu_groups; echo "machine $(cpu_busy)") < <(awk '{ print $1 + $2 }' "$out.cpu"))"
    fi
}

# cpu_busy: CPU seconds all cores have been busy since boot (/proc/stat: all but idle
# and iowait).
cpu_busy() {
    awk -v hz="$(getconf CLK_TCK)" '$1 == "cpu" { printf "%.2f", ($2 + $3 + $4 + $7 + $8 + $9) / hz }' /proc/stat
}

# cpu_seconds PID...: user + system CPU seconds these processes (all their threads) have
# used so far; a PID that is gone counts nothing.
cpu_seconds() {
    local pid
    for pid; do cat "/proc/$pid/stat" 2>/dev/null || true; done |
        awk -v hz="$(getconf CLK_TCK)" '{ s += $14 + $15 } END { printf "%.2f", s / hz }'
}

# wrk_trio LABEL URL: the fleet's three requests against URL, one wrk run each (run_wrk
# with wrk_args and scripts/bench/fleet.lua over $work/fleet.txt): a poll answered 304, a
# poll answered 200 with the full state, a report (PATCH /device/state).
wrk_trio() {
    local label=$1 url=$2
    run_wrk "$label, poll 304" "${wrk_args[@]}" -s "$bench_dir/fleet.lua" "$url" -- "$work/fleet.txt" 304
    run_wrk "$label, poll 200" "${wrk_args[@]}" -s "$bench_dir/fleet.lua" "$url" -- "$work/fleet.txt" 200
    run_wrk "$label, report" "${wrk_args[@]}" -s "$bench_dir/fleet.lua" "$url" -- "$work/fleet.txt" report "$work/report.json"
}

# ratio A B: A/B to two decimals.
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "?" }'; }

# rss PID LABEL: VmRSS and VmHWM from /proc.
rss() {
    echo "$2: $(grep -E '^(VmRSS|VmHWM)' "/proc/$1/status" | tr -s ' \t' ' ' | paste -sd, -)"
}

# rss_tree PID LABEL: RSS summed over PID and its children (a PostgreSQL postmaster and
# its backends), and PSS summed (/proc/PID/smaps_rollup), which counts the shared memory
# that every backend touched (shared_buffers) once instead of once per process.
rss_tree() {
    local pids
    pids=$(echo "$1"; ps -o pid= --ppid "$1" || true)
    local rss_kb pss_kb
    # One ps for all: a backend that has exited meanwhile is left out, not an error.
    rss_kb=$({ ps -o rss= -p "$(echo $pids | tr ' ' ,)" || true; } | awk '{ s += $1 } END { print s + 0 }')
    pss_kb=$(for pid in $pids; do cat "/proc/$pid/smaps_rollup" 2>/dev/null || true; done |
        awk '$1 == "Pss:" { s += $2 } END { print s + 0 }')
    echo "$2: RSS $rss_kb kB summed over $(echo "$pids" | wc -w) processes (PSS $pss_kb kB)"
}
