//! Locating and loading the ONNX Runtime shared library.
//!
//! `ort` is built with `load-dynamic`: nothing is linked or downloaded at build time, and the
//! library is opened at run time. The search order is `ORT_DYLIB_PATH`, then the project's venv
//! (`.venv/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so.<version>`, looked for
//! beside the executable's ancestors and the working directory's), so a user who ran
//! `scripts/setup.sh` sets nothing.
//!
//! Telemetry: Microsoft's ONNX Runtime builds (1.29 and later) send usage events from Linux as
//! well. The environment turns runtime events off (`with_telemetry(false)`), but the only full
//! opt-out is `ORT_DISABLE_TELEMETRY=1` in the environment before the library loads: the
//! `hashsrv` binary sets it at start, and `.venv/hashsrv.env` exports it for the scripts and
//! tests. A program embedding this library should set it too.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The ONNX Runtime version the project pins (PyPI `onnxruntime==1.31.1`).
pub const ORT_VERSION: &str = "1.31.1";

/// ONNX Runtime could not be found or loaded.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RuntimeError {
    #[error(
        "cannot find the ONNX Runtime library (libonnxruntime.so.{ORT_VERSION}).\n  \
         Run `scripts/setup.sh` in the hashsrv checkout to install it into .venv, or set \
         ORT_DYLIB_PATH to the path of libonnxruntime.so.{ORT_VERSION} (searched: {searched})"
    )]
    NotFound { searched: String },
    #[error(
        "cannot load ONNX Runtime from {path}: {message}\n  \
         Set ORT_DYLIB_PATH to a libonnxruntime.so.{ORT_VERSION}, or rerun `scripts/setup.sh`"
    )]
    Load { path: PathBuf, message: String },
    #[error("ONNX Runtime environment: {0}")]
    Environment(String),
}

/// Where ONNX Runtime would be loaded from: `ORT_DYLIB_PATH`, else the project's venv.
pub fn find_dylib() -> Result<PathBuf, RuntimeError> {
    if let Some(path) = std::env::var_os("ORT_DYLIB_PATH").filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(path));
    }
    let mut roots: Vec<PathBuf> = Vec::new();
    if let Ok(exe) = std::env::current_exe() {
        roots.extend(exe.ancestors().skip(1).map(Path::to_path_buf));
    }
    if let Ok(cwd) = std::env::current_dir() {
        roots.extend(cwd.ancestors().map(Path::to_path_buf));
    }
    let mut searched = Vec::new();
    for root in roots {
        let lib_dir = root.join(".venv").join("lib");
        if !searched.contains(&lib_dir) {
            searched.push(lib_dir.clone());
        }
        let Ok(entries) = std::fs::read_dir(&lib_dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let candidate =
                entry.path().join("site-packages/onnxruntime/capi").join(format!("libonnxruntime.so.{ORT_VERSION}"));
            if candidate.is_file() {
                return Ok(candidate);
            }
        }
    }
    let searched = std::iter::once("$ORT_DYLIB_PATH (unset)".to_string())
        .chain(searched.iter().map(|p| p.display().to_string()))
        .collect::<Vec<_>>()
        .join(", ");
    Err(RuntimeError::NotFound { searched })
}

/// Loads ONNX Runtime once per process and returns the shared environment.
pub fn environment() -> Result<&'static ort::environment::Environment, RuntimeError> {
    static ENV: OnceLock<Result<ort::environment::Environment, RuntimeError>> = OnceLock::new();
    // A failed load is kept too: ort refuses a second dlopen attempt in one process anyway.
    ENV.get_or_init(|| {
        let path = find_dylib()?;
        let builder =
            ort::init_from(&path).map_err(|e| RuntimeError::Load { path: path.clone(), message: e.to_string() })?;
        // See the module docs: this stops runtime events; ORT_DISABLE_TELEMETRY stops the rest.
        builder.with_name("hashsrv").with_telemetry(false).build().map_err(|e| RuntimeError::Environment(e.to_string()))
    })
    .as_ref()
    .map_err(Clone::clone)
}
