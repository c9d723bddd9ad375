//! fedrun on the network (SPEC section 11): startup kits, mutual TLS, the site protocol,
//! the server's accept loop, the site agent, and the admin API.

pub mod admin;
pub mod agent;
pub mod client;
pub mod kit;
pub mod logs;
pub mod observe;
pub mod serve;
pub mod tls;
pub mod wire;
