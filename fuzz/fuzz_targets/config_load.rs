//! Any text as a config file: a config or a list of problems, never a panic.
#![no_main]

libfuzzer_sys::fuzz_target!(|text: &str| {
    let _ = duet_config::Config::from_toml_str(text, "fuzz.toml".as_ref());
});
