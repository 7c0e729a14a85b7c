//! Things: the registry record of a device (attributes, type, MQTT client id) and its
//! presence (online or offline, and since when), one stream per thing (`thing/{name}`).
//!
//! Both live in stored events so every runtime sharing a store follows them through the feed.
//! Jobs and commands may name things that were never registered: the registry describes
//! devices, it does not gate them.
//!
//! Presence reports arrive in any order (several brokers, shared subscriptions, a last will
//! delivered late), so each carries a `stamp`, the source's ordering key in milliseconds:
//! a report is kept only if its stamp is newer than the last one kept, or equal to it and
//! offline while the thing is online (a birth and the last will of one connection share the
//! connection's stamp, and that connection's end supersedes its start). Anything else is
//! stale or a duplicate and changes nothing.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::aggregate::{foreign, not_found, Aggregate};
use crate::event::{Event, EvolveError};
use crate::ids::ThingName;
use crate::limits::{
    MAX_ATTRIBUTE_NAME_LEN, MAX_ATTRIBUTE_VALUE_LEN, MAX_CLIENT_ID_LEN, MAX_THING_ATTRIBUTES,
    MAX_THING_TYPE_LEN,
};
use crate::rejection::Rejection;
use crate::time::Timestamp;

/// Whether a thing is connected, as far as presence has told.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Connectivity {
    /// The last report kept said connected.
    Online,
    /// The last report kept said disconnected.
    Offline,
    /// No report was ever kept.
    Unknown,
}

impl Connectivity {
    /// The wire spelling: `online`, `offline` or `unknown`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Online => "online",
            Self::Offline => "offline",
            Self::Unknown => "unknown",
        }
    }

    /// Parses the wire spelling.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "online" => Some(Self::Online),
            "offline" => Some(Self::Offline),
            "unknown" => Some(Self::Unknown),
            _ => None,
        }
    }
}

/// What happens to a command sent to a thing presence says is offline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OfflineCommands {
    /// Send it anyway; it waits for the thing (or its TTL), as EMQX does.
    #[default]
    Wait,
    /// Refuse it at once (`ThingOffline`); nothing is stored.
    Fail,
}

impl OfflineCommands {
    /// Whether a command to a thing of `connectivity` is sent. Only a thing known to be
    /// offline is refused, and only under [`OfflineCommands::Fail`]: a thing presence never
    /// reported on may well be connected through a source that is not configured.
    pub const fn admits(self, connectivity: Connectivity) -> bool {
        !matches!((self, connectivity), (Self::Fail, Connectivity::Offline))
    }
}

/// One presence report, parsed from its source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PresenceReport {
    /// Connected or not.
    pub online: bool,
    /// The source's ordering key, in milliseconds (see the module documentation).
    pub stamp: u64,
}

/// A thing's registry record and presence.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Thing {
    /// Its name.
    pub name: ThingName,
    /// Whether it is in the registry (presence alone does not register a thing).
    pub registered: bool,
    /// Its attributes (empty unless registered).
    pub attributes: BTreeMap<String, String>,
    /// Its thing type name.
    pub thing_type: Option<String>,
    /// The MQTT client id it connects with, when that differs from its name.
    pub client_id: Option<String>,
    /// When the registry record was last written.
    pub registered_at: Option<Timestamp>,
    /// Online, offline or unknown.
    pub connectivity: Connectivity,
    /// When connectivity last changed (`None`: never reported).
    pub connectivity_since: Option<Timestamp>,
    /// The stamp of the last presence report kept.
    pub presence_stamp: u64,
    /// Number of events applied.
    pub version: u64,
}

/// What can be asked of a thing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ThingIntent {
    /// Register the thing, or replace its record.
    Register {
        /// Its name.
        name: ThingName,
        /// Attributes: at most [`MAX_THING_ATTRIBUTES`]; names 1 to
        /// [`MAX_ATTRIBUTE_NAME_LEN`] characters of `[a-zA-Z0-9_.:-]`, values at most
        /// [`MAX_ATTRIBUTE_VALUE_LEN`] characters without control characters.
        attributes: BTreeMap<String, String>,
        /// 1 to [`MAX_THING_TYPE_LEN`] characters of `[a-zA-Z0-9:_-]`.
        thing_type: Option<String>,
        /// 1 to [`MAX_CLIENT_ID_LEN`] characters of `[a-zA-Z0-9:_.-]`.
        client_id: Option<String>,
    },
    /// Remove the registry record; presence is kept.
    Deregister,
    /// A presence source reported on the thing.
    ReportPresence {
        /// Its name (the stream may not exist yet).
        name: ThingName,
        /// The report.
        report: PresenceReport,
    },
}

/// Whether `name` is a valid attribute name.
pub fn valid_attribute_name(name: &str) -> bool {
    let n = name.chars().count();
    (1..=MAX_ATTRIBUTE_NAME_LEN).contains(&n)
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':' | '-'))
}

/// Whether `value` is a valid attribute value.
pub fn valid_attribute_value(value: &str) -> bool {
    value.chars().count() <= MAX_ATTRIBUTE_VALUE_LEN && !value.chars().any(char::is_control)
}

/// Whether `name` is a valid thing type name.
pub fn valid_thing_type(name: &str) -> bool {
    let n = name.chars().count();
    (1..=MAX_THING_TYPE_LEN).contains(&n)
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | ':' | '-'))
}

/// Whether `id` is a valid MQTT client id for the registry: one topic level, so the presence
/// topics that name it parse.
pub fn valid_client_id(id: &str) -> bool {
    let n = id.chars().count();
    (1..=MAX_CLIENT_ID_LEN).contains(&n)
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':' | '-'))
}

