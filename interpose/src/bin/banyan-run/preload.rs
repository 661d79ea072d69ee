//! Finding the library and adding it to `LD_PRELOAD`, and the exit status passed through.

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;

pub const LIB_NAME: &str = "libbanyan_interpose.so";

/// `LD_PRELOAD` with `lib` appended. ld.so splits the list on spaces and colons; the existing
/// list keeps its separator (a colon if it uses only colons, otherwise a space), and a library
/// already in the list is not added twice. A path with a space or colon cannot be listed.
pub fn append(existing: Option<&str>, lib: &str) -> Result<String, String> {
    if lib.is_empty() || lib.contains([' ', ':', '\t', '\n']) {
        return Err(format!(
            "the library path {lib:?} has a space or colon, which LD_PRELOAD cannot hold"
        ));
    }
    let existing = existing.unwrap_or("").trim_matches([' ', ':', '\t', '\n']);
    if existing.is_empty() {
        return Ok(lib.to_string());
    }
    if existing
        .split([' ', ':', '\t', '\n'])
        .any(|entry| entry == lib)
    {
        return Ok(existing.to_string());
    }
    let sep = if existing.contains(':') && !existing.contains([' ', '\t', '\n']) {
        ':'
    } else {
        ' '
    };
    Ok(format!("{existing}{sep}{lib}"))
}

/// Where the library is: `override_path` (`BANYAN_INTERPOSE_LIB`) if given, else next to the
/// binary (where cargo puts the cdylib of the same workspace), else in `../lib` (an installed
/// layout).
pub fn find_library(exe: Option<&Path>, override_path: Option<&str>) -> Result<PathBuf, String> {
    if let Some(p) = override_path.filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(std::fs::canonicalize(&p).unwrap_or(p))
        } else {
            Err(format!(
                "BANYAN_INTERPOSE_LIB={} is not a file",
                p.display()
            ))
        };
    }
    let Some(dir) = exe.and_then(Path::parent) else {
        return Err(format!(
            "cannot tell where banyan-run is, to find {LIB_NAME}; set BANYAN_INTERPOSE_LIB"
        ));
    };
    for candidate in [dir.join(LIB_NAME), dir.join("../lib").join(LIB_NAME)] {
        if candidate.is_file() {
            return Ok(std::fs::canonicalize(&candidate).unwrap_or(candidate));
        }
    }
    Err(format!(
        "no {LIB_NAME} next to {} or in ../lib; set BANYAN_INTERPOSE_LIB",
        dir.display()
    ))
}

/// The status `banyan-run` exits with: the command's, or 128 + N for a command killed by
/// signal N, as shells report it.
pub fn exit_code(status: ExitStatus) -> i32 {
    if let Some(code) = status.code() {
        code
    } else if let Some(sig) = status.signal() {
        128 + sig
    } else {
        1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIB: &str = "/opt/banyan/lib/libbanyan_interpose.so";

    #[test]
    fn the_library_is_appended_with_the_lists_own_separator() {
        assert_eq!(append(None, LIB).unwrap(), LIB);
        assert_eq!(append(Some(""), LIB).unwrap(), LIB);
        assert_eq!(append(Some("  "), LIB).unwrap(), LIB);
        assert_eq!(
            append(Some("/a/libx.so"), LIB).unwrap(),
            format!("/a/libx.so {LIB}")
        );
        assert_eq!(
            append(Some("/a/libx.so:/b/liby.so"), LIB).unwrap(),
            format!("/a/libx.so:/b/liby.so:{LIB}")
        );
        assert_eq!(
            append(Some("/a/libx.so /b/liby.so:/c/z.so"), LIB).unwrap(),
            format!("/a/libx.so /b/liby.so:/c/z.so {LIB}")
        );
        assert_eq!(
            append(Some(" /a/libx.so: "), LIB).unwrap(),
            format!("/a/libx.so {LIB}")
        );
    }

    #[test]
    fn the_library_is_not_listed_twice_and_odd_paths_are_refused() {
        let once = append(Some("/a/libx.so"), LIB).unwrap();
        assert_eq!(append(Some(&once), LIB).unwrap(), once);
        assert!(append(None, "/my dir/lib.so").is_err());
        assert!(append(None, "/a:b/lib.so").is_err());
        assert!(append(None, "").is_err());
    }

    #[test]
    fn exit_statuses_pass_through_and_signals_become_128_plus_n() {
        // Raw wait statuses: exit code in the second byte, a signal in the low 7 bits.
        assert_eq!(exit_code(ExitStatus::from_raw(0)), 0);
        assert_eq!(exit_code(ExitStatus::from_raw(3 << 8)), 3);
        assert_eq!(exit_code(ExitStatus::from_raw(255 << 8)), 255);
        assert_eq!(exit_code(ExitStatus::from_raw(11)), 139);
        assert_eq!(exit_code(ExitStatus::from_raw(9)), 137);
        assert_eq!(
            exit_code(ExitStatus::from_raw(6 | 0x80)),
            134,
            "core dumped"
        );
    }

    #[test]
    fn a_missing_library_is_a_clear_error() {
        let e = find_library(Some(Path::new("/nonexistent/bin/banyan-run")), None).unwrap_err();
        assert!(e.contains("BANYAN_INTERPOSE_LIB"), "{e}");
        let e = find_library(None, Some("/nonexistent/lib.so")).unwrap_err();
        assert!(e.contains("/nonexistent/lib.so"), "{e}");
    }
}
