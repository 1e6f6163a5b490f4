//! Every `wire` parser, accessor, checksum verification and builder over
//! arbitrary bytes (see `kxdp_dataplane::wire::exercise_parsers` for the
//! invariants it asserts besides "no panic").
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    kxdp_dataplane::wire::exercise_parsers(data);
});
