//! Adam's iterations where the network keeps the state (`easel::network::resident`): on
//! the CPU's Winograd path, in host buffers, against the engine's tensor Adam on the
//! same network. tests/cuda.rs runs the same check for the card.

mod common;

use burn::tensor::Device;
use common::*;
use easel::backend::Backend;
use easel::network::ConvChoice;

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
    check_resident_adam(&net, &net, (48, 40), 5, 1e-9);
}
