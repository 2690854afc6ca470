//! `hashsrv serve` as a process: it refuses a broken start with a message and exit code 1, and
//! on SIGTERM it drains and exits 0.

mod server_support;

use std::process::{Command, Stdio};

use server_support::*;

fn hashsrv() -> Command {
    Command::new(env!("CARGO_BIN_EXE_hashsrv"))
}

#[test]
fn a_missing_model_is_refused_with_exit_code_1() {
    let dir = tempfile::tempdir().unwrap();
    let index = dir.path().join("folder.hidx");
    build_index(&index, None);
    let output = hashsrv()
        .args(["serve", "--addr", "127.0.0.1:0", "--model"])
        .arg(dir.path().join("missing.onnx"))
        .arg("--index")
        .arg(&index)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("cannot read the model") && stderr.contains("missing.onnx"), "{stderr}");
    // A bad flag is a usage error (2).
    let output = hashsrv().args(["serve", "--model", "m", "--index", "i", "--max-batch", "0"]).output().unwrap();
    assert_eq!(output.status.code(), Some(2));
}

#[cfg(unix)]
#[test]
fn sigterm_stops_the_server_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let index = dir.path().join("folder.hidx");
    build_index(&index, None);
    let mut child = hashsrv()
        .args(["serve", "--addr", "127.0.0.1:0", "--threads", "1", "--model"])
        .arg(model_path())
        .arg("--index")
        .arg(&index)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (url, log, mut stderr) = serving_url(child.stderr.take().unwrap());
    let health: serde_json::Value = reqwest::blocking::get(format!("{url}/health")).unwrap().json().unwrap();
    assert_eq!(health["index"]["items"], 15);
    let response = reqwest::blocking::Client::new()
        .post(format!("{url}/search?k=2"))
        .body(fixture_image("apples/apples_1.png"))
        .send()
        .unwrap();
    assert_eq!(response.status(), 200);
    let killed = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(killed.success());
    let status = child.wait().unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut rest).unwrap();
    assert!(status.success(), "exit {status}:\n{log}{rest}");
    assert!(rest.contains("SIGTERM"), "{rest}");
}
