//! The engine: the single owner of the state and the history.

pub mod ids;
