//! The root's node groups, read from ClusterShell YAML group files so that a site's existing
//! groups work as they are: `<state-dir>/groups.yaml` and `/etc/clustershell/groups.d/*.yaml`,
//! both optional. [`RootGroups`] merges them into one [`Groups`] resolver and answers node-set
//! expressions with `@group`, `@source:group`, `@*` and ClusterShell's operators.
//!
//! Merging is by whole source, never group by group, so one source never mixes two files:
//! - a source in the state dir's `groups.yaml` wins over a source of the same name in `groups.d`
//!   (the state dir is banyan's own, and the place to override a site file), which is logged;
//! - among `groups.d` files, read in name order as ClusterShell does, the first file defining a
//!   source wins and the others' are reported (ClusterShell refuses such a configuration).
//!
//! The default source (what `@group` and `@*` read) is the first source of the state dir's file;
//! without one, ClusterShell's: `[Main] default` of `groups.conf` next to `groups.d` if it names a
//! YAML source (the Debian package names `local`, an upcall source banyan does not run), else the
//! first source of the first `groups.d` file.
//!
//! The state dir's `groups.yaml` is banyan's own: if it cannot be read or is not a valid group
//! file, loading fails with its name and line (a typo must not silently drop groups that token
//! scopes rely on), and a reload keeps the groups it had. A `groups.d` file with a problem is the
//! site's, possibly fine for an older ClusterShell: it is skipped and reported with its name and
//! line (see [`RootGroups::warnings`]), and the other files still load. Every group is resolved at
//! load, so a group whose definition is wrong (unknown group, cycle, bad syntax) is reported then,
//! with its file and line, rather than at first use.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use banyan_protocol::groups::{Groups, GroupsError};
use banyan_protocol::nodeset::{NodeSet, NodeSetError};

/// The group file in the root's state dir.
pub const STATE_FILE: &str = "groups.yaml";

/// ClusterShell's configuration directory, holding `groups.conf` and `groups.d/`.
pub const CLUSTERSHELL_DIR: &str = "/etc/clustershell";

/// Why an expression could not be resolved.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The expression is malformed, too large, or names a group or source that is not defined
    /// or does not resolve.
    #[error(transparent)]
    NodeSet(#[from] NodeSetError),
    /// The expression names an unknown group or source while some group files could not be
    /// loaded: the group may well be in one of them.
    #[error("{source} (group files not loaded: {files})")]
    Unloaded {
        #[source]
        source: NodeSetError,
        files: String,
    },
    /// The state dir's group file cannot be read.
    #[error("cannot read group file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The state dir's group file is not a valid group file (the message starts `path:line:`).
    #[error(transparent)]
    Invalid(#[from] GroupsError),
}

/// What identifies a version of a file: a rewrite changes its modification time, and usually
/// its length too (which catches rewrites within a coarse mtime tick).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
}

/// The files read at the last load and their stamps (`None`: absent). A changed, new or
/// removed file changes it.
type Snapshot = Vec<(PathBuf, Option<Stamp>)>;

/// The root's node groups.
#[derive(Debug)]
pub struct RootGroups {
    state_file: PathBuf,
    clustershell_dir: PathBuf,
    groups: Groups,
    /// Every group that resolved at load, in source order then name order.
    resolved: Vec<(String, String, NodeSet)>,
    warnings: Vec<String>,
    /// Files skipped at load, named in errors about unknown groups.
    unloaded: Vec<String>,
    seen: Snapshot,
}

impl RootGroups {
    /// Loads the groups of the state dir and of `/etc/clustershell`.
    pub fn load(state_dir: &Path) -> Result<RootGroups, Error> {
        RootGroups::load_from(state_dir, Path::new(CLUSTERSHELL_DIR))
    }

    /// Loads the groups of the state dir and of `clustershell_dir` (its `groups.conf` and
    /// `groups.d/*.yaml`) instead of `/etc/clustershell`, for tests and unusual sites. Fails only
    /// on the state dir's own file; other files that cannot be used are skipped and listed in
    /// [`RootGroups::warnings`].
    pub fn load_from(state_dir: &Path, clustershell_dir: &Path) -> Result<RootGroups, Error> {
        let mut store = RootGroups {
            state_file: state_dir.join(STATE_FILE),
            clustershell_dir: clustershell_dir.to_owned(),
            groups: Groups::new(),
            resolved: Vec::new(),
            warnings: Vec::new(),
            unloaded: Vec::new(),
            seen: Vec::new(),
        };
        store.seen = store.snapshot();
        store.read()?;
        Ok(store)
    }

