//! Node groups as ClusterShell keeps them: named *sources* (`roles`, `racks`, ...), each mapping
//! group names to node-set definitions, one source being the default. [`Groups`] is the resolver
//! that [`NodeSet::parse_with_groups`](crate::nodeset::NodeSet::parse_with_groups) reads `@group`,
//! `@source:group`, `@*` and `@source:*` terms from; [`Groups::from_yaml`] reads ClusterShell's YAML
//! group files (`groups.d/*.yaml`), text in and groups out, without touching the file system.
//!
//! Definitions are kept as text and resolved when an expression names them, as ClusterShell does:
//! a definition may name other groups (`@rack[1,3]`, `@roles:compute!@ivy`), a group's own source
//! being the default inside it. Cycles, unknown groups and oversized expansions are refused at
//! resolution time, with the file and line of the definition at fault.
//!
//! The YAML layout ClusterShell accepts, and so this module:
//!
//! ```yaml
//! roles:                      # a source: a map of group name -> definition
//!   adm: 'example0'           # a node-set string
//!   io: '@racks:rack2,x2'     # which may name groups of any source
//!   all: '@io,@adm'           # `all`, when present, is what `@roles:*` means
//! racks:
//!   rack1: 'example[0,2]'
//!   rack5:                    # or a list of node-set strings, joined by `,`
//!     - 'example[200-205]'
//!     - 'example245'
//! ```
//!
//! Whitespace inside a definition separates items as `,` does (ClusterShell splits definitions on
//! whitespace and joins the pieces with `,`). Values must be strings or lists of strings: an
//! unquoted `5`, `yes` or an empty value is refused with its line, where ClusterShell would fail
//! later, when the group is used (its PyYAML reads `yes`, `on`, `010` or `1_000` as non-strings, so
//! those are refused here too even though YAML 1.2 reads some of them as strings).

use std::borrow::Cow;
use std::cmp::Ordering;
use std::collections::BTreeMap;

use saphyr::{MarkedYaml, Scalar, ScalarStyle, ScanError, Tag, YamlData};

use crate::nodeset::{NodeSet, NodeSetError, Problem};

/// Name of the group that, when a source defines it, is what `@source:*` means.
pub const ALL_GROUP: &str = "all";

/// Node groups by source, with an optional default source.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Groups {
    /// In definition order: the first one read is the default unless told otherwise.
    sources: Vec<Source>,
    default: Option<String>,
}

/// One group source.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Source {
    pub(crate) name: String,
    /// Where the source was read from (a file name), for error messages.
    pub(crate) origin: Option<String>,
    pub(crate) groups: BTreeMap<String, Definition>,
}

/// A group's definition: a node-set expression, not yet resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Definition {
    pub(crate) text: String,
    /// 1-based line of the group's key in its file.
    pub(crate) line: Option<usize>,
}

/// What is wrong with a group file or a group definition.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GroupsError {
    /// The text is not valid YAML.
    #[error("{origin}:{line}:{column}: invalid YAML: {message}")]
    Yaml {
        origin: String,
        line: usize,
        column: usize,
        message: String,
    },
    /// Valid YAML, but not the layout of a ClusterShell group file.
    #[error("{origin}:{line}: {problem}")]
    Layout {
        origin: String,
        line: usize,
        problem: String,
    },
    /// A source or group name that node-set expressions could not name.
    #[error("invalid {what} name {name:?}: {why}")]
    Name {
        what: &'static str,
        name: String,
        why: String,
    },
    /// A source that is not defined.
    #[error("unknown group source {0:?}")]
    UnknownSource(String),
}

impl Groups {
    /// No sources, no default.
    pub fn new() -> Groups {
        Groups::default()
    }

