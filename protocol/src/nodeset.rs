//! Node-set expressions as ClusterShell's `nodeset` and pdsh write them: `cn[43-45,47]`, `n[001-128]`,
//! `r[1-2]n[1-4]-ib`, `[1-10/2]`, and ClusterShell's operators `,` (union), `!` (difference), `&`
//! (intersection) and `^` (symmetric difference), applied left to right with no precedence, as
//! `nodeset` does: `n[1-5]!n3,n3` is `n[1-5]`, `n1,n2&n2` is `n2`. [`NodeSet`] is an ordered set of
//! host names in natural order (`n2` before `n10`); [`NodeSet::fold`] writes it back in its shortest
//! canonical bracket form.
//!
//! `@` terms name node groups or files, and only where the caller allows them:
//! - [`NodeSet::parse`] takes neither, so it does no I/O and knows no groups;
//! - [`NodeSet::parse_with_groups`] reads `@group`, `@source:group`, `@*` (all nodes of the default
//!   source), `@source:*`, `@@source` (group names) and `*`/`?` wildcards (matched against `@*`)
//!   from a [`Groups`] resolver; see [`crate::groups`];
//! - [`NodeSet::parse_with_files`] reads `@/absolute/path` and `@./relative/path` (any `@` followed
//!   by `/` or `.`) as files of node names; every other `@name` is a group, so `@nodes.txt` is
//!   refused with a hint to write `@./nodes.txt`, and a group can never be mistaken for a file;
//! - [`NodeSet::parse_with_groups_and_files`] takes both.
//!
//! Expressions come from operators and files, so parsing treats them as hostile: malformed brackets,
//! reversed ranges, missing operands and expansions past [`MAX_NAMES`] (counted through groups too)
//! are refused with an error that says what is wrong and at which column, before anything large is
//! allocated. Group definitions that name each other in a cycle are refused, not followed.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::{self, Write as _};
use std::str::FromStr;

use crate::groups::{Definition, Groups, Source, ALL_GROUP};

/// Most names one expression may expand to (sum over all its terms, before duplicates are merged).
pub const MAX_NAMES: u64 = 1_000_000;

/// Deepest nesting of groups in group definitions. Deeper chains are refused rather than followed
/// until the stack overflows; real group files nest two or three levels.
pub const MAX_GROUP_DEPTH: usize = 64;

/// Most pattern-against-name comparisons one wildcard term may cost (patterns times the nodes of
/// `@*`): a bracket of a thousand patterns against a million nodes would take minutes.
const MAX_WILDCARD_WORK: u64 = 64 * MAX_NAMES;

/// Longest digit string read as a number, in brackets and when folding. 18 digits always fit a `u64`
/// with room for `+ 1`; longer digit runs in names are kept verbatim as text.
const MAX_DIGITS: usize = 18;

/// An ordered set of node names.
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct NodeSet {
    names: BTreeSet<NodeName>,
}

/// A node name ordered naturally: digit runs compare by value, so `n2 < n10`.
#[derive(Clone, PartialEq, Eq, Hash)]
struct NodeName(String);

impl Ord for NodeName {
    fn cmp(&self, other: &Self) -> Ordering {
        natural_cmp(&self.0, &other.0)
    }
}

impl PartialOrd for NodeName {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// What is wrong with an expression.
#[derive(Debug, thiserror::Error)]
pub enum NodeSetError {
    /// The expression is malformed; `column` is 1-based, in characters.
    #[error("invalid node set {expr:?}: {problem} at column {column}")]
    Syntax {
        expr: String,
        column: usize,
        problem: Problem,
    },
    /// The expression would expand to more than [`MAX_NAMES`] names.
    #[error("invalid node set {expr:?}: expands to more than {limit} names")]
    TooLarge { expr: String, limit: u64 },
    /// An `@path` term names a file that cannot be read.
    #[error("cannot read node file {path:?}: {source}")]
    File {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// A line of an `@path` file is malformed.
    #[error("{path}:{line}: {source}")]
    InFile {
        path: String,
        line: usize,
        #[source]
        source: Box<NodeSetError>,
    },
    /// The definition of `group` (`@source:name`) is wrong: malformed, or naming an unknown group
    /// or a cycle. `origin` and `line` say where it was defined, when it came from a file.
    #[error("{}in group {group}: {source}", location(.origin.as_deref(), *.line))]
    InGroup {
        group: String,
        origin: Option<String>,
        line: Option<usize>,
        #[source]
        source: Box<NodeSetError>,
    },
}

/// `file:line: ` (or less) in front of a message about a group definition.
fn location(origin: Option<&str>, line: Option<usize>) -> String {
    match (origin, line) {
        (Some(origin), Some(line)) => format!("{origin}:{line}: "),
        (Some(origin), None) => format!("{origin}: "),
        (None, Some(line)) => format!("line {line}: "),
        (None, None) => String::new(),
    }
}

impl NodeSetError {
    /// Whether the error is (or comes from) a group or group source that does not exist, or the
    /// lack of a default source: what a missing or unreadable group file would cause.
    pub fn is_unknown_group(&self) -> bool {
        match self {
            NodeSetError::Syntax { problem, .. } => matches!(
                problem,
                Problem::UnknownGroup(..) | Problem::UnknownSource(_) | Problem::NoDefaultSource
            ),
            NodeSetError::InFile { source, .. } | NodeSetError::InGroup { source, .. } => {
                source.is_unknown_group()
            }
            NodeSetError::TooLarge { .. } | NodeSetError::File { .. } => false,
        }
    }
}

/// The kind of syntax error in a [`NodeSetError::Syntax`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    #[error("unclosed bracket")]
    UnclosedBracket,
    #[error("unmatched closing bracket")]
    UnmatchedBracket,
    #[error("nested bracket")]
    NestedBracket,
    #[error("empty brackets")]
    EmptyBrackets,
    #[error("empty range")]
    EmptyRange,
    #[error("invalid character {0:?}")]
    InvalidChar(char),
    #[error("missing number")]
    MissingNumber,
    #[error("{0:?} is not a number")]
    NotANumber(String),
    #[error("number {0:?} is too large")]
    NumberTooLarge(String),
    #[error("reversed range {0}-{1}")]
    ReversedRange(String, String),
    #[error("step must be at least 1")]
    ZeroStep,
    #[error("step without a range")]
    StepWithoutRange,
    #[error("zero padding of {0:?} and {1:?} differs")]
    PaddingMismatch(String, String),
    #[error("missing operand for {0:?}")]
    MissingOperand(char),
    #[error("@file terms are not allowed here")]
    FileNotAllowed,
    #[error("@ without a file name")]
    EmptyFileName,
    #[error("@ without a group name")]
    EmptyGroupName,
    #[error("{0} names a node group, and node groups are not available here")]
    GroupsNotAllowed(String),
    #[error("{0} names a node group, and node groups are not available here (a file is written @/path or @./path)")]
    GroupNotFile(String),
    #[error("unknown node group {1:?} in group source {0:?}")]
    UnknownGroup(String, String),
    #[error("unknown group source {0:?}")]
    UnknownSource(String),
    #[error("no default group source (write @source:group)")]
    NoDefaultSource,
    #[error("groups name each other in a cycle: {0}")]
    GroupCycle(String),
    #[error("groups nest more than {MAX_GROUP_DEPTH} levels deep")]
    GroupsTooDeep,
}

impl NodeSet {
    /// An empty set.
    pub fn new() -> NodeSet {
        NodeSet::default()
    }

