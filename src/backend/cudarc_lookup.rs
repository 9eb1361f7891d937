//! Which copy of a library cudarc will use.
//!
//! cudarc opens each library by a list of names, unversioned ones (`libcublas.so`)
//! before the versioned soname (`libcublas.so.13`) that [`super::cuda_libs`] loaded. The
//! loader matches a name to a library already loaded only by its soname or its path, so
//! where the loader's path holds another CUDA's `libcublas.so`, cudarc would take that
//! copy instead of ours. This checks, for each name in cudarc's order, whether the loader
//! finds something, and whether that is the copy loaded.

use anyhow::{Result, bail};
use libloading::Library;
use std::ffi::CStr;
use std::path::{Path, PathBuf};

/// Fails where the first of `candidates` the loader finds is not the library opened at
/// `ours`, naming the file it found and the fix. `symbol` is one the
/// library defines: two copies define it at different addresses.
pub fn check(what: &str, ours: &Path, symbol: &str, candidates: &[String]) -> Result<()> {
    // Held open while the candidates are compared, so that our copy stays where it is.
    let our_lib = opened(ours.as_os_str());
    let Some(our_address) = our_lib.as_ref().and_then(|l| address(l, symbol)) else {
        bail!(
            "cannot use CUDA: {} does not define {symbol}; it is not {what}",
            ours.display()
        );
    };
    for name in candidates {
        let Some(lib) = opened(name.as_ref()) else {
            continue;
        };
        let found = address(&lib, symbol);
        if found == Some(our_address) {
            return Ok(());
        }
        let file = found
            .and_then(file_of)
            .unwrap_or_else(|| PathBuf::from(name));
        bail!("{}", conflict_message(what, name, ours, &file));
    }
    Ok(())
}

/// Why cudarc would take `file` for `name` instead of `ours`, and the fix.
fn conflict_message(what: &str, name: &str, ours: &Path, file: &Path) -> String {
    let head = format!(
        "cannot use CUDA: cudarc, through which easel calls CUDA, asks the loader for `{name}` before the {what} easel loaded from {}, and the loader finds another copy for it: {}.",
        ours.display(),
        file.display()
    );
    if file.parent() == ours.parent() {
        // Two copies side by side (WSL ships libcuda.so and libcuda.so.1 so): a link by
        // cudarc's name to ours, found first, makes the loader take ours.
        format!(
            "{head} Both are in one folder; make a folder holding a link `{name}` -> {} and put it first in LD_LIBRARY_PATH",
            ours.display()
        )
    } else {
        format!(
            "{head} Run easel with that file's folder out of LD_LIBRARY_PATH (or out of the loader's configuration, /etc/ld.so.conf.d)"
        )
    }
}

/// Opens a library by name or path, as cudarc does; `None` where there is none.
fn opened(name: &std::ffi::OsStr) -> Option<Library> {
    // SAFETY: the libraries cudarc would open anyway; NVIDIA's run no initialisers with
    // preconditions on load.
    unsafe { Library::new(name) }.ok()
}

/// The address of `symbol` in `lib`.
fn address(lib: &Library, symbol: &str) -> Option<usize> {
    // SAFETY: only the symbol's address is read, nothing is called.
    let f = unsafe { lib.get::<unsafe extern "C" fn()>(symbol.as_bytes()) }.ok()?;
    Some(*f as usize)
}

/// The file of the library that holds `address`.
fn file_of(address: usize) -> Option<PathBuf> {
    let mut info = libc::Dl_info {
        dli_fname: std::ptr::null(),
        dli_fbase: std::ptr::null_mut(),
        dli_sname: std::ptr::null(),
        dli_saddr: std::ptr::null_mut(),
    };
    // SAFETY: dladdr only reads the loader's tables and fills `info`.
    let found = unsafe { libc::dladdr(address as *const libc::c_void, &mut info) };
    if found == 0 || info.dli_fname.is_null() {
        return None;
    }
    // SAFETY: dladdr's file name is a NUL-terminated string owned by the loader.
    let name = unsafe { CStr::from_ptr(info.dli_fname) };
    Some(PathBuf::from(name.to_string_lossy().into_owned()))
}

