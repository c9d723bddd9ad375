//! The simulator behind `fedrun sim`: scenario files, a virtual clock, simulated sites,
//! and the deterministic driver that runs the real engine on them.

pub mod scenario;
pub mod site;