    /// Parses an expression. `@` terms (groups, files) are refused, which keeps this free of I/O.
    pub fn parse(expr: &str) -> Result<NodeSet, NodeSetError> {
        Eval::parse(expr, Files::Refuse, None)
    }

    /// Parses an expression whose terms may also be `@/path` or `@./path`: a file with one
    /// expression per line, where `#` starts a comment and blank lines are skipped. Files may not
    /// name other files. Other `@` terms are groups, refused here.
    pub fn parse_with_files(expr: &str) -> Result<NodeSet, NodeSetError> {
        Eval::parse(expr, Files::Read, None)
    }

    /// Parses an expression whose `@` terms name node groups of `groups`: `@group` (of the default
    /// source), `@source:group`, `@*`, `@source:*`, `@@source`, and `*`/`?` wildcards. Files are
    /// refused, which keeps this free of I/O.
    pub fn parse_with_groups(expr: &str, groups: &Groups) -> Result<NodeSet, NodeSetError> {
        Eval::parse(expr, Files::Refuse, Some(groups))
    }

    /// [`NodeSet::parse_with_groups`] and [`NodeSet::parse_with_files`] together: `@/path` and
    /// `@./path` are files, other `@` terms groups.
    pub fn parse_with_groups_and_files(
        expr: &str,
        groups: &Groups,
    ) -> Result<NodeSet, NodeSetError> {
        Eval::parse(expr, Files::Read, Some(groups))
    }

    /// A set of names taken as they are, without parsing. Meant for names that are already host
    /// names (from the registry of nodes, say); a name with bracket or comma characters would not
    /// survive `fold` and `parse`.
    pub fn from_names<I: IntoIterator<Item = S>, S: Into<String>>(names: I) -> NodeSet {
        NodeSet {
            names: names.into_iter().map(|n| NodeName(n.into())).collect(),
        }
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    pub fn contains(&self, name: &str) -> bool {
        self.names.contains(&NodeName(name.to_owned()))
    }

    /// Adds a name; returns whether it was new.
    pub fn insert(&mut self, name: impl Into<String>) -> bool {
        self.names.insert(NodeName(name.into()))
    }

    /// The names in natural order (`n2` before `n10`).
    pub fn iter(&self) -> impl Iterator<Item = &str> {
        self.names.iter().map(|n| n.0.as_str())
    }

    pub fn union(&self, other: &NodeSet) -> NodeSet {
        NodeSet {
            names: self.names.union(&other.names).cloned().collect(),
        }
    }

    pub fn intersection(&self, other: &NodeSet) -> NodeSet {
        NodeSet {
            names: self.names.intersection(&other.names).cloned().collect(),
        }
    }

    pub fn difference(&self, other: &NodeSet) -> NodeSet {
        NodeSet {
            names: self.names.difference(&other.names).cloned().collect(),
        }
    }

    /// The names in exactly one of the two sets.
    pub fn symmetric_difference(&self, other: &NodeSet) -> NodeSet {
        NodeSet {
            names: self
                .names
                .symmetric_difference(&other.names)
                .cloned()
                .collect(),
        }
    }

    /// Adds every name of `other` to `self`.
    pub fn extend(&mut self, other: NodeSet) {
        self.names.extend(other.names);
    }

    /// The shortest canonical expression for the set, e.g. `cn[43-45,47]`, `n[001-128]` or
    /// `r[1-2]n[1-4]`. Parsing it gives back the same set.
    pub fn fold(&self) -> String {
        fold_names(self.iter())
    }
}

impl fmt::Display for NodeSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.fold())
    }
}

impl fmt::Debug for NodeSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeSet({:?})", self.fold())
    }
}

impl FromStr for NodeSet {
    type Err = NodeSetError;

    fn from_str(s: &str) -> Result<NodeSet, NodeSetError> {
        NodeSet::parse(s)
    }
}

impl<'a> IntoIterator for &'a NodeSet {
    type Item = &'a str;
    type IntoIter = Box<dyn Iterator<Item = &'a str> + 'a>;

    fn into_iter(self) -> Self::IntoIter {
        Box::new(self.iter())
    }
}

impl<S: Into<String>> FromIterator<S> for NodeSet {
    fn from_iter<I: IntoIterator<Item = S>>(iter: I) -> NodeSet {
        NodeSet::from_names(iter)
    }
}

/// Compares digit runs by value (then fewer leading zeros first) and everything else bytewise; equal
/// keys fall back to plain byte order so that the order is total and agrees with `==`.
fn natural_cmp(a: &str, b: &str) -> Ordering {
    let (mut x, mut y) = (a.as_bytes(), b.as_bytes());
    let mut padding = Ordering::Equal;
    loop {
        match (x.first(), y.first()) {
            (None, None) => return padding.then_with(|| a.cmp(b)),
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            (Some(p), Some(q)) if p.is_ascii_digit() && q.is_ascii_digit() => {
                let (dx, rx) = x.split_at(digit_run(x));
                let (dy, ry) = y.split_at(digit_run(y));
                let (tx, ty) = (trim_zeros(dx), trim_zeros(dy));
                let by_value = tx.len().cmp(&ty.len()).then_with(|| tx.cmp(ty));
                if by_value != Ordering::Equal {
                    return by_value;
                }
                if padding == Ordering::Equal {
                    padding = dx.len().cmp(&dy.len());
                }
                (x, y) = (rx, ry);
            }
            (Some(p), Some(q)) => {
                if p != q {
                    return p.cmp(q);
                }
                (x, y) = (&x[1..], &y[1..]);
            }
        }
    }
}

fn digit_run(s: &[u8]) -> usize {
    s.iter().take_while(|c| c.is_ascii_digit()).count()
}

fn trim_zeros(s: &[u8]) -> &[u8] {
    let zeros = s.iter().take_while(|&&c| c == b'0').count();
    &s[zeros..]
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')
}

// ---------------------------------------------------------------------------------------------------
// Parsing
//
// An expression is read as ClusterShell's `nodeset` reads it: terms joined by `,` (union), `!`
// (difference), `&` (intersection) and `^` (symmetric difference), applied strictly left to right
// with no precedence (`a,b&c` is `(a,b)&c`). A term is a name pattern with brackets, `@group`,
// `@source:group`, `@*`, `@source:*` or `@@source` (its group names) when groups are given, a
// pattern with `*`/`?` wildcards matched against `@*` when groups are given, or `@/path` and
// `@./path` (a file) in the with-files variants.

#[derive(Clone, Copy, PartialEq, Eq)]
enum Files {
    Read,
    Refuse,
}

/// A set operator between two terms.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Op {
    Union,
    Difference,
    Intersection,
    SymmetricDifference,
}

impl Op {
    fn from_char(c: char) -> Option<Op> {
        match c {
            ',' => Some(Op::Union),
            '!' => Some(Op::Difference),
            '&' => Some(Op::Intersection),
            '^' => Some(Op::SymmetricDifference),
            _ => None,
        }
    }
}

/// One piece of a term: literal text or a bracket of ranges.
enum Segment<'a> {
    Text(&'a str),
    Ranges(Vec<Range>),
}

/// `start-end/step`, printed zero-padded to `width` digits (0 = no padding).
struct Range {
    start: u64,
    end: u64,
    step: u64,
    width: usize,
}

impl Range {
    fn count(&self) -> u64 {
        (self.end - self.start) / self.step + 1
    }
}

/// Reports errors against one expression (the one typed, or a group's definition), with 1-based
/// character columns.
struct Ctx<'a> {
    expr: &'a str,
}

