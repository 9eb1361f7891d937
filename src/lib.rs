//! easel: neural style transfer (Gatys et al.) as a library and a terminal workbench.
//!
//! The pipeline, one module per stage:
//! [`image`] (pixels in and out) -> [`vgg`] (VGG-19 features) -> [`loss`] (content,
//! Gram, style, TV) -> [`optim`] (Adam, L-BFGS on the image) -> [`engine`] (the run as
//! a state machine in a worker thread) -> front ends ([`tui`], [`frontend`]).
//! [`preset`], [`weights`], [`run_dir`] and [`cli`] hold the files and the command line.

pub mod atomic;
pub mod backend;
pub mod bench;
pub mod cli;
pub mod color;
pub mod engine;
pub mod frontend;
pub mod image;
pub mod loss;
pub mod optim;
pub mod preset;
pub mod run_dir;
pub mod tui;
pub mod vgg;
pub mod weights;
