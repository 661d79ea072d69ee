//! API tokens as callers present them (`Authorization: Bearer ...`) to a store holding the admin
//! token and two named tokens. No panic; only the exact texts authenticate; errors are one line.
#![no_main]

use banyan_root::tokens::{Role, TokenStore};
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

const ADMIN: &str = "fuzz-admin-token-0123456789abcdef";

struct Fixture {
    store: TokenStore,
    operator: String,
    viewer: String,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("banyan-fuzz-tokens-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        let mut store = TokenStore::open(&dir, ADMIN).expect("a token store");
        let operator = store
            .create("ops", Role::Operator, &["rack1".to_string()], None, 1)
            .expect("an operator token");
        let viewer = store
            .create("view", Role::Viewer, &[], None, 1)
            .expect("a viewer token");
        Fixture {
            store,
            operator,
            viewer,
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(bearer) = std::str::from_utf8(data) else {
        return;
    };
    let f = fixture();
    match f.store.authenticate(bearer, 2) {
        Ok(p) => {
            let bare = bearer.trim();
            let bare = bare
                .get(..6)
                .filter(|b| b.eq_ignore_ascii_case("bearer"))
                .map_or(bare, |_| bare[6..].trim_start());
            let expected = match p.role {
                Role::Admin => ADMIN,
                Role::Operator => f.operator.as_str(),
                Role::Viewer => f.viewer.as_str(),
            };
            assert_eq!(bare, expected, "{bearer:?} authenticated as {}", p.name);
        }
        Err(e) => {
            let text = e.to_string();
            assert!(!text.contains('\n'), "a multi-line error: {text}");
            // A malformed token's name is echoed (names are not secret): the admin token may
            // show only when the caller wrote it there itself.
            assert!(
                !text.contains(ADMIN) || bearer.contains(ADMIN),
                "an error echoes the admin token"
            );
        }
    }
});