impl Ctx<'_> {
    fn err(&self, byte: usize, problem: Problem) -> NodeSetError {
        NodeSetError::Syntax {
            expr: self.expr.to_owned(),
            column: self.expr[..byte].chars().count() + 1,
            problem,
        }
    }
}

/// The result so far of an expression. Unions only append to `pending`, which is sorted into
/// `set` in bulk when another operator needs the set, so that a long comma list of a million
/// names costs one sort and not a million tree insertions.
#[derive(Default)]
struct Acc {
    set: BTreeSet<NodeName>,
    pending: Vec<NodeName>,
}

impl Acc {
    fn flush(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let mut more: BTreeSet<NodeName> = std::mem::take(&mut self.pending).into_iter().collect();
        if self.set.is_empty() {
            self.set = more;
        } else {
            self.set.append(&mut more);
        }
    }

    /// Applies `op` with a term's names (in any order, possibly repeated).
    fn apply(&mut self, op: Op, term: Vec<NodeName>) {
        if op == Op::Union {
            self.pending.extend(term);
            return;
        }
        self.flush();
        let term: BTreeSet<NodeName> = term.into_iter().collect();
        match op {
            Op::Union => {}
            Op::Difference => {
                if term.len() < self.set.len() {
                    for name in &term {
                        self.set.remove(name);
                    }
                } else {
                    self.set.retain(|name| !term.contains(name));
                }
            }
            Op::Intersection => self.set.retain(|name| term.contains(name)),
            Op::SymmetricDifference => {
                for name in term {
                    if !self.set.remove(&name) {
                        self.set.insert(name);
                    }
                }
            }
        }
    }

    fn into_set(mut self) -> NodeSet {
        self.flush();
        NodeSet { names: self.set }
    }

    /// The names, unsorted when only unions were seen (cheaper for the caller to merge).
    fn into_names(mut self) -> Vec<NodeName> {
        if self.set.is_empty() {
            return self.pending;
        }
        self.flush();
        self.set.into_iter().collect()
    }
}

/// What a group lookup memoizes and what the cycle check tracks.
#[derive(Clone, PartialEq, Eq, Hash)]
enum Key {
    Group(String, String),
    All(String),
}

impl Key {
    fn label(&self) -> String {
        match self {
            Key::Group(source, group) => format!("@{source}:{group}"),
            Key::All(source) => format!("@{source}:*"),
        }
    }
}

/// A failure while resolving a reference: either a problem to report at the referring term's
/// column, or an error already complete (from inside a definition, or the size limit).
enum Fail {
    At(Problem),
    Done(NodeSetError),
}

impl From<NodeSetError> for Fail {
    fn from(e: NodeSetError) -> Fail {
        Fail::Done(e)
    }
}

impl Fail {
    fn at(self, ctx: &Ctx<'_>, byte: usize) -> NodeSetError {
        match self {
            Fail::At(problem) => ctx.err(byte, problem),
            Fail::Done(e) => e,
        }
    }
}

/// Evaluates one top-level expression: its name budget, the groups it may read and, so that a
/// group named many times (or nested exponentially, `a: @b,@b`, `b: @c,@c`, ...) is resolved once,
/// the groups resolved so far.
struct Eval<'g> {
    groups: Option<&'g Groups>,
    budget: u64,
    /// The expression as typed: the size limit is about all of it, not the group it tripped in.
    top: String,
    memo: HashMap<Key, NodeSet>,
    /// Groups being resolved, outermost first, to refuse cycles and bound nesting.
    stack: Vec<Key>,
}

