//! ClusterShell YAML group files (`Groups::from_yaml`), and node sets resolved with their groups.
//! No panic; every group of a file that loads resolves (or fails) cleanly.
#![no_main]

use banyan_protocol::groups::Groups;
use banyan_protocol::nodeset::NodeSet;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // One input feeds both: the file, and after a NUL an expression to resolve with it.
    let (file, expr) = text.split_once('\0').unwrap_or((text, "@*"));
    let Ok(groups) = Groups::from_yaml(file, "fuzz.yaml") else {
        return;
    };
    let _ = NodeSet::parse_with_groups(expr, &groups);
    let sources: Vec<String> = groups.sources().map(str::to_string).collect();
    for source in sources.iter().take(4) {
        for name in groups
            .group_names(source)
            .unwrap_or_default()
            .iter()
            .take(8)
        {
            let _ = NodeSet::parse_with_groups(&format!("@{source}:{name}"), &groups);
        }
    }
});