    /// Re-reads the files if any of them changed, appeared or disappeared since the last load
    /// (by modification time and length), and returns whether it did. Cheap when nothing
    /// changed: a few `stat`s and one directory listing. If the state dir's file has become
    /// invalid, the groups loaded before are kept and the error is returned, once: the next
    /// reload tries again only when a file changes again.
    pub fn reload(&mut self) -> Result<bool, Error> {
        let seen = self.snapshot();
        if seen == self.seen {
            return Ok(false);
        }
        let mut fresh = RootGroups {
            state_file: self.state_file.clone(),
            clustershell_dir: self.clustershell_dir.clone(),
            groups: Groups::new(),
            resolved: Vec::new(),
            warnings: Vec::new(),
            unloaded: Vec::new(),
            seen: seen.clone(),
        };
        // Stamps are taken before reading: a file changed while it is read is read again at the
        // next reload.
        self.seen = seen;
        // The caller reports the error; the groups loaded before stay.
        fresh.read()?;
        *self = fresh;
        Ok(true)
    }

    /// Resolves a node-set expression with the groups (files are never read from expressions:
    /// they come from API callers).
    pub fn resolve(&self, expr: &str) -> Result<NodeSet, Error> {
        self.groups.resolve(expr).map_err(|e| {
            if e.is_unknown_group() && !self.unloaded.is_empty() {
                Error::Unloaded {
                    source: e,
                    files: self.unloaded.join(", "),
                }
            } else {
                Error::NodeSet(e)
            }
        })
    }

    /// Every group that resolves, as `(source, group, nodes)`, in source order (the default
    /// source is not moved first) and group name order within a source.
    pub fn list(&self) -> Vec<(String, String, NodeSet)> {
        self.resolved.clone()
    }

    /// The nodes of a group named as a token scope names it: `group` (of the default source) or
    /// `source:group`. `None` if there is no such group or it does not resolve.
    pub fn group(&self, name: &str) -> Option<NodeSet> {
        let (source, group) = match name.split_once(':') {
            Some((source, group)) => (source, group),
            None => (self.groups.default_source()?, name),
        };
        self.resolved
            .iter()
            .find(|(s, g, _)| s == source && g == group)
            .map(|(_, _, set)| set.clone())
    }

    /// What was wrong at the last load: unreadable or invalid files (with file and line), sources
    /// defined by two `groups.d` files, groups that do not resolve.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// The merged groups.
    pub fn groups(&self) -> &Groups {
        &self.groups
    }

    pub fn default_source(&self) -> Option<&str> {
        self.groups.default_source()
    }

    fn groups_d(&self) -> PathBuf {
        self.clustershell_dir.join("groups.d")
    }

    fn groups_conf(&self) -> PathBuf {
        self.clustershell_dir.join("groups.conf")
    }

    /// `groups.d/*.yaml` in name order, as ClusterShell's `sorted(glob("*.yaml"))`: hidden files
    /// are not matched. An absent directory has none.
    fn yaml_files(&self) -> Result<Vec<PathBuf>, std::io::Error> {
        let dir = self.groups_d();
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let mut files = Vec::new();
        for entry in entries {
            let name = entry?.file_name();
            let Some(name) = name.to_str() else { continue };
            if name.ends_with(".yaml") && !name.starts_with('.') {
                files.push(dir.join(name));
            }
        }
        files.sort();
        Ok(files)
    }

    fn snapshot(&self) -> Snapshot {
        let stamp = |path: &Path| {
            std::fs::metadata(path).ok().map(|m| Stamp {
                modified: m.modified().ok(),
                len: m.len(),
            })
        };
        let mut paths = vec![self.state_file.clone(), self.groups_conf(), self.groups_d()];
        paths.extend(self.yaml_files().unwrap_or_default());
        paths
            .into_iter()
            .map(|p| {
                let s = stamp(&p);
                (p, s)
            })
            .collect()
    }

