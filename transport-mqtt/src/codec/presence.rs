//! Presence sources: which topics tell the service that a device connected or disconnected,
//! and their payloads, parsed at the boundary.
//!
//! - [`PresenceSource::Birth`]: `{prefix}/things/{thing}/presence`, published by the device
//!   itself (a birth message after each connect, its last will when the connection dies, an
//!   offline message before a clean disconnect): `{"state":"online"|"offline","stamp":N}`,
//!   where `stamp` (milliseconds) is the same for the birth and the will of one connection
//!   and greater for each later connection. Works with any MQTT 5 broker.
//! - [`PresenceSource::Emqx`]: EMQX's `$SYS/brokers/{node}/clients/{clientid}/connected` and
//!   `…/disconnected`, whose JSON carries `ts` (milliseconds). A disconnect because another
//!   connection took the client id over (`reason` `takenover` or `discarded`) is not an
//!   offline.
//! - [`PresenceSource::Aws`]: `$aws/events/presence/connected/{clientId}` and
//!   `…/disconnected/{clientId}`, whose JSON carries `timestamp` (milliseconds). A disconnect
//!   with `disconnectReason` `DUPLICATE_CLIENTID` is not an offline.

use fleetops_core::ids::ThingName;
use fleetops_core::link::PresenceSubject;
use serde::Deserialize;

use super::topic::TopicLayout;

/// Where presence comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PresenceSource {
    /// No presence: every thing's connectivity stays `unknown`.
    #[default]
    None,
    /// The devices' own birth and last-will messages.
    Birth,
    /// EMQX's `$SYS` client events.
    Emqx,
    /// AWS IoT-style lifecycle events.
    Aws,
}

impl PresenceSource {
    /// The configuration spelling: `none`, `birth`, `emqx` or `aws`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Birth => "birth",
            Self::Emqx => "emqx",
            Self::Aws => "aws",
        }
    }

    /// Parses the configuration spelling.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "none" => Some(Self::None),
            "birth" => Some(Self::Birth),
            "emqx" => Some(Self::Emqx),
            "aws" => Some(Self::Aws),
            _ => None,
        }
    }

    /// The topic filters to subscribe to (none for [`PresenceSource::None`]).
    pub fn filters(self, layout: &TopicLayout) -> Vec<String> {
        match self {
            Self::None => vec![],
            Self::Birth => vec![format!("{}/things/+/presence", layout.prefix())],
            Self::Emqx => vec![
                "$SYS/brokers/+/clients/+/connected".into(),
                "$SYS/brokers/+/clients/+/disconnected".into(),
            ],
            Self::Aws => vec![
                "$aws/events/presence/connected/+".into(),
                "$aws/events/presence/disconnected/+".into(),
            ],
        }
    }
}

/// One presence message, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Presence {
    /// The thing or client id it names.
    pub subject: PresenceSubject,
    /// Connected or not.
    pub online: bool,
    /// The ordering key, in milliseconds.
    pub stamp: u64,
}

/// Why a presence message was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PresenceError {
    /// The topic names no valid thing or client id.
    #[error("presence topic names no valid {0}")]
    Subject(&'static str),
    /// The payload is not the expected JSON.
    #[error("presence payload: {0}")]
    Payload(String),
}

/// What a publish on a presence topic says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PresenceDecoded {
    /// A report for the runtime.
    Report(Presence),
    /// A valid message that is no change of presence (a takeover of the client id).
    Ignored,
}

/// The birth / last-will payload a device publishes.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BirthPayload {
    state: BirthState,
    stamp: u64,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "lowercase")]
enum BirthState {
    Online,
    Offline,
}

/// The part of EMQX's client event payloads that matters here.
#[derive(Debug, Deserialize)]
struct EmqxPayload {
    ts: u64,
    #[serde(default)]
    reason: Option<String>,
}

/// The part of AWS lifecycle event payloads that matters here.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct AwsPayload {
    timestamp: u64,
    #[serde(default)]
    disconnect_reason: Option<String>,
}

