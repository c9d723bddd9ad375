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

/// The allocator every fedrun binary runs with (`fedrun`, and the benchmarks that time the
/// server's code in their own process): mimalloc. A state of many small persistent-map
/// nodes, strings and `Arc`s is mostly allocations of under 256 bytes; mimalloc keeps
/// them in size-class pages without a per-allocation header, so a finished job's
/// resident bytes sit closer to its allocated bytes than with the system allocator
/// (README, state benchmarks). Declared per binary, since a library cannot choose it
/// for a program that also wants a counting wrapper around it (`benches/state.rs`):
/// `#[global_allocator] static GLOBAL: fedrun::Allocator = fedrun::Allocator;`.
pub use mimalloc::MiMalloc as Allocator;

/// Makes [`Allocator`] give pages back to the system 10 ms after they fall free, as
/// mimalloc 2 did by default; mimalloc 3 waits a second. `fedrun sim` calls it: a long
/// run builds a snapshot-sized buffer every few thousand events and frees the one
/// before, and pages freed within the last second made up a tenth of a 10,000-job day's
/// peak resident memory (README, simulator). The server keeps mimalloc's default.
pub fn return_freed_pages_soon() {
    // `mi_option_purge_delay` in mimalloc.h's `mi_option_e`, whose values stay fixed
    // across versions (retired options keep their place); libmimalloc-sys names no
    // constant for it.
    const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
    // SAFETY: sets one of mimalloc's process-wide options, which it reads at each purge;
    // any value is valid and no memory is touched.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 10) }
}
