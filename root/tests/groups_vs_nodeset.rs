//! banyan reads node-set expressions with groups exactly as ClusterShell's `nodeset` does: the
//! same group files, given to the real `nodeset` (through a private `CLUSTERSHELL_CFGDIR`) and to
//! the root's [`RootGroups`], expand every expression of a list to the same names.
//!
//! The `nodeset` binary is required (Debian: `apt-get install clustershell`); without it the test
//! fails, it does not skip.

use std::path::{Path, PathBuf};
use std::process::Command;

use banyan_root::groups::RootGroups;

/// Shaped like ClusterShell's `groups.d/cluster.yaml.example`: several sources, ranges, groups
/// naming groups of their own source (`@rack[1,3]`) and of others (`@roles:compute!@ivy`), lists,
/// and an `all` group.
const CLUSTER_YAML: &str = "\
# ClusterShell groups config cluster.yaml
roles:
    adm: 'example0'
    io: '@racks:rack2,example2'
    compute: '@racks:rack[3-4]'
    gpu: '@racks:rack4'
    # only io and compute nodes are `@roles:*`
    all: '@io,@compute'

racks:
    rack1: 'example[0,2]'
    rack2: 'example[4-5]'
    rack3: 'example[32-159]'
    rack4: 'example[156-159]'
    old: '@rack[1,3]'
    new: '@rack[2,4]'
    rack5:
        - 'example[200-205]'  # some comment about example[200-205]
        - 'example245'
        - 'example300,example[401-406]'

cpu:
    ivy: 'example[32-63]'
    hsw: '@roles:compute!@ivy'
";

/// A second file, read first (by name): a source without `all`, whose definitions use `!` and
/// whitespace, so that `@site:*` shows how ClusterShell joins them.
const SITE_YAML: &str = "\
site:
    login: 'login[1-2]'
    svc: 'svc[1-4] svc[10-12]!svc11'
    mgmt: mgmt[01-03]
    zz: 'svc[20-21]!login1'
";

/// Every operator, every group form, and mixes of them.
const EXPRESSIONS: &[&str] = &[
    "@compute",
    "@adm",
    "@gpu",
    "@roles:io",
    "@roles:all",
    "@:adm",
    "@racks:rack[1-3]",
    "@racks:old",
    "@racks:new",
    "@racks:rack5",
    "@cpu:hsw",
    "@cpu:ivy",
    "@site:svc",
    "@*",
    "@roles:*",
    "@racks:*",
    "@cpu:*",
    "@site:*",
    "@racks:rack3!@racks:rack4",
    "@racks:rack3&@racks:rack4",
    "@racks:rack3^@racks:rack4",
    "@racks:*!@compute,example0",
    "example[0-10]&@racks:*",
    "example[30-40]!@cpu:ivy^example[60-70]",
    "@compute,@io!example[32-40]",
    "@racks:rack[1-2],@racks:rack5!example201",
    "@racks:rack[1,3-4]&example[0-100/2]",
    "@site:login^@site:zz",
    "@site:mgmt,@site:svc&svc[1-3]",
    "mgmt0[1-4]!@site:mgmt",
    " @io , @adm ",
    "n[1-5]!n3,n3",
    "n[1-5]&n[2-3],n9",
    "n[1-10]^n[5-15]!n1",
    "example3?",
    "example1*&@gpu",
    "@@racks",
];

/// A directory under the temp dir, removed with everything in it when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        let path =
            std::env::temp_dir().join(format!("banyan-groups-vs-nodeset-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        for sub in ["cs/groups.d", "state", "empty-state", "home"] {
            std::fs::create_dir_all(path.join(sub)).expect("cannot create the test directory");
        }
        TempDir(path)
    }

    fn write(&self, rel: &str, text: &str) {
        std::fs::write(self.0.join(rel), text).expect("cannot write a test file");
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs the real `nodeset`, isolated from the user's own ClusterShell configuration.
fn nodeset(dir: &Path, args: &[&str]) -> std::process::Output {
    Command::new("nodeset")
        .args(args)
        .env("CLUSTERSHELL_CFGDIR", dir.join("cs"))
        .env("HOME", dir.join("home"))
        .env("XDG_CONFIG_HOME", dir.join("home"))
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "this test needs ClusterShell's `nodeset` binary and cannot run it ({e}); \
                 install it (Debian: apt-get install clustershell)"
            )
        })
}

#[test]
fn banyan_expands_groups_and_operators_as_nodeset_does() {
    let dir = TempDir::new();
    let version = nodeset(&dir.0, &["--version"]);
    assert!(
        version.status.success(),
        "`nodeset --version` failed: {}",
        String::from_utf8_lossy(&version.stderr)
    );

    // ClusterShell 1.9 finds YAML sources in the `autodir` directories of `[Main]` in
    // groups.conf; `$CLUSTERSHELL_CFGDIR/groups.conf` is read last, so its `[Main]` options win
    // over /etc/clustershell's. `confdir` is emptied so that no upcall source is read from here.
    let groups_d = dir.0.join("cs/groups.d");
    dir.write(
        "cs/groups.conf",
        &format!(
            "[Main]\ndefault: roles\nconfdir:\nautodir: {}\n",
            groups_d.display()
        ),
    );
    dir.write("cs/groups.d/cluster.yaml", CLUSTER_YAML);
    dir.write("cs/groups.d/00-site.yaml", SITE_YAML);
    dir.write("state/groups.yaml", CLUSTER_YAML);

    // Two ways banyan gets the same groups: from groups.d alone (the default, `roles`, then comes
    // from groups.conf, `site` being the first source read), and with the cluster file in the
    // state dir (whose first source, `roles`, is the default).
    let from_groups_d = RootGroups::load_from(&dir.0.join("empty-state"), &dir.0.join("cs"))
        .expect("groups.d alone loads");
    let from_state_dir = RootGroups::load_from(&dir.0.join("state"), &dir.0.join("cs"))
        .expect("state dir and groups.d load");
    for (what, store) in [("groups.d", &from_groups_d), ("state dir", &from_state_dir)] {
        assert!(
            store.warnings().is_empty(),
            "{what}: {:?}",
            store.warnings()
        );
        assert_eq!(store.default_source(), Some("roles"), "{what}");
    }

    let mut mismatches = Vec::new();
    for expr in EXPRESSIONS {
        let out = nodeset(&dir.0, &["-e", expr]);
        assert!(
            out.status.success(),
            "nodeset -e {expr:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let expected: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .map(str::to_owned)
            .collect();
        assert!(
            !expected.is_empty() || expr.contains('!') || expr.contains('&'),
            "{expr}: nodeset found nothing; the test file is wrong"
        );
        for (what, store) in [("groups.d", &from_groups_d), ("state dir", &from_state_dir)] {
            let got: Vec<String> = match store.resolve(expr) {
                Ok(set) => set.iter().map(str::to_owned).collect(),
                Err(e) => {
                    mismatches.push(format!("{what}: {expr:?}: banyan refused it: {e}"));
                    continue;
                }
            };
            // Same names in the same order: ClusterShell's order agrees with banyan's natural
            // order for names that do not mix zero-padded and unpadded numbers, as here.
            if got != expected {
                mismatches.push(format!(
                    "{what}: {expr:?}:\n  nodeset: {}\n  banyan:  {}",
                    expected.join(" "),
                    got.join(" ")
                ));
            }
        }
    }
    assert!(
        mismatches.is_empty(),
        "{} of {} expressions differ:\n{}",
        mismatches.len(),
        EXPRESSIONS.len(),
        mismatches.join("\n")
    );
}
