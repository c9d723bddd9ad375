//! fedrun: a crash-resilient server that runs federated jobs across many remote sites.

pub mod blobs;
pub mod engine;
pub mod history;
pub mod job;
pub mod lifecycle;
pub mod schedule;
pub mod settings;
pub mod sim;
pub mod site;
pub mod trust;
