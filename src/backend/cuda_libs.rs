//! Finding NVIDIA's libraries at run time, before cudarc asks for them.
//!
//! cudarc opens libcuda, nvrtc, cuBLAS and cuDNN by name through the dynamic loader and
//! panics where one is missing. We open each by full path first, from the folders a
//! user is likely to have (`EASEL_CUDA_LIB_DIR`, the system's path, /usr/local/cuda, the
//! pip wheels PyTorch installs), with `RTLD_GLOBAL`: the loader then matches cudarc's
//! later request by soname to the library already loaded. A library that cannot be found
//! is an error naming it and how to get it, never a panic.

use super::cudarc_lookup;
use anyhow::{Result, bail};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// One library the CUDA path needs.
pub struct Library {
    /// What the user knows it as.
    pub what: &'static str,
    /// File names tried, best first (cudarc pins CUDA 13's API and cuDNN 9's).
    pub names: &'static [&'static str],
    /// Companion libraries the main one opens by name itself at run time; loaded from
    /// the same folder where they exist there.
    pub companions: &'static [&'static str],
    /// How to get it.
    pub fix: &'static str,
    /// The name cudarc asks the loader for it by (`None`: cudarc does not open it
    /// itself), and a symbol that tells one copy of it from another.
    pub cudarc: Option<(&'static str, &'static str)>,
}

const DRIVER: &str =
    "this machine has no NVIDIA GPU, or its driver is not installed (nvidia-smi tells which)";
const NVRTC: &str =
    "install CUDA 13's toolkit (it lands in /usr/local/cuda) or `pip install nvidia-cuda-nvrtc`";
const CUBLAS: &str =
    "install CUDA 13's toolkit (it lands in /usr/local/cuda) or `pip install nvidia-cublas`";
const CUDNN: &str = "install it with the system's packages (e.g. libcudnn9-cuda-13) or `pip install nvidia-cudnn-cu13`; PyTorch users already have it under site-packages/nvidia/cudnn/lib";
/// The parts of cuDNN 9 that libcudnn opens by name when it needs them.
const CUDNN_PARTS: &[&str] = &[
    "libcudnn_graph.so.9",
    "libcudnn_ops.so.9",
    "libcudnn_cnn.so.9",
    "libcudnn_adv.so.9",
    "libcudnn_heuristic.so.9",
    "libcudnn_engines_precompiled.so.9",
    "libcudnn_engines_runtime_compiled.so.9",
];

const fn lib(
    what: &'static str,
    names: &'static [&'static str],
    companions: &'static [&'static str],
    fix: &'static str,
    cudarc: Option<(&'static str, &'static str)>,
) -> Library {
    Library {
        what,
        names,
        companions,
        fix,
        cudarc,
    }
}

/// In load order: cuBLAS needs cuBLASLt, cuDNN's parts need its graph library.
#[rustfmt::skip]
pub const LIBRARIES: [Library; 5] = [
    lib("the NVIDIA driver's CUDA library", &["libcuda.so.1", "libcuda.so"], &[], DRIVER, Some(("cuda", "cuInit"))),
    lib("nvrtc 13 (CUDA's run-time compiler)", &["libnvrtc.so.13", "libnvrtc.so"], &["libnvrtc-builtins.so.13.*", "libnvrtc-builtins.so"], NVRTC, Some(("nvrtc", "nvrtcVersion"))),
    // cuBLAS opens cuBLASLt by its soname, which finds the copy loaded here.
    lib("cuBLASLt 13", &["libcublasLt.so.13", "libcublasLt.so"], &[], CUBLAS, None),
    lib("cuBLAS 13", &["libcublas.so.13", "libcublas.so"], &[], CUBLAS, Some(("cublas", "cublasCreate_v2"))),
    lib("cuDNN 9", &["libcudnn.so.9", "libcudnn.so"], CUDNN_PARTS, CUDNN, Some(("cudnn", "cudnnGetVersion"))),
];

