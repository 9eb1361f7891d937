//! Which algorithm cuDNN runs for one layer at one size, in each direction.
//!
//! - [`ConvSearch::Heuristic`]: cuDNN's heuristics rank the algorithms without running
//!   them (`cudnnGetConvolution*Algorithm_v7`), as PyTorch does by default;
//! - [`ConvSearch::Measured`]: cuDNN runs each algorithm on the card and ranks them by
//!   time (`cudnnFindConvolution*Algorithm`), as PyTorch's `cudnn.benchmark = True`. It
//!   costs a fraction of a second per new image size and may pick faster algorithms;
//!   the rankings are kept for later runs on the card (`algorithm_cache.rs`).
//!
//! Either way the first candidate that runs within the workspace limit is taken, as
//! PyTorch takes it; where none does, the fallbacks in `conv.rs` (implicit GEMM, and
//! backward algorithm 1), which need little workspace and run in every math type.
//!
//! cudarc keeps its handles and descriptors to itself, so the search has a cuDNN handle
//! of its own on the same stream ([`Searcher`]), and makes each shape's descriptors for
//! the time of one search.

use super::algorithm_cache::Ranking;
use crate::backend::ConvSearch;
use anyhow::{Context, Result};
use cudarc::cudnn::sys::{
    self, cudnnConvolutionBwdDataAlgo_t, cudnnConvolutionFwdAlgo_t, cudnnDataType_t,
    cudnnMathType_t, cudnnStatus_t, cudnnTensorFormat_t,
};
use cudarc::driver::CudaStream;

/// One layer's convolution at one size, as the search describes it to cuDNN.
pub(super) struct ConvShape {
    /// Input channels, output channels, output height and width.
    pub c: usize,
    pub k: usize,
    pub h: usize,
    pub w: usize,
    /// 1 where the input is zero-padded by the convolution; 0 where it comes padded.
    pub pad: usize,
    pub math: cudnnMathType_t,
}

/// A cuDNN handle for searches, on the network's stream; destroyed on drop.
pub(super) struct Searcher(sys::cudnnHandle_t);

// SAFETY: as `conv::Convs`, which owns it: one thread at a time, behind `CudaVgg`'s
// mutex, with the context bound first; cuDNN allows a handle to move between threads.
unsafe impl Send for Searcher {}

impl Searcher {
    pub fn new(stream: &CudaStream) -> Result<Searcher> {
        let mut handle = std::ptr::null_mut();
        // SAFETY: `handle` is written by cudnnCreate and destroyed once, by `Drop`.
        unsafe { sys::cudnnCreate(&mut handle) }
            .result()
            .context("creating cuDNN's handle for algorithm searches")?;
        let searcher = Searcher(handle);
        // SAFETY: the handle is live; the stream outlives it (the network owns both).
        unsafe { sys::cudnnSetStream(handle, stream.cu_stream() as _) }
            .result()
            .context("setting the stream of cuDNN's search handle")?;
        Ok(searcher)
    }

