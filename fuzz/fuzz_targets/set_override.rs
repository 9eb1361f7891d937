//! `--set KEY=VALUE` overrides on the default preset: applying and validating them must
//! never panic, whatever the key path and the YAML value.
#![no_main]

use libfuzzer_sys::fuzz_target;

const PRESET: &str = include_str!("../../presets/default.yaml");

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        // One override per line, as several --set flags.
        let overrides: Vec<String> = text.lines().map(str::to_string).collect();
        let _ = easel::preset::Preset::parse(PRESET, std::path::Path::new("fuzz.yaml"), &overrides);
    }
});
