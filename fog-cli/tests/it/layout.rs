//! `--layout fit|exact`: on a local deploy, a host (`host add`, `host set`) and a deploy task on a
//! master (the host's layout when none is given); any other value is bad input, exit code 2.

use serde_json::Value;

use crate::image_master::{lab, text};

type TestResult = Result<(), Box<dyn std::error::Error>>;

#[test]
fn layout_flags_reach_hosts_and_deploy_tasks_and_other_values_exit_2() -> TestResult {
    let lab = lab()?;
    let on_master = |args: &[&str]| {
        let mut all = vec!["--json", "--master", &lab.url, "--token", &lab.token];
        all.extend_from_slice(args);
        lab.fog(&all, &[])
    };
    let json = |out: &std::process::Output| -> Result<Value, Box<dyn std::error::Error>> {
        assert_eq!(out.status.code(), Some(0), "{}", text(out));
        Ok(serde_json::from_slice(&out.stdout)?)
    };

    let out = lab.fog(&["image", "deploy", "golden", "t.img", "--layout", "sideways"], &[])?;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("not one of fit, exact"), "{}", text(&out));
    let help = lab.fog(&["image", "deploy", "--help"], &[])?;
    assert!(
        text(&help).contains("--layout <fit|exact>") && text(&help).contains("[default: fit]"),
        "{}",
        text(&help)
    );
    let out = lab.fog(&["image", "deploy", "golden", "t.img", "--layout", "exact"], &[])?;
    assert!(!text(&out).contains("--layout"), "the flag is taken: {}", text(&out));

    let host = json(&on_master(&[
        "host",
        "add",
        "pc-01",
        "--mac",
        "52:54:00:00:08:01",
        "--image",
        "golden",
        "--node",
        "site-a",
    ])?)?;
    assert_eq!(host["layout"], "fit", "the default: {host}");
    let host = json(&on_master(&["host", "set", "pc-01", "--layout", "exact"])?)?;
    assert_eq!(host["layout"], "exact", "{host}");
    let out = on_master(&["host", "set", "pc-01"])?;
    assert_eq!(out.status.code(), Some(2), "nothing to change: {}", text(&out));

    let task = json(&on_master(&["task", "deploy", "pc-01"])?)?;
    assert_eq!(task["layout"], "exact", "the host's: {task}");
    let id = task["id"].as_i64().ok_or("no task id")?.to_string();
    json(&on_master(&["task", "cancel", &id])?)?;
    let task = json(&on_master(&["task", "deploy", "pc-01", "--layout", "fit"])?)?;
    assert_eq!(task["layout"], "fit", "the task's own: {task}");

    let out = on_master(&["task", "deploy", "pc-01", "--layout", "bogus"])?;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let out = on_master(&[
        "host",
        "add",
        "pc-02",
        "--mac",
        "52:54:00:00:08:02",
        "--layout",
        "bogus",
    ])?;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    Ok(())
}
