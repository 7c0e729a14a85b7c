//! The shape every aggregate shares: `decide` holds the rules, `evolve` applies facts.

use crate::event::{Event, EvolveError};
use crate::rejection::Rejection;
use crate::time::Timestamp;

/// An event-sourced aggregate. `None` is the state before the first event.
pub trait Aggregate: Sized + Clone + std::fmt::Debug {
    /// What can be asked of it.
    type Intent: Clone + std::fmt::Debug;

    /// A short name for errors (`command execution`, `job`, …).
    const NAME: &'static str;

    /// Every rule: turns an intent at `now` into the events to store, or refuses it.
    ///
    /// An empty list means "nothing to do" (a timer that has not expired yet, a repeated
    /// message with no new content); it is not a refusal.
    fn decide(
        state: Option<&Self>,
        intent: Self::Intent,
        now: Timestamp,
    ) -> Result<Vec<Event>, Rejection>;

    /// Applies one stored event. No rules here: an error means the history is corrupt.
    fn evolve(state: Option<Self>, event: &Event) -> Result<Self, EvolveError>;

    /// Folds a whole history.
    fn replay<'a>(
        events: impl IntoIterator<Item = &'a Event>,
    ) -> Result<Option<Self>, EvolveError> {
        let mut state = None;
        for e in events {
            state = Some(Self::evolve(state, e)?);
        }
        Ok(state)
    }

    /// Decides and applies in one step, as the runtime does after a successful append.
    fn execute(
        state: Option<Self>,
        intent: Self::Intent,
        now: Timestamp,
    ) -> Result<(Option<Self>, Vec<Event>), Rejection> {
        let events = Self::decide(state.as_ref(), intent, now)?;
        let mut state = state;
        for e in &events {
            // decide only emits events that evolve (checked by property tests); failing here
            // would be a bug in this crate, reported as an internal error rather than a panic.
            state = Some(
                Self::evolve(state, e).map_err(|err| Rejection::InternalError {
                    detail: format!("{} emitted an event it cannot apply: {err}", Self::NAME),
                })?,
            );
        }
        Ok((state, events))
    }
}

/// Refusal for an intent on an aggregate that does not exist.
pub(crate) fn not_found(kind: &'static str, id: impl std::fmt::Display) -> Rejection {
    Rejection::ResourceNotFound {
        kind,
        id: id.to_string(),
    }
}

/// `EvolveError::Foreign` for `event` replayed into `aggregate`.
pub(crate) fn foreign(aggregate: &'static str, event: &Event) -> EvolveError {
    EvolveError::Foreign {
        event: event.type_name(),
        aggregate,
    }
}
