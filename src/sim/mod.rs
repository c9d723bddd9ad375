//! The simulator behind `fedrun sim`: scenario files, simulated sites, and the
//! deterministic driver that runs the real engine on a virtual clock.

mod check_thread;
pub mod driver;
pub mod faults;
pub mod invariants;
pub mod lives;
pub mod model;
pub mod output;
pub mod scenario;
pub mod site;
pub mod storage;
