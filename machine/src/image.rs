//! The read model as bytes: what the runtime saves through the store's snapshot port, so a
//! start folds only the events after it. An image is a cache of the feed: one of another
//! format or schema, or that contradicts itself, is refused and the feed folded instead.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use fleetops_core::api_key::ApiKey;
use fleetops_core::command_template::CommandTemplate;
use fleetops_core::event::SCHEMA_VERSION;
use fleetops_core::group::Group;
use fleetops_core::ids::{ApiKeyId, CommandId};
use fleetops_core::job::Job;
use fleetops_core::projection::{Projections, ProjectionsSnapshot};
use fleetops_core::thing::Thing;
use fleetops_core::{ExecutionId, GroupName, JobId, ThingName, Timestamp};
use serde::{Deserialize, Serialize};

use crate::model::{CommandEntry, JobEntry, ReadModel, StageBook};

/// Version of the encoding below; a snapshot of another version is ignored. Format 2 keeps
/// each execution once, in core's projection entry; format 3 adds each job's stages, API keys,
/// registered commands and the things (registry and presence); format 4 adds each command's
/// command id; format 5 records whether each execution has status details.
const FORMAT: u32 = 5;

/// The state as written: sorted lists, so equal states encode to equal bytes.
#[derive(Serialize)]
struct ImageRef<'a> {
    format: u32,
    schema: u16,
    proj: ProjectionsSnapshot,
    jobs: Vec<JobImageRef<'a>>,
    groups: Vec<&'a Group>,
    group_jobs: BTreeMap<&'a GroupName, &'a Vec<JobId>>,
    thing_jobs: BTreeMap<&'a ThingName, &'a Vec<JobId>>,
    commands: &'a BTreeMap<ExecutionId, CommandEntry>,
    thing_commands: BTreeMap<&'a ThingName, &'a Vec<ExecutionId>>,
    api_keys: Vec<&'a ApiKey>,
    templates: Vec<&'a CommandTemplate>,
    things: Vec<&'a Thing>,
}

#[derive(Serialize)]
struct JobImageRef<'a> {
    job: &'a Job,
    to_queue: &'a BTreeSet<ThingName>,
    retry_owed: &'a BTreeSet<ThingName>,
    leave_owed: &'a BTreeSet<ThingName>,
    window: Option<(Timestamp, u64)>,
    stages: Option<&'a StageBook>,
}

/// The state as read back.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Image {
    format: u32,
    schema: u16,
    proj: ProjectionsSnapshot,
    jobs: Vec<JobImage>,
    groups: Vec<Group>,
    group_jobs: BTreeMap<GroupName, Vec<JobId>>,
    thing_jobs: BTreeMap<ThingName, Vec<JobId>>,
    commands: BTreeMap<ExecutionId, CommandEntry>,
    thing_commands: BTreeMap<ThingName, Vec<ExecutionId>>,
    api_keys: Vec<ApiKey>,
    templates: Vec<CommandTemplate>,
    things: Vec<Thing>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JobImage {
    job: Job,
    to_queue: BTreeSet<ThingName>,
    retry_owed: BTreeSet<ThingName>,
    leave_owed: BTreeSet<ThingName>,
    window: Option<(Timestamp, u64)>,
    stages: Option<StageBook>,
}

