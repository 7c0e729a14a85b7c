//! Encode then decode round-trips, both directions:
//! - every device-bound `Outbound` decodes on the device side to
//!   `DeviceMessage::from_outbound`; a status change is refused by the device decoder;
//! - every device request decodes on the service side to the same `Inbound`.
#![no_main]

use arbitrary::Unstructured;
use fleetops_core::device::{DeviceRequest, Inbound};
use fleetops_core::ids::ThingName;
use fleetops_core::time::Timestamp;
use fleetops_fuzz::{layout, limits, outbound};
use fleetops_transport_mqtt::codec::{Codec, Decoded, DeviceMessage, EncodeError};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let Ok(codec) = layout(&mut u).and_then(|l| Ok(Codec::new(l, limits(&mut u)?))) else {
        return;
    };
    if let Ok(message) = outbound(&mut u) {
        match codec.encode(&message) {
            Ok(e) => match DeviceMessage::from_outbound(&message) {
                Some(expected) => assert_eq!(
                    codec.decode_device_message(&e.topic, &e.payload),
                    Ok(expected),
                    "{message:?}"
                ),
                // Not device-bound (a status change): no device decodes it.
                None => assert!(
                    codec.decode_device_message(&e.topic, &e.payload).is_err(),
                    "{message:?}"
                ),
            },
            Err(EncodeError::TooLarge { len, max }) => assert!(len > max),
            Err(other) => panic!("{other} for {message:?}"),
        }
    }
    let (Ok(thing), Ok(request), Ok(token)) = (
        u.arbitrary::<ThingName>(),
        u.arbitrary::<DeviceRequest>(),
        u.arbitrary::<Option<String>>(),
    ) else {
        return;
    };
    match codec.encode_request(&thing, token.as_deref(), &request) {
        Ok(e) => assert_eq!(
            codec.decode_request(&e.topic, &e.payload, Timestamp::EPOCH),
            Decoded::Request(Inbound {
                thing,
                client_token: token,
                request
            })
        ),
        Err(EncodeError::TooLarge { .. }) => {}
        Err(EncodeError::InvalidField {
            field: "clientToken",
            ..
        }) => {
            assert!(token.is_some_and(|t| t.len() > codec.limits().max_client_token));
        }
        Err(other) => panic!("{other} for {request:?}"),
    }
});
