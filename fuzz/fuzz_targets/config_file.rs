//! `config.toml`, as `spotoken` reads it (`spotoken_cli::config::parse_config`):
//! any text. Never panic; an error names the file and never quotes a
//! secret-shaped run from it (toml's own message quotes the whole bad line);
//! what parses is written back as `write_config` writes it and reads back the
//! same, so a command that rewrites the file cannot change or lose a setting.
#![no_main]
use libfuzzer_sys::fuzz_target;
use spotoken::core::redact;
use spotoken::core::scope::Scopes;
use spotoken_cli::config::parse_config;
use std::path::Path;

fuzz_target!(|text: &str| {
    let path = Path::new("/home/u/.local/share/spotoken/config.toml");
    match parse_config(text, path) {
        Ok(cfg) => {
            if let Some(s) = &cfg.scopes {
                let s = Scopes::parse(s);
                assert_eq!(Scopes::parse(&s.to_wire()), s);
            }
            let written = toml::to_string(&cfg).expect("a parsed config serializes");
            let back = parse_config(&written, path).expect("a written config parses");
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
});
