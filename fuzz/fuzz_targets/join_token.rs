//! Join tokens as `banyan-agent --join` reads them. No panic; a parsed token prints as text that
//! parses back to it.
#![no_main]

use banyan_protocol::identity::JoinToken;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(token) = text.parse::<JoinToken>() {
        let printed = token.to_string();
        let back: JoinToken = printed.parse().expect("a printed token parses");
        assert_eq!(back.to_string(), printed);
    }
});