#[cfg(test)]
mod tests {
    use super::check;
    use crate::backend::cuda_libs::search_dirs;
    use std::path::PathBuf;

    /// The folder of NVIDIA's nvrtc wheel, which holds two copies of nvrtc:
    /// `libnvrtc.so.13` and `libnvrtc.alt.so.13`. scripts/test.sh fetches it.
    fn nvrtc_wheel() -> PathBuf {
        search_dirs()
            .into_iter()
            .flatten()
            .find(|d| d.join("libnvrtc.alt.so.13").exists())
            .unwrap_or_else(|| {
                panic!("this test needs NVIDIA's nvrtc wheel, which holds two copies of nvrtc; scripts/test.sh fetches it and sets EASEL_CUDA_LIB_DIR")
            })
    }

    fn names(paths: &[PathBuf]) -> Vec<String> {
        paths.iter().map(|p| p.display().to_string()).collect()
    }

    #[test]
    fn the_copy_loaded_under_another_name_is_accepted() {
        let wheel = nvrtc_wheel();
        let ours = wheel.join("libnvrtc.so.13");
        let dir = tempfile::tempdir().expect("tempdir");
        let link = dir.path().join("libnvrtc.so");
        std::os::unix::fs::symlink(&ours, &link).expect("symlink");
        let missing = dir.path().join("libnvrtc64_13.so");
        // The link must open, or `check` would pass without comparing anything.
        assert!(super::opened(link.as_os_str()).is_some(), "the link opens");
        let candidates = names(&[missing, link]);
        check("nvrtc", &ours, "nvrtcVersion", &candidates).expect("the same file");
    }

    #[test]
    fn another_copy_found_first_is_named_with_the_fix() {
        let wheel = nvrtc_wheel();
        let ours = wheel.join("libnvrtc.so.13");
        // Side by side, as WSL has libcuda: the fix is a link by cudarc's name.
        let beside = wheel.join("libnvrtc.alt.so.13");
        // In another folder on the loader's path: the fix is to leave it off the path.
        let dir = tempfile::tempdir().expect("tempdir");
        let elsewhere = dir.path().join("libnvrtc.so");
        std::os::unix::fs::symlink(&beside, &elsewhere).expect("symlink");
        for (other, fix) in [
            (beside, "make a folder holding a link"),
            (elsewhere, "out of LD_LIBRARY_PATH"),
        ] {
            let candidates = names(&[other.clone(), ours.clone()]);
            let err = check("nvrtc", &ours, "nvrtcVersion", &candidates)
                .expect_err("a second copy of nvrtc comes first");
            let text = format!("{err:#}");
            assert!(text.contains(&other.display().to_string()), "{text}");
            assert!(text.contains(fix), "{text}");
            assert!(!text.contains('\n'), "one paragraph: {text}");
        }
    }

    #[test]
    fn a_library_without_the_symbol_is_not_taken_for_it() {
        let wheel = nvrtc_wheel();
        let ours = wheel.join("libnvrtc.so.13");
        let err =
            check("cuBLAS 13", &ours, "cublasCreate_v2", &[]).expect_err("nvrtc is not cuBLAS");
        assert!(format!("{err:#}").contains("not cuBLAS 13"), "{err:#}");
    }

    #[test]
    fn a_versioned_library_further_down_wins_over_an_unversioned_one_first() {
        let wheel = nvrtc_wheel();
        // Another nvrtc under the unversioned name, in a folder searched first.
        let first = tempfile::tempdir().expect("tempdir");
        let other = wheel.join("libnvrtc.alt.so.13");
        std::os::unix::fs::symlink(&other, first.path().join("libnvrtc.so")).expect("symlink");
        let dirs = [Some(first.path().to_path_buf()), Some(wheel.clone())];
        let found =
            crate::backend::cuda_libs::load_library(crate::backend::cuda_libs::nvrtc(), &dirs)
                .expect("nvrtc loads");
        assert_eq!(found, Some(wheel), "the versioned soname is taken first");
    }
}
