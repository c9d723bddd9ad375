//! The engine: the single owner of the state and the history.

pub mod archive;
pub mod clock;
pub mod ids;
pub mod local;
pub mod node;
pub mod owner;
pub mod server;