/// The folders searched, in order. `None` stands for the system's own search path.
pub fn search_dirs() -> Vec<Option<PathBuf>> {
    let mut dirs: Vec<Option<PathBuf>> = std::env::var_os("EASEL_CUDA_LIB_DIR")
        .map(|v| std::env::split_paths(&v).map(Some).collect())
        .unwrap_or_default();
    dirs.push(None);
    for d in [
        "/usr/local/cuda/lib64",
        "/usr/local/cuda/targets/x86_64-linux/lib",
    ] {
        dirs.push(Some(PathBuf::from(d)));
    }
    dirs.extend(pip_wheel_dirs().into_iter().map(Some));
    dirs
}

/// `site-packages/nvidia/*/lib` of the Python installations a PyTorch user has.
fn pip_wheel_dirs() -> Vec<PathBuf> {
    let mut roots: Vec<PathBuf> = Vec::new();
    let home = std::env::var_os("HOME").map(PathBuf::from);
    let venv = std::env::var_os("VIRTUAL_ENV").map(PathBuf::from);
    let conda = std::env::var_os("CONDA_PREFIX").map(PathBuf::from);
    for base in [venv, conda, home.map(|h| h.join(".local"))]
        .into_iter()
        .flatten()
        .chain(["/usr/local", "/usr", "/opt/conda"].map(PathBuf::from))
    {
        for python in subdirs(&base.join("lib")) {
            if python
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("python3"))
            {
                roots.push(python.join("site-packages"));
                roots.push(python.join("dist-packages"));
            }
        }
    }
    roots.push(PathBuf::from("/usr/lib/python3/dist-packages"));
    roots
        .iter()
        .flat_map(|r| subdirs(&r.join("nvidia")))
        .map(|pkg| pkg.join("lib"))
        .filter(|lib| lib.is_dir())
        .collect()
}

fn subdirs(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut dirs: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    dirs
}

/// Opens a library so that later lookups by soname find it, and keeps it open.
fn open(path: &Path) -> bool {
    use libloading::os::unix::{Library as Lib, RTLD_GLOBAL, RTLD_NOW};
    // SAFETY: NVIDIA's libraries run no initialisers with preconditions on load.
    match unsafe { Lib::open(Some(path), RTLD_NOW | RTLD_GLOBAL) } {
        Ok(lib) => {
            // Kept for the life of the process: cudarc's handles point into it.
            std::mem::forget(lib);
            true
        }
        Err(_) => false,
    }
}

/// Where one library was found: the folder (`None` for the system's path) and the path
/// it was opened by.
///
/// Each name in every folder before the next name: the versioned soname first
/// everywhere, so that an unversioned `libcublas.so` of another CUDA on the system's
/// path is not taken while a pip wheel further down holds `libcublas.so.13`.
fn load_one(lib: &Library, dirs: &[Option<PathBuf>]) -> Option<(Option<PathBuf>, PathBuf)> {
    for name in lib.names {
        for dir in dirs {
            let path = match dir {
                Some(d) => d.join(name),
                None => PathBuf::from(name),
            };
            if dir.as_ref().is_some_and(|_| !path.exists()) {
                continue;
            }
            if open(&path) {
                if let Some(d) = dir {
                    load_companions(lib, d);
                }
                return Some((dir.clone(), path));
            }
        }
    }
    None
}

/// The files in `dir` a companion's name stands for: itself, or with a trailing `*`
/// every file that starts with what comes before it (nvrtc's builtins are named after
/// the minor version, `libnvrtc-builtins.so.13.0`, `.13.1`, ...).
fn companion_files(dir: &Path, name: &str) -> Vec<PathBuf> {
    let Some(prefix) = name.strip_suffix('*') else {
        return vec![dir.join(name)];
    };
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(prefix))
        .map(|e| e.path())
        .collect();
    files.sort();
    files
}

