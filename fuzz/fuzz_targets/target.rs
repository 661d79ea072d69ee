//! Exporter targets as `/join?to=` takes them. No panic; a parsed target's URL parses back to it.
#![no_main]

use banyan_protocol::target::Target;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(t) = Target::parse(text) {
        let url = t.url();
        assert_eq!(Target::parse(&url).as_ref(), Ok(&t), "{text:?} -> {url:?}");
    }
});
