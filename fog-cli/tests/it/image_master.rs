//! `fog image ls|info|rm` with `--master URL` (or `--remote`) against a real master on loopback,
//! and without it against the local store, even when FOG_MASTER is set.

use std::process::{Command, Output};

use fogcore::control::client::Client;
use fogcore::control::master::Master;
use fogcore::control::model::{CopyReport, CopyState, Image, Node, Placement};
use serde_json::Value;

type TestResult = Result<(), Box<dyn std::error::Error>>;

pub(crate) struct Lab {
    rt: tokio::runtime::Runtime,
    master: Master,
    pub(crate) url: String,
    pub(crate) token: String,
    dir: tempfile::TempDir,
}

/// A master with nodes site-a and site-b; image `golden` on all nodes (complete on site-a,
/// replicating on site-b) and image `lab` on site-b only (failed there).
pub(crate) fn lab() -> Result<Lab, Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let db_url = format!("sqlite://{}?mode=rwc", dir.path().join("fog.db").display());
    let (master, token) = rt.block_on(async {
        let (master, token) = crate::tools::start_master(&db_url, None).await?;
        let c = Client::new(&format!("http://{}", master.addr()), Some(&token))?;
        for name in ["site-a", "site-b"] {
            c.create_node(&Node {
                name: name.into(),
                url: format!("http://{name}.lab:8080"),
                subnets: Vec::new(),
                max_clients: 4,
                enabled: true,
                last_seen: None,
            })
            .await?;
        }
        for (name, placement) in [
            ("golden", Placement::All),
            (
                "lab",
                Placement::Nodes {
                    nodes: vec!["site-b".into()],
                },
            ),
        ] {
            c.create_image(&Image {
                name: name.into(),
                description: "test image".into(),
                os: "debian-13".into(),
                size_bytes: 3 << 20,
                placement,
            })
            .await?;
        }
        let report = |state, bytes, reason: Option<&str>| CopyReport {
            state,
            bytes,
            reason: reason.map(str::to_string),
        };
        c.set_copy_state("golden", "site-a", &report(CopyState::Complete, 3 << 20, None))
            .await?;
        c.set_copy_state("golden", "site-b", &report(CopyState::Replicating, 1 << 20, None))
            .await?;
        c.set_copy_state("lab", "site-b", &report(CopyState::Failed, 0, Some("disk full")))
            .await?;
        Ok::<_, fogcore::Error>((master, token))
    })?;
    let url = format!("http://{}", master.addr());
    Ok(Lab {
        rt,
        master,
        url,
        token,
        dir,
    })
}

impl Lab {
    /// Runs `fog ARGS` with a local store in the lab dir and no FOG_* from the environment.
    pub(crate) fn fog(&self, args: &[&str], env: &[(&str, &str)]) -> Result<Output, std::io::Error> {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_fog"));
        cmd.args(args)
            .env_remove("FOG_MASTER")
            .env_remove("FOG_TOKEN")
            .env("FOG_STORE", self.dir.path().join("store"));
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.output()
    }
}