    /// Reads a ClusterShell YAML group file. `origin` names it in error messages (a file name).
    /// The file's first source becomes the default. Empty text (or only comments) has no sources.
    pub fn from_yaml(text: &str, origin: &str) -> Result<Groups, GroupsError> {
        let docs = load_yaml(text).map_err(|e| GroupsError::Yaml {
            origin: origin.to_owned(),
            line: e.marker().line(),
            column: e.marker().col() + 1,
            message: e.info().to_owned(),
        })?;
        let layout = |node: &MarkedYaml<'_>, problem: String| GroupsError::Layout {
            origin: origin.to_owned(),
            line: node.span.start.line(),
            problem,
        };
        let mut groups = Groups::new();
        let root = match docs.as_slice() {
            [] => return Ok(groups),
            [root] => root,
            [_, second, ..] => {
                return Err(layout(
                    second,
                    "a group file holds one YAML document, this is a second one".to_owned(),
                ))
            }
        };
        let sources = match &root.data {
            YamlData::Mapping(map) => map,
            _ if is_null(root) => return Ok(groups),
            _ => {
                return Err(layout(
                    root,
                    "a group file is a map of group sources (source: {group: nodes})".to_owned(),
                ))
            }
        };
        for (key, value) in sources {
            let name = string_of(key)
                .map_err(|what| layout(key, format!("group source {what} is not a string")))?;
            check_name("group source", &name).map_err(|e| layout(key, e.to_string()))?;
            if groups.source(&name).is_some() {
                return Err(layout(
                    key,
                    format!("group source {name:?} is defined twice"),
                ));
            }
            let YamlData::Mapping(entries) = &value.data else {
                return Err(layout(
                    key,
                    format!("group source {name:?} is not a map of group name to node set"),
                ));
            };
            let mut source = Source {
                name: name.clone(),
                origin: Some(origin.to_owned()),
                groups: BTreeMap::new(),
            };
            for (gkey, gvalue) in entries {
                let group = string_of(gkey).map_err(|what| {
                    layout(
                        gkey,
                        format!("group name {what} is not a string (add quotes?)"),
                    )
                })?;
                check_name("group", &group).map_err(|e| layout(gkey, e.to_string()))?;
                let text = definition_of(gvalue)
                    .map_err(|why| layout(gvalue, format!("group {name}:{group}: {why}")))?;
                let line = Some(gkey.span.start.line());
                if source
                    .groups
                    .insert(group.clone(), Definition { text, line })
                    .is_some()
                {
                    return Err(layout(
                        gkey,
                        format!("group {name}:{group} is defined twice"),
                    ));
                }
            }
            groups.sources.push(source);
        }
        groups.default = groups.sources.first().map(|s| s.name.clone());
        Ok(groups)
    }

    /// Defines (or redefines) `group` in `source` as the node-set expression `nodes`, creating the
    /// source if needed; the first source created becomes the default. Whitespace in `nodes`
    /// separates items as `,` does, as in a group file.
    pub fn define(&mut self, source: &str, group: &str, nodes: &str) -> Result<(), GroupsError> {
        check_name("group source", source)?;
        check_name("group", group)?;
        let def = Definition {
            text: join_items([nodes]),
            line: None,
        };
        if let Some(existing) = self.sources.iter_mut().find(|s| s.name == source) {
            existing.groups.insert(group.to_owned(), def);
        } else {
            self.sources.push(Source {
                name: source.to_owned(),
                origin: None,
                groups: BTreeMap::from([(group.to_owned(), def)]),
            });
        }
        if self.default.is_none() {
            self.default = Some(source.to_owned());
        }
        Ok(())
    }

    /// Makes `source` the default, the one `@group` and `@*` read.
    pub fn set_default(&mut self, source: &str) -> Result<(), GroupsError> {
        if self.source(source).is_none() {
            return Err(GroupsError::UnknownSource(source.to_owned()));
        }
        self.default = Some(source.to_owned());
        Ok(())
    }

    /// The source `@group` and `@*` read, if any.
    pub fn default_source(&self) -> Option<&str> {
        self.default.as_deref()
    }

    /// Source names, in the order they were defined.
    pub fn sources(&self) -> impl Iterator<Item = &str> {
        self.sources.iter().map(|s| s.name.as_str())
    }

    /// Group names of `source` in name order, or `None` if there is no such source.
    pub fn group_names(&self, source: &str) -> Option<Vec<&str>> {
        self.source(source)
            .map(|s| s.groups.keys().map(String::as_str).collect())
    }

    /// A group's definition as written (items joined by `,`), unresolved.
    pub fn definition(&self, source: &str, group: &str) -> Option<&str> {
        self.source(source)?
            .groups
            .get(group)
            .map(|d| d.text.as_str())
    }

    /// Where `source` was read from, as given to [`Groups::from_yaml`].
    pub fn origin(&self, source: &str) -> Option<&str> {
        self.source(source)?.origin.as_deref()
    }

    pub fn is_empty(&self) -> bool {
        self.sources.is_empty()
    }

    /// Reads a node-set expression with these groups; the same as
    /// [`NodeSet::parse_with_groups`].
    pub fn resolve(&self, expr: &str) -> Result<NodeSet, NodeSetError> {
        NodeSet::parse_with_groups(expr, self)
    }

    /// The nodes of one group, its definition resolved.
    pub fn nodes(&self, source: &str, group: &str) -> Result<NodeSet, NodeSetError> {
        let expr = format!("@{source}:{group}");
        // Names are checked when defined, so a defined group reads back as this expression; an
        // undefined one must not be read as one (`source` could hold brackets or operators).
        let problem = match self.source(source) {
            None => Some(Problem::UnknownSource(source.to_owned())),
            Some(s) if !s.groups.contains_key(group) => {
                Some(Problem::UnknownGroup(source.to_owned(), group.to_owned()))
            }
            Some(_) => None,
        };
        if let Some(problem) = problem {
            return Err(NodeSetError::Syntax {
                expr,
                column: 1,
                problem,
            });
        }
        NodeSet::parse_with_groups(&expr, self)
    }

    /// Adds the sources of `other` that `self` does not define, whole: a source is never merged
    /// group by group, so one file's `roles` is never a mix of two files. Returns the names of the
    /// sources of `other` left out because `self` has them. The default stays `self`'s, or becomes
    /// `other`'s if `self` had none and that source was taken.
    pub fn absorb(&mut self, other: Groups) -> Vec<String> {
        let mut shadowed = Vec::new();
        for source in other.sources {
            if self.source(&source.name).is_some() {
                shadowed.push(source.name);
            } else {
                self.sources.push(source);
            }
        }
        if self.default.is_none() {
            self.default = other
                .default
                .filter(|d| !shadowed.contains(d))
                .or_else(|| self.sources.first().map(|s| s.name.clone()));
        }
        shadowed
    }

    pub(crate) fn source(&self, name: &str) -> Option<&Source> {
        self.sources.iter().find(|s| s.name == name)
    }
}

