//! cuDNN's measured rankings (`conv_search: measured`, or `auto` from a megapixel) kept
//! between runs, so that only the first run at a size on a card times the algorithms:
//! later runs, and a preset tried again at the same size, start at once. One JSON file
//! per card and cuDNN version in the cache folder (`cudnn-algorithms/`), one entry per
//! layer shape and math type: the ranked algorithms, forward and backward, as cuDNN's
//! numbers. Another card or cuDNN reads another file; an unreadable file, or an entry
//! with a number this cuDNN does not know, is measured again.

use super::search::ConvShape;
use cudarc::cudnn::sys::{cudnnConvolutionBwdDataAlgo_t as Bwd, cudnnConvolutionFwdAlgo_t as Fwd};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

const FORWARD: [Fwd; 8] = [
    Fwd::CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_GEMM,
    Fwd::CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_PRECOMP_GEMM,
    Fwd::CUDNN_CONVOLUTION_FWD_ALGO_GEMM,
    Fwd::CUDNN_CONVOLUTION_FWD_ALGO_DIRECT,
    Fwd::CUDNN_CONVOLUTION_FWD_ALGO_FFT,
    Fwd::CUDNN_CONVOLUTION_FWD_ALGO_FFT_TILING,
    Fwd::CUDNN_CONVOLUTION_FWD_ALGO_WINOGRAD,
    Fwd::CUDNN_CONVOLUTION_FWD_ALGO_WINOGRAD_NONFUSED,
];
const BACKWARD: [Bwd; 6] = [
    Bwd::CUDNN_CONVOLUTION_BWD_DATA_ALGO_0,
    Bwd::CUDNN_CONVOLUTION_BWD_DATA_ALGO_1,
    Bwd::CUDNN_CONVOLUTION_BWD_DATA_ALGO_FFT,
    Bwd::CUDNN_CONVOLUTION_BWD_DATA_ALGO_FFT_TILING,
    Bwd::CUDNN_CONVOLUTION_BWD_DATA_ALGO_WINOGRAD,
    Bwd::CUDNN_CONVOLUTION_BWD_DATA_ALGO_WINOGRAD_NONFUSED,
];

/// A ranking, forward then backward to the input, best first.
pub(super) type Ranking = (Vec<Fwd>, Vec<Bwd>);

/// One shape's ranking as stored: cuDNN's numbers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Stored {
    forward: Vec<u32>,
    backward: Vec<u32>,
}

/// The rankings of one card and cuDNN version, by shape.
pub(super) struct AlgorithmCache {
    /// Where they are kept; `None`: in this process only (no cache folder).
    file: Option<PathBuf>,
    entries: BTreeMap<String, Stored>,
}

/// The entry's name: `C->K HxW pad P math M`.
fn key(s: &ConvShape) -> String {
    let (c, k, h, w, pad, math) = (s.c, s.k, s.h, s.w, s.pad, s.math as u32);
    format!("{c}->{k} {h}x{w} pad {pad} math {math}")
}

/// The variants of `all` with these numbers (`number` of each), in order; `None` where
/// one is unknown.
fn from_numbers<A: Copy>(numbers: &[u32], all: &[A], number: fn(A) -> u32) -> Option<Vec<A>> {
    numbers
        .iter()
        .map(|&n| all.iter().copied().find(|a| number(*a) == n))
        .collect()
}

/// The entries in `file`; none where it is missing or unreadable (measured again).
fn read(file: &Path) -> BTreeMap<String, Stored> {
    let Ok(text) = std::fs::read_to_string(file) else {
        return BTreeMap::new();
    };
    serde_json::from_str(&text).unwrap_or_else(|e| {
        tracing::debug!("ignoring {}: {e}", file.display());
        BTreeMap::new()
    })
}

impl AlgorithmCache {
    /// The rankings kept for the card `device` with the cuDNN loaded, in
    /// `cudnn-algorithms` in easel's cache folder.
    pub fn for_card(device: &str) -> AlgorithmCache {
        let dir = crate::builtin::cache_dir().map(|d| d.join("cudnn-algorithms"));
        let version = cudarc::cudnn::result::get_version();
        AlgorithmCache::open(dir.as_deref(), device, version)
    }

    /// The rankings kept in `dir` for the card `device` with cuDNN `version`.
    pub fn open(dir: Option<&Path>, device: &str, version: usize) -> AlgorithmCache {
        let card: String = device
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect();
        let file = dir.map(|d| d.join(format!("{card}-cudnn{version}.json")));
        let entries = file.as_deref().map(read).unwrap_or_default();
        AlgorithmCache { file, entries }
    }

