//! What the fuzz targets in `fuzz/` run, behind the `fuzzing` feature: the
//! checks need the config file's private types, which are not an API.

use std::path::Path;

use spotoken::core::redact;
use spotoken::core::scope::Scopes;

use crate::config::parse_config;

/// Parses `text` as `config.toml` and checks what holds for any text: an
/// error names the file and never quotes a secret-shaped run from it (toml's
/// own message quotes the whole bad line); what parses is written back as
/// `write_config` writes it and reads back the same, so a command that
/// rewrites the file cannot change or lose a setting. Panics when a check
/// fails (that is what the fuzzer looks for).
#[allow(clippy::missing_panics_doc)]
pub fn check_config_text(text: &str) {
    let path = Path::new("/home/u/.local/share/spotoken/config.toml");
    match parse_config(text, path) {
        Ok(cfg) => {
            if let Some(s) = &cfg.scopes {
                let s = Scopes::parse(s);
                assert_eq!(Scopes::parse(&s.to_wire()), s);
            }
            let written = toml::to_string(&cfg).unwrap_or_else(|e| panic!("serialize: {e}"));
            let back = parse_config(&written, path)
                .unwrap_or_else(|e| panic!("a written config parses: {e}"));
            assert_eq!(
                format!("{back:?}"),
                format!("{cfg:?}"),
                "round trip of {written:?}"
            );
        }
        Err(e) => {
            let shown = e.to_string();
            assert!(
                shown.contains(&format!("{} is not valid", path.display())),
                "{shown}"
            );
            assert_eq!(redact(&shown), shown, "the error quotes a token-shaped run");
        }
    }
}