impl Source {
    /// The groups in the order ClusterShell lists them, which is the order it joins their
    /// definitions in when a source has no `all` group: `@source:*` is then read as
    /// `def1,def2,...` left to right, so that order decides the result when definitions use `!`,
    /// `&` or `^`.
    pub(crate) fn in_listing_order(&self) -> Vec<(&str, &Definition)> {
        let mut groups: Vec<_> = self
            .groups
            .iter()
            .map(|(name, def)| (name.as_str(), def))
            .collect();
        groups.sort_by(|a, b| listing_cmp(a.0, b.0));
        groups
    }
}

/// ClusterShell's order of node names (it lists group names as a node set): first by the name
/// with its digit runs blanked out (`rack%s`, compared as text, where the blank sorts before
/// letters and digits), then by the digit runs, shorter first, then as text.
fn listing_cmp(a: &str, b: &str) -> Ordering {
    fn split(name: &str) -> (String, Vec<&str>) {
        let mut pattern = String::new();
        let mut runs = Vec::new();
        let mut rest = name;
        while let Some(start) = rest.find(|c: char| c.is_ascii_digit()) {
            pattern.push_str(&rest[..start]);
            pattern.push_str("%s");
            let len = rest[start..]
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(rest.len() - start);
            runs.push(&rest[start..start + len]);
            rest = &rest[start + len..];
        }
        pattern.push_str(rest);
        (pattern, runs)
    }
    let (pa, ra) = split(a);
    let (pb, rb) = split(b);
    pa.cmp(&pb)
        .then_with(|| {
            let key = |r: &&str| (r.len(), r.to_string());
            ra.iter().map(key).cmp(rb.iter().map(key))
        })
        .then_with(|| a.cmp(b))
}

/// Source and group names are what an expression can name after `@`: letters, digits, `.`, `_`
/// and `-` (brackets would be read as ranges, `:` as the source separator).
fn check_name(what: &'static str, name: &str) -> Result<(), GroupsError> {
    let why = if name.is_empty() {
        Some("it is empty".to_owned())
    } else {
        name.chars()
            .find(|&c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
            .map(|c| format!("{c:?} cannot be written in a node-set expression"))
    };
    match why {
        None => Ok(()),
        Some(why) => Err(GroupsError::Name {
            what,
            name: name.to_owned(),
            why,
        }),
    }
}

/// ClusterShell splits a definition on whitespace and joins the pieces (and list items) with `,`.
fn join_items<'a>(items: impl IntoIterator<Item = &'a str>) -> String {
    let mut out = String::new();
    for piece in items.into_iter().flat_map(str::split_whitespace) {
        if !out.is_empty() {
            out.push(',');
        }
        out.push_str(piece);
    }
    out
}

fn load_yaml(text: &str) -> Result<Vec<MarkedYaml<'_>>, ScanError> {
    let mut parser = saphyr_parser::Parser::new_from_str(text);
    let mut loader = saphyr::YamlLoader::<MarkedYaml<'_>>::default();
    // Scalars stay as written so that quoted and plain ones can be told apart (see `string_of`).
    loader.early_parse(false);
    parser.load(&mut loader, true)?;
    if let Some(e) = loader.error() {
        return Err(e.clone());
    }
    Ok(loader.into_documents())
}

