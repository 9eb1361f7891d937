//! Iterations where the network keeps the state (`easel::network::resident`): Adam on
//! the CPU's Winograd path, in host buffers, and L-BFGS with its image among the path's
//! vectors, against the optimisers' tensor steps on the same network. tests/cuda.rs runs
//! the same checks for the card.

mod common;

use burn::tensor::Device;
use common::*;
use easel::backend::Backend;
use easel::network::ConvChoice;
use easel::optim::OptimizerSpec;

#[test]
fn host_resident_adam_matches_tensor_adam_with_clamp_ema_and_rollback() {
    let vgg = easel::weights::load(&real_weights(), &Device::flex()).expect("weights");
    let net = on_cpu(vgg.clone());
    assert!(
        net.keeps_adam_state(),
        "the Winograd path keeps Adam's state"
    );
    // burn's paths keep it in their own tensors.
    assert!(!on(vgg, &Backend::cpu(), ConvChoice::Direct).keeps_adam_state());
    check_resident((&net, &net), &OptimizerSpec::adam(20.0), (48, 40), 5, 1e-9);
}

#[test]
fn lbfgs_with_its_image_kept_matches_tensor_lbfgs_with_clamp_ema_and_rollback() {
    let vgg = easel::weights::load(&real_weights(), &Device::flex()).expect("weights");
    // The same float32 operations in the same order: equal to the last bit, on the
    // Winograd path and on burn's.
    for net in [
        on_cpu(vgg.clone()),
        on(vgg, &Backend::cpu(), ConvChoice::Direct),
    ] {
        check_resident(
            (&net, &net),
            &OptimizerSpec::lbfgs(1.0, 3),
            (48, 40),
            5,
            0.0,
        );
    }
}
