//! fedrun: a crash-resilient server that runs federated jobs across many remote sites.
//!
//! Every change to a job is an event appended to a hash-chained history on sled; the
//! state of every job is a pure fold of those events, so a restart rebuilds it exactly
//! and an audit can replay it. `ARCHITECTURE.md` is the map; `docs/SPEC.md` the behaviour contract.
//!
//! # Layout
//!
//! - [`lifecycle`]: the pure core: statuses, events, commands, `decide`, the state and
//!   its fold, timers, restart decisions. No IO, no clock, no randomness.
//! - [`schedule`]: the default scheduler, pure: state + site facts + now -> decision.
//! - [`settings`]: every setting with its default, and the duration syntax.
//! - [`history`]: the sled event log: record codec, hash chain, group append with fsync,
//!   replay, audit, snapshots, anchor; and an in-memory store for the simulator.
//! - [`blobs`]: content-addressed files named by their BLAKE3 hash.
//! - [`job`]: what a job is: id, `meta.json`, run file, package ingest, limits, unpack.
//! - [`trust`]: provisioning, certificates, NVFlare-compatible job signing and verifying.
//! - [`engine`]: the sans-IO [`engine::node::Node`] (inputs in; the batch to append, then
//!   replies, participant requests, archive and blob work, and the next deadline out), its
//!   drivers (the synchronous `Engine` of the simulator and tests, the tokio `Server` with
//!   its history thread), the server's local participant, clock and ids.
//! - [`site`]: the engine <-> site protocol, the local site, and the app process runner.
//! - [`metrics`]: Prometheus metrics of the server and of a site agent (recorded at the IO
//!   edge, gauges read from the published state at scrape time).
//! - [`sim`]: scenario files, simulated sites and the deterministic driver of `fedrun sim`.

pub mod allocator;
pub mod blobs;
pub mod engine;
pub mod history;
pub mod job;
pub mod lifecycle;
pub mod metrics;
pub mod net;
pub mod schedule;
pub mod settings;
pub mod sim;
pub mod site;
pub mod trust;

pub use allocator::{return_freed_pages_soon, Allocator};
