//! Checkpoint files: safetensors parsing, the metadata and the shape checks must never
//! panic, whatever the bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let dir = std::env::temp_dir().join(format!("easel-fuzz-checkpoint-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let path = dir.join("checkpoint.safetensors");
    if std::fs::write(&path, data).is_ok() {
        let _ = easel::engine::Checkpoint::load(&path, &burn::tensor::Device::flex());
    }
});