/// Checks a registry record against the limits, naming the first bad field.
fn check_record(
    attributes: &BTreeMap<String, String>,
    thing_type: Option<&str>,
    client_id: Option<&str>,
) -> Result<(), Rejection> {
    if attributes.len() > MAX_THING_ATTRIBUTES {
        return Err(Rejection::invalid(
            "attributes",
            format!("at most {MAX_THING_ATTRIBUTES} are allowed"),
        ));
    }
    if attributes.keys().any(|k| !valid_attribute_name(k)) {
        return Err(Rejection::invalid(
            "attributes",
            format!("names must be 1 to {MAX_ATTRIBUTE_NAME_LEN} characters of [a-zA-Z0-9_.:-]"),
        ));
    }
    if attributes.values().any(|v| !valid_attribute_value(v)) {
        return Err(Rejection::invalid(
            "attributes",
            format!(
                "values must be at most {MAX_ATTRIBUTE_VALUE_LEN} characters, without control \
                 characters"
            ),
        ));
    }
    if thing_type.is_some_and(|t| !valid_thing_type(t)) {
        return Err(Rejection::invalid(
            "thingTypeName",
            format!("must be 1 to {MAX_THING_TYPE_LEN} characters of [a-zA-Z0-9:_-]"),
        ));
    }
    if client_id.is_some_and(|c| !valid_client_id(c)) {
        return Err(Rejection::invalid(
            "clientId",
            format!("must be 1 to {MAX_CLIENT_ID_LEN} characters of [a-zA-Z0-9:_.-]"),
        ));
    }
    Ok(())
}

impl Thing {
    /// Whether `report` is newer than what was kept (see the module documentation).
    pub fn supersedes(&self, report: PresenceReport) -> bool {
        if self.connectivity == Connectivity::Unknown {
            return true;
        }
        match report.stamp.cmp(&self.presence_stamp) {
            std::cmp::Ordering::Greater => true,
            std::cmp::Ordering::Less => false,
            std::cmp::Ordering::Equal => {
                !report.online && self.connectivity == Connectivity::Online
            }
        }
    }
}

/// Connectivity of a thing that may have no stream yet.
pub fn connectivity(thing: Option<&Thing>) -> Connectivity {
    thing.map_or(Connectivity::Unknown, |t| t.connectivity)
}

fn empty(name: ThingName) -> Thing {
    Thing {
        name,
        registered: false,
        attributes: BTreeMap::new(),
        thing_type: None,
        client_id: None,
        registered_at: None,
        connectivity: Connectivity::Unknown,
        connectivity_since: None,
        presence_stamp: 0,
        version: 0,
    }
}

impl Aggregate for Thing {
    type Intent = ThingIntent;
    const NAME: &'static str = "thing";

    fn decide(
        state: Option<&Self>,
        intent: ThingIntent,
        now: Timestamp,
    ) -> Result<Vec<Event>, Rejection> {
        match intent {
            ThingIntent::Register {
                name,
                attributes,
                thing_type,
                client_id,
            } => {
                check_record(&attributes, thing_type.as_deref(), client_id.as_deref())?;
                if state.is_some_and(|s| {
                    s.registered
                        && s.attributes == attributes
                        && s.thing_type == thing_type
                        && s.client_id == client_id
                }) {
                    // The same record again: a retried PUT stores nothing.
                    return Ok(vec![]);
                }
                Ok(vec![Event::ThingRegistered {
                    name,
                    attributes,
                    thing_type,
                    client_id,
                    at: now,
                }])
            }
            ThingIntent::Deregister => match state {
                Some(s) if s.registered => Ok(vec![Event::ThingDeregistered { at: now }]),
                _ => Err(not_found("thing", "unknown")),
            },
            ThingIntent::ReportPresence { name, report } => {
                if state.is_some_and(|s| !s.supersedes(report)) {
                    return Ok(vec![]);
                }
                Ok(vec![Event::ThingPresenceChanged {
                    name,
                    online: report.online,
                    stamp: report.stamp,
                    at: now,
                }])
            }
        }
    }

    fn evolve(state: Option<Self>, event: &Event) -> Result<Self, EvolveError> {
        match event {
            Event::ThingRegistered {
                name,
                attributes,
                thing_type,
                client_id,
                at,
            } => {
                let mut t = state.unwrap_or_else(|| empty(name.clone()));
                t.registered = true;
                t.attributes = attributes.clone();
                t.thing_type = thing_type.clone();
                t.client_id = client_id.clone();
                t.registered_at = Some(*at);
                t.version += 1;
                Ok(t)
            }
            Event::ThingDeregistered { .. } => match state {
                Some(mut t) if t.registered => {
                    t.registered = false;
                    t.attributes.clear();
                    t.thing_type = None;
                    t.client_id = None;
                    t.registered_at = None;
                    t.version += 1;
                    Ok(t)
                }
                _ => Err(EvolveError::OutOfOrder {
                    event: event.type_name(),
                    state: "unregistered",
                }),
            },
            Event::ThingPresenceChanged {
                name,
                online,
                stamp,
                at,
            } => {
                let mut t = state.unwrap_or_else(|| empty(name.clone()));
                let now = if *online {
                    Connectivity::Online
                } else {
                    Connectivity::Offline
                };
                if t.connectivity != now {
                    t.connectivity = now;
                    t.connectivity_since = Some(*at);
                }
                t.presence_stamp = *stamp;
                t.version += 1;
                Ok(t)
            }
            other => Err(foreign(Self::NAME, other)),
        }
    }
}
