//! The default scheduler (SPEC section 7), pure: state, site facts and `now` in, a decision
//! out. It never asks sites itself; `decide` turns its answer into events and effects.
