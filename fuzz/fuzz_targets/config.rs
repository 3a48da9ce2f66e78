//! Config parsing: any text gives a config or errors with a place, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    match pylon_config::parse(&text, "fuzz.toml") {
        Ok(c) => {
            let _ = c.summary();
        }
        Err(errors) => {
            assert!(!errors.0.is_empty());
            let _ = errors.to_string();
        }
    }
});
