//! Any bytes as an event of the reference deployment's sources: an event whose view
//! contributions can be computed, or a reason; never a panic; and the same answer from the
//! decoder's fast path as from the full decoder.
#![no_main]

use std::sync::OnceLock;

fn config() -> &'static duet_config::Config {
    static CFG: OnceLock<duet_config::Config> = OnceLock::new();
    CFG.get_or_init(|| {
        duet_config::Config::from_toml_str(
            include_str!("../../config/examples/ecommerce.toml"),
            "ecommerce.toml".as_ref(),
        )
        .expect("the reference config loads")
    })
}

libfuzzer_sys::fuzz_target!(|bytes: &[u8]| {
    let cfg = config();
    for s in &cfg.sources {
        let full = s.decode_at(bytes, 1_800_000_000_000);
        // the fast path decides as the full decoder does
        let fast = s.decode_keeping(bytes, 1_800_000_000_000, &s.keep_all());
        assert_eq!(fast, full, "the fast path decoded differently");
        // keeping only what the views read, as the speed layer does: the same decision,
        // and the same contributions to every view
        let views: Vec<_> = cfg.views.iter().filter(|v| v.source == s.name).collect();
        let kept = s.decode_keeping(bytes, 1_800_000_000_000, &s.keep(views.iter().copied()));
        assert_eq!(
            kept.as_ref().err(),
            full.as_ref().err(),
            "kept values decided differently"
        );
        if let (Ok(e), Ok(k)) = (&full, &kept) {
            assert_eq!((&k.id, k.time_ms), (&e.id, e.time_ms));
            for v in &views {
                let contributions = v.contributions(e);
                assert_eq!(v.contributions(k), contributions, "view {} differs", v.name);
                for c in contributions {
                    let _ = v.render(&c.states);
                }
            }
        }
    }
});
