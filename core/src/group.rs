//! Thing groups: named sets of thing names. Membership changes drive continuous jobs.

use std::collections::BTreeSet;

use crate::aggregate::{foreign, not_found, Aggregate};
use crate::event::{Event, EvolveError};
use crate::ids::{GroupName, ThingName};
use crate::limits::{MAX_DESCRIPTION_LEN, MAX_GROUP_MEMBERS};
use crate::rejection::Rejection;
use crate::time::Timestamp;

/// The most things one add or remove request may name.
pub const MAX_MEMBERS_PER_CHANGE: usize = 10_000;

/// The state of a group; serializable for projection snapshots.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Group {
    /// Its name.
    pub name: GroupName,
    /// Free text.
    pub description: Option<String>,
    /// Current members.
    pub members: BTreeSet<ThingName>,
    /// Deleted groups keep their history; a new group of the same name is refused.
    pub deleted: bool,
    /// Number of events applied.
    pub version: u64,
}

/// What can be asked of a group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupIntent {
    /// Create the group.
    Create {
        /// Its name.
        name: GroupName,
        /// Free text (at most [`MAX_DESCRIPTION_LEN`] characters).
        description: Option<String>,
    },
    /// Add things; those already members are ignored. Refused when the group would then
    /// hold more than [`MAX_GROUP_MEMBERS`].
    AddMembers(Vec<ThingName>),
    /// Remove things; those not members are ignored.
    RemoveMembers(Vec<ThingName>),
    /// Delete the group.
    Delete,
}

impl Aggregate for Group {
    type Intent = GroupIntent;
    const NAME: &'static str = "group";

    fn decide(
        state: Option<&Self>,
        intent: GroupIntent,
        now: Timestamp,
    ) -> Result<Vec<Event>, Rejection> {
        if let GroupIntent::Create { name, description } = intent {
            if description
                .as_ref()
                .is_some_and(|d| d.chars().count() > MAX_DESCRIPTION_LEN)
            {
                return Err(Rejection::invalid(
                    "description",
                    format!("must be at most {MAX_DESCRIPTION_LEN} characters"),
                ));
            }
            if state.is_some() {
                return Err(Rejection::invalid(
                    "name",
                    format!("group {name} already exists"),
                ));
            }
            return Ok(vec![Event::GroupCreated {
                name,
                description,
                at: now,
            }]);
        }
        let Some(group) = state.filter(|g| !g.deleted) else {
            return Err(not_found("group", "unknown"));
        };
        let check_len = |things: &[ThingName]| {
            if things.len() > MAX_MEMBERS_PER_CHANGE {
                return Err(Rejection::invalid(
                    "thingNames",
                    format!("at most {MAX_MEMBERS_PER_CHANGE} per request"),
                ));
            }
            Ok(())
        };
        match intent {
            GroupIntent::Create { .. } => Err(Rejection::InternalError {
                detail: "create intent reached the existing-group path".into(),
            }),
            GroupIntent::AddMembers(things) => {
                check_len(&things)?;
                let new: BTreeSet<ThingName> = things
                    .into_iter()
                    .filter(|t| !group.members.contains(t))
                    .collect();
                if new.is_empty() {
                    return Ok(vec![]);
                }
                let total = group.members.len() + new.len();
                if total > MAX_GROUP_MEMBERS {
                    return Err(Rejection::invalid(
                        "thingNames",
                        format!(
                            "the group would hold {total} things, at most {MAX_GROUP_MEMBERS} \
                             are allowed"
                        ),
                    ));
                }
                Ok(vec![Event::GroupMembersAdded {
                    things: new.into_iter().collect(),
                    at: now,
                }])
            }
            GroupIntent::RemoveMembers(things) => {
                check_len(&things)?;
                let gone: BTreeSet<ThingName> = things
                    .into_iter()
                    .filter(|t| group.members.contains(t))
                    .collect();
                if gone.is_empty() {
                    return Ok(vec![]);
                }
                Ok(vec![Event::GroupMembersRemoved {
                    things: gone.into_iter().collect(),
                    at: now,
                }])
            }
            GroupIntent::Delete => Ok(vec![Event::GroupDeleted { at: now }]),
        }
    }

    fn evolve(state: Option<Self>, event: &Event) -> Result<Self, EvolveError> {
        let out_of_order = || EvolveError::OutOfOrder {
            event: event.type_name(),
            state: "none",
        };
        let mut group = match (state, event) {
            (
                None,
                Event::GroupCreated {
                    name, description, ..
                },
            ) => {
                return Ok(Self {
                    name: name.clone(),
                    description: description.clone(),
                    members: BTreeSet::new(),
                    deleted: false,
                    version: 1,
                });
            }
            (Some(g), Event::GroupCreated { .. }) => {
                return Err(EvolveError::OutOfOrder {
                    event: event.type_name(),
                    state: if g.deleted { "deleted" } else { "created" },
                });
            }
            (Some(g), _) if !g.deleted => g,
            (
                _,
                Event::GroupMembersAdded { .. }
                | Event::GroupMembersRemoved { .. }
                | Event::GroupDeleted { .. },
            ) => {
                return Err(out_of_order());
            }
            (_, other) => return Err(foreign(Self::NAME, other)),
        };
        match event {
            Event::GroupMembersAdded { things, .. } => group.members.extend(things.iter().cloned()),
            Event::GroupMembersRemoved { things, .. } => {
                for t in things {
                    group.members.remove(t);
                }
            }
            Event::GroupDeleted { .. } => group.deleted = true,
            other => return Err(foreign(Self::NAME, other)),
        }
        group.version += 1;
        Ok(group)
    }
}
