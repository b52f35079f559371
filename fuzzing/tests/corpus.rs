//! Replays the committed fuzzing corpus (`fuzzing/fuzz/corpus/<target>/`) and every input
//! that once crashed a target (`fuzzing/regressions/<target>/`) through the same functions
//! the libFuzzer targets run, on the stable toolchain: a decoder that panics again on any of
//! them, or breaks a property the harness checks, fails here.

use std::path::{Path, PathBuf};

use realtime_fuzzing::TARGETS;

fn inputs(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

#[test]
fn every_corpus_input_and_regression_passes() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for (target, run) in TARGETS {
        let corpus = inputs(&root.join("fuzz/corpus").join(target));
        assert!(
            !corpus.is_empty(),
            "the corpus of {target} is missing (fuzzing/fuzz/corpus/{target})"
        );
        let regressions = inputs(&root.join("regressions").join(target));
        for file in corpus.iter().chain(&regressions) {
            let data = std::fs::read(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
            let outcome = std::panic::catch_unwind(|| run(&data));
            assert!(outcome.is_ok(), "{target} fails on {}", file.display());
        }
    }
}