impl<'g> Eval<'g> {
    fn new(top: &str, groups: Option<&'g Groups>, budget: u64) -> Eval<'g> {
        Eval {
            groups,
            budget,
            top: top.to_owned(),
            memo: HashMap::new(),
            stack: Vec::new(),
        }
    }

    fn parse(expr: &str, files: Files, groups: Option<&Groups>) -> Result<NodeSet, NodeSetError> {
        let mut acc = Acc::default();
        Eval::new(expr, groups, MAX_NAMES).expr(expr, files, None, &mut acc)?;
        Ok(acc.into_set())
    }

    fn too_large(&self) -> NodeSetError {
        NodeSetError::TooLarge {
            expr: self.top.clone(),
            limit: MAX_NAMES,
        }
    }

    /// Spends `n` names of the budget, before they are allocated.
    fn charge(&mut self, n: u64) -> Result<(), NodeSetError> {
        if n > self.budget {
            return Err(self.too_large());
        }
        self.budget -= n;
        Ok(())
    }

    /// Evaluates `expr` into `acc`, its first term joining `acc` by union: evaluating `a` then
    /// `b` into one accumulator is evaluating `a,b`. `ns` is the source whose groups `@group`
    /// names (that of the group being defined; `None` at the top, meaning the default source).
    fn expr(
        &mut self,
        expr: &str,
        files: Files,
        ns: Option<&str>,
        acc: &mut Acc,
    ) -> Result<(), NodeSetError> {
        let ctx = Ctx { expr };
        for (op, range) in split_terms(&ctx)? {
            let raw = &expr[range.clone()];
            let term = raw.trim();
            // Empty terms between commas (`a,,b`, a trailing comma, an empty line) name no nodes;
            // tolerating them keeps hand-written and generated lists easy to write. `split_terms`
            // refuses them around the other operators, where the intent would be unclear.
            if term.is_empty() {
                continue;
            }
            let at = range.start + (raw.len() - raw.trim_start().len());
            if op == Op::Union {
                self.term(&ctx, term, at, files, ns, &mut acc.pending)?;
            } else {
                let mut names = Vec::new();
                self.term(&ctx, term, at, files, ns, &mut names)?;
                acc.apply(op, names);
            }
        }
        Ok(())
    }

    /// Appends the names of one term (trimmed, at byte `at` of `ctx.expr`) to `out`.
    fn term(
        &mut self,
        ctx: &Ctx<'_>,
        term: &str,
        at: usize,
        files: Files,
        ns: Option<&str>,
        out: &mut Vec<NodeName>,
    ) -> Result<(), NodeSetError> {
        if let Some(rest) = term.strip_prefix('@') {
            // A file is told from a group by its first character: groups are names, and a
            // relative file is written `@./name`. So `@nodes` is always a group.
            if rest.starts_with(['/', '.']) {
                if files == Files::Refuse {
                    return Err(ctx.err(at, Problem::FileNotAllowed));
                }
                return self.file(rest.trim(), out);
            }
            let Some(groups) = self.groups else {
                return Err(match files {
                    Files::Read if rest.trim().is_empty() => {
                        ctx.err(at + 1, Problem::EmptyFileName)
                    }
                    Files::Read => ctx.err(at, Problem::GroupNotFile(term.to_owned())),
                    Files::Refuse => ctx.err(at, Problem::GroupsNotAllowed(term.to_owned())),
                });
            };
            if rest.is_empty() {
                return Err(ctx.err(at + 1, Problem::EmptyGroupName));
            }
            if let Some(source) = rest.strip_prefix('@') {
                return self.group_names(ctx, groups, source, at, out);
            }
            return self.groups_term(ctx, groups, rest, at, ns, out);
        }
        if let Some(groups) = self.groups.filter(|_| term.contains(['*', '?'])) {
            return self.wildcard(ctx, groups, term, at, ns, out);
        }
        let segments = parse_term(ctx, term, at, is_name_char)?;
        let count = self.count_expansion(&segments)?;
        self.charge(count)?;
        expand(&segments, &mut String::new(), out);
        Ok(())
    }

    /// Counts the strings `segments` expand to, refusing more than the budget left, before
    /// expanding. Group names and wildcard patterns are counted this way but not charged: the
    /// names they bring are.
    fn count_expansion(&self, segments: &[Segment<'_>]) -> Result<u64, NodeSetError> {
        let mut count: u64 = 1;
        for seg in segments {
            if let Segment::Ranges(ranges) = seg {
                let n = ranges
                    .iter()
                    .try_fold(0u64, |acc, r| acc.checked_add(r.count()));
                count = n
                    .and_then(|n| count.checked_mul(n))
                    .filter(|&c| c <= self.budget)
                    .ok_or_else(|| self.too_large())?;
            }
        }
        Ok(count)
    }

    /// `@group`, `@source:group`, `@*`, `@source:*`, with brackets expanding to several groups
    /// (`@rack[1-3]`); `spec` follows the `@` at byte `at`.
    fn groups_term(
        &mut self,
        ctx: &Ctx<'_>,
        groups: &Groups,
        spec: &str,
        at: usize,
        ns: Option<&str>,
        out: &mut Vec<NodeName>,
    ) -> Result<(), NodeSetError> {
        let segments = parse_term(ctx, spec, at + 1, |c| {
            is_name_char(c) || c == ':' || c == '*'
        })?;
        self.count_expansion(&segments)?;
        let mut specs = Vec::new();
        expand(&segments, &mut String::new(), &mut specs);
        for NodeName(spec) in specs {
            let (explicit, group) = match spec.split_once(':') {
                Some((source, group)) => (Some(source), group),
                None => (None, spec.as_str()),
            };
            if group.is_empty() {
                return Err(ctx.err(at + spec.len() + 1, Problem::EmptyGroupName));
            }
            let source = source_for(groups, explicit, ns).map_err(|p| ctx.err(at, p))?;
            let set = if group == "*" {
                self.all(groups, &source)
            } else {
                self.group(groups, &source, group)
            }
            .map_err(|f| f.at(ctx, at))?;
            out.extend(set.names);
        }
        Ok(())
    }

    /// `@@source` (or `@@`, the default source): the names of its groups, as nodes.
    fn group_names(
        &mut self,
        ctx: &Ctx<'_>,
        groups: &Groups,
        source: &str,
        at: usize,
        out: &mut Vec<NodeName>,
    ) -> Result<(), NodeSetError> {
        let source = source_for(groups, Some(source), None).map_err(|p| ctx.err(at, p))?;
        let names = groups.group_names(&source).unwrap_or_default();
        self.charge(names.len() as u64)?;
        out.extend(names.into_iter().map(|n| NodeName(n.to_owned())));
        Ok(())
    }

    /// A name pattern with `*` (any text) and `?` (one character), brackets expanding to several
    /// patterns, matched against all nodes of the current source (`@*`), as ClusterShell does.
    fn wildcard(
        &mut self,
        ctx: &Ctx<'_>,
        groups: &Groups,
        term: &str,
        at: usize,
        ns: Option<&str>,
        out: &mut Vec<NodeName>,
    ) -> Result<(), NodeSetError> {
        let segments = parse_term(ctx, term, at, |c| is_name_char(c) || c == '*' || c == '?')?;
        let masks = self.count_expansion(&segments)?;
        let mut patterns = Vec::new();
        expand(&segments, &mut String::new(), &mut patterns);
        let source = source_for(groups, None, ns).map_err(|p| ctx.err(at, p))?;
        let all = self.all(groups, &source).map_err(|f| f.at(ctx, at))?;
        // Every pattern is tried on every name: bound that work as names are bounded.
        if masks.saturating_mul(all.len() as u64) > MAX_WILDCARD_WORK {
            return Err(self.too_large());
        }
        let matched: Vec<NodeName> = all
            .names
            .into_iter()
            .filter(|name| patterns.iter().any(|p| glob_match(&p.0, &name.0)))
            .collect();
        self.charge(matched.len() as u64)?;
        out.extend(matched);
        Ok(())
    }

    /// The nodes of one group, resolved once per expression.
    fn group(&mut self, groups: &Groups, source: &str, name: &str) -> Result<NodeSet, Fail> {
        let key = Key::Group(source.to_owned(), name.to_owned());
        if let Some(set) = self.memo.get(&key) {
            let set = set.clone();
            self.charge(set.len() as u64)?;
            return Ok(set);
        }
        let src = groups
            .source(source)
            .ok_or_else(|| Fail::At(Problem::UnknownSource(source.to_owned())))?;
        let def = src
            .groups
            .get(name)
            .ok_or_else(|| Fail::At(Problem::UnknownGroup(source.to_owned(), name.to_owned())))?;
        self.enter(&key)?;
        let mut acc = Acc::default();
        let result = self.expr(&def.text, Files::Refuse, Some(source), &mut acc);
        self.stack.pop();
        result.map_err(|e| in_group(e, &key, src, def))?;
        let set = acc.into_set();
        self.memo.insert(key, set.clone());
        Ok(set)
    }

    /// All nodes of a source: its `all` group if it has one, else what ClusterShell computes for
    /// a YAML source without one: every group's definition joined with `,` in ClusterShell's
    /// listing order and read left to right, so a later group's `!` can remove nodes an earlier
    /// group brought (which is not always the union of the groups).
    fn all(&mut self, groups: &Groups, source: &str) -> Result<NodeSet, Fail> {
        let src = groups
            .source(source)
            .ok_or_else(|| Fail::At(Problem::UnknownSource(source.to_owned())))?;
        if src.groups.contains_key(ALL_GROUP) {
            return self.group(groups, source, ALL_GROUP);
        }
        let key = Key::All(source.to_owned());
        if let Some(set) = self.memo.get(&key) {
            let set = set.clone();
            self.charge(set.len() as u64)?;
            return Ok(set);
        }
        self.enter(&key)?;
        let mut acc = Acc::default();
        let mut result = Ok(());
        for (name, def) in src.in_listing_order() {
            result = self
                .expr(&def.text, Files::Refuse, Some(source), &mut acc)
                .map_err(|e| {
                    let group = Key::Group(source.to_owned(), name.to_owned());
                    in_group(e, &group, src, def)
                });
            if result.is_err() {
                break;
            }
        }
        self.stack.pop();
        result?;
        let set = acc.into_set();
        self.memo.insert(key, set.clone());
        Ok(set)
    }

    /// Marks `key` as being resolved, refusing cycles and deep nesting (which would otherwise
    /// recurse until the stack overflows).
    fn enter(&mut self, key: &Key) -> Result<(), Fail> {
        if let Some(pos) = self.stack.iter().position(|k| k == key) {
            let chain: Vec<String> = self.stack[pos..]
                .iter()
                .chain([key])
                .map(Key::label)
                .collect();
            return Err(Fail::At(Problem::GroupCycle(chain.join(" -> "))));
        }
        if self.stack.len() >= MAX_GROUP_DEPTH {
            return Err(Fail::At(Problem::GroupsTooDeep));
        }
        self.stack.push(key.clone());
        Ok(())
    }

    /// An `@path` file: one expression per line (each read on its own, so an operator does not
    /// reach into the next line), `#` comments, blank lines skipped. Files may not name other
    /// files: that would need cycle detection and nobody needs it.
    fn file(&mut self, path: &str, out: &mut Vec<NodeName>) -> Result<(), NodeSetError> {
        let text = std::fs::read_to_string(path).map_err(|source| NodeSetError::File {
            path: path.to_owned(),
            source,
        })?;
        for (n, line) in text.lines().enumerate() {
            let line = line.split_once('#').map_or(line, |(before, _)| before);
            let mut acc = Acc::default();
            self.expr(line, Files::Refuse, None, &mut acc)
                .map_err(|e| match e {
                    NodeSetError::TooLarge { .. } => e,
                    e => NodeSetError::InFile {
                        path: path.to_owned(),
                        line: n + 1,
                        source: Box::new(e),
                    },
                })?;
            out.extend(acc.into_names());
        }
        Ok(())
    }
}

/// The source a group reference reads: the one written, the current one, or the default one.
/// An empty source (`@:group`) is the default one, as in ClusterShell.
fn source_for(
    groups: &Groups,
    explicit: Option<&str>,
    ns: Option<&str>,
) -> Result<String, Problem> {
    let name = match (explicit, ns) {
        (Some(source), _) if !source.is_empty() => source,
        (None, Some(ns)) => ns,
        _ => groups.default_source().ok_or(Problem::NoDefaultSource)?,
    };
    if groups.source(name).is_none() {
        return Err(Problem::UnknownSource(name.to_owned()));
    }
    Ok(name.to_owned())
}

/// Says which group an error of a definition comes from, once: the innermost group at fault.
fn in_group(e: NodeSetError, key: &Key, src: &Source, def: &Definition) -> NodeSetError {
    match e {
        NodeSetError::TooLarge { .. } | NodeSetError::InGroup { .. } => e,
        e => NodeSetError::InGroup {
            group: key.label(),
            origin: src.origin.clone(),
            line: def.line,
            source: Box::new(e),
        },
    }
}

/// Shell-style matching of `*` (any text, possibly empty) and `?` (one character), as Python's
/// `fnmatch` does once brackets have been expanded. Backtracks only to the last `*`, so it is
/// linear in practice and quadratic at worst.
fn glob_match(pattern: &str, name: &str) -> bool {
    let (p, n): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    let (mut i, mut j) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while j < n.len() {
        match p.get(i) {
            Some('*') => {
                star = Some((i, j));
                i += 1;
            }
            Some(&c) if c == '?' || c == n[j] => {
                i += 1;
                j += 1;
            }
            _ => match star {
                Some((si, sj)) => {
                    i = si + 1;
                    j = sj + 1;
                    star = Some((si, sj + 1));
                }
                None => return false,
            },
        }
    }
    p[i..].iter().all(|&c| c == '*')
}

/// Splits an expression into its terms and the operator before each (the first one's is a
/// union), checking brackets first so that the first error reported is the leftmost one.
fn split_terms(ctx: &Ctx<'_>) -> Result<Vec<(Op, std::ops::Range<usize>)>, NodeSetError> {
    let expr = ctx.expr;
    // (operator, its byte offset, term range)
    let mut terms: Vec<(Op, usize, std::ops::Range<usize>)> = Vec::new();
    let (mut op, mut op_at, mut term_start) = (Op::Union, 0, 0);
    let mut open: Option<usize> = None;
    for (i, c) in expr.char_indices() {
        match c {
            '[' if open.is_some() => return Err(ctx.err(i, Problem::NestedBracket)),
            '[' => open = Some(i),
            ']' if open.is_none() => return Err(ctx.err(i, Problem::UnmatchedBracket)),
            ']' => open = None,
            _ if open.is_none() => {
                if let Some(next) = Op::from_char(c) {
                    terms.push((op, op_at, term_start..i));
                    (op, op_at, term_start) = (next, i, i + 1);
                }
            }
            _ => {}
        }
    }
    if let Some(i) = open {
        return Err(ctx.err(i, Problem::UnclosedBracket));
    }
    terms.push((op, op_at, term_start..expr.len()));

    // `!`, `&` and `^` need a term on each side: `!n1` or `n1&` is refused, as ClusterShell does.
    for (k, (op, op_at, range)) in terms.iter().enumerate() {
        if !expr[range.clone()].trim().is_empty() {
            continue;
        }
        let missing = if *op != Op::Union {
            Some(*op_at)
        } else {
            terms
                .get(k + 1)
                .filter(|(next, ..)| *next != Op::Union)
                .map(|(_, next_at, _)| *next_at)
        };
        if let Some(at) = missing {
            let c = expr[at..].chars().next().unwrap_or(',');
            return Err(ctx.err(at, Problem::MissingOperand(c)));
        }
    }
    Ok(terms
        .into_iter()
        .map(|(op, _, range)| (op, range))
        .collect())
}

/// Splits one term (no top-level operators; brackets already balanced and unnested) into
/// segments. `at` is the byte offset of `term` in the expression; text outside brackets may only
/// hold characters that `allowed` accepts.
fn parse_term<'a>(
    ctx: &Ctx<'_>,
    term: &'a str,
    at: usize,
    allowed: impl Fn(char) -> bool,
) -> Result<Vec<Segment<'a>>, NodeSetError> {
    let mut segments = Vec::new();
    let mut rest = term;
    let mut pos = at;
    while !rest.is_empty() {
        if let Some(inner) = rest.strip_prefix('[') {
            // Balanced and unnested, checked by the caller.
            let close = inner.find(']').unwrap_or(inner.len());
            segments.push(Segment::Ranges(parse_ranges(
                ctx,
                &inner[..close],
                pos + 1,
            )?));
            let used = close + 2;
            rest = rest.get(used..).unwrap_or("");
            pos += used;
        } else {
            let len = rest.find('[').unwrap_or(rest.len());
            let text = &rest[..len];
            if let Some((i, c)) = text.char_indices().find(|&(_, c)| !allowed(c)) {
                return Err(ctx.err(pos + i, Problem::InvalidChar(c)));
            }
            segments.push(Segment::Text(text));
            rest = &rest[len..];
            pos += len;
        }
    }
    Ok(segments)
}

