//! fedrun: a crash-resilient server that runs federated jobs across many remote sites.

pub mod blobs;
pub mod history;
pub mod job;
pub mod lifecycle;
pub mod schedule;
pub mod settings;
pub mod site;
pub mod trust;