fn is_null(node: &MarkedYaml<'_>) -> bool {
    matches!(&node.data, YamlData::Representation(v, ScalarStyle::Plain, None)
        if matches!(v.as_ref(), "" | "~" | "null" | "Null" | "NULL"))
}

/// The string a scalar node holds, or a description of what it is instead.
fn string_of(node: &MarkedYaml<'_>) -> Result<String, String> {
    let (text, style, tag) = match &node.data {
        YamlData::Representation(text, style, tag) => (text, *style, tag),
        YamlData::Mapping(_) => return Err("(a map)".to_owned()),
        YamlData::Sequence(_) => return Err("(a list)".to_owned()),
        _ => return Err("(not a plain value)".to_owned()),
    };
    if let Some(tag) = tag {
        return if is_str_tag(tag) {
            Ok(text.to_string())
        } else {
            Err(format!("{text:?} (tagged {tag})"))
        };
    }
    if style != ScalarStyle::Plain {
        return Ok(text.to_string());
    }
    if text.is_empty() {
        return Err("(empty)".to_owned());
    }
    match Scalar::parse_from_cow(Cow::Borrowed(text.as_ref())) {
        Scalar::String(_) if !is_yaml11_non_string(text) => Ok(text.to_string()),
        _ => Err(text.to_string()),
    }
}

fn is_str_tag(tag: &Tag) -> bool {
    tag.is_yaml_core_schema() && tag.suffix == "str"
}

/// Plain scalars that YAML 1.2 reads as strings but YAML 1.1 (ClusterShell's PyYAML) does not:
/// its booleans, and integers with `_`, leading zeros or a `0b` prefix.
fn is_yaml11_non_string(text: &str) -> bool {
    const BOOLS: [&str; 18] = [
        "yes", "Yes", "YES", "no", "No", "NO", "true", "True", "TRUE", "false", "False", "FALSE",
        "on", "On", "ON", "off", "Off", "OFF",
    ];
    if BOOLS.contains(&text) {
        return true;
    }
    let digits = text.trim_start_matches(['+', '-']);
    let binary = digits
        .strip_prefix("0b")
        .is_some_and(|b| !b.is_empty() && b.chars().all(|c| matches!(c, '0' | '1' | '_')));
    let decimal = digits.starts_with(|c: char| c.is_ascii_digit())
        && digits.chars().all(|c| c.is_ascii_digit() || c == '_');
    binary || decimal
}

