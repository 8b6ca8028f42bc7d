# pinion-agent for Yocto images: built by oe-core's cargo class from the pinion
# repository, with the systemd unit and default settings the .deb ships
# (packaging/deb/agent/). The crate list is pinion-agent-crates.inc, which
# packaging/yocto/update-crates rewrites from Cargo.lock (CI checks that they match).
SUMMARY = "pinion device agent: keeps a gateway's Docker containers at their target state"
HOMEPAGE = "https://example.invalid/pinion"
LICENSE = "Apache-2.0"
LIC_FILES_CHKSUM = "file://${COMMON_LICENSE_DIR}/Apache-2.0;md5=89aea4e17d99a7cacdbeed46a0096b10"

SRC_URI = "git://example.invalid/pinion.git;protocol=https;branch=main"
SRCREV = "${AUTOREV}"
PV = "0.1.0+git"

require ${BPN}-crates.inc

inherit cargo cargo-update-recipe-crates systemd

# The agent is one member of the workspace: build only it. Cargo.lock (and
# .cargo/config.toml, whose [env] trims the bundled SQLite) are at the top.
CARGO_SRC_DIR = "agent"
CARGO_LOCK_SRC_DIR = "${S}"

do_install:append() {
    install -d ${D}${systemd_system_unitdir} ${D}${sysconfdir}/pinion
    install -m 0644 ${S}/packaging/deb/agent/pinion-agent.service ${D}${systemd_system_unitdir}/
    install -m 0600 ${S}/packaging/deb/agent/agent.toml ${D}${sysconfdir}/pinion/agent.toml
}

SYSTEMD_SERVICE:${PN} = "pinion-agent.service"
CONFFILES:${PN} = "${sysconfdir}/pinion/agent.toml"
FILES:${PN} += "${systemd_system_unitdir}/pinion-agent.service"
# Docker comes from meta-virtualization; an image without it still builds.
RRECOMMENDS:${PN} += "docker"
