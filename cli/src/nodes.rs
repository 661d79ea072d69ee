//! How the CLI reads a NODESET argument. Three kinds of terms, each read where it can be:
//!
//! - plain names and brackets (`cn[1-4],gpu1`): here;
//! - files (`@/etc/banyan/compute`, `@./hosts.txt`, any `@` followed by `/` or `.`): here, since
//!   only this host has them;
//! - groups (`@compute`, `@racks:r1`, `@*`) and wildcards (`cn*`): at the root, which holds the
//!   group files (`GET /nodeset?expr=`).
//!
//! A file in the working directory may also be written as openstack-hlt-manage takes it,
//! `@list.txt`: an `@` term with a dot in its name that names an existing file here is read as
//! that file (`@./list.txt`); otherwise it is a group, as always.
//!
//! An expression with groups but no file goes to the root whole, so ClusterShell's operators
//! (`,` `!` `&` `^`, left to right) mean there exactly what they mean in ClusterShell. Only an
//! expression that mixes files with groups is split into terms here and combined left to right
//! the same way.

use banyan_protocol::nodeset::NodeSet;

use crate::api::{CliError, Client};

/// Resolves group terms: the root in production, a map in tests.
pub trait GroupResolver {
    /// The nodes `expr` names, `@group` terms included.
    fn resolve(&self, expr: &str) -> Result<NodeSet, CliError>;
}

impl GroupResolver for Client {
    fn resolve(&self, expr: &str) -> Result<NodeSet, CliError> {
        let r = self
            .get_query("/nodeset", &[("expr", expr)])
            .map_err(|e| match e {
                CliError::Unreachable { url, detail } => CliError::Unreachable {
                    url,
                    detail: format!(
                        "{detail}; groups (@name) are known only to the root, so {expr:?} cannot be resolved without it"
                    ),
                },
                other => other,
            })?;
        let names = r["nodes"].as_array().ok_or_else(|| CliError::BadAnswer {
            url: format!("{}/nodeset", self.base()),
            status: 200,
            detail: "no \"nodes\" list".into(),
        })?;
        Ok(NodeSet::from_names(
            names.iter().filter_map(|n| n.as_str().map(str::to_string)),
        ))
    }
}

/// One term of an expression and the operator before it (`,` for the first).
fn terms(expr: &str) -> Vec<(char, &str)> {
    let mut out = Vec::new();
    let (mut depth, mut start, mut op) = (0usize, 0usize, ',');
    for (i, c) in expr.char_indices() {
        match c {
            '[' => depth += 1,
            ']' => depth = depth.saturating_sub(1),
            ',' | '!' | '&' | '^' if depth == 0 => {
                out.push((op, expr[start..i].trim()));
                op = c;
                start = i + c.len_utf8();
            }
            _ => {}
        }
    }
    out.push((op, expr[start..].trim()));
    out
}

fn is_file_term(term: &str) -> bool {
    term.starts_with("@/") || term.starts_with("@.")
}

fn is_group_term(term: &str) -> bool {
    (term.starts_with('@') && !is_file_term(term)) || term.contains(['*', '?'])
}

/// Whether reading `expr` needs the root (it names a group or a wildcard).
pub fn needs_root(expr: &str) -> bool {
    terms(expr).iter().any(|(_, t)| is_group_term(t))
}

/// Whether `expr` names a file, which only this host can read.
pub fn has_files(expr: &str) -> bool {
    terms(expr).iter().any(|(_, t)| is_file_term(t))
}

/// `expr` with each `@name.ext` term that names a file in the working directory written as
/// that file (`@./name.ext`).
fn local_files(expr: &str) -> String {
    local_files_in(expr, std::path::Path::new("."))
}

/// [`local_files`] with `dir` as the working directory.
fn local_files_in(expr: &str, dir: &std::path::Path) -> String {
    let mut out = String::with_capacity(expr.len());
    for (i, (op, term)) in terms(expr).into_iter().enumerate() {
        if i > 0 {
            out.push(op);
        }
        match term.strip_prefix('@') {
            Some(name)
                if !is_file_term(term)
                    && name.contains('.')
                    && !name.contains(':')
                    && dir.join(name).is_file() =>
            {
                out.push_str("@./");
                out.push_str(name);
            }
            _ => out.push_str(term),
        }
    }
    out
}

/// The set `expr` names: here when it can be, at the root for its groups.
pub fn resolve(expr: &str, groups: &dyn GroupResolver) -> Result<NodeSet, CliError> {
    let expr = &local_files(expr);
    let usage = |e: banyan_protocol::nodeset::NodeSetError| CliError::Usage(e.to_string());
    if !needs_root(expr) {
        return NodeSet::parse_with_files(expr).map_err(usage);
    }
    if !has_files(expr) {
        return groups.resolve(expr);
    }
    let mut set = NodeSet::new();
    for (op, term) in terms(expr) {
        if term.is_empty() {
            continue;
        }
        let part = if is_group_term(term) {
            groups.resolve(term)?
        } else {
            NodeSet::parse_with_files(term).map_err(usage)?
        };
        set = match op {
            '!' => set.difference(&part),
            '&' => set.intersection(&part),
            '^' => set.difference(&part).union(&part.difference(&set)),
            _ => set.union(&part),
        };
    }
    Ok(set)
}

