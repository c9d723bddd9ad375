//! Sites: the message protocol between engine and site, and the local site.
pub mod protocol;
