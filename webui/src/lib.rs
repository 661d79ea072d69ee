//! `banyan-webui` is the browser UI of the root: one HTML page, one script and one stylesheet,
//! written for this project and built into the binary with `include_bytes!`, so the UI works on an
//! air-gapped cluster (no CDN, no font or script from the network).
//!
//! It is not a web server: it knows nothing of HTTP, sockets or async. [`asset`] maps a path to an
//! [`Asset`] (bytes, content type, a strong ETag computed at compile time); `banyan-root` serves
//! them (`GET /` and `GET /ui/...`). The page reads the root's JSON API and draws everything
//! itself (tables, SVG charts, the tree); names from outside are always inserted as text.

/// One static file of the UI.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Asset {
    pub path: &'static str,
    pub bytes: &'static [u8],
    pub content_type: &'static str,
    /// A strong validator, quotes included (`"f1e2..."`): a hash of the bytes.
    pub etag: &'static str,
}

/// FNV-1a, 64 bits: enough to tell versions of a file apart, and computable in a `const`.
const fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut i = 0;
    while i < bytes.len() {
        h ^= bytes[i] as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
        i += 1;
    }
    h
}

/// `"` + 16 hex digits + `"`, built at compile time.
const fn etag_of(bytes: &[u8]) -> [u8; 18] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let h = fnv1a(bytes);
    let mut out = [b'"'; 18];
    let mut i = 0;
    while i < 16 {
        out[1 + i] = HEX[((h >> (60 - 4 * i)) & 0xf) as usize];
        i += 1;
    }
    out
}

macro_rules! assets {
    ($( $path:literal => $file:literal, $ctype:literal; )*) => {
        /// Every file of the UI.
        pub const ASSETS: &[Asset] = &[$({
            const BYTES: &[u8] = include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/assets/", $file));
            const TAG: [u8; 18] = etag_of(BYTES);
            Asset {
                path: $path,
                bytes: BYTES,
                content_type: $ctype,
                etag: match std::str::from_utf8(&TAG) {
                    Ok(s) => s,
                    Err(_) => panic!("an ETag is ASCII"),
                },
            }
        },)*];
    };
}

assets! {
    "index.html" => "index.html", "text/html; charset=utf-8";
    "app.js" => "app.js", "text/javascript; charset=utf-8";
    "style.css" => "style.css", "text/css; charset=utf-8";
}

/// The page served at `/`.
pub fn index() -> &'static Asset {
    &ASSETS[0]
}

/// The asset at `path` (relative to the UI's prefix, e.g. `app.js`), if there is one.
pub fn asset(path: &str) -> Option<&'static Asset> {
    ASSETS.iter().find(|a| a.path == path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_asset_is_found_with_a_strong_etag() {
        for a in ASSETS {
            assert_eq!(asset(a.path), Some(a));
            assert_eq!(a.etag.len(), 18);
            assert!(a.etag.starts_with('"') && a.etag.ends_with('"'));
            assert!(!a.bytes.is_empty());
        }
        assert_eq!(index().path, "index.html");
        assert!(asset("../Cargo.toml").is_none());
        assert!(asset("").is_none());
    }

    #[test]
    fn etags_differ_when_bytes_differ() {
        assert_ne!(etag_of(b"a"), etag_of(b"b"));
        assert_eq!(etag_of(b"a"), etag_of(b"a"));
    }

    #[test]
    fn the_page_loads_nothing_from_the_network() {
        for a in ASSETS {
            let text = String::from_utf8_lossy(a.bytes);
            for bad in ["http://", "https://", "//cdn", "@import"] {
                // The SVG namespace URI is an identifier, not a request.
                let hits = text
                    .match_indices(bad)
                    .filter(|(i, _)| !text[*i..].starts_with("http://www.w3.org/2000/svg"))
                    .count();
                assert_eq!(hits, 0, "{} mentions {bad}", a.path);
            }
        }
    }
}