/// What to send the root as an action's `nodes`: the expression as written (the root resolves
/// groups and checks the whole of it), unless it names files, whose names are read here.
pub fn for_root(expr: &str, groups: &dyn GroupResolver) -> Result<String, CliError> {
    if expr.trim().is_empty() {
        return Err(CliError::Usage("empty node set".into()));
    }
    let expr = &local_files(expr);
    if !has_files(expr) {
        return Ok(expr.trim().to_string());
    }
    let set = resolve(expr, groups)?;
    if set.is_empty() {
        return Err(CliError::Usage(format!("{expr:?} names no node")));
    }
    Ok(set.fold())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;
    use std::collections::BTreeMap;

    /// Groups from a map, recording what was asked.
    #[derive(Default)]
    pub(crate) struct MapGroups {
        pub(crate) groups: BTreeMap<String, String>,
        pub(crate) asked: RefCell<Vec<String>>,
    }

    impl GroupResolver for MapGroups {
        fn resolve(&self, expr: &str) -> Result<NodeSet, CliError> {
            self.asked.borrow_mut().push(expr.to_string());
            let mut set = NodeSet::new();
            for (_, t) in terms(expr) {
                let nodes = self.groups.get(t).ok_or_else(|| CliError::BadRequest {
                    error: "unknown group".into(),
                    detail: format!(": {t}"),
                })?;
                set.extend(NodeSet::parse(nodes).unwrap());
            }
            Ok(set)
        }
    }

    fn groups() -> MapGroups {
        MapGroups {
            groups: [("@compute", "cn[1-8]"), ("@gpu", "gpu[1-2]")]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..MapGroups::default()
        }
    }

    #[test]
    fn terms_split_at_operators_outside_brackets() {
        assert_eq!(
            terms("cn[1,3-4]!@gpu&@./f,x"),
            [(',', "cn[1,3-4]"), ('!', "@gpu"), ('&', "@./f"), (',', "x")]
        );
    }

    #[test]
    fn an_hlt_style_list_file_is_read_here_and_a_group_stays_a_group() {
        let dir = std::env::temp_dir().join(format!("banyan-nodes-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("hlt.txt"), "# drained today\ncn1\n\ncn3  # disk\n").unwrap();
        let rewritten = local_files_in("@hlt.txt,@gpu!@nothere.txt&@racks:r1.x", &dir);
        let g = groups();
        let read = for_root(&format!("@{}/hlt.txt", dir.display()), &g);
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(rewritten, "@./hlt.txt,@gpu!@nothere.txt&@racks:r1.x");
        assert_eq!(read.unwrap(), "cn[1,3]");
    }

    #[test]
    fn plain_and_file_sets_never_ask_the_root() {
        let g = groups();
        assert_eq!(resolve("cn[1-3]", &g).unwrap().fold(), "cn[1-3]");
        assert_eq!(for_root("cn[1-3]", &g).unwrap(), "cn[1-3]");
        assert!(g.asked.borrow().is_empty());
    }

    #[test]
    fn group_expressions_go_to_the_root_whole() {
        let g = groups();
        assert!(needs_root("@compute,@gpu"));
        assert!(needs_root("cn*"));
        assert!(!needs_root("@./hosts"));
        assert_eq!(
            resolve("@compute,@gpu", &g).unwrap().fold(),
            "cn[1-8],gpu[1-2]"
        );
        assert_eq!(*g.asked.borrow(), ["@compute,@gpu"]);
        // An action sends the expression itself; the root resolves and scopes it.
        assert_eq!(for_root("@compute!cn3", &g).unwrap(), "@compute!cn3");
    }

    #[test]
    fn files_are_read_here_and_groups_asked_term_by_term() {
        let dir = std::env::temp_dir().join(format!("banyan-cli-nodes-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("down");
        std::fs::write(&file, "cn2\ncn[5-6]\n").unwrap();
        let g = groups();
        let expr = format!("@compute!@{}", file.display());
        assert_eq!(resolve(&expr, &g).unwrap().fold(), "cn[1,3-4,7-8]");
        assert_eq!(*g.asked.borrow(), ["@compute"]);
        assert_eq!(for_root(&expr, &g).unwrap(), "cn[1,3-4,7-8]");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_unknown_group_is_a_usage_error() {
        let e = resolve("@nope", &groups()).unwrap_err();
        assert_eq!(e.exit_code(), 2);
        assert!(for_root("  ", &groups()).is_err());
    }
}