    /// Reads every file into this (empty) store.
    fn read(&mut self) -> Result<(), Error> {
        let state_origin = self.state_file.display().to_string();
        let mut merged = match std::fs::read_to_string(&self.state_file) {
            Ok(text) => Groups::from_yaml(&text, &state_origin)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Groups::new(),
            Err(source) => {
                return Err(Error::Read {
                    path: self.state_file.clone(),
                    source,
                })
            }
        };
        let from_state_dir = !merged.is_empty();
        let files = match self.yaml_files() {
            Ok(files) => files,
            Err(e) => {
                let dir = self.groups_d();
                self.warn(format!("cannot list {}: {e}", dir.display()));
                self.unloaded.push(dir.display().to_string());
                Vec::new()
            }
        };
        for file in files {
            let Some(groups) = self.read_file(&file) else {
                continue;
            };
            for source in merged.absorb(groups) {
                let winner = merged.origin(&source).unwrap_or("?").to_owned();
                if winner == state_origin {
                    tracing::info!(
                        source = %source,
                        file = %file.display(),
                        winner = %winner,
                        "group source of the state dir's groups.yaml overrides the one in groups.d"
                    );
                } else {
                    self.warn(format!(
                        "{}: group source {source:?} is ignored: {winner} already defines it",
                        file.display()
                    ));
                }
            }
        }
        if !from_state_dir {
            self.apply_clustershell_default(&mut merged);
        }
        self.groups = merged;
        self.resolve_all();
        tracing::info!(
            sources = self.groups.sources().count(),
            groups = self.resolved.len(),
            default = self.groups.default_source().unwrap_or("none"),
            warnings = self.warnings.len(),
            "node groups loaded"
        );
        Ok(())
    }

    /// A `groups.d` file, or `None` (reported) if it is absent, unreadable or invalid.
    fn read_file(&mut self, path: &Path) -> Option<Groups> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
            Err(e) => {
                self.warn(format!("cannot read group file {}: {e}", path.display()));
                self.unloaded.push(path.display().to_string());
                return None;
            }
        };
        match Groups::from_yaml(&text, &path.display().to_string()) {
            Ok(groups) => Some(groups),
            Err(e) => {
                // The error starts with `path:line:`.
                self.warn(format!("group file skipped: {e}"));
                self.unloaded.push(path.display().to_string());
                None
            }
        }
    }

    fn apply_clustershell_default(&mut self, merged: &mut Groups) {
        let conf = self.groups_conf();
        let text = match std::fs::read_to_string(&conf) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
            Err(e) => {
                self.warn(format!("cannot read {}: {e}", conf.display()));
                return;
            }
        };
        let Some(default) = main_default(&text) else {
            return;
        };
        if merged.set_default(&default).is_err() {
            // Not a warning: the stock configuration names an upcall source.
            tracing::info!(
                file = %conf.display(),
                source = %default,
                using = merged.default_source().unwrap_or("none"),
                "groups.conf names a default group source that no YAML file defines"
            );
        }
    }

    /// Resolves every group once, keeping those that resolve and reporting the others.
    fn resolve_all(&mut self) {
        let mut resolved = Vec::new();
        let mut problems = Vec::new();
        for source in self.groups.sources() {
            for group in self.groups.group_names(source).unwrap_or_default() {
                match self.groups.nodes(source, group) {
                    Ok(set) => resolved.push((source.to_owned(), group.to_owned(), set)),
                    Err(e) => {
                        problems.push(format!("group @{source}:{group} does not resolve: {e}"))
                    }
                }
            }
        }
        self.resolved = resolved;
        for problem in problems {
            self.warn(problem);
        }
    }

    fn warn(&mut self, message: String) {
        tracing::warn!("{message}");
        self.warnings.push(message);
    }
}

