//! Sites: the message protocol between engine and site, the app process runner, and the
//! local site that runs apps as real child processes in the same program.
pub mod ledger;
pub mod local;
pub mod logs;
pub mod process;
pub mod protocol;
pub mod workspace;
