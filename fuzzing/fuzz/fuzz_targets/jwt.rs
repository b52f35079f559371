#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| realtime_fuzzing::jwt(data));