/// Loads the companions present in `dir`, retrying those whose own dependencies were
/// not loaded yet, until no more can be.
fn load_companions(lib: &Library, dir: &Path) {
    let mut pending: Vec<PathBuf> = lib
        .companions
        .iter()
        .flat_map(|n| companion_files(dir, n))
        .filter(|p| p.exists())
        .collect();
    loop {
        let before = pending.len();
        pending.retain(|p| !open(p));
        if pending.is_empty() || pending.len() == before {
            return;
        }
    }
}

/// What the CUDA libraries' search found: each library and where it came from.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub found: Vec<(&'static str, Option<PathBuf>)>,
}

/// Loads the libraries once per process; the first failure is remembered.
pub fn load() -> Result<&'static Loaded> {
    static LOADED: OnceLock<std::result::Result<Loaded, String>> = OnceLock::new();
    match LOADED.get_or_init(|| load_from(&search_dirs()).map_err(|e| format!("{e:#}"))) {
        Ok(l) => Ok(l),
        Err(e) => bail!("{e}"),
    }
}

/// Loads every library from `dirs`, or says which one is missing and how to get it.
pub fn load_from(dirs: &[Option<PathBuf>]) -> Result<Loaded> {
    let found = LIBRARIES
        .iter()
        .map(|lib| Ok((lib.what, load_library(lib, dirs)?)))
        .collect::<Result<_>>()?;
    Ok(Loaded { found })
}

/// Loads one library from `dirs`: the folder it came from (`None` for the system's
/// path), or which one is missing and how to get it.
pub fn load_library(lib: &Library, dirs: &[Option<PathBuf>]) -> Result<Option<PathBuf>> {
    let Some((dir, path)) = load_one(lib, dirs) else {
        bail!("{}", missing_message(lib, dirs));
    };
    if let Some((name, symbol)) = lib.cudarc {
        cudarc_lookup::check(
            lib.what,
            &path,
            symbol,
            &cudarc::get_lib_name_candidates(name),
        )?;
    }
    let from = dir
        .as_ref()
        .map_or("the system's path".into(), |d| d.display().to_string());
    tracing::debug!("{} loaded from {from}", lib.what);
    Ok(dir)
}

/// nvrtc, which compiles the kernels and needs no GPU.
pub fn nvrtc() -> &'static Library {
    &LIBRARIES[1]
}

/// One paragraph: what is missing, where we looked, how to get it.
pub fn missing_message(lib: &Library, dirs: &[Option<PathBuf>]) -> String {
    let searched: Vec<String> = dirs
        .iter()
        .map(|d| match d {
            Some(d) => d.display().to_string(),
            None => "the system's library path".to_string(),
        })
        .collect();
    format!(
        "cannot use CUDA: {} ({}) was not found. Searched: {}. To fix: {}; or set EASEL_CUDA_LIB_DIR to the folder that holds it. `--backend cpu` (or wgpu) runs without CUDA.",
        lib.what,
        lib.names[0],
        searched.join(", "),
        lib.fix
    )
}

#[cfg(test)]
mod tests {
    use super::companion_files;

    #[test]
    fn a_trailing_star_names_every_minor_version_present() {
        let dir = tempfile::tempdir().expect("tempdir");
        for f in [
            "libnvrtc-builtins.so.13.1",
            "libnvrtc-builtins.so.13.0",
            "libnvrtc.so.13",
        ] {
            std::fs::write(dir.path().join(f), b"").expect("file");
        }
        let names = |pattern: &str| -> Vec<String> {
            companion_files(dir.path(), pattern)
                .iter()
                .map(|p| p.file_name().expect("name").to_string_lossy().into_owned())
                .collect()
        };
        assert_eq!(
            names("libnvrtc-builtins.so.13.*"),
            ["libnvrtc-builtins.so.13.0", "libnvrtc-builtins.so.13.1"]
        );
        // A plain name stands for itself, present or not (the caller checks).
        assert_eq!(names("libnvrtc-builtins.so"), ["libnvrtc-builtins.so"]);
    }
}
