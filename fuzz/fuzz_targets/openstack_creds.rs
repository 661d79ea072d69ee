//! OpenStack credentials as the root reads them: an openrc's text (`parse_openrc`, then
//! `from_vars`), a clouds.yaml's text (`parse_clouds_yaml`, which a caller may send with an hv
//! action), and root.toml's `[openstack]` section. The first byte picks the reader. No panic, no
//! runaway memory (YAML aliases), and never a secret in an error message.
#![no_main]

use banyan_root::openstack::creds::{from_vars, parse_clouds_yaml, parse_openrc};
use banyan_root::openstack::OpenStackConfig;
use libfuzzer_sys::fuzz_target;

/// A password the inputs cannot guess, so that finding it in an error means it leaked from
/// the environment given below.
const SECRET: &str = "Zq8-not-in-any-seed-7xK";

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    match mode % 3 {
        0 => {
            if let Ok(vars) = parse_openrc(text) {
                if let Err(e) = from_vars(&vars, "fuzz") {
                    if let Some(pw) = vars.get("OS_PASSWORD").filter(|p| p.len() >= 8) {
                        assert!(!e.to_string().contains(pw.as_str()), "a password in {e}");
                    }
                }
            }
        }
        1 => {
            let _ = parse_clouds_yaml(text, "c", "fuzz");
        }
        _ => {
            let env = [
                ("OS_AUTH_URL", "http://k:5000"),
                ("OS_USERNAME", "u"),
                ("OS_PASSWORD", SECRET),
            ]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
            match OpenStackConfig::parse(text, std::path::Path::new("/r/root.toml"), &env) {
                Ok(c) => {
                    let _ = c.host_of("cn1");
                    assert!(!format!("{c:?}").contains(SECRET), "a password in Debug");
                }
                Err(e) => assert!(!e.to_string().contains(SECRET), "a password in {e}"),
            }
        }
    }
});