    /// The ranking kept for `shape`, if any.
    pub fn get(&self, shape: &ConvShape) -> Option<Ranking> {
        let stored = self.entries.get(&key(shape))?;
        let forward = from_numbers(&stored.forward, &FORWARD, |a| a as u32)?;
        let backward = from_numbers(&stored.backward, &BACKWARD, |a| a as u32)?;
        Some((forward, backward))
    }

    /// Keeps `ranking` for `shape`, and writes the file with the entries other runs
    /// wrote meanwhile.
    pub fn put(&mut self, shape: &ConvShape, (forward, backward): &Ranking) {
        let stored = Stored {
            forward: forward.iter().map(|a| *a as u32).collect(),
            backward: backward.iter().map(|a| *a as u32).collect(),
        };
        self.entries.insert(key(shape), stored);
        let Some(file) = &self.file else { return };
        let mut all = read(file);
        all.extend(self.entries.clone());
        let written = serde_json::to_vec_pretty(&all)
            .map_err(anyhow::Error::from)
            .and_then(|bytes| crate::atomic::write_in_new_folder(file, &bytes));
        match written {
            Ok(()) => self.entries = all,
            Err(e) => tracing::debug!("not keeping cuDNN's timings: {e:#}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cudarc::cudnn::sys::cudnnMathType_t;

    fn shape(h: usize, math: cudnnMathType_t) -> ConvShape {
        ConvShape {
            c: 64,
            k: 64,
            h,
            w: 2048,
            pad: 1,
            math,
        }
    }

    #[test]
    fn rankings_are_kept_per_card_shape_and_math_and_read_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let fma = cudnnMathType_t::CUDNN_FMA_MATH;
        let ranking: Ranking = (vec![FORWARD[6], FORWARD[1]], vec![BACKWARD[5], BACKWARD[1]]);
        let mut cache = AlgorithmCache::open(Some(dir.path()), "NVIDIA H200", 91002);
        assert!(cache.get(&shape(2048, fma)).is_none(), "nothing kept yet");
        cache.put(&shape(2048, fma), &ranking);
        // Another run on the same card reads it; another card, cuDNN, size or math
        // type does not.
        let again = AlgorithmCache::open(Some(dir.path()), "NVIDIA H200", 91002);
        assert_eq!(again.get(&shape(2048, fma)), Some(ranking.clone()));
        assert!(again.get(&shape(1024, fma)).is_none());
        let tf32 = cudnnMathType_t::CUDNN_TENSOR_OP_MATH;
        assert!(again.get(&shape(2048, tf32)).is_none());
        let other = AlgorithmCache::open(Some(dir.path()), "NVIDIA A100 80GB", 91002);
        assert!(other.get(&shape(2048, fma)).is_none());
        let newer = AlgorithmCache::open(Some(dir.path()), "NVIDIA H200", 91100);
        assert!(newer.get(&shape(2048, fma)).is_none());
        // Two runs' entries both stay in the file.
        let mut second = AlgorithmCache::open(Some(dir.path()), "NVIDIA H200", 91002);
        let mut first = AlgorithmCache::open(Some(dir.path()), "NVIDIA H200", 91002);
        second.put(&shape(1024, fma), &ranking);
        first.put(&shape(512, fma), &ranking);
        let both = AlgorithmCache::open(Some(dir.path()), "NVIDIA H200", 91002);
        for h in [512, 1024, 2048] {
            assert!(both.get(&shape(h, fma)).is_some(), "{h}");
        }
    }

    #[test]
    fn an_unreadable_file_or_an_unknown_algorithm_is_measured_again() {
        let dir = tempfile::tempdir().expect("tempdir");
        let fma = cudnnMathType_t::CUDNN_FMA_MATH;
        let cache = AlgorithmCache::open(Some(dir.path()), "card", 9);
        let file = cache.file.clone().expect("a file");
        std::fs::write(&file, "{ torn").expect("write");
        assert!(
            AlgorithmCache::open(Some(dir.path()), "card", 9)
                .get(&shape(8, fma))
                .is_none()
        );
        let unknown = format!(
            r#"{{"{}": {{"forward": [1, 99], "backward": [0]}}}}"#,
            key(&shape(8, fma))
        );
        std::fs::write(&file, unknown).expect("write");
        let cache = AlgorithmCache::open(Some(dir.path()), "card", 9);
        assert!(cache.entries.len() == 1 && cache.get(&shape(8, fma)).is_none());
        // Without a cache folder the rankings live in the process only.
        let mut memory = AlgorithmCache::open(None, "card", 9);
        memory.put(&shape(8, fma), &(vec![FORWARD[0]], vec![BACKWARD[0]]));
        assert!(memory.get(&shape(8, fma)).is_some());
    }
}