    /// The algorithms cuDNN offers for `shape`, best first: forward, then backward to
    /// the input. Only those it reports as runnable; with whether the ranking may be
    /// kept for later runs ([`lasting`]).
    pub fn candidates(&self, shape: &ConvShape, search: ConvSearch) -> Result<(Ranking, bool)> {
        let handle = self.0;
        let d = Descriptors::new(shape)?;
        const FWD: usize = cudnnConvolutionFwdAlgo_t::CUDNN_CONVOLUTION_FWD_ALGO_COUNT as usize;
        const BWD: usize =
            cudnnConvolutionBwdDataAlgo_t::CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT as usize;
        // SAFETY: zeroed perf structs are plain data (enums whose zero is a variant, numbers).
        let mut fwd: [sys::cudnnConvolutionFwdAlgoPerf_t; FWD] = unsafe { std::mem::zeroed() };
        let mut bwd: [sys::cudnnConvolutionBwdDataAlgoPerf_t; BWD] = unsafe { std::mem::zeroed() };
        let (mut nf, mut nb) = (0, 0);
        // cuDNN's heuristics and its timed search take the same arguments.
        type Rank<P> = unsafe fn(
            sys::cudnnHandle_t,
            sys::cudnnTensorDescriptor_t,
            sys::cudnnFilterDescriptor_t,
            sys::cudnnConvolutionDescriptor_t,
            sys::cudnnTensorDescriptor_t,
            i32,
            *mut i32,
            *mut P,
        ) -> cudnnStatus_t;
        type BackwardRank<P> = unsafe fn(
            sys::cudnnHandle_t,
            sys::cudnnFilterDescriptor_t,
            sys::cudnnTensorDescriptor_t,
            sys::cudnnConvolutionDescriptor_t,
            sys::cudnnTensorDescriptor_t,
            i32,
            *mut i32,
            *mut P,
        ) -> cudnnStatus_t;
        let (forward_rank, backward_rank): (
            Rank<sys::cudnnConvolutionFwdAlgoPerf_t>,
            BackwardRank<sys::cudnnConvolutionBwdDataAlgoPerf_t>,
        ) = match search {
            // `auto` comes resolved for the image's size (`ConvSearch::at`).
            ConvSearch::Heuristic | ConvSearch::Auto => (
                sys::cudnnGetConvolutionForwardAlgorithm_v7,
                sys::cudnnGetConvolutionBackwardDataAlgorithm_v7,
            ),
            ConvSearch::Measured => (
                sys::cudnnFindConvolutionForwardAlgorithm,
                sys::cudnnFindConvolutionBackwardDataAlgorithm,
            ),
        };
        // SAFETY: the descriptors are live and describe this shape (the backward call
        // takes the filter, dy = the output, then dx = the input); the arrays hold the
        // counts passed.
        let (f, b) = unsafe {
            let f = forward_rank(
                handle,
                d.x,
                d.w,
                d.conv,
                d.y,
                FWD as i32,
                &mut nf,
                fwd.as_mut_ptr(),
            );
            let b = backward_rank(
                handle,
                d.w,
                d.y,
                d.conv,
                d.x,
                BWD as i32,
                &mut nb,
                bwd.as_mut_ptr(),
            );
            (f, b)
        };
        let what = format!("{}->{} at {}x{}", shape.c, shape.k, shape.h, shape.w);
        f.result().with_context(|| {
            format!("cuDNN's {search:?} search of forward algorithms for {what}")
        })?;
        b.result().with_context(|| {
            format!("cuDNN's {search:?} search of backward algorithms for {what}")
        })?;
        let ok = |status: cudnnStatus_t| status == cudnnStatus_t::CUDNN_STATUS_SUCCESS;
        let statuses = fwd[..count(nf, FWD)].iter().map(|p| p.status);
        let kept = lasting(statuses.chain(bwd[..count(nb, BWD)].iter().map(|p| p.status)));
        let forward = fwd[..count(nf, FWD)]
            .iter()
            .filter(|p| ok(p.status))
            .map(|p| (p.algo, p.mathType));
        let backward = bwd[..count(nb, BWD)]
            .iter()
            .filter(|p| ok(p.status))
            .map(|p| (p.algo, p.mathType));
        let ranking = (
            in_math(forward.collect(), shape.math),
            in_math(backward.collect(), shape.math),
        );
        let kept = kept && !ranking.0.is_empty() && !ranking.1.is_empty();
        Ok((ranking, kept))
    }
}

/// Whether a search whose algorithms ended with `statuses` may be kept for later runs:
/// each ran, or does not apply to the shape (cuDNN 9's bad-parameter and not-supported
/// classes, 2000-3999). One that failed inside cuDNN or at run time (4000 and up: out of
/// memory among them, where another process held the card) could run another time.
fn lasting(statuses: impl Iterator<Item = cudnnStatus_t>) -> bool {
    statuses
        .map(|s| s as u32)
        .all(|s| s == 0 || (2000..4000).contains(&s))
}

