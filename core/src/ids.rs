//! Validated identifiers, parsed once at the boundary ("parse, don't validate").
//!
//! Every name that reaches the core from outside (an MQTT topic, an HTTP path, a stored record)
//! is turned into one of these newtypes with `TryFrom`. Past that point the type carries the
//! guarantee, so no other code re-checks lengths or alphabets.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Why a string was refused as an identifier.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// The string is empty.
    #[error("{kind} must not be empty")]
    Empty {
        /// Which identifier kind was being parsed.
        kind: &'static str,
    },
    /// The string is longer than the kind allows.
    #[error("{kind} is {len} characters long, at most {max} are allowed")]
    TooLong {
        /// Which identifier kind was being parsed.
        kind: &'static str,
        /// Length of the refused string, in characters.
        len: usize,
        /// The maximum for this kind.
        max: usize,
    },
    /// The string does not have the kind's structure.
    #[error("{kind} must look like {expected}")]
    Malformed {
        /// Which identifier kind was being parsed.
        kind: &'static str,
        /// The expected shape.
        expected: &'static str,
    },
    /// The string holds a character outside the kind's alphabet.
    #[error("{kind} contains {found:?} at character {index}; allowed are {allowed}")]
    InvalidChar {
        /// Which identifier kind was being parsed.
        kind: &'static str,
        /// The first refused character.
        found: char,
        /// Its index, counted in characters.
        index: usize,
        /// A human description of the alphabet.
        allowed: &'static str,
    },
}

fn check(
    kind: &'static str,
    s: &str,
    max: usize,
    allowed: &'static str,
    ok: fn(char) -> bool,
) -> Result<(), IdError> {
    if s.is_empty() {
        return Err(IdError::Empty { kind });
    }
    // Every allowed alphabet is ASCII, so the byte length is the character length once the
    // alphabet check passed; count characters first only to report a precise length.
    for (index, found) in s.chars().enumerate() {
        if index >= max {
            return Err(IdError::TooLong {
                kind,
                len: s.chars().count(),
                max,
            });
        }
        if !ok(found) {
            return Err(IdError::InvalidChar {
                kind,
                found,
                index,
                allowed,
            });
        }
    }
    Ok(())
}

fn thing_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, ':' | '_' | '-')
}

fn job_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '-')
}

fn group_char(c: char) -> bool {
    thing_char(c) || matches!(c, '.' | ' ' | '(' | ')')
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $kind:literal, $max:expr, $allowed:literal, $pred:path) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// The longest accepted value, in characters.
            pub const MAX_LEN: usize = $max;

            /// Parses and validates `s`.
            pub fn parse(s: &str) -> Result<Self, IdError> {
                check($kind, s, $max, $allowed, $pred)?;
                Ok(Self(s.to_owned()))
            }

            /// The validated string.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<&str> for $name {
            type Error = IdError;
            fn try_from(s: &str) -> Result<Self, IdError> {
                Self::parse(s)
            }
        }

        impl TryFrom<String> for $name {
            type Error = IdError;
            fn try_from(s: String) -> Result<Self, IdError> {
                check($kind, &s, $max, $allowed, $pred)?;
                Ok(Self(s))
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl std::str::FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                Self::parse(s)
            }
        }
    };
}

id_type!(
    /// The name of a device ("thing"): 1–128 characters of `[a-zA-Z0-9:_-]`.
    ///
    /// The alphabet excludes `/`, `+` and `#`, so a thing name is always one MQTT topic level and
    /// a broker pattern ACL on `%c` can confine each device to its own topics.
    ThingName, "thing name", 128, "[a-zA-Z0-9:_-]", thing_char
);
id_type!(
    /// The id of a job: 1–64 characters of `[a-zA-Z0-9_-]`.
    JobId, "job id", 64, "[a-zA-Z0-9_-]", job_char
);
id_type!(
    /// The id of a command execution: 1–64 characters of `[a-zA-Z0-9_-]` (a UUID fits).
    ExecutionId, "execution id", 64, "[a-zA-Z0-9_-]", job_char
);
id_type!(
    /// The name of a thing group: 1–128 characters of `[a-zA-Z0-9:_.() -]`.
    ///
    /// Wider than a thing name so EMQX Fleets' default groups, such as
    /// `com.example.thermostat (default)`, keep their names. A group name never appears in an
    /// MQTT topic; in a URL path its space and parentheses are percent-encoded
    /// (`com.example.thermostat%20%28default%29`), as any HTTP client does.
    GroupName, "group name", 128, "[a-zA-Z0-9:_.() -]", group_char
);
id_type!(
    /// The id of an API key: 1–64 characters of `[a-zA-Z0-9_-]`. The server draws it; a
    /// presented key is `{id}.{secret}`, and `.` is outside the alphabet so the two parts
    /// split unambiguously.
    ApiKeyId, "API key id", 64, "[a-zA-Z0-9_-]", job_char
);
id_type!(
    /// The id of a registered command (a command template): 1–64 characters of
    /// `[a-zA-Z0-9_-]`, the alphabet of the `commandId` devices are given.
    CommandId, "command id", 64, "[a-zA-Z0-9_-]", job_char
);
id_type!(
    /// A key of a job execution's `statusDetails` map: 1–128 characters of `[a-zA-Z0-9:_-]`.
    StatusDetailKey, "statusDetails key", 128, "[a-zA-Z0-9:_-]", thing_char
);