/// Parses the inside of a bracket, `1-3,7,10-20/2`, starting at byte `at` of the expression.
fn parse_ranges(ctx: &Ctx<'_>, inner: &str, at: usize) -> Result<Vec<Range>, NodeSetError> {
    if inner.trim().is_empty() {
        return Err(ctx.err(at - 1, Problem::EmptyBrackets));
    }
    let mut ranges = Vec::new();
    let mut offset = 0;
    for raw in inner.split(',') {
        let item_at = at + offset + (raw.len() - raw.trim_start().len());
        offset += raw.len() + 1;
        let item = raw.trim();
        if item.is_empty() {
            return Err(ctx.err(item_at, Problem::EmptyRange));
        }
        let (span, step) = match item.split_once('/') {
            Some((span, step)) => (span, Some(step)),
            None => (item, None),
        };
        let (start_s, end_s) = match span.split_once('-') {
            Some((s, e)) => (s, Some(e)),
            None => (span, None),
        };
        let number = |s: &str, col: usize| -> Result<u64, NodeSetError> {
            if s.is_empty() {
                return Err(ctx.err(col, Problem::MissingNumber));
            }
            if !s.bytes().all(|b| b.is_ascii_digit()) {
                return Err(ctx.err(col, Problem::NotANumber(s.to_owned())));
            }
            if s.len() > MAX_DIGITS {
                return Err(ctx.err(col, Problem::NumberTooLarge(s.to_owned())));
            }
            s.parse()
                .map_err(|_| ctx.err(col, Problem::NumberTooLarge(s.to_owned())))
        };
        let start = number(start_s, item_at)?;
        let width = if is_padded(start_s) { start_s.len() } else { 0 };
        let end = match end_s {
            None => start,
            Some(e) => {
                let col = item_at + start_s.len() + 1;
                let end = number(e, col)?;
                if is_padded(e) && e.len() != width {
                    return Err(ctx.err(
                        col,
                        Problem::PaddingMismatch(start_s.to_owned(), e.to_owned()),
                    ));
                }
                if end < start {
                    return Err(ctx.err(
                        item_at,
                        Problem::ReversedRange(start_s.to_owned(), e.to_owned()),
                    ));
                }
                end
            }
        };
        let step = match step {
            None => 1,
            Some(_) if end_s.is_none() => {
                return Err(ctx.err(item_at + span.len(), Problem::StepWithoutRange))
            }
            Some(s) => match number(s, item_at + span.len() + 1)? {
                0 => return Err(ctx.err(item_at + span.len() + 1, Problem::ZeroStep)),
                n => n,
            },
        };
        ranges.push(Range {
            start,
            end,
            step,
            width,
        });
    }
    Ok(ranges)
}

