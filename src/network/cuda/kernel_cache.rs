//! Compiled kernels kept between runs, so that a run on CUDA (or a move to it) does not
//! wait for nvrtc again: 0.34-0.58 s for sm_90 on the 2-core development machine
//! (nvrtc 13.0), where PyTorch takes about 1 s for the whole default preset on an H200.
//! A CUBIN is kept under the cache folder as `cuda-kernels/<key>.cubin`, the key a hash
//! of the source, nvrtc's options and version, and the card's architecture, so that a
//! changed kernel or another card never reads another's code. A file that is not a
//! CUBIN, or that the driver will not load, is compiled again and replaced.

use super::compile::{Compiled, OPTIONS, compile};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// Where the kernels for `capability` are kept in `dir`.
fn cache_file(dir: &Path, source: &str, (major, minor): (i32, i32)) -> PathBuf {
    let mut hash = Sha256::new();
    let version = nvrtc_version();
    let arch = format!("sm_{major}{minor}");
    let parts = [source, &version, &arch]
        .into_iter()
        .chain(OPTIONS.iter().copied());
    for part in parts {
        hash.update(part.as_bytes());
        hash.update([0]);
    }
    let key: String = hash.finalize()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    dir.join(format!("{key}.cubin"))
}

/// nvrtc's version, as "13.0" ("" where it cannot be read, which the driver's load of a
/// cached file then checks).
fn nvrtc_version() -> String {
    let (mut major, mut minor) = (0, 0);
    // SAFETY: nvrtc is loaded before any compile; it writes two ints.
    match unsafe { cudarc::nvrtc::sys::nvrtcVersion(&mut major, &mut minor) }.result() {
        Ok(()) => format!("{major}.{minor}"),
        Err(_) => String::new(),
    }
}

/// The kernels compiled for `capability`: read from `dir` where they were kept, else
/// compiled and kept there (PTX for a card nvrtc does not know is never kept: the driver
/// compiles it anyway). Returns the file read from, for [`forget`] where it will not load.
pub fn compile_kept(
    source: &str,
    capability: (i32, i32),
    dir: Option<&Path>,
) -> anyhow::Result<(Compiled, Option<PathBuf>)> {
    let file = dir.map(|d| cache_file(d, source, capability));
    if let Some(file) = &file
        && let Ok(bytes) = std::fs::read(file)
        && bytes.starts_with(b"\x7fELF")
    {
        return Ok((Compiled::Cubin(bytes), Some(file.clone())));
    }
    let compiled = compile(source, capability)?;
    if let (Some(file), Compiled::Cubin(bytes)) = (&file, &compiled)
        && let Err(e) = crate::atomic::write_in_new_folder(file, bytes)
    {
        tracing::debug!("not keeping the compiled CUDA kernels: {e:#}");
    }
    Ok((compiled, None))
}

/// Removes a kept file the driver would not load.
pub fn forget(file: &Path) {
    if let Err(e) = std::fs::remove_file(file) {
        tracing::debug!("cannot remove {}: {e}", file.display());
    }
}

/// The folder kernels are kept in: `cuda-kernels` in easel's cache folder.
pub fn default_dir() -> Option<PathBuf> {
    crate::builtin::cache_dir().map(|d| d.join("cuda-kernels"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::network::cuda::compile::tests::load_nvrtc;
    use crate::network::cuda::kernels::SOURCE;

    #[test]
    fn kernels_are_compiled_once_then_read_and_a_bad_file_is_replaced() {
        load_nvrtc();
        let dir = tempfile::tempdir().expect("tempdir");
        let card = (9, 0);
        let (first, from) = compile_kept(SOURCE, card, Some(dir.path())).expect("compile");
        assert!(from.is_none(), "nothing was kept yet");
        let Compiled::Cubin(bytes) = first else {
            panic!("sm_90 gets machine code")
        };
        let file = cache_file(dir.path(), SOURCE, card);
        assert_eq!(std::fs::read(&file).expect("kept"), bytes);
        let (again, from) = compile_kept(SOURCE, card, Some(dir.path())).expect("read");
        assert_eq!(from.as_deref(), Some(file.as_path()), "read from the file");
        assert!(matches!(again, Compiled::Cubin(b) if b == bytes));
        // Another card, or another source, has its own file.
        assert_ne!(file, cache_file(dir.path(), SOURCE, (8, 0)));
        assert_ne!(file, cache_file(dir.path(), "// changed", card));
        // A torn or foreign file is compiled again and replaced.
        std::fs::write(&file, b"not a cubin").expect("write");
        let (_, from) = compile_kept(SOURCE, card, Some(dir.path())).expect("recompile");
        assert!(from.is_none(), "a file that is not a CUBIN is not used");
        assert_eq!(std::fs::read(&file).expect("replaced"), bytes);
        forget(&file);
        assert!(!file.exists());
    }
}
