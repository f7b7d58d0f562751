//! Fuzzes page processing (`atlas_codex::page::process`): arbitrary HTML, with and without a base
//! URL, must never panic, and every link it returns must be an absolute http(s) URL.
#![no_main]

use atlas_codex::page;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let html = String::from_utf8_lossy(data);
    let base = url::Url::parse("https://example.com/dir/page.html").expect("static base URL");
    for p in [page::process(&html, None), page::process(&html, Some(&base))] {
        for link in &p.links {
            assert!(link.starts_with("http://") || link.starts_with("https://"), "not absolute http(s): {link}");
        }
    }
    let _ = page::text_page(&html);
});
