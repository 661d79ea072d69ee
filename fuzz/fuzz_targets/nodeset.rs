//! Node sets as operators and HTTP callers write them (`NodeSet::parse`: no `@file`, no groups).
//! No panic; a parsed set folds to an expression that parses back to the same set.
//!
//! The fold is checked on sets of up to `FOLD_MAX` names only: folding is slow on large sets
//! (17 s for 360,000 names, in a release build), which would make every large input a timeout
//! here. Parsing is checked at every size, up to the parser's own limit of a million names.
#![no_main]

use banyan_protocol::nodeset::NodeSet;
use libfuzzer_sys::fuzz_target;

const FOLD_MAX: usize = 5_000;

fuzz_target!(|data: &[u8]| {
    let Ok(expr) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(set) = NodeSet::parse(expr) {
        if set.len() > FOLD_MAX {
            return;
        }
        let folded = set.fold();
        let back = NodeSet::parse(&folded)
            .unwrap_or_else(|e| panic!("{expr:?} folds to {folded:?}, which does not parse: {e}"));
        assert!(
            back == set,
            "{expr:?} folds to {folded:?}, which is another set"
        );
        assert_eq!(back.fold(), folded);
    }
});
