//! Node-set expressions as ClusterShell's `nodeset` and pdsh write them: `cn[43-45,47]`, `n[001-128]`,
//! `r[1-2]n[1-4]-ib`, `[1-10/2]`, comma lists, and (with [`NodeSet::parse_with_files`]) `@path` terms
//! naming a file of node names. [`NodeSet`] is an ordered set of host names in natural order (`n2`
//! before `n10`); [`NodeSet::fold`] writes it back in its shortest canonical bracket form.
//!
//! Expressions come from operators and files, so parsing treats them as hostile: malformed brackets,
//! reversed ranges and expansions past [`MAX_NAMES`] are refused with an error that says what is wrong
//! and at which column, before anything large is allocated.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::{self, Write as _};
use std::str::FromStr;

/// Most names one expression may expand to (sum over all its terms, before duplicates are merged).
pub const MAX_NAMES: u64 = 1_000_000;

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
    #[error("@file terms are not allowed here")]
    FileNotAllowed,
    #[error("@ without a file name")]
    EmptyFileName,
}

impl NodeSet {
    /// An empty set.
    pub fn new() -> NodeSet {
        NodeSet::default()
    }

    /// Parses an expression. `@path` terms are refused, which keeps this free of I/O.
    pub fn parse(expr: &str) -> Result<NodeSet, NodeSetError> {
        let (mut names, mut budget) = (Vec::new(), MAX_NAMES);
        parse_into(expr, Files::Refuse, &mut budget, &mut names)?;
        Ok(NodeSet::from_sorted_runs(names))
    }

    /// Parses an expression whose terms may also be `@path`: a file with one name or expression per
    /// line, where `#` starts a comment and blank lines are skipped. Files may not name other files.
    pub fn parse_with_files(expr: &str) -> Result<NodeSet, NodeSetError> {
        let (mut names, mut budget) = (Vec::new(), MAX_NAMES);
        parse_into(expr, Files::Read, &mut budget, &mut names)?;
        Ok(NodeSet::from_sorted_runs(names))
    }

    /// A set of names taken as they are, without parsing. Meant for names that are already host
    /// names (from the registry of nodes, say); a name with bracket or comma characters would not
    /// survive `fold` and `parse`.
    pub fn from_names<I: IntoIterator<Item = S>, S: Into<String>>(names: I) -> NodeSet {
        NodeSet {
            names: names.into_iter().map(|n| NodeName(n.into())).collect(),
        }
    }

