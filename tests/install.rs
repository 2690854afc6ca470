//! The installation contract: the serving binary does not link libtorch, finds ONNX Runtime by
//! itself when the project's venv is there, and says clearly what to do when it cannot.

use std::path::Path;
use std::process::Command;

const HASHSRV: &str = env!("CARGO_BIN_EXE_hashsrv");

#[test]
fn serving_binary_does_not_link_libtorch() {
    let out = Command::new("ldd").arg(HASHSRV).output().expect("run ldd");
    assert!(out.status.success(), "ldd failed: {}", String::from_utf8_lossy(&out.stderr));
    let libs = String::from_utf8_lossy(&out.stdout);
    assert!(libs.contains("libc.so"), "unexpected ldd output: {libs}");
    for forbidden in ["torch", "c10", "onnxruntime"] {
        assert!(!libs.contains(forbidden), "hashsrv links {forbidden}:\n{libs}");
    }
}

#[test]
fn help_lists_the_subcommands() {
    let out = Command::new(HASHSRV).arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for sub in ["serve", "build-index", "search", "evaluate", "info", "train", "doctor"] {
        assert!(help.lines().any(|l| l.trim_start().starts_with(sub)), "--help lacks {sub}:\n{help}");
    }
}

#[test]
fn bad_usage_exits_with_2() {
    let out = Command::new(HASHSRV).arg("no-such-command").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}

/// A copy of the binary far from any `.venv`, with `ORT_DYLIB_PATH` unset, cannot find ONNX
/// Runtime: it must fail with exit code 1 and a message naming the variable and the setup command.
#[test]
fn missing_onnxruntime_gives_one_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let exe = dir.path().join("hashsrv");
    std::fs::copy(HASHSRV, &exe).unwrap();
    let out = Command::new(&exe).arg("doctor").env_remove("ORT_DYLIB_PATH").current_dir(dir.path()).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
    assert!(stderr.contains("ORT_DYLIB_PATH") && stderr.contains("scripts/setup.sh"), "unclear message: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn a_wrong_onnxruntime_path_is_named_in_the_error() {
    let out =
        Command::new(HASHSRV).arg("doctor").env("ORT_DYLIB_PATH", "/nonexistent/libonnxruntime.so").output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
    assert!(stderr.contains("/nonexistent/libonnxruntime.so") && stderr.contains("ORT_DYLIB_PATH"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// With the project's venv in place (scripts/setup.sh), ONNX Runtime is found without any variable.
#[test]
fn the_project_venv_is_found_without_configuration() {
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv");
    assert!(venv.is_dir(), "run scripts/setup.sh first: {} is missing", venv.display());
    let out = Command::new(HASHSRV).arg("doctor").env_remove("ORT_DYLIB_PATH").output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "doctor failed: {}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("libonnxruntime.so.1.31.1 (loaded)"), "{stdout}");
    assert!(stdout.contains("execution providers: CPU"), "{stdout}");
}

/// ONNX Runtime's usage telemetry is off in the binary even when the user's environment says
/// nothing, and a user's explicit choice is kept.
#[test]
fn onnxruntime_telemetry_is_off_unless_the_user_turns_it_on() {
    let out = Command::new(HASHSRV).arg("doctor").env_remove("ORT_DISABLE_TELEMETRY").output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "doctor failed: {}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("onnxruntime telemetry: off"), "{stdout}");
    let out = Command::new(HASHSRV).arg("doctor").env("ORT_DISABLE_TELEMETRY", "0").output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("onnxruntime telemetry: ON"));
}