impl Drop for Searcher {
    fn drop(&mut self) {
        // SAFETY: created by cudnnCreate in `new`, destroyed only here.
        unsafe { sys::cudnnDestroy(self.0) };
    }
}

/// The ranked algorithms, those ranked in the convolution's own math type first, each
/// group in its order. cuDNN may also rank an algorithm in another math type (with
/// tensor-op math, say, its FMA variant); that entry's rank or time says less about how
/// it runs here, since the launch uses the descriptor's math type. None is dropped:
/// where cuDNN labels every entry otherwise, the ranking is kept as it is.
fn in_math<A>(ranked: Vec<(A, cudnnMathType_t)>, math: cudnnMathType_t) -> Vec<A> {
    let (same, other): (Vec<_>, Vec<_>) = ranked.into_iter().partition(|(_, m)| *m == math);
    same.into_iter().chain(other).map(|(a, _)| a).collect()
}

/// A count cuDNN returned, within the array it filled.
fn count(n: i32, len: usize) -> usize {
    usize::try_from(n).unwrap_or(0).min(len)
}

/// The first of `candidates` whose workspace `size` knows and is within `limit` bytes,
/// with that size; else `fallback` with its own.
pub(super) fn first_fit<A: Copy, E>(
    candidates: &[A],
    size: impl Fn(A) -> std::result::Result<usize, E>,
    limit: usize,
    fallback: A,
) -> std::result::Result<(A, usize), E> {
    let fits = candidates
        .iter()
        .find_map(|&a| size(a).ok().filter(|&b| b <= limit).map(|b| (a, b)));
    match fits {
        Some(found) => Ok(found),
        None => Ok((fallback, size(fallback)?)),
    }
}

/// A shape's descriptors, destroyed on drop.
struct Descriptors {
    x: sys::cudnnTensorDescriptor_t,
    y: sys::cudnnTensorDescriptor_t,
    w: sys::cudnnFilterDescriptor_t,
    conv: sys::cudnnConvolutionDescriptor_t,
}

impl Descriptors {
    fn new(s: &ConvShape) -> Result<Descriptors> {
        let mut d = Descriptors {
            x: std::ptr::null_mut(),
            y: std::ptr::null_mut(),
            w: std::ptr::null_mut(),
            conv: std::ptr::null_mut(),
        };
        let int = |n: usize| i32::try_from(n).unwrap_or(i32::MAX);
        let (nchw, float) = (
            cudnnTensorFormat_t::CUDNN_TENSOR_NCHW,
            cudnnDataType_t::CUDNN_DATA_FLOAT,
        );
        // An input that comes padded is two pixels taller and wider than the output.
        let margin = if s.pad == 0 { 2 } else { 0 };
        let (c, k, h, w, pad) = (int(s.c), int(s.k), int(s.h), int(s.w), int(s.pad));
        let (hx, wx) = (int(s.h + margin), int(s.w + margin));
        // SAFETY: each call writes or reads the descriptor just created; `Drop` destroys
        // whatever was created, also where a later call failed.
        unsafe {
            sys::cudnnCreateTensorDescriptor(&mut d.x).result()?;
            sys::cudnnSetTensor4dDescriptor(d.x, nchw, float, 1, c, hx, wx).result()?;
            sys::cudnnCreateTensorDescriptor(&mut d.y).result()?;
            sys::cudnnSetTensor4dDescriptor(d.y, nchw, float, 1, k, h, w).result()?;
            sys::cudnnCreateFilterDescriptor(&mut d.w).result()?;
            sys::cudnnSetFilter4dDescriptor(d.w, float, nchw, k, c, 3, 3).result()?;
            sys::cudnnCreateConvolutionDescriptor(&mut d.conv).result()?;
            let mode = sys::cudnnConvolutionMode_t::CUDNN_CROSS_CORRELATION;
            sys::cudnnSetConvolution2dDescriptor(d.conv, pad, pad, 1, 1, 1, 1, mode, float)
                .result()?;
            sys::cudnnSetConvolutionMathType(d.conv, s.math).result()?;
        }
        Ok(d)
    }
}

