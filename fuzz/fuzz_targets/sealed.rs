//! Sealed envelopes as an agent or the root receives them: a postcard `Sealed` whose seal is
//! checked (and fails: the fuzzer holds no key) and whose payload is decoded as each sealed type
//! would be once its seal verifies. No panic; a decoded payload round-trips.
#![no_main]

use banyan_protocol::action::{Order, OutputLines, Receipt};
use banyan_protocol::console::{ConsoleInput, ConsoleOutput};
use banyan_protocol::seal::{Purpose, Sealed, Verifier};
use banyan_protocol::wire::Grant;
use libfuzzer_sys::fuzz_target;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// A syntactically valid P-256 point is not needed: `ring` must refuse any key bytes cleanly.
const KEY: [u8; 65] = [4; 65];

fn payload<T: Serialize + DeserializeOwned>(bytes: &[u8]) {
    if let Ok(v) = postcard::from_bytes::<T>(bytes) {
        let once = postcard::to_stdvec(&v).expect("a decoded payload encodes");
        let again: T = postcard::from_bytes(&once).expect("an encoded payload decodes");
        assert_eq!(postcard::to_stdvec(&again).expect("re-encodes"), once);
    }
}

fuzz_target!(|data: &[u8]| {
    let verifier = Verifier::from_raw(&KEY, "fuzz");
    if let Ok(sealed) = postcard::from_bytes::<Sealed>(data) {
        for purpose in [
            Purpose::Order,
            Purpose::Receipt,
            Purpose::Placement,
            Purpose::Output,
            Purpose::ConsoleInput,
            Purpose::ConsoleOutput,
        ] {
            assert!(verifier.open::<Order>(purpose, &sealed).is_err());
        }
        payload::<Order>(&sealed.payload);
    }
    payload::<Order>(data);
    payload::<Receipt>(data);
    payload::<Grant>(data);
    payload::<OutputLines>(data);
    payload::<ConsoleInput>(data);
    payload::<ConsoleOutput>(data);
    if let Ok(input) = postcard::from_bytes::<ConsoleInput>(data) {
        let _ = input.validate();
    }
    if let Ok(output) = postcard::from_bytes::<ConsoleOutput>(data) {
        let _ = output.validate();
    }
    if let Ok(order) = postcard::from_bytes::<Order>(data) {
        let _ = order.task.validate();
    }
});