/// The birth / last-will payload for `online` at `stamp`.
pub fn birth_payload(online: bool, stamp: u64) -> Vec<u8> {
    let state = if online { "online" } else { "offline" };
    format!(r#"{{"state":"{state}","stamp":{stamp}}}"#).into_bytes()
}

/// `{prefix}/things/{thing}/presence`.
pub fn presence_topic(layout: &TopicLayout, thing: &ThingName) -> String {
    format!("{}/things/{thing}/presence", layout.prefix())
}

fn client(id: &str) -> Result<PresenceSubject, PresenceError> {
    if id.is_empty() || id.len() > 256 {
        return Err(PresenceError::Subject("client id"));
    }
    Ok(PresenceSubject::Client(id.to_owned()))
}

fn payload<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, PresenceError> {
    serde_json::from_slice(bytes).map_err(|e| PresenceError::Payload(e.to_string()))
}

/// Decodes a publish on `topic` for `source`: `None` when the topic is not one of the
/// source's presence topics.
pub fn decode_presence(
    source: PresenceSource,
    layout: &TopicLayout,
    topic: &str,
    bytes: &[u8],
) -> Option<Result<PresenceDecoded, PresenceError>> {
    let levels: Vec<&str> = topic.split('/').collect();
    match source {
        PresenceSource::None => None,
        PresenceSource::Birth => {
            let rest = topic.strip_prefix(layout.prefix())?.strip_prefix('/')?;
            let ["things", thing, "presence"] = rest.split('/').collect::<Vec<_>>()[..] else {
                return None;
            };
            Some((|| {
                let thing =
                    ThingName::parse(thing).map_err(|_| PresenceError::Subject("thing name"))?;
                let p: BirthPayload = payload(bytes)?;
                Ok(PresenceDecoded::Report(Presence {
                    subject: PresenceSubject::Thing(thing),
                    online: matches!(p.state, BirthState::Online),
                    stamp: p.stamp,
                }))
            })())
        }
        PresenceSource::Emqx => {
            let ["$SYS", "brokers", _, "clients", id, event] = levels[..] else {
                return None;
            };
            let online = match event {
                "connected" => true,
                "disconnected" => false,
                _ => return None,
            };
            Some((|| {
                let subject = client(id)?;
                let p: EmqxPayload = payload(bytes)?;
                if !online && matches!(p.reason.as_deref(), Some("takenover" | "discarded")) {
                    return Ok(PresenceDecoded::Ignored);
                }
                Ok(PresenceDecoded::Report(Presence {
                    subject,
                    online,
                    stamp: p.ts,
                }))
            })())
        }
        PresenceSource::Aws => {
            let ["$aws", "events", "presence", event, id] = levels[..] else {
                return None;
            };
            let online = match event {
                "connected" => true,
                "disconnected" => false,
                _ => return None,
            };
            Some((|| {
                let subject = client(id)?;
                let p: AwsPayload = payload(bytes)?;
                if !online && p.disconnect_reason.as_deref() == Some("DUPLICATE_CLIENTID") {
                    return Ok(PresenceDecoded::Ignored);
                }
                Ok(PresenceDecoded::Report(Presence {
                    subject,
                    online,
                    stamp: p.timestamp,
                }))
            })())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> ThingName {
        ThingName::parse(s).unwrap()
    }

    #[test]
    fn birth_messages_round_trip_and_bad_ones_are_refused() {
        let l = TopicLayout::fleets();
        let topic = presence_topic(&l, &t("lamp-1"));
        assert_eq!(topic, "fleets/things/lamp-1/presence");
        let got = decode_presence(PresenceSource::Birth, &l, &topic, &birth_payload(false, 7));
        assert_eq!(
            got,
            Some(Ok(PresenceDecoded::Report(Presence {
                subject: PresenceSubject::Thing(t("lamp-1")),
                online: false,
                stamp: 7,
            })))
        );
        for bad in [
            &b"{"[..],
            b"{\"state\":\"up\",\"stamp\":1}",
            b"{\"state\":\"online\"}",
        ] {
            assert!(matches!(
                decode_presence(PresenceSource::Birth, &l, &topic, bad),
                Some(Err(PresenceError::Payload(_)))
            ));
        }
        assert_eq!(
            decode_presence(PresenceSource::Birth, &l, "fleets/things/a/jobs/get", b"{}"),
            None
        );
    }

    #[test]
    fn emqx_and_aws_events_name_client_ids_and_takeovers_are_no_offline() {
        let l = TopicLayout::fleets();
        let on = decode_presence(
            PresenceSource::Emqx,
            &l,
            "$SYS/brokers/n1/clients/dev-9/connected",
            br#"{"clientid":"dev-9","ts":12,"connected_at":12}"#,
        );
        assert_eq!(
            on,
            Some(Ok(PresenceDecoded::Report(Presence {
                subject: PresenceSubject::Client("dev-9".into()),
                online: true,
                stamp: 12,
            })))
        );
        let taken = decode_presence(
            PresenceSource::Emqx,
            &l,
            "$SYS/brokers/n1/clients/dev-9/disconnected",
            br#"{"ts":13,"reason":"takenover"}"#,
        );
        assert_eq!(taken, Some(Ok(PresenceDecoded::Ignored)));
        let off = decode_presence(
            PresenceSource::Aws,
            &l,
            "$aws/events/presence/disconnected/dev-9",
            br#"{"clientId":"dev-9","timestamp":20,"eventType":"disconnected","disconnectReason":"CONNECTION_LOST"}"#,
        );
        assert!(matches!(
            off,
            Some(Ok(PresenceDecoded::Report(Presence {
                online: false,
                stamp: 20,
                ..
            })))
        ));
        assert!(matches!(
            decode_presence(
                PresenceSource::Aws,
                &l,
                "$aws/events/presence/connected/dev-9",
                b"[]"
            ),
            Some(Err(PresenceError::Payload(_)))
        ));
    }
}
