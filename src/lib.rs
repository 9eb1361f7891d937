//! easel: neural style transfer (Gatys et al.) as a library and a terminal workbench.
//!
//! The pipeline, one module per stage:
//! [`image`] (pixels in and out) -> [`vgg`] (VGG-19's weights and the CPU's kernels) ->
//! [`loss`] (content, Gram, style, TV) -> [`network`] (the seam: features and the image
//! gradient, one implementation per compute path) -> [`optim`] (Adam, L-BFGS on the
//! image) -> [`engine`] (the run as a state machine in a worker thread) -> front ends
//! ([`tui`], [`frontend`]). [`backend`] picks the device and path; [`preset`],
//! [`weights`], [`run_dir`] and [`cli`] hold the files and the command line; [`runs`]
//! and [`report`] read run directories back for people. The
//! formulas and file formats are in docs/design.md.

pub mod atomic;
pub mod backend;
pub mod bench;
pub mod builtin;
pub mod cli;
pub mod color;
pub mod engine;
pub mod frontend;
pub mod image;
pub mod logging;
pub mod loss;
pub mod mask;
pub mod network;
pub mod optim;
pub mod preset;
pub mod report;
pub mod run_dir;
pub mod runs;
pub mod settings;
pub mod sweep;
pub mod tensor_file;
pub mod tui;
pub mod vgg;
pub mod weights;
