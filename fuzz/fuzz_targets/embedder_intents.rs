//! The four aggregates driven the way an embedder's own fuzz target would drive them: with
//! nothing but fleetops-core and its `arbitrary` feature (no helpers of this crate, no
//! transport). The input is a start time and a list of steps built from the core's types;
//! each intent is decided against its aggregate's live state at a moving or arbitrary `now`.
//!
//! Never a panic, and after every step: a refusal changes nothing (and `execute` refuses the
//! same way); every accepted event evolves, survives a JSON round trip and bumps the state;
//! `execute` agrees with `decide` then `evolve`; replaying the stored events gives the live
//! state, and so does replaying them after a JSON round trip. Arbitrary stored events thrown
//! at any state are applied or refused by `evolve`, never a panic.
#![no_main]

use arbitrary::Arbitrary;
use fleetops_core::command::{CommandExecution, CommandIntent};
use fleetops_core::group::{Group, GroupIntent};
use fleetops_core::job::{Job, JobIntent};
use fleetops_core::job_execution::{JobExecution, JobExecutionIntent};
use fleetops_core::{Aggregate, Duration, Event, Timestamp};
use libfuzzer_sys::fuzz_target;

/// When a step happens.
#[derive(Arbitrary, Debug)]
enum When {
    /// This many milliseconds after the previous step.
    Later(u32),
    /// At any time, even earlier than before.
    At(Timestamp),
}

#[derive(Arbitrary, Debug)]
enum Step {
    Execution(JobExecutionIntent, When),
    Command(CommandIntent, When),
    Job(JobIntent, When),
    Group(GroupIntent, When),
    /// A stored event from elsewhere offered to every aggregate's `evolve`.
    Stray(Event),
}

#[derive(Arbitrary, Debug)]
struct Input {
    start: Timestamp,
    steps: Vec<Step>,
}

/// One stream: live state and stored events.
struct Stream<A> {
    state: Option<A>,
    log: Vec<Event>,
}

impl<A: Aggregate + PartialEq> Stream<A> {
    fn new() -> Self {
        Self {
            state: None,
            log: Vec::new(),
        }
    }

    fn decide(&mut self, intent: A::Intent, now: Timestamp) {
        let before = self.state.clone();
        let executed = A::execute(self.state.clone(), intent.clone(), now);
        match A::decide(self.state.as_ref(), intent, now) {
            Err(rejection) => {
                assert_eq!(executed, Err(rejection), "execute refused differently");
                assert_eq!(self.state, before, "a refusal changed the state");
            }
            Ok(events) => {
                let mut state = self.state.take();
                for e in &events {
                    let text = serde_json::to_string(e).expect("events encode");
                    let back: Event = serde_json::from_str(&text).expect("events decode");
                    assert_eq!(&back, e, "{text}");
                    state = Some(A::evolve(state, e).unwrap_or_else(|err| {
                        panic!("{} emitted {e:?}, which does not evolve: {err}", A::NAME)
                    }));
                }
                assert_eq!(
                    executed,
                    Ok((state.clone(), events.clone())),
                    "execute differs from decide then evolve"
                );
                self.state = state;
                self.log.extend(events);
            }
        }
        assert_eq!(
            A::replay(&self.log).expect("stored history replays"),
            self.state,
            "replay differs from the live state"
        );
        let stored: Vec<Event> = self
            .log
            .iter()
            .map(|e| serde_json::from_value(serde_json::to_value(e).expect("encodes")))
            .collect::<Result<_, _>>()
            .expect("stored events decode");
        assert_eq!(
            A::replay(&stored).expect("history read back replays"),
            self.state,
            "a restart would see another state"
        );
    }

    fn offer(&self, event: &Event) {
        let _ = A::evolve(self.state.clone(), event);
    }
}

fuzz_target!(|input: Input| {
    let mut now = input.start;
    let mut exec = Stream::<JobExecution>::new();
    let mut cmd = Stream::<CommandExecution>::new();
    let mut job = Stream::<Job>::new();
    let mut group = Stream::<Group>::new();
    let mut tick = |when: When| {
        now = match when {
            When::Later(ms) => now + Duration::from_millis(u64::from(ms)),
            When::At(t) => t,
        };
        now
    };
    for step in input.steps {
        match step {
            Step::Execution(intent, when) => exec.decide(intent, tick(when)),
            Step::Command(intent, when) => cmd.decide(intent, tick(when)),
            Step::Job(intent, when) => job.decide(intent, tick(when)),
            Step::Group(intent, when) => group.decide(intent, tick(when)),
            Step::Stray(event) => {
                exec.offer(&event);
                cmd.offer(&event);
                job.offer(&event);
                group.offer(&event);
            }
        }
    }
});