/// The name of an event stream: one per command execution, job, job execution, group, thing,
/// API key and registered command.
///
/// Streams are named `cmd/{executionId}`, `job/{jobId}`, `exec/{jobId}/{thingName}`,
/// `group/{groupName}`, `thing/{thingName}`, `key/{apiKeyId}` and `tpl/{commandId}`. `/` is outside every id alphabet, so the name is unambiguous and the
/// parts can be recovered with [`StreamId::kind`].
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct StreamId(String);

/// What a [`StreamId`] names, recovered from its text.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum StreamKind {
    /// A command execution stream.
    Command(ExecutionId),
    /// A job stream.
    Job(JobId),
    /// A job execution stream: one job on one thing.
    JobExecution(JobId, ThingName),
    /// A thing group stream.
    Group(GroupName),
    /// An API key stream.
    ApiKey(ApiKeyId),
    /// A command template stream.
    CommandTemplate(CommandId),
    /// A thing's registry record and presence.
    Thing(ThingName),
    /// A stream outside the fleetops categories (store tests, embedders' own streams):
    /// `x/` followed by 1–200 characters of `[a-zA-Z0-9:_/-]`.
    Custom(String),
}

impl StreamId {
    /// The stream of a command execution.
    pub fn command(id: &ExecutionId) -> Self {
        Self(format!("cmd/{id}"))
    }

    /// The stream of a job.
    pub fn job(id: &JobId) -> Self {
        Self(format!("job/{id}"))
    }

    /// The stream of the execution of `job` on `thing`.
    pub fn job_execution(job: &JobId, thing: &ThingName) -> Self {
        Self(format!("exec/{job}/{thing}"))
    }

    /// The stream of a thing group.
    pub fn group(name: &GroupName) -> Self {
        Self(format!("group/{name}"))
    }

    /// The stream of an API key.
    pub fn api_key(id: &ApiKeyId) -> Self {
        Self(format!("key/{id}"))
    }

    /// The stream of a command template.
    pub fn command_template(id: &CommandId) -> Self {
        Self(format!("tpl/{id}"))
    }

    /// The stream of a thing's registry record and presence.
    pub fn thing(name: &ThingName) -> Self {
        Self(format!("thing/{name}"))
    }

    /// A custom stream `x/{name}`, for store tests and embedders' own streams.
    pub fn custom(name: &str) -> Result<Self, IdError> {
        let s = format!("x/{name}");
        Self::parse(&s)?;
        Ok(Self(s))
    }

    /// Parses a stream name into its kind.
    pub fn parse(s: &str) -> Result<StreamKind, IdError> {
        let bad = || IdError::Malformed {
            kind: "stream id",
            expected:
                "cmd/{id}, job/{id}, exec/{job}/{thing}, group/{name}, thing/{name}, key/{id}, \
                       tpl/{id} or x/{name}",
        };
        let (prefix, rest) = s.split_once('/').ok_or_else(bad)?;
        Ok(match prefix {
            "cmd" => StreamKind::Command(ExecutionId::parse(rest)?),
            "job" => StreamKind::Job(JobId::parse(rest)?),
            "exec" => {
                let (job, thing) = rest.split_once('/').ok_or_else(bad)?;
                StreamKind::JobExecution(JobId::parse(job)?, ThingName::parse(thing)?)
            }
            "group" => StreamKind::Group(GroupName::parse(rest)?),
            "key" => StreamKind::ApiKey(ApiKeyId::parse(rest)?),
            "tpl" => StreamKind::CommandTemplate(CommandId::parse(rest)?),
            "thing" => StreamKind::Thing(ThingName::parse(rest)?),
            "x" => {
                check("custom stream name", rest, 200, "[a-zA-Z0-9:_/-]", |c| {
                    thing_char(c) || c == '/'
                })?;
                StreamKind::Custom(rest.to_owned())
            }
            _ => return Err(bad()),
        })
    }

