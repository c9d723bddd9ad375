//! fedrun: a crash-resilient server that runs federated jobs across many remote sites.

pub mod engine;
pub mod job;
pub mod sim;
pub mod site;
