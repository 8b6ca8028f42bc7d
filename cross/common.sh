# Sourced by cross/* and packaging/*: the gateway targets and the helpers every script
# shares, so each name is written once.
CROSS_TARGETS=(armv7-unknown-linux-gnueabihf aarch64-unknown-linux-gnu aarch64-unknown-linux-musl x86_64-unknown-linux-musl)

die() { echo "${0#./}: $*" >&2; exit 1; }

# The cross binutils prefix of a Rust target (strip, readelf).
tool_prefix() {
    case $1 in
        armv7-unknown-linux-gnueabihf) echo arm-linux-gnueabihf- ;;
        aarch64-unknown-linux-*) echo aarch64-linux-gnu- ;;
        *) echo "" ;;
    esac
}
# The cargo profile of a package's release build (agent or server, with or without the
# pinion- prefix): the server unwinds, so that a panic in one request handler is a 500
# and not the end of the process ([profile.release-server]); the agent aborts, which
# keeps the armv7 agent under its 2.0 MB limit ([profile.release]).
release_profile() {
    case ${1#pinion-} in
        agent) echo release ;;
        server) echo release-server ;;
        *) echo "release_profile: unknown package '$1' (agent or server)" >&2; return 1 ;;
    esac
}
# Where cross/build puts a package's release binary for a target (static: cross/build
# --static): target/TARGET/release/pinion-agent, target/TARGET/release-server/pinion-server.
# Usage: bin_dir TARGET VARIANT PACKAGE      (VARIANT '' or static; PACKAGE agent or server)
bin_dir() {
    local profile
    profile=$(release_profile "${3:?bin_dir TARGET VARIANT PACKAGE}") || return 1
    if [[ $2 == static ]]; then echo "target/static/$1/$profile"; else echo "target/$1/$profile"; fi
}
# The Rust target a package of a Debian architecture is built for. The agent is static
# (musl) wherever rustup has a musl target: it then maps no libc.so and no ld.so, which
# on x86_64 takes its RSS at rest from 4.9 to 3.2 MB (BENCHMARKS.md, issue 17). armv7
# has no musl target here: glibc. The server keeps glibc, whose malloc serves its many
# threads faster than musl's.
# Usage: deb_target ARCH PACKAGE      (ARCH amd64, armhf or arm64; PACKAGE agent or server)
deb_target() {
    case $1/${2#pinion-} in
        amd64/agent) echo x86_64-unknown-linux-musl ;;
        amd64/server) echo x86_64-unknown-linux-gnu ;;
        arm64/agent) echo aarch64-unknown-linux-musl ;;
        arm64/server) echo aarch64-unknown-linux-gnu ;;
        armhf/agent | armhf/server) echo armv7-unknown-linux-gnueabihf ;;
        *) echo "deb_target: unknown architecture or package '$1' '$2'" >&2; return 1 ;;
    esac
}
# The agent's version, from the workspace manifest.
pinion_version() { sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1; }
# How to run a target's binary here (the same runners as .cargo/config.toml).
qemu_cmd() {
    case $1 in
        armv7-unknown-linux-gnueabihf) echo "qemu-arm -L /usr/arm-linux-gnueabihf -E LD_LIBRARY_PATH=/usr/arm-linux-gnueabihf/lib" ;;
        aarch64-unknown-linux-gnu) echo "qemu-aarch64 -L /usr/aarch64-linux-gnu -E LD_LIBRARY_PATH=/usr/aarch64-linux-gnu/lib" ;;
        aarch64-unknown-linux-musl) echo "qemu-aarch64" ;;
        *) echo "" ;;
    esac
}
# check DESCRIPTION COMMAND...: runs COMMAND, prints a PASS or FAIL line, counts failures.
failures=0
check() {
    local what=$1
    shift
    if "$@"; then
        echo "${0#./}: PASS $what"
    else
        echo "${0#./}: FAIL $what"
        failures=$((failures + 1))
    fi
}
