//! A proptest state-machine test of the whole runtime: sequences of operator actions, device
//! behaviour, broker faults, crashes and clock moves (`sim::Op`) run through the simulator,
//! which checks every invariant after each step and at the end (every job ends, every
//! accepted update is stored). Where the seeded runs explore, this one shrinks: a failure is
//! reported as a minimal sequence of steps.

mod sim;

use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;
use sim::{Op, Sim};

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => (any::<u8>(), any::<u8>(), 0u8..3, 0u8..5, 0u8..4).prop_map(
            |(first, count, retries, timeout, per_minute)| Op::CreateJob {
                first,
                count,
                retries,
                timeout,
                per_minute,
            }
        ),
        1 => (any::<u8>(), 2u8..60, prop::bool::weighted(0.2)).prop_map(
            |(thing, ttl_secs, sender_gone)| Op::SendCommand { thing, ttl_secs, sender_gone }
        ),
        1 => (any::<u8>(), any::<bool>()).prop_map(|(job, force)| Op::CancelJob { job, force }),
        1 => (any::<u8>(), any::<u8>(), any::<u8>(), any::<u8>(), 0u8..3).prop_map(
            |(first, count, stages, window, retries)| Op::CreateControlledJob {
                first,
                count,
                stages,
                window,
                retries,
            }
        ),
        1 => (any::<u8>(), any::<u8>(), any::<u8>())
            .prop_map(|(job, action, arg)| Op::Operate { job, action, arg }),
        8 => (any::<u8>(), any::<u8>(), prop::bool::weighted(0.15)).prop_map(
            |(thing, choice, silent)| Op::DeviceActs { thing, choice, silent }
        ),
        8 => (any::<u8>(), prop::bool::weighted(0.1), prop::bool::weighted(0.1)).prop_map(
            |(pick, drop, duplicate)| Op::Deliver { pick, drop, duplicate }
        ),
        2 => any::<u8>().prop_map(|batch| Op::Publish { batch }),
        3 => Just(Op::JobTick),
        2 => (0u16..5_000).prop_map(|millis| Op::Advance { millis }),
        1 => (30u16..1_200).prop_map(|secs| Op::Jump { secs }),
        1 => any::<u8>().prop_map(|thing| Op::DeviceRestart { thing }),
        1 => Just(Op::SaveImage),
        1 => any::<bool>().prop_map(|from_image| Op::CrashService { from_image }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 256,
        // A failing case runs its drain to the end: bound the shrinking so a failure is
        // reported within a minute or so, already much shorter than it was found.
        max_shrink_iters: 300,
        max_shrink_time: 60_000,
        // Integration tests have no lib.rs for the default persistence to find.
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(
            "tests/runtime_props.regressions",
        ))),
        ..ProptestConfig::default()
    })]

    #[test]
    fn any_sequence_of_steps_keeps_the_runtime_invariants(
        fleet in 1u64..1_000,
        ops in prop::collection::vec(op(), 1..160),
    ) {
        let mut sim = Sim::for_steps(fleet);
        for op in &ops {
            sim.apply(op);
        }
        sim.finish();
    }
}
