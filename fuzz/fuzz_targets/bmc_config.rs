//! The `[[bmc]]` sections of the root's `root.toml` (`BmcConfig::parse`), read next to a valid
//! password file `pw` and CA file `ca.pem` so that the fuzzer reaches every check. No panic; every
//! node of a loaded config resolves to its BMC.
#![no_main]

use banyan_root::bmcconf::BmcConfig;
use libfuzzer_sys::fuzz_target;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::OnceLock;

fn dir() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("banyan-fuzz-bmc-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let pw = dir.join("pw");
        std::fs::write(&pw, "secret\n").expect("password file");
        std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        std::fs::write(dir.join("ca.pem"), "not read at load\n").expect("ca file");
        dir
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(config) = BmcConfig::parse(text, &dir().join("root.toml")) else {
        return;
    };
    for node in config.nodes().iter().take(64) {
        if let Err(e) = config.resolve(node) {
            panic!("{node} is in the config but does not resolve: {e}");
        }
    }
    let _ = config.resolve("cn1");
});
