//! Any query string on the query endpoints: a 200 or a 4xx with a JSON message.
#![no_main]

use std::sync::{Arc, OnceLock};

use tower::ServiceExt;

struct App {
    rt: tokio::runtime::Runtime,
    router: axum::Router,
    _dir: std::path::PathBuf,
}

fn app() -> &'static App {
    static APP: OnceLock<App> = OnceLock::new();
    APP.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("duet-fuzz-{}", std::process::id()));
        let cfg = duet_config::Config::from_toml_str(
            include_str!("../../config/examples/ecommerce.toml"),
            "ecommerce.toml".as_ref(),
        )
        .expect("the reference config loads");
        let lake = duet_lake::Lake::open(dir.join("lake").to_str().unwrap()).unwrap();
        let store = duet_speed::EmbeddedStore::open(&dir.join("store.redb")).unwrap();
        let router = duet_serving::router(duet_serving::AppState {
            lake: Arc::new(duet_serving::query::LakeReaders::new(&lake, &cfg)),
            cfg: Arc::new(cfg),
            store: Arc::new(store),
            counters: Arc::default(),
            parts: Arc::default(),
            checks: Arc::default(),
        });
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        App {
            rt,
            router,
            _dir: dir,
        }
    })
}

libfuzzer_sys::fuzz_target!(|query: &str| {
    let app = app();
    for path in ["/v1/views/gmv_per_minute", "/v1/quarantine"] {
        let Ok(req) =
            axum::http::Request::get(format!("{path}?{query}")).body(axum::body::Body::empty())
        else {
            return;
        };
        let status = app
            .rt
            .block_on(app.router.clone().oneshot(req))
            .expect("the router answers")
            .status();
        assert!(
            status.is_success() || status.is_client_error(),
            "{path}?{query}: {status}"
        );
    }
});