    /// What this stream names.
    pub fn kind(&self) -> StreamKind {
        // Construction validated the text, so parsing again cannot fail; fall back to Custom
        // rather than panic should that ever be violated.
        Self::parse(&self.0).unwrap_or_else(|_| StreamKind::Custom(self.0.clone()))
    }

    /// The stream name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for StreamId {
    type Error = IdError;
    fn try_from(s: String) -> Result<Self, IdError> {
        Self::parse(&s)?;
        Ok(Self(s))
    }
}

impl TryFrom<&str> for StreamId {
    type Error = IdError;
    fn try_from(s: &str) -> Result<Self, IdError> {
        Self::parse(s)?;
        Ok(Self(s.to_owned()))
    }
}

impl From<StreamId> for String {
    fn from(id: StreamId) -> String {
        id.0
    }
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thing_names_follow_the_alphabet() {
        assert!(ThingName::parse("sensor-1:a_b").is_ok());
        assert_eq!(
            ThingName::parse(""),
            Err(IdError::Empty { kind: "thing name" })
        );
        for bad in ["a/b", "a+b", "a#b", "a b", "é"] {
            assert!(
                matches!(ThingName::parse(bad), Err(IdError::InvalidChar { .. })),
                "{bad}"
            );
        }
        assert!(ThingName::parse(&"a".repeat(128)).is_ok());
        assert_eq!(
            ThingName::parse(&"a".repeat(129)),
            Err(IdError::TooLong {
                kind: "thing name",
                len: 129,
                max: 128
            })
        );
    }

    #[test]
    fn job_ids_refuse_colons_and_long_names() {
        assert!(JobId::parse("fw-update_2").is_ok());
        assert!(JobId::parse("a:b").is_err());
        assert!(JobId::parse(&"j".repeat(65)).is_err());
    }

    #[test]
    fn group_names_take_emqx_default_groups_but_no_topic_or_path_characters() {
        let name = GroupName::parse("com.example.thermostat (default)").unwrap();
        let stream = StreamId::group(&name);
        assert_eq!(stream.kind(), StreamKind::Group(name));
        for bad in ["a/b", "a+b", "a#b", "é", "tab\there", "a%20b"] {
            assert!(GroupName::parse(bad).is_err(), "{bad}");
        }
        // Thing names stay one topic level with no spaces or dots.
        assert!(ThingName::parse("a b").is_err());
        assert!(ThingName::parse("a.b").is_err());
    }

    #[test]
    fn api_key_streams_round_trip() {
        let id = ApiKeyId::parse("0192f0c3a7c0").unwrap();
        let stream = StreamId::api_key(&id);
        assert_eq!(stream.as_str(), "key/0192f0c3a7c0");
        assert_eq!(stream.kind(), StreamKind::ApiKey(id));
        assert!(StreamId::try_from("key/a.b").is_err());
    }

    #[test]
    fn stream_ids_round_trip_their_kind() {
        let job = JobId::parse("j1").unwrap();
        let thing = ThingName::parse("t:1").unwrap();
        let s = StreamId::job_execution(&job, &thing);
        assert_eq!(s.as_str(), "exec/j1/t:1");
        assert_eq!(s.kind(), StreamKind::JobExecution(job, thing));
        assert!(StreamId::try_from("nope").is_err());
        assert!(StreamId::try_from("exec/j1").is_err());
        assert!(StreamId::try_from("y/abc").is_err());
        assert_eq!(
            StreamId::custom("a/b").unwrap().kind(),
            StreamKind::Custom("a/b".into())
        );
    }

    #[test]
    fn serde_refuses_invalid_ids() {
        assert!(serde_json::from_str::<ThingName>("\"a/b\"").is_err());
        assert_eq!(
            serde_json::from_str::<ThingName>("\"ok\"")
                .unwrap()
                .as_str(),
            "ok"
        );
    }
}
