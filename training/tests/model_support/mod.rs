//! Shared by the model, export and pretrained tests: the project's venv python and the script
//! that rebuilds torchvision's resnet18 in torch.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// `.venv/bin/python`, found by walking up from this crate (the worktree links `.venv`).
pub fn python() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest
        .ancestors()
        .map(|dir| dir.join(".venv/bin/python"))
        .find(|p| p.is_file())
        .expect("no .venv/bin/python above the crate: run scripts/setup.sh")
}

pub fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/scripts").join(name)
}

/// Runs the venv's python on `args`, panicking with its stderr on failure; returns stdout.
pub fn run_python(args: &[&std::ffi::OsStr]) -> String {
    let out = Command::new(python()).args(args).output().expect("cannot start the venv's python");
    assert!(
        out.status.success(),
        "python {:?} failed: {}\n{}",
        args,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("python printed non-UTF-8")
}
