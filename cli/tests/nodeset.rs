//! Runs the built `banyan` binary's `nodeset` subcommand as an operator would.

use std::io::Write;
use std::process::{Command, Output, Stdio};

fn banyan(args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_banyan"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start banyan");
    let mut input = child.stdin.take().expect("stdin is piped");
    input.write_all(stdin.as_bytes()).expect("write stdin");
    drop(input);
    child.wait_with_output().expect("wait for banyan")
}

fn stdout_of(args: &[&str], stdin: &str) -> String {
    let out = banyan(args, stdin);
    assert!(
        out.status.success(),
        "banyan {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}

#[test]
fn expand_prints_names_separated_by_spaces() {
    assert_eq!(
        stdout_of(&["nodeset", "-e", "cn[43-45,47]"], ""),
        "cn43 cn44 cn45 cn47\n"
    );
    assert_eq!(
        stdout_of(&["nodeset", "--expand", "-S", "\\n", "n[08-10]"], ""),
        "n08\nn09\nn10\n"
    );
}

#[test]
fn fold_prints_the_union_of_all_arguments() {
    assert_eq!(
        stdout_of(
            &[
                "nodeset",
                "-f",
                "r1n[1-4]",
                "r2n1,r2n2",
                "r2n[3-4]",
                "login"
            ],
            ""
        ),
        "login,r[1-2]n[1-4]\n"
    );
}

#[test]
fn count_prints_the_number_of_names() {
    assert_eq!(
        stdout_of(&["nodeset", "-c", "n[001-128],gpu[1-4]"], ""),
        "132\n"
    );
}

#[test]
fn reads_expressions_from_stdin_when_none_are_given() {
    let stdin = "cn1 cn2\ncn[3, 5]\n\ngpu01\n";
    assert_eq!(stdout_of(&["nodeset", "-f"], stdin), "cn[1-3,5],gpu01\n");
    assert_eq!(stdout_of(&["nodeset", "--count"], stdin), "5\n");
}

#[test]
fn bad_expression_exits_2_with_one_line_naming_the_problem() {
    let out = banyan(&["nodeset", "-f", "cn1", "cn[4-"], "");
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty());
    let stderr = String::from_utf8(out.stderr).expect("utf-8 stderr");
    assert_eq!(
        stderr,
        "banyan: invalid node set \"cn[4-\": unclosed bracket at column 3\n"
    );
}

#[test]
fn bad_stdin_exits_2_too() {
    let out = banyan(&["nodeset", "-e"], "cn1\ncn[9-2]\n");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8(out.stderr).expect("utf-8 stderr");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("reversed range 9-2"), "{stderr}");
}

#[test]
fn exactly_one_mode_is_required() {
    assert_eq!(banyan(&["nodeset", "cn1"], "").status.code(), Some(2));
    assert_eq!(
        banyan(&["nodeset", "-e", "-c", "cn1"], "").status.code(),
        Some(2)
    );
}