pub(crate) fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn image_ls_info_rm_against_the_master() -> TestResult {
    let lab = lab()?;
    let (url, token) = (lab.url.as_str(), lab.token.as_str());

    let out = lab.fog(&["image", "ls", "--master", url, "--token", token, "--json"], &[])?;
    assert!(out.status.success(), "{}", text(&out));
    let list: Value = serde_json::from_slice(&out.stdout)?;
    let names: Vec<&str> = list
        .as_array()
        .ok_or("not a list")?
        .iter()
        .filter_map(|i| i["name"].as_str())
        .collect();
    assert_eq!(names, ["golden", "lab"]);
    assert_eq!(list[0]["placement"]["kind"], "all");
    let copies = list[0]["copies"].as_array().ok_or("no copies")?;
    let states: Vec<(&str, &str)> = copies
        .iter()
        .filter_map(|c| Some((c["node"].as_str()?, c["state"].as_str()?)))
        .collect();
    assert_eq!(states, [("site-a", "complete"), ("site-b", "replicating")]);
    assert_eq!(list[1]["placement"]["nodes"], serde_json::json!(["site-b"]));

    let out = lab.fog(&["--master", url, "--token", token, "image", "ls"], &[])?;
    let shown = text(&out);
    assert!(out.status.success(), "{shown}");
    let golden = shown
        .lines()
        .find(|l| l.starts_with("golden"))
        .ok_or("no golden line")?;
    assert!(
        golden.contains("all nodes")
            && golden.contains("site-a=complete")
            && golden.contains("site-b=replicating(1.0 MiB)"),
        "{golden}"
    );
    let lab_line = shown.lines().find(|l| l.starts_with("lab ")).ok_or("no lab line")?;
    assert!(
        lab_line.contains("nodes site-b") && lab_line.contains("site-b=failed(disk full)"),
        "{lab_line}"
    );

    // --remote takes the master from FOG_MASTER.
    let out = lab.fog(
        &["image", "info", "lab", "--remote"],
        &[("FOG_MASTER", url), ("FOG_TOKEN", token)],
    )?;
    let shown = text(&out);
    assert!(out.status.success(), "{shown}");
    assert!(
        shown.contains("placement   nodes site-b") && shown.contains("copy        site-b=failed(disk full)"),
        "{shown}"
    );

    let out = lab.fog(&["image", "info", "nope", "--master", url, "--token", token], &[])?;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("nope"), "{}", text(&out));

    let out = lab.fog(&["image", "ls", "--master", url, "--token", "fog_wrong"], &[])?;
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).contains("unauthorized"), "{}", text(&out));

    let out = lab.fog(&["image", "rm", "lab", "--master", url, "--token", token], &[])?;
    assert!(out.status.success(), "{}", text(&out));
    let left = lab.rt.block_on(Client::new(url, Some(token))?.images())?;
    assert_eq!(left.iter().map(|i| i.name.as_str()).collect::<Vec<_>>(), ["golden"]);

    lab.rt.block_on(lab.master.stop())?;
    Ok(())
}

#[test]
fn without_master_on_the_command_line_images_are_the_local_store() -> TestResult {
    let lab = lab()?;
    let env = [("FOG_MASTER", lab.url.as_str()), ("FOG_TOKEN", lab.token.as_str())];
    let out = lab.fog(&["image", "ls", "--json"], &env)?;
    assert!(out.status.success(), "{}", text(&out));
    let list: Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(
        list,
        serde_json::json!([]),
        "the empty local store, not the master's two images"
    );
    let out = lab.fog(&["image", "rm", "golden"], &env)?;
    assert_eq!(out.status.code(), Some(2), "no local image golden: {}", text(&out));
    let still = lab.rt.block_on(Client::new(&lab.url, Some(&lab.token))?.images())?;
    assert_eq!(still.len(), 2, "the master's records are untouched");
    lab.rt.block_on(lab.master.stop())?;
    Ok(())
}

/// The exit code says whose fault a failure is: 2 for what the user typed (a name the rule
/// refuses, before anything is sent), 75 for a master that is not there (worth trying again).
#[test]
fn exit_codes_follow_the_kind_of_failure() -> TestResult {
    let Lab {
        rt, master, token, dir, ..
    } = lab()?;
    let fog = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_fog"))
            .args(args)
            .env_remove("FOG_MASTER")
            .env_remove("FOG_TOKEN")
            .env("FOG_STORE", dir.path().join("store"))
            .output()
    };
    let out = fog(&["image", "capture", "disk.img", "--name=-rf"])?;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("invalid image name"), "{}", text(&out));
    let url = format!("http://{}", master.addr());
    rt.block_on(master.stop())?;
    let out = fog(&["host", "ls", "--master", &url, "--token", &token])?;
    assert_eq!(out.status.code(), Some(75), "{}", text(&out));
    let out = fog(&["--json", "host", "ls", "--master", &url, "--token", &token])?;
    let report: Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(report["retry"], true, "{report}");
    Ok(())
}