/// The `default` option of the `[Main]` section of a `groups.conf`, read as Python's
/// `ConfigParser` reads it: `key: value` or `key = value`, option names in any case, `#` and `;`
/// starting comment lines. An empty value means none, as in ClusterShell.
fn main_default(text: &str) -> Option<String> {
    let mut in_main = false;
    let mut default = None;
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with(['#', ';']) {
            continue;
        }
        if let Some(section) = trimmed.strip_prefix('[').and_then(|s| s.strip_suffix(']')) {
            in_main = section == "Main";
            continue;
        }
        // Indented lines continue the previous value; `default` is one word.
        if !in_main || line.starts_with([' ', '\t']) {
            continue;
        }
        let Some(sep) = trimmed.find([':', '=']) else {
            continue;
        };
        if trimmed[..sep].trim().eq_ignore_ascii_case("default") {
            let value = trimmed[sep + 1..].trim();
            default = (!value.is_empty()).then(|| value.to_owned());
        }
    }
    default
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A directory under the temp dir, removed with everything in it when dropped.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(tag: &str) -> TempDir {
            use std::sync::atomic::{AtomicUsize, Ordering};
            static SEQ: AtomicUsize = AtomicUsize::new(0);
            let path = std::env::temp_dir().join(format!(
                "banyan-groups-{tag}-{}-{}",
                std::process::id(),
                SEQ.fetch_add(1, Ordering::Relaxed)
            ));
            std::fs::create_dir_all(path.join("cs/groups.d")).unwrap();
            std::fs::create_dir_all(path.join("state")).unwrap();
            TempDir(path)
        }

        fn write(&self, rel: &str, text: &str) {
            std::fs::write(self.0.join(rel), text).unwrap();
        }

        fn try_load(&self) -> Result<RootGroups, Error> {
            RootGroups::load_from(&self.0.join("state"), &self.0.join("cs"))
        }

        fn load(&self) -> RootGroups {
            self.try_load().unwrap()
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn fold(store: &RootGroups, expr: &str) -> String {
        match store.resolve(expr) {
            Ok(set) => set.fold(),
            Err(e) => panic!("{expr}: {e}"),
        }
    }

    #[test]
    fn nothing_to_read_means_no_groups() {
        let dir = TempDir::new("none");
        std::fs::remove_dir_all(dir.0.join("cs")).unwrap();
        let store = dir.load();
        assert!(store.groups().is_empty());
        assert!(store.warnings().is_empty());
        assert!(store.list().is_empty());
        assert_eq!(fold(&store, "n[1-2]!n1"), "n2");
        let err = store.resolve("@x").unwrap_err().to_string();
        assert!(err.contains("no default group source"), "{err}");
    }

    #[test]
    fn the_state_dir_wins_whole_sources_and_gives_the_default() {
        let dir = TempDir::new("merge");
        dir.write("state/groups.yaml", "racks:\n  r1: 'n[1-2]'\n");
        dir.write(
            "cs/groups.d/a.yaml",
            "roles:\n  adm: n9\n  io: '@racks:r1,@racks:r2'\nracks:\n  r1: x1\n  r2: x2\n",
        );
        dir.write("cs/groups.d/b.yaml", "roles:\n  adm: n8\ncpu:\n  ivy: n5\n");
        dir.write("cs/groups.d/.hidden.yaml", "hidden:\n  g: n1\n");
        dir.write("cs/groups.d/notes.yml", "other:\n  g: n1\n");
        dir.write("cs/groups.conf", "[Main]\ndefault: cpu\n");
        let store = dir.load();
        assert_eq!(
            store.groups().sources().collect::<Vec<_>>(),
            ["racks", "roles", "cpu"]
        );
        assert_eq!(store.default_source(), Some("racks"));
        assert_eq!(fold(&store, "@r1"), "n[1-2]");
        assert_eq!(fold(&store, "@roles:adm"), "n9");
        // `@racks:r2` is only in the groups.d `racks`, which the state dir's replaced whole.
        let warnings = store.warnings().join("\n");
        assert!(
            warnings.contains("b.yaml: group source \"roles\" is ignored: "),
            "{warnings}"
        );
        assert!(warnings.contains("a.yaml already defines it"), "{warnings}");
        assert!(
            warnings.contains("group @roles:io does not resolve: ")
                && warnings.contains("a.yaml:3: in group @roles:io: ")
                && warnings.contains("unknown node group \"r2\" in group source \"racks\""),
            "{warnings}"
        );
        assert_eq!(store.warnings().len(), 2, "{warnings}");
        let listed: Vec<String> = store
            .list()
            .iter()
            .map(|(s, g, set)| format!("{s}:{g}={set}"))
            .collect();
        assert_eq!(listed, ["racks:r1=n[1-2]", "roles:adm=n9", "cpu:ivy=n5"]);
    }

    #[test]
    fn without_a_state_file_the_default_is_clustershells() {
        let dir = TempDir::new("default");
        dir.write("cs/groups.d/a.yaml", "roles:\n  adm: n1\n");
        dir.write("cs/groups.d/b.yaml", "cpu:\n  all: n2\n");
        assert_eq!(dir.load().default_source(), Some("roles"));
        dir.write(
            "cs/groups.conf",
            "# comment\n[Main]\nDefault = cpu\nautodir: /x\n[cpu]\ndefault: roles\n",
        );
        let store = dir.load();
        assert_eq!(store.default_source(), Some("cpu"));
        assert_eq!(fold(&store, "@*"), "n2");
        // The Debian package's groups.conf names `local`, not a YAML source: ignored quietly.
        dir.write("cs/groups.conf", "[Main]\ndefault: local\n");
        let store = dir.load();
        assert_eq!(store.default_source(), Some("roles"));
        assert!(store.warnings().is_empty());
    }

    #[test]
    fn a_bad_state_file_fails_the_load_with_file_and_line() {
        let dir = TempDir::new("badstate");
        dir.write("state/groups.yaml", "roles:\n  adm: n1\n  io: 5\n");
        let err = dir.try_load().unwrap_err().to_string();
        let state = dir.0.join("state/groups.yaml");
        assert_eq!(
            err,
            format!(
                "{}:3: group roles:io: 5 is not a string (add quotes?); \
                 its value must be a node-set string or a list of them",
                state.display()
            )
        );
        std::fs::remove_file(&state).unwrap();
        std::fs::create_dir(&state).unwrap();
        let err = dir.try_load().unwrap_err().to_string();
        assert!(
            err.starts_with(&format!("cannot read group file {}: ", state.display())),
            "{err}"
        );
    }

    #[test]
    fn bad_site_files_are_skipped_and_reported_with_file_and_line() {
        let dir = TempDir::new("badsite");
        dir.write("cs/groups.d/a.yaml", "racks:\n  r1: n1\n  r2: [\n");
        dir.write("cs/groups.d/b.yaml", "cpu:\n  ivy: n5\n");
        let store = dir.load();
        let warnings = store.warnings().join("\n");
        let a = dir.0.join("cs/groups.d/a.yaml");
        assert!(
            warnings.starts_with(&format!("group file skipped: {}:4:", a.display())),
            "{warnings}"
        );
        assert_eq!(store.default_source(), Some("cpu"));
        assert_eq!(fold(&store, "@ivy"), "n5");
        let err = store.resolve("@racks:r1").unwrap_err();
        assert!(matches!(err, Error::Unloaded { .. }));
        let err = err.to_string();
        assert!(err.contains("unknown group source \"racks\""), "{err}");
        assert!(
            err.ends_with(&format!("(group files not loaded: {})", a.display())),
            "{err}"
        );
        // Errors that have nothing to do with missing groups are left alone.
        let err = store.resolve("n[1-").unwrap_err();
        assert!(matches!(err, Error::NodeSet(_)));
    }

    #[test]
    fn token_scopes_name_groups_with_or_without_source() {
        let dir = TempDir::new("scope");
        dir.write(
            "state/groups.yaml",
            "roles:\n  adm: n1\n  bad: '@nope'\nracks:\n  r1: 'n[2-3]'\n",
        );
        let store = dir.load();
        let fold = |name: &str| store.group(name).map(|s| s.fold());
        assert_eq!(fold("adm").as_deref(), Some("n1"));
        assert_eq!(fold("roles:adm").as_deref(), Some("n1"));
        assert_eq!(fold("racks:r1").as_deref(), Some("n[2-3]"));
        assert_eq!(fold("r1"), None);
        assert_eq!(fold("bad"), None);
        assert_eq!(fold("x:adm"), None);
    }

    #[test]
    fn reload_rereads_changed_files_only() {
        let dir = TempDir::new("reload");
        dir.write("state/groups.yaml", "roles:\n  adm: n1\n");
        let mut store = dir.load();
        assert!(!store.reload().unwrap());
        dir.write("state/groups.yaml", "roles:\n  adm: n[1-22]\n");
        assert!(store.reload().unwrap());
        assert_eq!(fold(&store, "@adm"), "n[1-22]");
        assert!(!store.reload().unwrap());
        dir.write("cs/groups.d/new.yaml", "racks:\n  r1: x1\n");
        assert!(store.reload().unwrap());
        assert_eq!(fold(&store, "@racks:r1"), "x1");
        // A broken state file keeps the groups loaded before, and is reported once.
        dir.write("state/groups.yaml", "roles:\n  adm: 'n[1-'\n  io: 5\n");
        let err = store.reload().unwrap_err().to_string();
        assert!(err.contains("groups.yaml:3: group roles:io"), "{err}");
        assert_eq!(fold(&store, "@adm"), "n[1-22]");
        assert!(!store.reload().unwrap());
        std::fs::remove_file(dir.0.join("state/groups.yaml")).unwrap();
        assert!(store.reload().unwrap());
        assert_eq!(store.default_source(), Some("racks"));
        assert!(store.resolve("@roles:adm").is_err());
    }

    #[test]
    fn reads_main_default_like_configparser() {
        assert_eq!(
            main_default("[Main]\ndefault: roles\n").as_deref(),
            Some("roles")
        );
        assert_eq!(
            main_default("[Main]\nDEFAULT =  x \n").as_deref(),
            Some("x")
        );
        assert_eq!(main_default("[Main]\ndefault:\n"), None);
        assert_eq!(main_default("[local]\ndefault: x\n"), None);
        assert_eq!(main_default("; c\n[Main]\n# default: y\n"), None);
        assert_eq!(
            main_default("[Main]\nconfdir: a\n  b\ndefault: z\n").as_deref(),
            Some("z")
        );
    }
}
