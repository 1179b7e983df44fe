//! Any text as a view filter: a filter (which prints and parses back alike) or an error.
#![no_main]

libfuzzer_sys::fuzz_target!(|text: &str| {
    if let Ok(f) = duet_config::Filter::parse(text) {
        let again = duet_config::Filter::parse(&f.to_string()).expect("canonical text parses");
        assert_eq!(again, f);
    }
});
