//! Compiling the small kernels ([`super::kernels`]) with nvrtc, which needs no GPU: the
//! tests compile them here for every architecture CUDA 13 supports.
//!
//! The kernels are compiled to a CUBIN for the card's own architecture (`sm_XY`), not to
//! PTX: PTX from an nvrtc newer than the driver fails to load (CUDA's minor-version
//! compatibility covers CUBINs, not PTX), and a CUBIN skips the driver's JIT at start.
//! Only where this nvrtc does not know the card (a card newer than it) is it PTX for
//! nvrtc's default architecture, which the driver then compiles.

use anyhow::{Result, anyhow, bail};
use cudarc::nvrtc::{Ptx, result, sys};
use std::ffi::{CStr, CString};

/// `--fmad=false`: no contraction to FMA, so that `x * s + t` rounds as the CPU path's.
const FMAD: &str = "--fmad=false";

/// nvrtc's options besides the architecture (also the kept CUBIN's key,
/// `kernel_cache.rs`).
pub(super) const OPTIONS: &[&str] = &[FMAD];

/// What nvrtc produced.
pub enum Compiled {
    /// Machine code for `sm_XY`.
    Cubin(Vec<u8>),
    /// PTX text for nvrtc's default architecture.
    Ptx(String),
}

impl Compiled {
    pub fn into_module_image(self) -> Ptx {
        match self {
            Compiled::Cubin(bytes) => Ptx::from_binary(bytes),
            Compiled::Ptx(text) => Ptx::from_src(text),
        }
    }
}

/// Compiles `source` for a card of compute capability `(major, minor)`; where both ways
/// fail, the error gives both logs.
pub fn compile(source: &str, (major, minor): (i32, i32)) -> Result<Compiled> {
    let arch = format!("--gpu-architecture=sm_{major}{minor}");
    let with_arch: Vec<&str> = std::iter::once(arch.as_str())
        .chain(OPTIONS.iter().copied())
        .collect();
    let cubin = match run_nvrtc(source, &with_arch).and_then(|p| p.cubin()) {
        Ok(bytes) => return Ok(Compiled::Cubin(bytes)),
        Err(e) => e,
    };
    tracing::warn!(
        "nvrtc could not make machine code for sm_{major}{minor} ({cubin:#}); trying PTX for the driver to compile"
    );
    match run_nvrtc(source, OPTIONS).and_then(|p| p.ptx()) {
        Ok(ptx) => Ok(Compiled::Ptx(ptx)),
        Err(ptx) => bail!(
            "nvrtc could not compile easel's CUDA kernels. For sm_{major}{minor}: {cubin:#}. For its default architecture: {ptx:#}"
        ),
    }
}

/// A compiled nvrtc program, destroyed on drop.
struct Program {
    prog: sys::nvrtcProgram,
    /// nvrtc may point into the source until the program is destroyed.
    _source: CString,
}

impl Drop for Program {
    fn drop(&mut self) {
        // SAFETY: created by create_program and destroyed only here. A failure to free
        // it leaks a little host memory; there is nothing better to do in a drop.
        let _ = unsafe { result::destroy_program(self.prog) };
    }
}

/// Creates and compiles a program; a compile error carries nvrtc's log.
fn run_nvrtc(source: &str, options: &[&str]) -> Result<Program> {
    let source = CString::new(source).map_err(|e| anyhow!("kernel source: {e}"))?;
    let name = c"easel_kernels.cu";
    let prog = result::create_program(&source, Some(name))
        .map_err(|e| anyhow!("nvrtc could not create the program: {e:?}"))?;
    let program = Program {
        prog,
        _source: source,
    };
    // SAFETY: the program was just created and is live until `program` drops.
    if let Err(e) = unsafe { result::compile_program(program.prog, options) } {
        // SAFETY: as above.
        let log = unsafe { result::get_program_log(program.prog) }
            .map(|raw| text(&raw))
            .unwrap_or_else(|l| format!("(no log: {l:?})"));
        bail!("{e:?} with {}: {}", options.join(" "), log.trim());
    }
    Ok(program)
}

impl Program {
    fn cubin(&self) -> Result<Vec<u8>> {
        let mut size = 0usize;
        // SAFETY: the program is live and compiled; the buffer has the size nvrtc gave.
        unsafe { sys::nvrtcGetCUBINSize(self.prog, &mut size) }
            .result()
            .map_err(|e| anyhow!("nvrtc's CUBIN size: {e:?}"))?;
        if size == 0 {
            bail!("nvrtc produced no CUBIN");
        }
        let mut bytes = vec![0u8; size];
        // SAFETY: as above.
        unsafe { sys::nvrtcGetCUBIN(self.prog, bytes.as_mut_ptr().cast()) }
            .result()
            .map_err(|e| anyhow!("nvrtc's CUBIN: {e:?}"))?;
        Ok(bytes)
    }

