//! Embeds libtorch's folder as an rpath so `hashsrv-train` and its tests run without
//! `LD_LIBRARY_PATH`, and compiles the CPU-autocast bridge (`cpp/cpu_autocast.cpp`) against the
//! same libtorch. torch-sys reports the folder it linked against as `DEP_TCH_LIBTORCH_LIB`.

use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    println!("cargo:rerun-if-changed=cpp/cpu_autocast.cpp");
    let lib = PathBuf::from(std::env::var("DEP_TCH_LIBTORCH_LIB").expect("torch-sys sets DEP_TCH_LIBTORCH_LIB"));
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
    // libtorch's layout, in a wheel (torch/lib, torch/include) as in the zip: include/ is lib/'s sibling.
    let include = lib.parent().expect("libtorch's lib folder has a parent").join("include");
    cc::Build::new()
        .cpp(true)
        .pic(true)
        .warnings(false)
        .flag("-std=c++17")
        .include(&include)
        .include(include.join("torch/csrc/api/include"))
        .file("cpp/cpu_autocast.cpp")
        .compile("hashsrv_cpu_autocast");
}
