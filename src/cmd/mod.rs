//! One module per subcommand: its arguments, and the glue from them to the library.
pub mod audit;
pub mod dashboard;
pub mod demo;
pub mod demo_net;
pub mod history;
pub mod list;
pub mod logs;
pub mod package;
pub mod provision;
pub mod remote;
pub mod serve;
pub mod show;
pub mod sign;
pub mod sim;
pub mod site;
pub mod term;
pub mod verify;
