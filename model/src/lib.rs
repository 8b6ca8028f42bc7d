//! pinion's shared vocabulary, with no I/O: image references and IDs as Docker parses them,
//! and the target and current state documents exchanged by server and agent.

pub mod duration;
mod error;
pub mod reference;
pub mod state;

pub use error::Error;
pub use reference::{ImageId, ImageRef, Reference};
pub use state::{Apps, CurrentState, ImageResolution, ResolutionStatus, Service, TargetState};
