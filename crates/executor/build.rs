//! Builds the executor's C++ shim (CUDA streams, allocator statistics, AOTInductor loader) against
//! the same libtorch that `torch-sys` links, and adds the link flags that keep `libtorch_cuda.so`.
//!
//! libtorch is found the way `torch-sys` finds it: `LIBTORCH` (a libtorch directory) first, else,
//! with `LIBTORCH_USE_PYTORCH` set, the `torch` package of the active Python (`python` inside a
//! virtual environment, `python3` otherwise, as torch-sys does). CUDA headers come from the
//! `nvidia/*/include` directories of the same site-packages (or `GPUPOOL_CUDA_INCLUDE`, a
//! `:`-separated list). Without CUDA headers or `libc10_cuda.so` the shim is built without CUDA and
//! its CUDA functions report "no device".

use std::env;
use std::error::Error;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Where libtorch and the CUDA headers are.
struct Torch {
    includes: Vec<PathBuf>,
    lib_dir: PathBuf,
    cxx11_abi: String,
    cuda_includes: Vec<PathBuf>,
}

const PYTHON_SCRIPT: &str = r"
import os, torch
root = os.path.dirname(torch.__file__)
print('TORCH_ROOT:', root)
print('TORCH_CXX11:', int(torch._C._GLIBCXX_USE_CXX11_ABI))
print('SITE_PACKAGES:', os.path.dirname(root))
";

fn rerun_env(name: &str) -> Option<String> {
    println!("cargo:rerun-if-env-changed={name}");
    env::var(name).ok().filter(|v| !v.is_empty())
}

fn python_torch() -> Result<Torch, Box<dyn Error>> {
    let python = rerun_env("PYTHON_SYS_EXECUTABLE").unwrap_or_else(|| {
        if env::var_os("VIRTUAL_ENV").is_some() {
            "python".to_owned()
        } else {
            "python3".to_owned()
        }
    });
    let output = Command::new(&python)
        .arg("-c")
        .arg(PYTHON_SCRIPT)
        .output()
        .map_err(|e| format!("running {python} to locate torch: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "{python} could not import torch (LIBTORCH_USE_PYTORCH is set): {}",
            String::from_utf8_lossy(&output.stderr)
        )
        .into());
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let field = |key: &str| {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(key).map(|v| v.trim().to_owned()))
            .ok_or_else(|| format!("{python} did not print {key}"))
    };
    let root = PathBuf::from(field("TORCH_ROOT:")?);
    let site = PathBuf::from(field("SITE_PACKAGES:")?);
    Ok(Torch {
        includes: vec![
            root.join("include"),
            root.join("include/torch/csrc/api/include"),
        ],
        lib_dir: root.join("lib"),
        cxx11_abi: field("TORCH_CXX11:")?,
        cuda_includes: cuda_includes_in(&site),
    })
}

fn libtorch_dir(dir: &str) -> Torch {
    let root = PathBuf::from(dir);
    Torch {
        includes: vec![
            root.join("include"),
            root.join("include/torch/csrc/api/include"),
        ],
        lib_dir: root.join("lib"),
        cxx11_abi: rerun_env("LIBTORCH_CXX11_ABI").unwrap_or_else(|| "1".to_owned()),
        cuda_includes: Vec::new(),
    }
}

/// The include directories under `site-packages/nvidia` (and triton's copy) that hold
/// `cuda_runtime_api.h` and `crt/host_defines.h`.
fn cuda_includes_in(site: &Path) -> Vec<PathBuf> {
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Ok(entries) = std::fs::read_dir(site.join("nvidia")) {
        let mut dirs: Vec<PathBuf> = entries
            .flatten()
            .map(|e| e.path().join("include"))
            .collect();
        dirs.sort();
        candidates.extend(dirs);
    }
    candidates.push(site.join("triton/backends/nvidia/include"));
    let runtime = candidates
        .iter()
        .find(|d| d.join("cuda_runtime_api.h").is_file())
        .cloned();
    let crt = candidates
        .iter()
        .find(|d| d.join("crt/host_defines.h").is_file())
        .cloned();
    match (runtime, crt) {
        (Some(r), Some(c)) if r == c => vec![r],
        (Some(r), Some(c)) => vec![r, c],
        _ => Vec::new(),
    }
}

fn locate() -> Result<Torch, Box<dyn Error>> {
    let mut torch = if let Some(dir) = rerun_env("LIBTORCH") {
        libtorch_dir(&dir)
    } else if rerun_env("LIBTORCH_USE_PYTORCH").is_some() {
        python_torch()?
    } else {
        return Err(
            "libtorch not found: set LIBTORCH_USE_PYTORCH=1 with a torch==2.11.0 python first \
                    on PATH (tests/setup/torch-venv.sh), or LIBTORCH to a libtorch directory"
                .into(),
        );
    };
    if let Some(list) = rerun_env("GPUPOOL_CUDA_INCLUDE") {
        torch.cuda_includes = env::split_paths(&list).collect();
    }
    Ok(torch)
}

fn main() -> Result<(), Box<dyn Error>> {
    for f in [
        "shim/shim.h",
        "shim/common.cpp",
        "shim/cuda.cpp",
        "shim/aoti.cpp",
    ] {
        println!("cargo:rerun-if-changed={f}");
    }
    let torch = locate()?;
    let with_cuda =
        !torch.cuda_includes.is_empty() && torch.lib_dir.join("libc10_cuda.so").is_file();

    let mut build = cc::Build::new();
    build
        .cpp(true)
        .pic(true)
        .warnings(false)
        .flag("-std=c++17")
        .flag(format!("-D_GLIBCXX_USE_CXX11_ABI={}", torch.cxx11_abi))
        .flag("-DGLOG_USE_GLOG_EXPORT")
        .includes(&torch.includes)
        .files(["shim/common.cpp", "shim/cuda.cpp", "shim/aoti.cpp"]);
    if with_cuda {
        build
            .define("GPUPOOL_WITH_CUDA", "1")
            .includes(&torch.cuda_includes);
    } else {
        println!("cargo:warning=gpupool-executor: no CUDA headers or libc10_cuda found; the shim is built without CUDA");
    }
    build.try_compile("gpupool_shim")?;

    let lib = torch.lib_dir.display();
    println!("cargo:rustc-link-search=native={lib}");
    println!("cargo:lib_dir={lib}");
    // The shim references libtorch_cuda (at::cuda::getDeviceProperties), so a binary that calls it
    // keeps libtorch_cuda.so even under --as-needed; the link args below do the same for this
    // package's own tests, examples and binaries (cargo does not pass them to dependents).
    if with_cuda {
        println!("cargo:rustc-link-lib=dylib=torch_cuda");
        println!("cargo:rustc-link-lib=dylib=c10_cuda");
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
        println!("cargo:rustc-link-arg=-ltorch_cuda");
        println!("cargo:rustc-link-arg=-Wl,--as-needed");
    }
    println!("cargo:rustc-link-lib=dylib=torch_cpu");
    println!("cargo:rustc-link-lib=dylib=c10");
    println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
    Ok(())
}
