//! Job ids from ranks and HTTP callers, and the names derived from them: series scoped to a job
//! and the safe file name of its profile. No panic; scoping splits back; file names hold only
//! `[A-Za-z0-9_%-]` and decode back to the id (so two ids never share a file).
#![no_main]

use banyan_protocol::job::{check_job_id, file_stem, scoped_key, split_scoped};
use libfuzzer_sys::fuzz_target;

fn unstem(stem: &str) -> Vec<u8> {
    let b = stem.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(&b[i + 1..i + 3]).expect("two ASCII hex digits");
            out.push(u8::from_str_radix(hex, 16).expect("hex"));
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (id, series) = text.split_once('\n').unwrap_or((text, "cpu_total"));
    let _ = split_scoped(text);
    if check_job_id(id).is_err() {
        return;
    }
    let stem = file_stem(id);
    assert!(stem
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'%')));
    assert_eq!(unstem(&stem), id.as_bytes());
    if !series.contains('\u{1}') {
        let key = scoped_key(id, series);
        assert_eq!(split_scoped(&key), Some((id, series)), "{key:?}");
    }
});
