//! The upstream response parser against hyper's HTTP/1 client on the same
//! bytes: wherever we accept a response, hyper reads the same status and
//! body; wherever hyper refuses, we refuse (see
//! `spotoken_server::http1::differential`).
#![no_main]
use libfuzzer_sys::fuzz_target;
use spotoken_server::http1::differential::{agree, hypers, ours};

fuzz_target!(|wire: &[u8]| {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let h = rt.block_on(hypers(wire));
    if let Err(e) = agree(&ours(wire), &h) {
        panic!("{e}: {:?}", String::from_utf8_lossy(wire));
    }
});
