//! Image garbage collection: every push to `:latest` leaves the image before it behind,
//! until the flash is full. Once no deployment is in probation, the images the agent
//! pulled that neither a service's deployment in place nor the one before it (what a
//! rollback would put back) nor any container uses are removed. Images the agent did
//! not pull (recorded in the store at each pull) are never touched.

use crate::engine::Engine;
use crate::store::AgentStore;
use std::collections::BTreeSet;

/// The pulled images `in_use` does not hold, oldest pull first.
pub fn collectable<'a>(pulled: &'a [String], in_use: &BTreeSet<String>) -> Vec<&'a str> {
    pulled.iter().filter(|image| !in_use.contains(*image)).map(String::as_str).collect()
}

/// Removes the collectable images; returns how many went. An image Docker refuses to
/// remove (a container started by hand uses it) stays recorded and is tried again at
/// the next collection.
pub fn collect(engine: &dyn Engine, store: &AgentStore, in_use: &BTreeSet<String>) -> usize {
    let pulled = match store.pulled_images() {
        Ok(pulled) => pulled,
        Err(e) => {
            log::warn!("image collection skipped: {e}");
            return 0;
        }
    };
    let mut removed = 0;
    for image in collectable(&pulled, in_use) {
        match engine.remove_image(image) {
            Ok(()) => {
                removed += 1;
                log::info!("removed {image}: no deployment uses it any more");
                let _ = store.log_event("info", &format!("removed image {image}"));
                if let Err(e) = store.forget_pulled(image) {
                    log::warn!("{e}");
                }
            }
            Err(e) => log::info!("{image} stays: {e}"),
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_pulled_images_nothing_uses_are_collected() {
        let pulled = ["r/a@1", "r/a@2", "r/a@3", "r/b@1"].map(String::from);
        let in_use = BTreeSet::from(["r/a@2".to_string(), "r/a@3".to_string(), "hand/made:1".to_string()]);
        assert_eq!(collectable(&pulled, &in_use), ["r/a@1", "r/b@1"]);
        assert!(collectable(&[], &in_use).is_empty());
    }
}
