//! Mesh frames: the 8-byte greeting and length-prefixed postcard `Msg`s, as a peer sends them.
//! No panic; a decoded message re-encodes to bytes that decode to the same encoding.
#![no_main]

use banyan_protocol::frame::{self, Greeting};
use banyan_protocol::wire::{Msg, PROTOCOL_VERSION};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some(head) = data.first_chunk::<8>() {
        if let Ok(g) = Greeting::check(head, PROTOCOL_VERSION) {
            // The last two bytes are reserved: sent as zeros, not checked.
            assert_eq!(g.encode()[..6], head[..6]);
        }
    }
    // As transport reads a stream: the prefix checked first, then exactly that many bytes.
    if let Some(prefix) = data.first_chunk::<4>() {
        if let Ok(len) = frame::body_len(*prefix) {
            if let Some(body) = data.get(4..4 + len) {
                let _ = frame::decode_body::<Msg>(body);
            }
        }
    }
    if let Ok(msg) = frame::decode::<Msg>(data) {
        let _ = msg.kind();
        // Compared as bytes, not values: a metric may hold NaN.
        let once = frame::encode(&msg).expect("a decoded message encodes");
        let again: Msg = frame::decode(&once).expect("an encoded message decodes");
        assert_eq!(frame::encode(&again).expect("re-encodes"), once);
    }
});
