//! Asking registries which digest a tag points at (Docker Registry HTTP API V2 / OCI
//! distribution). Facts and their sources: `shared/docs/registry-protocol.md`.
//!
//! `Resolver::resolve` answers one reference; `Resolver::resolve_all` answers many,
//! distinct references concurrently, within one overall deadline.

// Filled in by the resolver work: challenge.rs, credentials.rs, resolver.rs, ...
