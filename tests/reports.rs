//! What a run leaves for people to look at: `losses.svg`, `report.html`, `easel plot`
//! and `easel runs`, on real runs of the binary.

mod common;

use common::easel;
use std::io::BufRead;
use std::path::Path;
use std::process::{Child, Command, Stdio};

fn scratch() -> tempfile::TempDir {
    common::scratch(
        &["chelsea.png", "starry_night.jpg"],
        "name: tiny\ncontent: chelsea.png\nstyle: starry_night.jpg\nsize: {width: 32, height: 24}\niterations: 3\nsave_every: 2\nbackend: cpu\n",
    )
}

fn only_run(out: &Path) -> std::path::PathBuf {
    let runs = common::run_dirs(out);
    assert_eq!(runs.len(), 1, "{runs:?}");
    runs[0].clone()
}

/// Every `src="..."` of an HTML page.
fn sources(html: &str) -> Vec<String> {
    html.split("src=\"")
        .skip(1)
        .map(|rest| rest.split('"').next().unwrap_or_default().to_string())
        .collect()
}

#[test]
fn a_run_leaves_a_plot_and_a_report_that_link_its_files() {
    let dir = scratch();
    let o = easel(
        &["run", "p.yaml", "--ui", "plain", "--out", "out"],
        dir.path(),
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let run = only_run(&dir.path().join("out"));
    let svg = std::fs::read_to_string(run.join("losses.svg")).expect("losses.svg");
    assert!(svg.starts_with("<svg"), "{}", &svg[..svg.len().min(200)]);
    for label in ["J_content", "J_style", "conv1_1", "conv5_1", "iteration"] {
        assert!(svg.contains(label), "the plot lacks {label}");
    }
    // Three series on the left, five layers on the right: a line and a legend mark each
    // (the axes and grid are thinner).
    assert_eq!(
        svg.matches("stroke-width=\"2\"").count(),
        2 * (3 + 5),
        "lines and legend marks"
    );
    let html = std::fs::read_to_string(run.join("report.html")).expect("report.html");
    let linked = sources(&html);
    for wanted in ["losses.svg", "final.png", "snapshots/iter_00002.png"] {
        assert!(
            linked.iter().any(|s| s == wanted),
            "{wanted} not in {linked:?}"
        );
    }
    for s in &linked {
        assert!(
            run.join(s).is_file(),
            "report.html links {s}, which is missing"
        );
    }
    assert!(
        html.contains("3 of 3") && html.contains("finished"),
        "{html}"
    );

    std::fs::remove_file(run.join("losses.svg")).expect("rm");
    std::fs::remove_file(run.join("report.html")).expect("rm");
    let run_arg = run.to_str().expect("utf-8");
    let o = easel(&["plot", run_arg], dir.path());
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(
        std::fs::read_to_string(run.join("losses.svg")).expect("redrawn"),
        svg,
        "easel plot draws the same plot from the same files"
    );
    assert!(run.join("report.html").is_file());
    let o = easel(&["plot", "out"], dir.path());
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("is not a run directory"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Starts a long run (or resume) and returns once its first line is out.
fn start_long(dir: &Path, args: &[&str]) -> Child {
    let mut child = common::easel_command(dir)
        .args(args)
        .args(["--ui", "plain", "--set", "iterations=100000"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("easel starts");
    let mut lines = std::io::BufReader::new(child.stderr.take().expect("stderr")).lines();
    let header = lines.next().expect("a first line").expect("text");
    assert!(header.starts_with("run "), "{header}");
    // Keep reading so that easel never blocks on a full pipe.
    std::thread::spawn(move || lines.count());
    child
}

fn stop(mut child: Child) {
    std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert_eq!(child.wait().expect("easel ends").code(), Some(143));
}

fn listed(dir: &Path) -> Vec<serde_json::Value> {
    let o = easel(&["runs", "out", "--json"], dir);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object a line"))
        .collect()
}

#[test]
fn runs_lists_each_run_with_its_state_and_how_to_go_on() {
    let dir = scratch();
    let o = easel(
        &["run", "p.yaml", "--ui", "plain", "--out", "out"],
        dir.path(),
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // The run directories' names start with the second they started in.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    stop(start_long(dir.path(), &["run", "p.yaml", "--out", "out"]));
    let runs = listed(dir.path());
    assert_eq!(runs.len(), 2, "{runs:?}");
    let (finished, stopped) = (&runs[0], &runs[1]);
    assert_eq!(finished["state"], "finished");
    assert_eq!(
        (finished["done"].as_u64(), finished["total"].as_u64()),
        (Some(3), Some(3))
    );
    assert_eq!(finished["backend"], "cpu");
    assert!(finished["J"].as_f64().is_some_and(|j| j > 0.0));
    assert_eq!(stopped["state"], "stopped");
    assert_eq!(stopped["total"].as_u64(), Some(100000));
    let stopped_dir = stopped["path"].as_str().expect("path").to_string();
    assert_eq!(stopped["resume"], format!("easel resume {stopped_dir}"));

    let resumed = start_long(dir.path(), &["resume", &stopped_dir]);
    let runs = listed(dir.path());
    assert_eq!(runs[1]["state"], "running", "{runs:?}");
    assert!(runs[1]["resume"].is_null());
    stop(resumed);

    let o = easel(&["runs", "out"], dir.path());
    let table = String::from_utf8_lossy(&o.stdout);
    assert!(
        table.contains("finished") && table.contains("stopped"),
        "{table}"
    );
    assert!(
        table.contains(&format!("easel resume {stopped_dir}")),
        "{table}"
    );
    let o = easel(&["runs", "nowhere"], dir.path());
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("nowhere"));
    // A plot of a run whose costs are gone says so rather than drawing nothing quietly.
    let copy = dir.path().join("copy");
    let cp = Command::new("cp")
        .args(["-r", &stopped_dir, copy.to_str().expect("utf-8")])
        .current_dir(dir.path())
        .status()
        .expect("cp");
    assert!(cp.success());
    std::fs::remove_file(copy.join("losses.jsonl")).expect("remove losses.jsonl");
    let o = easel(&["plot", "copy"], dir.path());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        o.status.success() && err.contains("records no costs"),
        "{err}"
    );
    // A run directory given for its folder says what it is and what to give instead.
    let o = easel(&["runs", &stopped_dir], dir.path());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("it is a run directory itself") && err.contains("easel plot"),
        "{err}"
    );
}
