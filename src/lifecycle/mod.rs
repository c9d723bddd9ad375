//! The pure core: statuses, events, commands, the decision function, the state fold,
//! recovery after a restart, and timers.
//!
//! Architecture invariant: nothing here touches tokio, sled, the file system, the network,
//! a clock or a random source. Time comes in as `now`, ids through an [`IdSource`]; the
//! engine feeds inputs, appends the events, and carries out the effects.

pub mod actor;
pub mod check;
pub mod command;
pub mod decide;
pub mod effect;
pub mod event;
pub mod jobs;
pub mod participant;
pub mod recovery;
pub mod rejection;
pub mod schedule_history;
pub mod small_map;
pub mod state;
pub mod status;
pub mod time;
pub mod timers;
pub mod view;

pub use actor::{Actor, Identity, Role};
pub use command::{AdminRequest, Command, Origin, SubmitSignature, Timer};
pub use decide::{decide, decide_and_apply, decide_in_place, Decision, IdSource, Refused};
pub use effect::Effect;
pub use event::{BlobHash, BootId, Event, EventKind, ResourceAnswer, ScheduleOutcome, StepResult};
pub use jobs::Jobs;
pub use participant::{ExitOutcome, SiteReport};
pub use rejection::{Rejection, ReplayError};
pub use state::{Answer, Archive, Job, QueueKey, Reply, Run, RunPhase, State};
pub use status::RunStatus;
pub use time::Timestamp;
pub use timers::{deadlines, next_deadline};