/// A digit string with a leading zero that is not just "0": it asks for zero padding.
fn is_padded(digits: &str) -> bool {
    digits.len() > 1 && digits.starts_with('0')
}

/// Appends the cartesian product of `segments` (already counted against the budget) to `out`.
fn expand(segments: &[Segment<'_>], name: &mut String, out: &mut Vec<NodeName>) {
    let Some((first, rest)) = segments.split_first() else {
        out.push(NodeName(name.clone()));
        return;
    };
    let len = name.len();
    match first {
        Segment::Text(t) => {
            name.push_str(t);
            expand(rest, name, out);
        }
        Segment::Ranges(ranges) => {
            for r in ranges {
                for v in (r.start..=r.end).step_by(usize::try_from(r.step).unwrap_or(usize::MAX)) {
                    name.truncate(len);
                    // Writing to a String cannot fail.
                    let _ = write!(name, "{v:0width$}", width = r.width);
                    expand(rest, name, out);
                }
            }
        }
    }
    name.truncate(len);
}

// ---------------------------------------------------------------------------------------------------
// Folding

/// A name cut into `texts[0] nums[0] texts[1] nums[1] ... texts[k]`.
struct Cut<'a> {
    texts: Vec<&'a str>,
    nums: Vec<&'a str>,
}

/// Text between two numbers is one slice of the name (text runs and digit runs too long to count
/// with are adjacent), so cutting allocates nothing but the two vectors.
fn cut(name: &str) -> Cut<'_> {
    let mut texts = Vec::new();
    let mut nums = Vec::new();
    let bytes = name.as_bytes();
    let mut start = 0;
    let mut i = 0;
    while i < bytes.len() {
        let run = digit_run(&bytes[i..]);
        if run == 0 {
            i += bytes[i..]
                .iter()
                .take_while(|b| !b.is_ascii_digit())
                .count();
        } else if run > MAX_DIGITS {
            // Too long to count with; keep it as text.
            i += run;
        } else {
            texts.push(&name[start..i]);
            nums.push(&name[i..i + run]);
            i += run;
            start = i;
        }
    }
    texts.push(&name[start..]);
    Cut { texts, nums }
}

/// Digit strings (at most `MAX_DIGITS` long) split into groups that one bracket can write: padded
/// strings by width, together with unpadded ones of the same length (`099,100` is `099-100`), and
/// the remaining unpadded strings. Each group is sorted by value.
fn padding_groups<'a>(nums: &[&'a str]) -> Vec<Vec<(u64, &'a str)>> {
    if let [only] = nums {
        // The common case of names that share nothing: no grouping to do.
        return vec![vec![(only.parse().unwrap_or(u64::MAX), *only)]];
    }
    let widths: BTreeSet<usize> = nums
        .iter()
        .filter(|s| is_padded(s))
        .map(|s| s.len())
        .collect();
    let mut groups: BTreeMap<Option<usize>, Vec<(u64, &str)>> = BTreeMap::new();
    for &s in nums {
        let key = (is_padded(s) || widths.contains(&s.len())).then_some(s.len());
        // `cut` only yields digit runs short enough to parse.
        let value = s.parse().unwrap_or(u64::MAX);
        groups.entry(key).or_default().push((value, s));
    }
    groups
        .into_values()
        .map(|mut g| {
            g.sort_unstable();
            g
        })
        .collect()
}

/// Writes one padding group as bracket text: `5` alone, or `[1-3,7]`.
fn bracket(group: &[(u64, &str)]) -> String {
    if let [(_, only)] = group {
        return (*only).to_owned();
    }
    let mut out = String::from("[");
    let mut i = 0;
    while i < group.len() {
        let mut j = i;
        while j + 1 < group.len() && group[j + 1].0 == group[j].0 + 1 {
            j += 1;
        }
        if i > 0 {
            out.push(',');
        }
        out.push_str(group[i].1);
        if j > i {
            out.push('-');
            out.push_str(group[j].1);
        }
        i = j + 1;
    }
    out.push(']');
    out
}

/// Folds names in two passes: the last number of each name into ranges, then, among names whose
/// last ranges came out identical, the number before it (`r[1-2]n[1-4]`).
fn fold_names<'a>(names: impl Iterator<Item = &'a str>) -> String {
    // Each output term with the first name it expands to, for ordering.
    let mut terms: Vec<(String, String)> = Vec::new();

    // Hash maps, not ordered ones: the terms are sorted once at the end, and a million names with
    // a million keys made ordered-map lookups (each comparing vectors of strings) the whole cost.
    // Pass 1: key = (texts, all numbers but the last) -> last numbers.
    let mut by_last: HashMap<(Vec<&str>, Vec<&str>), Vec<&str>> = HashMap::new();
    for name in names {
        let Cut { texts, mut nums } = cut(name);
        match nums.pop() {
            None => terms.push((name.to_owned(), name.to_owned())),
            Some(last) => by_last.entry((texts, nums)).or_default().push(last),
        }
    }

    // Pass 2: key = (texts, numbers but the last two, last bracket) -> second-to-last numbers.
    type Key<'k> = (Vec<&'k str>, Vec<&'k str>, String, &'k str);
    let mut by_second: HashMap<Key<'_>, Vec<&str>> = HashMap::new();
    for ((texts, nums), lasts) in by_last {
        for group in padding_groups(&lasts) {
            let last = bracket(&group);
            let first_last = group[0].1;
            match nums.last().copied() {
                Some(second) => {
                    let mut prefix = nums.clone();
                    prefix.pop();
                    by_second
                        .entry((texts.clone(), prefix, last, first_last))
                        .or_default()
                        .push(second);
                }
                None => {
                    let term = assemble(&texts, &nums, &[&last]);
                    let first = assemble(&texts, &nums, &[first_last]);
                    terms.push((first, term));
                }
            }
        }
    }
    for ((texts, prefix, last, first_last), seconds) in by_second {
        for group in padding_groups(&seconds) {
            let term = assemble(&texts, &prefix, &[&bracket(&group), &last]);
            let first = assemble(&texts, &prefix, &[group[0].1, first_last]);
            terms.push((first, term));
        }
    }

    terms.sort_by(|a, b| natural_cmp(&a.0, &b.0).then_with(|| a.1.cmp(&b.1)));
    let mut out = String::new();
    for (i, (_, term)) in terms.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(term);
    }
    out
}

