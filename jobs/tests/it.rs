//! The `duet` command line, run as a user would.

use std::process::Command;

fn duet(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_duet"))
        .args(args)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

const REFERENCE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../config/examples/ecommerce.toml"
);

#[test]
fn config_check_accepts_the_reference() {
    let (code, out) = duet(&["config", "check", REFERENCE]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("ok (2 sources, 5 views, 1 jobs)"), "{out}");
}

#[test]
fn config_check_lists_every_problem_and_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    let text = std::fs::read_to_string(REFERENCE)
        .unwrap()
        .replace("bucket = \"1m\"", "bucket = \"one minute\"")
        .replace(
            "kind = \"distinct_count\", field = \"userId\"",
            "kind = \"distinct_count\", field = \"nope\"",
        )
        .replace("bind = \"127.0.0.1:8080\"", "bind = \"somewhere\"");
    std::fs::write(&bad, text).unwrap();
    let (code, out) = duet(&["config", "check", bad.to_str().unwrap()]);
    assert_eq!(code, 2, "{out}");
    let file = bad.display().to_string();
    for needle in [
        format!("{file}: serving.bind: expected an address"),
        format!("{file}: views[0].bucket: duration `one minute`"),
        format!("{file}: views[2].measures[0].field: unknown field `nope`"),
    ] {
        assert!(out.contains(&needle), "missing {needle:?} in:\n{out}");
    }
    let (code, out) = duet(&["config", "check", "/no/such/file.toml"]);
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("cannot read config file /no/such/file.toml"),
        "{out}"
    );
}

#[test]
fn jobs_list_and_errors() {
    let (code, out) = duet(&["jobs", "list", "-c", REFERENCE]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("seal\t0 * * * * *\torders_per_minute,gmv_per_minute"),
        "{out}"
    );
    let (code, out) = duet(&["jobs", "run", "nope", "-c", REFERENCE]);
    assert_eq!(code, 1);
    assert!(out.contains("unknown view `nope`"), "{out}");
    let (code, out) = duet(&[
        "jobs",
        "run",
        "gmv_per_minute",
        "--from",
        "0",
        "-c",
        REFERENCE,
    ]);
    assert_eq!(code, 1);
    assert!(out.contains("give both --from and --to"), "{out}");
}
