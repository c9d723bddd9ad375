//! `decide`: command + state + settings + `now` + injected ids -> events and effects, or a
//! typed rejection. Pure.

use crate::job::JobId;
use crate::lifecycle::effect::Effect;
use crate::lifecycle::event::Event;
use crate::lifecycle::state::Reply;

/// Where `decide` gets new ids. The engine draws UUID v4s; tests and the simulator use a
/// seeded or counting source, so a run is reproducible.
pub trait IdSource {
    /// A fresh job id, never handed out before.
    fn new_job_id(&mut self) -> JobId;
}

/// What `decide` made of one command.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Decision {
    /// Events to append, in order: sequence numbers continue the state's, and each `at` is
    /// `max(now, previous at)`.
    pub events: Vec<Event>,
    /// Effects to release only after the events are durable.
    pub effects: Vec<Effect>,
    /// The answer to an admin request (for other commands, `None`). A refusal is recorded
    /// as a `RequestRefused` event and answered here as `Err`.
    pub reply: Option<Reply>,
}