    /// Builds a set from names that mostly come in natural order, as expansions do: collecting a
    /// `Vec` sorts it in one pass over its sorted runs and builds the tree in bulk, where inserting
    /// name by name would cost a tree search each (a minute for a million names in a debug build).
    fn from_sorted_runs(names: Vec<NodeName>) -> NodeSet {
        NodeSet {
            names: names.into_iter().collect(),
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

#[derive(Clone, Copy, PartialEq, Eq)]
enum Files {
    Read,
    Refuse,
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

/// Reports errors against the whole expression, with 1-based character columns.
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

    fn too_large(&self) -> NodeSetError {
        NodeSetError::TooLarge {
            expr: self.expr.to_owned(),
            limit: MAX_NAMES,
        }
    }
}

/// Parses `expr`, appending its names to `out` and spending at most `budget` names.
fn parse_into(
    expr: &str,
    files: Files,
    budget: &mut u64,
    out: &mut Vec<NodeName>,
) -> Result<(), NodeSetError> {
    let ctx = Ctx { expr };
    // Check all brackets first so that the first error reported is the leftmost one.
    let mut terms = Vec::new();
    let mut term_start = 0;
    let mut open: Option<usize> = None;
    for (i, c) in expr.char_indices() {
        match c {
            '[' if open.is_some() => return Err(ctx.err(i, Problem::NestedBracket)),
            '[' => open = Some(i),
            ']' if open.is_none() => return Err(ctx.err(i, Problem::UnmatchedBracket)),
            ']' => open = None,
            ',' if open.is_none() => {
                terms.push(term_start..i);
                term_start = i + 1;
            }
            _ => {}
        }
    }
    if let Some(i) = open {
        return Err(ctx.err(i, Problem::UnclosedBracket));
    }
    terms.push(term_start..expr.len());

    for range in terms {
        let raw = &expr[range.clone()];
        let term = raw.trim();
        // Empty terms (`a,,b`, a trailing comma, an empty line) name no nodes; tolerating them keeps
        // hand-written and generated lists easy to write.
        if term.is_empty() {
            continue;
        }
        let at = range.start + (raw.len() - raw.trim_start().len());
        if let Some(path) = term.strip_prefix('@') {
            if files == Files::Refuse {
                return Err(ctx.err(at, Problem::FileNotAllowed));
            }
            let path = path.trim();
            if path.is_empty() {
                return Err(ctx.err(at + 1, Problem::EmptyFileName));
            }
            parse_file(path, budget, out)?;
            continue;
        }
        let segments = parse_term(&ctx, term, at)?;
        let mut count: u64 = 1;
        for seg in &segments {
            if let Segment::Ranges(ranges) = seg {
                let n = ranges
                    .iter()
                    .try_fold(0u64, |acc, r| acc.checked_add(r.count()));
                count = n
                    .and_then(|n| count.checked_mul(n))
                    .filter(|&c| c <= *budget)
                    .ok_or_else(|| ctx.too_large())?;
            }
        }
        *budget -= count;
        let mut name = String::new();
        expand(&segments, &mut name, out);
    }
    Ok(())
}

fn parse_file(path: &str, budget: &mut u64, out: &mut Vec<NodeName>) -> Result<(), NodeSetError> {
    let text = std::fs::read_to_string(path).map_err(|source| NodeSetError::File {
        path: path.to_owned(),
        source,
    })?;
    for (n, line) in text.lines().enumerate() {
        let line = line.split_once('#').map_or(line, |(before, _)| before);
        // Nested files are refused: they would need cycle detection and nobody needs them.
        parse_into(line, Files::Refuse, budget, out).map_err(|e| NodeSetError::InFile {
            path: path.to_owned(),
            line: n + 1,
            source: Box::new(e),
        })?;
    }
    Ok(())
}

/// Splits one term (no top-level commas; brackets already balanced and unnested) into segments.
/// `at` is the byte offset of `term` in the expression.
fn parse_term<'a>(
    ctx: &Ctx<'_>,
    term: &'a str,
    at: usize,
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
            if let Some((i, c)) = text.char_indices().find(|&(_, c)| !is_name_char(c)) {
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
    texts: Vec<String>,
    nums: Vec<&'a str>,
}

fn cut(name: &str) -> Cut<'_> {
    let mut texts = vec![String::new()];
    let mut nums = Vec::new();
    let bytes = name.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let run = digit_run(&bytes[i..]);
        if run == 0 {
            let text_len = bytes[i..]
                .iter()
                .take_while(|b| !b.is_ascii_digit())
                .count();
            push_text(&mut texts, &name[i..i + text_len]);
            i += text_len;
        } else if run > MAX_DIGITS {
            // Too long to count with; keep it as text.
            push_text(&mut texts, &name[i..i + run]);
            i += run;
        } else {
            nums.push(&name[i..i + run]);
            texts.push(String::new());
            i += run;
        }
    }
    Cut { texts, nums }
}

fn push_text(texts: &mut [String], s: &str) {
    if let Some(last) = texts.last_mut() {
        last.push_str(s);
    }
}

/// Digit strings (at most `MAX_DIGITS` long) split into groups that one bracket can write: padded
/// strings by width, together with unpadded ones of the same length (`099,100` is `099-100`), and
/// the remaining unpadded strings. Each group is sorted by value.
fn padding_groups<'a>(nums: &[&'a str]) -> Vec<Vec<(u64, &'a str)>> {
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

    // Pass 1: key = (texts, all numbers but the last) -> last numbers.
    let mut by_last: BTreeMap<(Vec<String>, Vec<&str>), Vec<&str>> = BTreeMap::new();
    for name in names {
        let Cut { texts, mut nums } = cut(name);
        match nums.pop() {
            None => terms.push((name.to_owned(), name.to_owned())),
            Some(last) => by_last.entry((texts, nums)).or_default().push(last),
        }
    }

    // Pass 2: key = (texts, numbers but the last two, last bracket) -> second-to-last numbers.
    type Key<'k> = (Vec<String>, Vec<&'k str>, String, &'k str);
    let mut by_second: BTreeMap<Key<'_>, Vec<&str>> = BTreeMap::new();
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
fn assemble(texts: &[String], nums: &[&str], tail: &[&str]) -> String {
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
            ("n1,cn!", "invalid character '!' at column 6"),
            ("@nodes", "@file terms are not allowed here at column 1"),
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
        let mut out = Vec::new();
        assert!(parse_into("n[1-5],m[1-5]", Files::Refuse, &mut 10, &mut out).is_ok());
        assert!(parse_into("n[1-5],m[1-6]", Files::Refuse, &mut 10, &mut out).is_err());
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
        fn parse_never_panics(expr in "[a-c0-9,\\[\\]/ @#-]{0,24}") {
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