/// Interleaves `texts` with `nums` followed by `tail` (the folded numbers).
fn assemble(texts: &[&str], nums: &[&str], tail: &[&str]) -> String {
    let mut out = String::new();
    for (i, text) in texts.iter().enumerate() {
        out.push_str(text);
        if let Some(n) = nums.iter().chain(tail).nth(i) {
            out.push_str(n);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn names(expr: &str) -> Vec<String> {
        NodeSet::parse(expr)
            .unwrap()
            .iter()
            .map(str::to_owned)
            .collect()
    }

    fn error(expr: &str) -> String {
        NodeSet::parse(expr).unwrap_err().to_string()
    }

    #[test]
    fn expands_a_list_of_ranges() {
        assert_eq!(names("cn[43-45,47]"), ["cn43", "cn44", "cn45", "cn47"]);
    }

    #[test]
    fn keeps_zero_padding() {
        let all = names("n[001-128]");
        assert_eq!(all.len(), 128);
        assert_eq!(all[0], "n001");
        assert_eq!(all[98], "n099");
        assert_eq!(all[127], "n128");
    }

    #[test]
    fn unpadded_ranges_grow_in_width() {
        assert_eq!(names("n[8-10]"), ["n8", "n9", "n10"]);
    }

    #[test]
    fn several_brackets_make_a_cartesian_product() {
        let all = names("r[1-2]n[1-4]");
        assert_eq!(all.len(), 8);
        assert_eq!(all[0], "r1n1");
        assert_eq!(all[7], "r2n4");
    }

    #[test]
    fn ranges_take_a_step() {
        assert_eq!(names("n[1-10/2]"), ["n1", "n3", "n5", "n7", "n9"]);
        assert_eq!(names("n[00-10/5]"), ["n00", "n05", "n10"]);
    }

    #[test]
    fn text_may_follow_a_bracket() {
        assert_eq!(names("cn[1-3]-ib"), ["cn1-ib", "cn2-ib", "cn3-ib"]);
        assert_eq!(names("[1-2]x"), ["1x", "2x"]);
    }

    #[test]
    fn commas_split_terms_outside_brackets_only() {
        assert_eq!(
            names(" cn1 , cn2,gpu[1-2] ,gpu[2, 3]"),
            ["cn1", "cn2", "gpu1", "gpu2", "gpu3"]
        );
        assert_eq!(names("a,,b,"), ["a", "b"]);
        assert!(NodeSet::parse("  ").unwrap().is_empty());
    }

    #[test]
    fn iterates_in_natural_order() {
        let set = NodeSet::from_names(["n10", "n2", "n1", "m3", "n01"]);
        assert_eq!(
            set.iter().collect::<Vec<_>>(),
            ["m3", "n1", "n01", "n2", "n10"]
        );
        assert!(set.contains("n01") && !set.contains("n3"));
    }

    #[test]
    fn set_operations() {
        let a = NodeSet::parse("n[1-5]").unwrap();
        let b = NodeSet::parse("n[4-8]").unwrap();
        assert_eq!(a.union(&b).fold(), "n[1-8]");
        assert_eq!(a.intersection(&b).fold(), "n[4-5]");
        assert_eq!(a.difference(&b).fold(), "n[1-3]");
    }

    #[test]
    fn operators_apply_left_to_right_without_precedence() {
        // Each result is what ClusterShell 1.9's `nodeset -f` prints for the same expression.
        let fold = |e: &str| NodeSet::parse(e).unwrap().fold();
        assert_eq!(fold("n[1-5]!n3,n3"), "n[1-5]");
        assert_eq!(fold("n1,n2&n2"), "n2");
        assert_eq!(fold("n[1-5]^n[4-8]!n1"), "n[2-3,6-8]");
        assert_eq!(fold("n[1-5]&n[2-3],n9"), "n[2-3,9]");
        assert_eq!(fold("n[1-10]!n[2-8/2]"), "n[1,3,5,7,9-10]");
        assert_eq!(fold(" n1 , n2 ! n1 "), "n2");
        assert_eq!(fold("n[1-3]^n[1-3]"), "");
        assert_eq!(fold("n[1-3]&m1"), "");
        assert_eq!(fold("n1!n1,n1"), "n1");
        assert_eq!(fold("n[1-4]&n[2-6]&n[3-9]"), "n[3-4]");
    }

    #[test]
    fn set_operations_on_sets() {
        let a = NodeSet::parse("n[1-5]").unwrap();
        let b = NodeSet::parse("n[4-8]").unwrap();
        assert_eq!(a.symmetric_difference(&b).fold(), "n[1-3,6-8]");
    }

    #[test]
    fn relative_files_are_written_with_a_dot() {
        let file = TempFile::new("cn[1-2]\n");
        // From the working directory up to `/`, then down to the file.
        let cwd = std::env::current_dir().unwrap();
        let up = "../".repeat(cwd.components().count().saturating_sub(1));
        let relative = format!(
            "@./{up}{}",
            file.0.display().to_string().trim_start_matches('/')
        );
        assert_eq!(
            NodeSet::parse_with_files(&relative).unwrap().fold(),
            "cn[1-2]"
        );
        // Without `./`, `@name` is a group, whatever files exist.
        let got = NodeSet::parse_with_files("n1,@nodes.txt")
            .unwrap_err()
            .to_string();
        assert!(
            got.ends_with(
                "@nodes.txt names a node group, and node groups are not available here \
                 (a file is written @/path or @./path) at column 4"
            ),
            "{got}"
        );
    }

    #[test]
    fn operators_apply_within_file_lines() {
        let file = TempFile::new("n[1-5]!n3\nn3&m1\n");
        let set = NodeSet::parse_with_files(&format!("@{}", file.0.display())).unwrap();
        assert_eq!(set.fold(), "n[1-2,4-5]");
        let set = NodeSet::parse_with_files(&format!("n[1-9]!@{}", file.0.display())).unwrap();
        assert_eq!(set.fold(), "n[3,6-9]");
    }

    #[test]
    fn folds_to_canonical_forms() {
        let fold = |e: &str| NodeSet::parse(e).unwrap().fold();
        assert_eq!(fold("cn43,cn44,cn47,cn45"), "cn[43-45,47]");
        assert_eq!(fold("n[001-128]"), "n[001-128]");
        assert_eq!(fold("r1n1,r1n2,r1n3,r1n4,r2n[1-4]"), "r[1-2]n[1-4]");
        assert_eq!(fold("n01,n02"), "n[01-02]");
        assert_eq!(fold("n1,n01"), "n1,n01");
        assert_eq!(fold("n[8-10]"), "n[8-10]");
        assert_eq!(fold("n[098-101]"), "n[098-101]");
        assert_eq!(fold("cn[1-3]-ib,login,cn5-ib"), "cn[1-3,5]-ib,login");
        assert_eq!(fold("r1n[1-4],r2n[1-3]"), "r1n[1-4],r2n[1-3]");
        assert_eq!(fold("n5"), "n5");
        assert_eq!(fold(""), "");
        assert_eq!(NodeSet::parse("a[1-3]").unwrap().to_string(), "a[1-3]");
    }

    #[test]
    fn from_str_parses() {
        let set: NodeSet = "n[1-3]".parse().unwrap();
        assert_eq!(set.len(), 3);
    }

    #[test]
    fn reports_what_is_wrong_and_where() {
        let cases = [
            ("cn[4-", "unclosed bracket at column 3"),
            ("cn4]", "unmatched closing bracket at column 4"),
            ("cn[1-[2]]", "nested bracket at column 6"),
            ("cn[]", "empty brackets at column 3"),
            ("cn[1,,2]", "empty range at column 6"),
            ("cn[5-2]", "reversed range 5-2 at column 4"),
            ("cn[1-x]", "\"x\" is not a number at column 6"),
            ("cn[1-]", "missing number at column 6"),
            ("cn[-3]", "missing number at column 4"),
            ("cn[1-4/0]", "step must be at least 1 at column 8"),
            ("cn[4/2]", "step without a range at column 5"),
            (
                "cn[01-001]",
                "zero padding of \"01\" and \"001\" differs at column 7",
            ),
            ("cn 1", "invalid character ' ' at column 3"),
            ("n1,cn%", "invalid character '%' at column 6"),
            ("n*", "invalid character '*' at column 2"),
            (
                "n1,@nodes",
                "@nodes names a node group, and node groups are not available here at column 4",
            ),
            (
                "@/etc/hosts",
                "@file terms are not allowed here at column 1",
            ),
            ("n1,cn!", "missing operand for '!' at column 6"),
            ("!n1", "missing operand for '!' at column 1"),
            ("n1&", "missing operand for '&' at column 3"),
            ("n1, ^n2", "missing operand for '^' at column 5"),
            ("n1!!n2", "missing operand for '!' at column 3"),
            ("n1!,n2", "missing operand for '!' at column 3"),
            ("n[1!3]", "\"1!3\" is not a number at column 3"),
            ("n[1-9999999999999999999]", "is too large at column 5"),
        ];
        for (expr, message) in cases {
            let got = error(expr);
            assert!(
                got.starts_with(&format!("invalid node set {expr:?}: ")),
                "{got}"
            );
            assert!(got.ends_with(message), "{expr}: {got}");
        }
        assert_eq!(
            error("cn[4-"),
            "invalid node set \"cn[4-\": unclosed bracket at column 3"
        );
    }

    #[test]
    fn refuses_huge_expansions_without_allocating_them() {
        let expect = "expands to more than 1000000 names";
        assert!(error("n[1-1000001]").ends_with(expect));
        assert!(error("a[1-1000]b[1-1000]c[1-2]").ends_with(expect));
        assert!(error("a[0-999999999999999999]b[0-999999999999999999]").ends_with(expect));
        assert!(error("a[1-600000],b[1-600000]").ends_with(expect));
        // The limit is inclusive; shown with a small budget to keep the test fast.
        let within = |expr: &str| {
            let mut acc = Acc::default();
            Eval::new(expr, None, 10)
                .expr(expr, Files::Refuse, None, &mut acc)
                .is_ok()
        };
        assert!(within("n[1-5],m[1-5]"));
        assert!(!within("n[1-5],m[1-6]"));
        assert!(within("n[1-5]!n[1-5]"));
        assert!(!within("n[1-5]!n[1-6]"));
    }

    /// A file under the temp dir, removed when dropped.
    struct TempFile(std::path::PathBuf);

    impl TempFile {
        fn new(text: &str) -> TempFile {
            use std::sync::atomic::{AtomicUsize, Ordering};
            static SEQ: AtomicUsize = AtomicUsize::new(0);
            let name = format!(
                "banyan-nodeset-{}-{}.txt",
                std::process::id(),
                SEQ.fetch_add(1, Ordering::Relaxed)
            );
            let path = std::env::temp_dir().join(name);
            std::fs::write(&path, text).unwrap();
            TempFile(path)
        }
    }

    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    #[test]
    fn reads_names_from_files() {
        let file = TempFile::new("# rack 1\ncn1\n\n  cn[2-3] # spares\ngpu[1-2],login\n");
        let expr = format!("@{},cn9", file.0.display());
        let set = NodeSet::parse_with_files(&expr).unwrap();
        assert_eq!(set.fold(), "cn[1-3,9],gpu[1-2],login");
    }

    #[test]
    fn file_errors_name_the_file_and_line() {
        let file = TempFile::new("cn1\ncn[4-\n");
        let got = NodeSet::parse_with_files(&format!("@{}", file.0.display()))
            .unwrap_err()
            .to_string();
        assert_eq!(
            got,
            format!(
                "{}:2: invalid node set \"cn[4-\": unclosed bracket at column 3",
                file.0.display()
            )
        );
        let missing = std::env::temp_dir().join("banyan-nodeset-does-not-exist.txt");
        let got = NodeSet::parse_with_files(&format!("@{}", missing.display()))
            .unwrap_err()
            .to_string();
        assert!(got.starts_with("cannot read node file"), "{got}");
        let got = NodeSet::parse_with_files("n1,@").unwrap_err().to_string();
        assert!(got.ends_with("@ without a file name at column 5"), "{got}");
    }

    /// Names from a few prefixes, one or two numbers, with and without zero padding.
    fn name() -> impl Strategy<Value = String> {
        let number = (0u32..40, 0usize..4).prop_map(|(n, w)| format!("{n:0w$}"));
        (
            prop::sample::select(vec!["n", "cn", "r", "gpu-", "", "login"]),
            prop::option::of(number.clone()),
            prop::sample::select(vec!["", "n", "-ib", ".x"]),
            prop::option::of(number),
        )
            .prop_map(|(p, a, m, b)| {
                let name = format!("{p}{}{m}{}", a.unwrap_or_default(), b.unwrap_or_default());
                if name.is_empty() {
                    "x".to_owned()
                } else {
                    name
                }
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn fold_parses_back_to_the_same_set(names in prop::collection::vec(name(), 0..60)) {
            let set = NodeSet::from_names(names);
            let folded = set.fold();
            let back = NodeSet::parse(&folded).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(&back, &set, "folded: {}", folded);
            prop_assert_eq!(back.fold(), folded);
        }

        #[test]
        fn operators_agree_with_set_methods(
            terms in prop::collection::vec(
                (prop::sample::select(vec![',', '!', '&', '^']), 0u32..12, 0u32..12),
                1..6,
            )
        ) {
            let mut expr = String::new();
            let mut expect = NodeSet::new();
            for (k, (op, a, b)) in terms.iter().enumerate() {
                let (lo, hi) = (a.min(b), a.max(b));
                let term = format!("n[{lo}-{hi}]");
                let set = NodeSet::parse(&term).map_err(|e| TestCaseError::fail(e.to_string()))?;
                let op = if k == 0 { ',' } else { *op };
                if k > 0 {
                    expr.push(op);
                }
                expr.push_str(&term);
                expect = match op {
                    ',' => expect.union(&set),
                    '!' => expect.difference(&set),
                    '&' => expect.intersection(&set),
                    _ => expect.symmetric_difference(&set),
                };
            }
            let got = NodeSet::parse(&expr).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(got, expect, "{}", expr);
        }

        #[test]
        fn parse_never_panics(expr in "[a-c0-9,!&^*?:\\[\\]/ @#-]{0,24}") {
            if let Ok(set) = NodeSet::parse(&expr) {
                prop_assert_eq!(NodeSet::parse(&set.fold()).ok(), Some(set));
            }
        }

        #[test]
        fn expressions_round_trip(a in 0u32..30, b in 0u32..30, w in 0usize..4, step in 1u32..4) {
            let (lo, hi) = (a.min(b), a.max(b));
            let expr = format!("r[1-2]n[{lo:0w$}-{hi:0w$}/{step}]-ib,login");
            let set = NodeSet::parse(&expr).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(NodeSet::parse(&set.fold()).ok(), Some(set));
        }
    }
}