/// Why an image does not decode to a read model: it was written by another format or event
/// schema, for another position, or contradicts itself.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// Not JSON of the image's shape.
    #[error("cannot decode: {0}")]
    Decode(#[from] serde_json::Error),
    /// Written by another version of this encoding.
    #[error("written by format {found}, this runtime reads format {FORMAT}")]
    Format {
        /// The version it was written by.
        found: u32,
    },
    /// Folded from events of another schema.
    #[error("written for event schema {found}, this runtime folds schema {SCHEMA_VERSION}")]
    Schema {
        /// The schema it was folded from.
        found: u16,
    },
    /// The image reflects another position than the one it was saved at.
    #[error("records position {inner} inside a snapshot saved at position {outer}")]
    Position {
        /// The position inside the image.
        inner: u64,
        /// The position it was saved at.
        outer: u64,
    },
    /// Core's projections contradict themselves.
    #[error(transparent)]
    Projections(#[from] fleetops_core::projection::SnapshotError),
    /// A job appears twice.
    #[error("job {0} is listed twice")]
    DuplicateJob(JobId),
    /// A group appears twice.
    #[error("group {0} is listed twice")]
    DuplicateGroup(GroupName),
    /// An API key appears twice.
    #[error("API key {0} is listed twice")]
    DuplicateApiKey(ApiKeyId),
    /// A registered command appears twice.
    #[error("command {0} is listed twice")]
    DuplicateTemplate(CommandId),
    /// A thing appears twice.
    #[error("thing {0} is listed twice")]
    DuplicateThing(ThingName),
}

/// A hash map's entries in key order, for a stable encoding.
fn sorted<K: Ord, V>(m: &std::collections::HashMap<K, V>) -> BTreeMap<&K, &V> {
    m.iter().collect()
}

impl ReadModel {
    /// Encodes the whole read model: equal models encode to equal bytes.
    pub fn encode(&self) -> Vec<u8> {
        let image = ImageRef {
            format: FORMAT,
            schema: SCHEMA_VERSION,
            proj: self.proj.snapshot(),
            jobs: self
                .jobs
                .values()
                .map(|e| JobImageRef {
                    job: &e.job,
                    to_queue: &e.to_queue,
                    retry_owed: &e.retry_owed,
                    leave_owed: &e.leave_owed,
                    window: e.window,
                    stages: e.stages.as_ref(),
                })
                .collect(),
            groups: self.groups.values().collect(),
            group_jobs: sorted(&self.group_jobs),
            thing_jobs: sorted(&self.thing_jobs),
            commands: &self.commands,
            thing_commands: sorted(&self.thing_commands),
            api_keys: self.api_keys.values().collect(),
            templates: self.templates.values().collect(),
            things: self.things.values().collect(),
        };
        // Serializing plain data into a Vec cannot fail (no map has non-string keys).
        serde_json::to_vec(&image).unwrap_or_default()
    }

    /// Decodes a read model saved at `position`, refusing one that does not fit it.
    pub fn decode(bytes: &[u8], position: u64) -> Result<ReadModel, ImageError> {
        // An image of another format may not parse as this one: name its format rather than
        // the first field it lacks, and skip parsing all of it.
        if let Some(found) = leading_format(bytes).filter(|f| *f != FORMAT) {
            return Err(ImageError::Format { found });
        }
        let image: Image = serde_json::from_slice(bytes)?;
        if image.format != FORMAT {
            return Err(ImageError::Format {
                found: image.format,
            });
        }
        if image.schema != SCHEMA_VERSION {
            return Err(ImageError::Schema {
                found: image.schema,
            });
        }
        if image.proj.checkpoint != position {
            return Err(ImageError::Position {
                inner: image.proj.checkpoint,
                outer: position,
            });
        }
        let proj = Projections::restore(image.proj)?;
        let mut jobs = BTreeMap::new();
        for j in image.jobs {
            let id = j.job.job_id.clone();
            let entry = JobEntry {
                job: Arc::new(j.job),
                to_queue: j.to_queue,
                retry_owed: j.retry_owed,
                leave_owed: j.leave_owed,
                window: j.window,
                stages: j.stages,
            };
            if jobs.insert(id.clone(), entry).is_some() {
                return Err(ImageError::DuplicateJob(id));
            }
        }
        let mut groups = BTreeMap::new();
        for g in image.groups {
            let name = g.name.clone();
            if groups.insert(name.clone(), g).is_some() {
                return Err(ImageError::DuplicateGroup(name));
            }
        }
        let mut api_keys = BTreeMap::new();
        for k in image.api_keys {
            let id = k.key_id.clone();
            if api_keys.insert(id.clone(), k).is_some() {
                return Err(ImageError::DuplicateApiKey(id));
            }
        }
        let mut templates = BTreeMap::new();
        for t in image.templates {
            let id = t.command_id.clone();
            if templates.insert(id.clone(), t).is_some() {
                return Err(ImageError::DuplicateTemplate(id));
            }
        }
        let mut things = BTreeMap::new();
        let mut client_things = std::collections::HashMap::new();
        for t in image.things {
            let name = t.name.clone();
            if let Some(id) = &t.client_id {
                client_things.insert(id.clone(), name.clone());
            }
            if things.insert(name.clone(), t).is_some() {
                return Err(ImageError::DuplicateThing(name));
            }
        }
        Ok(ReadModel {
            proj,
            jobs,
            groups,
            group_jobs: image.group_jobs.into_iter().collect(),
            thing_jobs: image.thing_jobs.into_iter().collect(),
            commands: image.commands,
            thing_commands: image.thing_commands.into_iter().collect(),
            api_keys,
            templates,
            things,
            client_things,
        })
    }
}

/// The format number an image opens with (`encode` writes it first), if it opens with one.
fn leading_format(bytes: &[u8]) -> Option<u32> {
    let rest = bytes.strip_prefix(b"{\"format\":")?;
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    std::str::from_utf8(&rest[..digits]).ok()?.parse().ok()
}