    fn ptx(&self) -> Result<String> {
        // SAFETY: the program is live and compiled.
        let raw =
            unsafe { result::get_ptx(self.prog) }.map_err(|e| anyhow!("nvrtc's PTX: {e:?}"))?;
        Ok(text(&raw))
    }
}

/// A NUL-terminated buffer from nvrtc as text.
fn text(raw: &[std::ffi::c_char]) -> String {
    let bytes: Vec<u8> = raw.iter().map(|&c| c as u8).collect();
    match CStr::from_bytes_until_nul(&bytes) {
        Ok(s) => s.to_string_lossy().into_owned(),
        Err(_) => String::from_utf8_lossy(&bytes).into_owned(),
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::{Compiled, compile};
    use crate::backend::OLDEST_CUDA_CAPABILITY;
    use crate::backend::cuda_libs::{load_library, nvrtc, search_dirs};
    use crate::network::cuda::kernels::{NAMES, SOURCE};

    /// nvrtc compiles without a GPU, but it must be installed: scripts/test.sh fetches
    /// NVIDIA's wheel and points EASEL_CUDA_LIB_DIR at it.
    pub(in crate::network::cuda) fn load_nvrtc() {
        if let Err(e) = load_library(nvrtc(), &search_dirs()) {
            panic!(
                "these tests compile easel's CUDA kernels with nvrtc, which needs no GPU but must be installed; scripts/test.sh fetches it. {e:#}"
            );
        }
    }

    /// Every compute capability this nvrtc compiles for, as nvrtc lists them (CUDA
    /// 13.0's: Turing, Ampere, Ada, Hopper, Blackwell and the Jetson parts among them).
    fn supported_cards() -> Vec<(i32, i32)> {
        use cudarc::nvrtc::sys::{nvrtcGetNumSupportedArchs, nvrtcGetSupportedArchs};
        let mut n = 0;
        // SAFETY: nvrtc is loaded; it writes one int, then that many.
        unsafe { nvrtcGetNumSupportedArchs(&mut n) }
            .result()
            .expect("nvrtc's number of architectures");
        let mut archs = vec![0; n as usize];
        // SAFETY: as above; the buffer holds n ints.
        unsafe { nvrtcGetSupportedArchs(archs.as_mut_ptr()) }
            .result()
            .expect("nvrtc's architectures");
        archs.iter().map(|a| (a / 10, a % 10)).collect()
    }

    /// Whether `name` is a whole symbol in an ELF string table (NUL on both sides), not
    /// part of another (`scale` in `add_scaled`).
    fn has_symbol(elf: &[u8], name: &str) -> bool {
        let needle = [b"\0", name.as_bytes(), b"\0"].concat();
        elf.windows(needle.len()).any(|w| w == needle)
    }

    #[test]
    fn the_kernels_compile_to_machine_code_for_every_card_cuda_13_supports() {
        load_nvrtc();
        let cards = supported_cards();
        assert_eq!(cards.first(), Some(&OLDEST_CUDA_CAPABILITY), "{cards:?}");
        assert!(cards.contains(&(9, 0)), "the H200's sm_90: {cards:?}");
        for card in cards {
            let compiled = compile(SOURCE, card).unwrap_or_else(|e| panic!("{card:?}: {e:#}"));
            let Compiled::Cubin(bytes) = compiled else {
                panic!("{card:?}: nvrtc fell back to PTX; it should know this card");
            };
            assert!(bytes.starts_with(b"\x7fELF"), "{card:?}: not an ELF CUBIN");
            for name in NAMES {
                assert!(has_symbol(&bytes, name), "{card:?}: {name} missing");
            }
        }
    }

    #[test]
    fn a_card_newer_than_nvrtc_gets_ptx_with_every_entry_point() {
        load_nvrtc();
        let Compiled::Ptx(ptx) = compile(SOURCE, (99, 9)).expect("PTX fallback") else {
            panic!("nvrtc cannot know compute capability 99.9, yet made a CUBIN");
        };
        for name in NAMES {
            assert!(ptx.contains(&format!(".entry {name}(")), "{name} missing");
        }
    }

    #[test]
    fn the_loaded_names_are_the_sources_entry_points() {
        let mut declared: Vec<&str> = SOURCE
            .split("extern \"C\" __global__ void ")
            .skip(1)
            .filter_map(|rest| rest.split('(').next())
            .collect();
        let mut names = NAMES.to_vec();
        declared.sort_unstable();
        names.sort_unstable();
        assert_eq!(declared, names);
    }

    #[test]
    fn a_kernel_that_does_not_compile_is_reported_with_nvrtcs_log() {
        load_nvrtc();
        let broken =
            format!("{SOURCE}\nextern \"C\" __global__ void broken(float* x) {{ x[0] = y; }}");
        let Err(e) = compile(&broken, (9, 0)) else {
            panic!("a kernel with an undefined name compiled");
        };
        let text = format!("{e:#}");
        assert!(
            text.contains("For sm_90") && text.contains("default architecture"),
            "{text}"
        );
        assert!(text.contains("identifier \"y\" is undefined"), "{text}");
    }
}
