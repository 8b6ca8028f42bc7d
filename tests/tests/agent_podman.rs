//! The agent on Podman: Debian's `podman` 4.3 as a `podman system service` speaking the
//! Docker Engine API on a socket of the test's own (`pinion_tests::podman`), and the
//! agent's whole story on it (`pinion_tests::story`: private registry pulls with
//! credentials, an app network and a named volume, the restart policy, v1 → v2, then a
//! crashing v3, an unstartable v4, an unhealthy v5 and a v6 whose healthcheck hangs
//! each rolled back in probation).
//! The same story runs on the shared dockerd in `agent_e2e`. Images are built and pushed
//! with the shared dockerd's CLI; only the agent runs on Podman.

use pinion_tests::{podman, story, Docker};

#[test]
fn the_agents_story_on_podman() {
    let turn = podman::take_turn();
    story::run(&turn.podman, &Docker::connect());
}
