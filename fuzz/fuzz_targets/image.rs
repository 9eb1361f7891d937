//! Image bytes in, an RGB image or an error out: decoding must never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

/// Inputs above this are skipped, to keep runs fast and memory bounded.
const MAX_INPUT: usize = 1 << 20;

fuzz_target!(|data: &[u8]| {
    if data.len() > MAX_INPUT {
        return;
    }
    let _ = easel::image::decode_rgb(data, std::path::Path::new("fuzz.png"));
});
