//! Arbitrary topic and payload bytes through both decoders: never a panic, and every refusal
//! answers its own topic with a JSON `rejected` body. Requests that decode re-encode to the
//! same request (the decoder and the SDK's encoder agree).
#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use fleetops_core::time::Timestamp;
use fleetops_fuzz::{layout, limits, Level};
use fleetops_transport_mqtt::codec::{Codec, Decoded};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

#[derive(Arbitrary, Debug)]
struct Input<'a> {
    raw_topic: Option<&'a str>,
    levels: Vec<Level<'a>>,
    payload: &'a [u8],
    now: u64,
}

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let (Ok(layout), Ok(limits), Ok(input)) =
        (layout(&mut u), limits(&mut u), Input::arbitrary(&mut u))
    else {
        return;
    };
    let codec = Codec::new(layout, limits);
    let topic = match input.raw_topic {
        Some(t) => t.to_owned(),
        None => {
            let mut t = codec.layout().prefix().to_owned();
            for l in &input.levels {
                t.push('/');
                t.push_str(l.text());
            }
            t
        }
    };
    let now = Timestamp::from_millis(input.now);
    match codec.decode_request(&topic, input.payload, now) {
        Decoded::Refused(r) => {
            assert_eq!(r.reply.topic, format!("{topic}/rejected"));
            let body: Value = serde_json::from_slice(&r.reply.payload).expect("rejected is JSON");
            assert_eq!(body["code"], r.rejection.code().as_str());
            assert_eq!(body["timestamp"], now.as_secs());
        }
        Decoded::Request(inbound) => {
            // The SDK's encoder may refuse what exceeds the limits on its side (a token or a
            // payload re-encoded larger); otherwise the decode must be reproduced exactly.
            if let Ok(e) = codec.encode_request(
                &inbound.thing,
                inbound.client_token.as_deref(),
                &inbound.request,
            ) {
                assert_eq!(
                    codec.decode_request(&e.topic, &e.payload, now),
                    Decoded::Request(inbound)
                );
            }
        }
        Decoded::Ignored => {}
    }
    let _ = codec.decode_device_message(&topic, input.payload);
});