impl Drop for Descriptors {
    fn drop(&mut self) {
        // SAFETY: each handle is destroyed once, and only where it was created.
        unsafe {
            if !self.conv.is_null() {
                sys::cudnnDestroyConvolutionDescriptor(self.conv);
            }
            if !self.w.is_null() {
                sys::cudnnDestroyFilterDescriptor(self.w);
            }
            for t in [self.x, self.y] {
                if !t.is_null() {
                    sys::cudnnDestroyTensorDescriptor(t);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A workspace table for [`first_fit`]: `None` where cuDNN cannot size the algorithm.
    fn sizes(table: &[(u8, Option<usize>)]) -> impl Fn(u8) -> Result<usize, String> + '_ {
        move |a| match table.iter().find(|(x, _)| *x == a) {
            Some((_, Some(bytes))) => Ok(*bytes),
            _ => Err(format!("algorithm {a} is not supported")),
        }
    }

    #[test]
    fn a_search_with_an_algorithm_out_of_memory_is_not_kept() {
        use cudnnStatus_t as S;
        let fine = [S::CUDNN_STATUS_SUCCESS, S::CUDNN_STATUS_NOT_SUPPORTED_SHAPE];
        assert!(lasting(fine.into_iter()));
        assert!(lasting([S::CUDNN_STATUS_BAD_PARAM].into_iter()));
        let short = [
            S::CUDNN_STATUS_SUCCESS,
            S::CUDNN_STATUS_INTERNAL_ERROR_DEVICE_ALLOCATION_FAILED,
        ];
        assert!(!lasting(short.into_iter()));
        assert!(!lasting([S::CUDNN_STATUS_EXECUTION_FAILED].into_iter()));
    }

    #[test]
    fn the_first_candidate_within_the_limit_is_taken_in_the_order_given() {
        let table = [
            (1, Some(5000)),
            (2, None),
            (3, Some(900)),
            (4, Some(10)),
            (9, Some(0)),
        ];
        // Ranked 1, 2, 3, 4: 1 is over the limit and 2 cannot be sized, so 3, not the
        // smaller 4.
        assert_eq!(
            first_fit(&[1, 2, 3, 4], sizes(&table), 1000, 9),
            Ok((3, 900))
        );
        // The same algorithms ranked otherwise.
        assert_eq!(first_fit(&[4, 3], sizes(&table), 1000, 9), Ok((4, 10)));
        // At the limit is within it.
        assert_eq!(first_fit(&[1], sizes(&table), 5000, 9), Ok((1, 5000)));
    }

    #[test]
    fn algorithms_in_the_convolutions_math_type_come_first_in_their_order() {
        use cudnnMathType_t::{CUDNN_FMA_MATH as FMA, CUDNN_TENSOR_OP_MATH as TENSOR};
        let ranked = vec![(1, FMA), (2, TENSOR), (3, FMA), (4, TENSOR)];
        assert_eq!(in_math(ranked.clone(), TENSOR), vec![2, 4, 1, 3]);
        assert_eq!(in_math(ranked, FMA), vec![1, 3, 2, 4]);
        // Labelled otherwise throughout: the ranking as it came.
        let default = cudnnMathType_t::CUDNN_DEFAULT_MATH;
        assert_eq!(in_math(vec![(5, default), (6, default)], FMA), vec![5, 6]);
    }

    #[test]
    fn without_a_fitting_candidate_the_fallback_is_taken_or_its_error_returned() {
        let table = [(1, Some(5000)), (2, None), (9, Some(0))];
        assert_eq!(first_fit(&[1, 2], sizes(&table), 1000, 9), Ok((9, 0)));
        assert_eq!(first_fit(&[], sizes(&table), 1000, 9), Ok((9, 0)));
        let err = first_fit(&[1], sizes(&table), 1000, 2);
        assert_eq!(err, Err("algorithm 2 is not supported".to_string()));
    }
}
