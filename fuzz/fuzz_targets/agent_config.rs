//! The agent's `agent.toml` (`banyan_agent::config::parse`). No panic; errors are one line.
#![no_main]

use banyan_agent::config;
use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(e) = config::parse(text, Path::new("/etc/banyan/agent.toml")) {
        assert!(!e.contains('\n'), "a multi-line error: {e}");
    }
});