/// A group's value: a node-set string or a list of them.
fn definition_of(node: &MarkedYaml<'_>) -> Result<String, String> {
    let expect = "its value must be a node-set string or a list of them";
    match &node.data {
        YamlData::Sequence(items) => {
            let mut texts = Vec::with_capacity(items.len());
            for item in items {
                match string_of(item) {
                    Ok(text) => texts.push(text),
                    Err(what) => {
                        return Err(format!(
                            "list item {what} on line {} is not a string (add quotes?); {expect}",
                            item.span.start.line()
                        ))
                    }
                }
            }
            Ok(join_items(texts.iter().map(String::as_str)))
        }
        _ if is_null(node) => Err(format!(
            "it has no value (write '' for an empty group); {expect}"
        )),
        _ => match string_of(node) {
            Ok(text) => Ok(join_items([text.as_str()])),
            Err(what) => Err(format!("{what} is not a string (add quotes?); {expect}")),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = "\
# as in ClusterShell's cluster.yaml.example
roles:
    adm: 'example0'
    io: '@racks:rack2,example2'
    compute: '@racks:rack[3-4]'
    all: '@io,@compute'
racks:
    rack1: 'example[0,2]'
    rack2: example[4-5]
    rack5:
        - 'example[200-205]'  # a comment
        - 'example245'
        - 'example300 example[401-406]'
    empty: []
cpu:
    hsw: \"@roles:compute!@ivy\"
    ivy: |
      example[32-63]
";

    #[test]
    fn reads_sources_in_order_with_the_first_as_default() {
        let g = Groups::from_yaml(DOC, "cluster.yaml").unwrap();
        assert_eq!(g.sources().collect::<Vec<_>>(), ["roles", "racks", "cpu"]);
        assert_eq!(g.default_source(), Some("roles"));
        assert_eq!(
            g.group_names("racks").unwrap(),
            ["empty", "rack1", "rack2", "rack5"]
        );
        assert_eq!(g.definition("racks", "rack2"), Some("example[4-5]"));
        assert_eq!(g.definition("racks", "empty"), Some(""));
        assert_eq!(g.definition("cpu", "hsw"), Some("@roles:compute!@ivy"));
        assert_eq!(g.definition("cpu", "ivy"), Some("example[32-63]"));
        assert_eq!(g.origin("cpu"), Some("cluster.yaml"));
        assert!(g.group_names("nope").is_none());
    }

    #[test]
    fn list_items_and_whitespace_are_joined_with_commas() {
        let g = Groups::from_yaml(DOC, "f").unwrap();
        assert_eq!(
            g.definition("racks", "rack5"),
            Some("example[200-205],example245,example300,example[401-406]")
        );
        let mut g = Groups::new();
        g.define("s", "g", " n1  n2\tn3!n1 ").unwrap();
        assert_eq!(g.definition("s", "g"), Some("n1,n2,n3!n1"));
    }

    #[test]
    fn empty_files_have_no_groups() {
        for text in ["", "# nothing\n", "---\n", "~\n"] {
            let g = Groups::from_yaml(text, "f").unwrap();
            assert!(g.is_empty() && g.default_source().is_none(), "{text:?}");
        }
    }

    fn error(text: &str) -> String {
        Groups::from_yaml(text, "g.yaml").unwrap_err().to_string()
    }

    #[test]
    fn bad_files_are_refused_with_their_line() {
        let cases = [
            ("a: [", "g.yaml:"),
            (
                "- a\n- b\n",
                "g.yaml:1: a group file is a map of group sources",
            ),
            (
                "s:\n  g: n1\n---\nt: {}\n",
                "g.yaml:4: a group file holds one YAML document",
            ),
            ("s: n1\n", "g.yaml:1: group source \"s\" is not a map"),
            ("s:\n", "g.yaml:1: group source \"s\" is not a map"),
            (
                "s:\n  g: 5\n",
                "g.yaml:2: group s:g: 5 is not a string (add quotes?)",
            ),
            ("s:\n  g: yes\n", "g.yaml:2: group s:g: yes is not a string"),
            ("s:\n  g: 010\n", "g.yaml:2: group s:g: 010 is not a string"),
            ("s:\n  g:\n", "g.yaml:2: group s:g: it has no value"),
            (
                "s:\n  g: {a: b}\n",
                "g.yaml:2: group s:g: (a map) is not a string",
            ),
            (
                "s:\n  g:\n    - n1\n    - 3\n",
                "list item 3 on line 4 is not a string",
            ),
            ("s:\n  g:\n    - [n1]\n", "list item (a list) on line 3"),
            (
                "s:\n  1: n1\n",
                "g.yaml:2: group name 1 is not a string (add quotes?)",
            ),
            (
                "on:\n  g: n1\n",
                "g.yaml:1: group source on is not a string",
            ),
            (
                "s:\n  'rack[1-2]': n1\n",
                "g.yaml:2: invalid group name \"rack[1-2]\"",
            ),
            (
                "'a:b':\n  g: n1\n",
                "g.yaml:1: invalid group source name \"a:b\"",
            ),
            ("s:\n  g: n1\n  g: n2\n", "g.yaml:3:"),
            (
                "s:\n  g: n1\n  'g': n2\n",
                "g.yaml:3: group s:g is defined twice",
            ),
            ("s:\n  g: !!int n1\n", "tagged"),
        ];
        for (text, expect) in cases {
            let got = error(text);
            assert!(
                got.starts_with(expect) || got.contains(expect),
                "{text:?}: {got}"
            );
        }
        assert!(error("a: [").contains("invalid YAML"));
    }

    #[test]
    fn quoted_and_tagged_strings_are_strings() {
        let g = Groups::from_yaml("s:\n  a: '5'\n  b: !!str yes\n  c: \"on\"\n", "f").unwrap();
        assert_eq!(g.definition("s", "a"), Some("5"));
        assert_eq!(g.definition("s", "b"), Some("yes"));
        assert_eq!(g.definition("s", "c"), Some("on"));
    }

    #[test]
    fn anchors_and_aliases_are_read() {
        let g = Groups::from_yaml("s:\n  a: &x 'n[1-2]'\n  b: *x\n", "f").unwrap();
        assert_eq!(g.definition("s", "b"), Some("n[1-2]"));
    }

    #[test]
    fn define_and_default() {
        let mut g = Groups::new();
        assert!(g.define("bad:name", "g", "n1").is_err());
        assert!(g.define("s", "", "n1").is_err());
        g.define("s", "g", "n1").unwrap();
        g.define("t", "g", "n2").unwrap();
        assert_eq!(g.default_source(), Some("s"));
        g.set_default("t").unwrap();
        assert_eq!(g.default_source(), Some("t"));
        assert_eq!(
            g.set_default("u").unwrap_err().to_string(),
            "unknown group source \"u\""
        );
    }

    #[test]
    fn absorb_keeps_whole_sources_of_the_first() {
        let mut a = Groups::from_yaml("roles:\n  adm: n1\n", "a").unwrap();
        let b = Groups::from_yaml("racks:\n  r1: n2\nroles:\n  adm: n9\n  io: n3\n", "b").unwrap();
        assert_eq!(a.absorb(b), ["roles"]);
        assert_eq!(a.definition("roles", "adm"), Some("n1"));
        assert_eq!(a.definition("roles", "io"), None);
        assert_eq!(a.definition("racks", "r1"), Some("n2"));
        assert_eq!(a.default_source(), Some("roles"));
        let mut empty = Groups::new();
        empty.absorb(Groups::from_yaml("racks:\n  r1: n2\n", "b").unwrap());
        assert_eq!(empty.default_source(), Some("racks"));
    }

    // ---------------------------------------------------------------------------------------------
    // Resolution. Expected values are what ClusterShell 1.9's `nodeset -f` prints for the same file
    // (with `roles` as its default source).

    const SITE: &str = "\
roles:
    adm: 'example0'
    io: '@racks:rack2,example2'
    compute: '@racks:rack[3-4]'
    gpu: '@racks:rack4'
    all: '@io,@compute'
racks:
    rack1: 'example[0,2]'
    rack2: 'example[4-5]'
    rack3: 'example[32-40]'
    rack4: 'example[38-42]'
    old: '@rack[1,3]'
    new: '@rack[2,4]'
    rack5:
        - 'example[200-202]'
        - 'example245 example300'
cpu:
    ivy: 'example[32-35]'
    hsw: '@roles:compute!@ivy'
site:
    login: 'login[1-2]'
    svc: 'n[1-4] n[10-12]!n11'
    zz: 'n[20-21]!login1'
";

    fn site() -> Groups {
        Groups::from_yaml(SITE, "site.yaml").unwrap()
    }

    fn fold(groups: &Groups, expr: &str) -> String {
        match groups.resolve(expr) {
            Ok(set) => set.fold(),
            Err(e) => panic!("{expr}: {e}"),
        }
    }

    fn resolve_error(groups: &Groups, expr: &str) -> String {
        match groups.resolve(expr) {
            Ok(set) => panic!("{expr}: expected an error, got {set}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn group_forms_resolve_as_nodeset_does() {
        let g = site();
        let cases = [
            ("@compute", "example[32-42]"),
            ("@roles:io", "example[2,4-5]"),
            ("@racks:old", "example[0,2,32-40]"),
            ("@racks:new", "example[4-5,38-42]"),
            ("@cpu:hsw", "example[36-42]"),
            ("@racks:rack5", "example[200-202,245,300]"),
            ("@site:svc", "n[1-4,10,12]"),
            ("@:adm", "example0"),
            ("@racks:rack[1-2]&example[0-4]", "example[0,2,4]"),
            ("@racks:rack3^@racks:rack4", "example[32-37,41-42]"),
            ("@compute!@gpu", "example[32-37]"),
            ("@cpu:hsw,@racks:old&example[30-40]", "example[32-40]"),
            ("@@racks", "new,old,rack[1-5]"),
            ("@@", "adm,all,compute,gpu,io"),
        ];
        for (expr, expect) in cases {
            assert_eq!(fold(&g, expr), expect, "{expr}");
        }
    }

    #[test]
    fn all_nodes_are_the_all_group_or_every_group_read_in_order() {
        let g = site();
        // `roles` and `cpu`... `roles` has an `all` group: that is `@*`.
        assert_eq!(fold(&g, "@*"), "example[2,4-5,32-42]");
        assert_eq!(fold(&g, "@roles:*"), fold(&g, "@roles:all"));
        assert_eq!(
            fold(&g, "@racks:*"),
            "example[0,2,4-5,32-42,200-202,245,300]"
        );
        assert_eq!(fold(&g, "@cpu:*"), "example[32-42]");
        // `site` has no `all`: its definitions are joined in listing order (login, svc, zz) and
        // read left to right, so zz's `!login1` removes login1 although @site:login has it.
        assert_eq!(fold(&g, "@site:*"), "login2,n[1-4,10,12,20-21]");
        assert_eq!(fold(&g, "@site:login"), "login[1-2]");
    }

    #[test]
    fn wildcards_match_all_nodes_of_the_default_source() {
        let g = site();
        assert_eq!(fold(&g, "example3?"), "example[32-39]");
        assert_eq!(fold(&g, "example*"), "example[2,4-5,32-42]");
        assert_eq!(fold(&g, "example[0-4]*"), "example[2,4,32-42]");
        assert_eq!(fold(&g, "login*"), "");
        assert_eq!(fold(&g, "*!example[32-42]"), "example[2,4-5]");
        // Inside a definition, the wildcard reads the group's own source.
        let mut g = site();
        g.define("other", "all", "@site:login,n1").unwrap();
        g.define("other", "l", "log*").unwrap();
        assert_eq!(fold(&g, "@other:l"), "login[1-2]");
    }

    #[test]
    fn glob_semantics() {
        use crate::nodeset::NodeSet;
        let mut g = Groups::new();
        g.define("s", "all", "a,ab,abc,b,ba,a1b2").unwrap();
        let names = |e: &str| NodeSet::parse_with_groups(e, &g).unwrap().fold();
        assert_eq!(names("a*"), "a,a1b2,ab,abc");
        assert_eq!(names("a?"), "ab");
        assert_eq!(names("*b"), "ab,b");
        assert_eq!(names("*b*"), "a1b2,ab,abc,b,ba");
        assert_eq!(names("a*b?"), "a1b2,abc");
        assert_eq!(names("?"), "a,b");
    }

    #[test]
    fn unknown_groups_and_sources_are_named() {
        let g = site();
        let cases = [
            (
                "@nope",
                "unknown node group \"nope\" in group source \"roles\" at column 1",
            ),
            (
                "n1,@racks:nope",
                "unknown node group \"nope\" in group source \"racks\" at column 4",
            ),
            (
                "@rack1",
                "unknown node group \"rack1\" in group source \"roles\" at column 1",
            ),
            ("@foo:x", "unknown group source \"foo\" at column 1"),
            ("@foo:*", "unknown group source \"foo\""),
            ("@@foo", "unknown group source \"foo\""),
            ("@", "@ without a group name at column 2"),
            ("@roles:", "@ without a group name"),
            ("@ro%", "invalid character '%' at column 4"),
        ];
        for (expr, expect) in cases {
            let got = resolve_error(&g, expr);
            assert!(got.contains(expect), "{expr}: {got}");
        }
        assert!(g.resolve("@nope").unwrap_err().is_unknown_group());
        assert!(g.resolve("@foo:x").unwrap_err().is_unknown_group());
        assert!(!g.resolve("n[").unwrap_err().is_unknown_group());
        let err = g.nodes("racks", "nope").unwrap_err();
        assert!(err.is_unknown_group(), "{err}");
        assert_eq!(
            g.nodes("racks", "old").unwrap().fold(),
            "example[0,2,32-40]"
        );
    }

    #[test]
    fn without_a_default_source_only_qualified_groups_resolve() {
        let mut g = Groups::new();
        assert!(resolve_error(&g, "@x")
            .ends_with("no default group source (write @source:group) at column 1"));
        assert!(resolve_error(&g, "@*").contains("no default group source"));
        assert!(resolve_error(&g, "n*").contains("no default group source"));
        assert!(g.resolve("@*").unwrap_err().is_unknown_group());
        g.absorb(Groups::new());
        assert_eq!(g.default_source(), None);
    }

    #[test]
    fn errors_in_definitions_name_the_group_file_and_line() {
        let text = "s:\n  ok: n1\n  bad: 'n[1-'\n  refers: '@bad,n2'\n  ghost: '@nobody'\n";
        let g = Groups::from_yaml(text, "groups.yaml").unwrap();
        assert_eq!(
            resolve_error(&g, "@refers"),
            "groups.yaml:3: in group @s:bad: invalid node set \"n[1-\": unclosed bracket at column 2"
        );
        assert_eq!(
            resolve_error(&g, "@ghost"),
            "groups.yaml:5: in group @s:ghost: invalid node set \"@nobody\": \
             unknown node group \"nobody\" in group source \"s\" at column 1"
        );
        assert!(g.resolve("@ghost").unwrap_err().is_unknown_group());
        // Other groups still resolve.
        assert_eq!(fold(&g, "@ok"), "n1");
        let mut g = Groups::new();
        g.define("s", "f", "@/etc/hosts").unwrap();
        assert!(resolve_error(&g, "@f").ends_with("@file terms are not allowed here at column 1"));
    }

    #[test]
    fn cycles_are_refused() {
        let text = "s:\n  a: '@b'\n  b: 'n1,@c'\n  c: '@s:a'\n  me: 'n1,@me'\n";
        let g = Groups::from_yaml(text, "g.yaml").unwrap();
        assert_eq!(
            resolve_error(&g, "@a"),
            "g.yaml:4: in group @s:c: invalid node set \"@s:a\": \
             groups name each other in a cycle: @s:a -> @s:b -> @s:c -> @s:a at column 1"
        );
        assert!(resolve_error(&g, "@me").contains("cycle: @s:me -> @s:me"));
        // A wildcard in a definition reads all nodes of its source, which read every definition
        // of the source, including the wildcard's. ClusterShell reads such a wildcard as a name
        // (`log*`) while it computes all nodes; refusing it is clearer.
        let mut g = Groups::new();
        g.define("s", "login", "login[1-2]").unwrap();
        g.define("s", "wild", "log*").unwrap();
        assert!(resolve_error(&g, "@wild").contains("cycle: @s:* -> @s:*"));
        let mut g = Groups::new();
        g.define("s", "all", "@x").unwrap();
        g.define("s", "x", "@*").unwrap();
        assert!(resolve_error(&g, "@*").contains("cycle: @s:all -> @s:x -> @s:all"));
    }

    #[test]
    fn deep_nesting_is_refused() {
        let mut g = Groups::new();
        for i in 0..100 {
            g.define("s", &format!("g{i}"), &format!("@g{}", i + 1))
                .unwrap();
        }
        g.define("s", "g100", "n1").unwrap();
        assert!(resolve_error(&g, "@g0").contains("groups nest more than 64 levels deep"));
        assert_eq!(fold(&g, "@g40"), "n1");
    }

    #[test]
    fn expansion_limits_count_through_groups() {
        // Each mention of a group counts its names, as if its definition were written in place,
        // and the error names the expression typed.
        let mut g = Groups::new();
        g.define("s", "big", "n[1-600000]").unwrap();
        g.define("s", "twice", "@big,@big").unwrap();
        g.define("s", "small", "n[1-2]").unwrap();
        assert_eq!(
            resolve_error(&g, "x,@twice"),
            "invalid node set \"x,@twice\": expands to more than 1000000 names"
        );
        assert!(resolve_error(&g, "@big,@big").ends_with("expands to more than 1000000 names"));
        assert!(resolve_error(&g, "@small,n[1-999999]").ends_with("more than 1000000 names"));
        assert_eq!(g.resolve("@big,n[1-400000]").unwrap().len(), 600_000);
        // A group mentioned 2^40 times through nesting is resolved once per group, not once per
        // mention, so this takes microseconds where expanding it would never end.
        let mut g = Groups::new();
        for i in 0..40 {
            g.define("s", &format!("g{i}"), &format!("@g{0},@g{0}", i + 1))
                .unwrap();
        }
        g.define("s", "g40", "n[1-2]").unwrap();
        assert_eq!(fold(&g, "@g0"), "n[1-2]");
        // Brackets in a group term name several groups.
        assert!(resolve_error(&g, "@s:g[39-41]").contains("unknown node group \"g41\""));
        assert_eq!(fold(&g, "@g[39-40]"), "n[1-2]");
    }

    #[test]
    fn groups_and_files_together() {
        use crate::nodeset::NodeSet;
        let g = site();
        let path = std::env::temp_dir().join(format!("banyan-groups-{}.txt", std::process::id()));
        std::fs::write(&path, "@adm\nn[1-3]!n2\n").unwrap();
        let expr = format!("@{},@io", path.display());
        let got = NodeSet::parse_with_groups_and_files(&expr, &g).map(|s| s.fold());
        let refused = NodeSet::parse_with_groups(&expr, &g).map(|s| s.fold());
        let _ = std::fs::remove_file(&path);
        assert_eq!(got.unwrap(), "example[0,2,4-5],n[1,3]");
        assert!(refused
            .unwrap_err()
            .to_string()
            .ends_with("@file terms are not allowed here at column 1"));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(512))]

        #[test]
        fn any_expression_resolves_or_errs_without_panicking(
            expr in "[abc01*?:@,!&^\\[\\]-]{0,20}"
        ) {
            let mut g = Groups::new();
            for (source, group, def) in [
                ("a", "a", "b[0-1],@b"),
                ("a", "b", "a1!@c"),
                ("a", "c", "@b:a^c0"),
                ("b", "a", "@a:*&a*"),
                ("b", "b", "@b"),
            ] {
                g.define(source, group, def).unwrap();
            }
            if let Ok(set) = g.resolve(&expr) {
                proptest::prop_assert_eq!(NodeSet::parse(&set.fold()).ok(), Some(set));
            }
        }
    }

    #[test]
    fn listing_order_is_clustershells() {
        let mut g = Groups::new();
        for name in [
            "rack10", "rack2", "old", "a-1", "a1", "ab", "a1b", "b1a10", "b2a1", "b1a2",
        ] {
            g.define("s", name, "n1").unwrap();
        }
        let order: Vec<_> = g
            .source("s")
            .unwrap()
            .in_listing_order()
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        // As `nodeset -e` lists these names.
        assert_eq!(
            order,
            ["a1", "a1b", "a-1", "ab", "b1a2", "b1a10", "b2a1", "old", "rack2", "rack10"]
        );
    }
}
