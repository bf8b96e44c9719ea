//! The committed seed corpus (`corpus/<target>/`) is exactly what `seeds::all()` makes from
//! the golden fixtures. `UPDATE_CORPUS=1` (`make fuzz-corpus`) rewrites it.

use std::collections::BTreeMap;
use std::path::PathBuf;

use tollgate_core_fuzz::seeds::{self, TARGETS};

/// The committed corpus size the project keeps under.
const MAX_CORPUS_BYTES: usize = 1 << 20;

fn committed() -> BTreeMap<PathBuf, Vec<u8>> {
    let mut files = BTreeMap::new();
    for target in TARGETS {
        let directory = seeds::corpus().join(target);
        let Ok(entries) = std::fs::read_dir(&directory) else {
            continue;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            let bytes = std::fs::read(&path).unwrap();
            files.insert(path, bytes);
        }
    }
    files
}

fn generated() -> BTreeMap<PathBuf, Vec<u8>> {
    let mut files = BTreeMap::new();
    for seed in seeds::all() {
        assert!(
            TARGETS.contains(&seed.target),
            "{} is not in TARGETS",
            seed.target
        );
        let path = seeds::corpus().join(seed.target).join(&seed.name);
        assert!(
            files.insert(path, seed.bytes).is_none(),
            "{}/{} twice",
            seed.target,
            seed.name
        );
    }
    files
}

#[test]
fn the_committed_corpus_is_made_from_the_fixtures() {
    let generated = generated();
    if std::env::var("UPDATE_CORPUS").is_ok_and(|value| value == "1") {
        for path in committed().keys() {
            std::fs::remove_file(path).unwrap();
        }
        for (path, bytes) in &generated {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, bytes).unwrap();
        }
    }
    let committed = committed();
    let names = |files: &BTreeMap<PathBuf, Vec<u8>>| files.keys().cloned().collect::<Vec<_>>();
    assert_eq!(
        names(&committed),
        names(&generated),
        "corpus/ is out of date: run `make fuzz-corpus`"
    );
    for (path, bytes) in &generated {
        assert!(
            &committed[path] == bytes,
            "{} is out of date: run `make fuzz-corpus`",
            path.display()
        );
    }
    for target in TARGETS {
        assert!(
            generated
                .keys()
                .any(|path| path.starts_with(seeds::corpus().join(target))),
            "no seed for {target}"
        );
    }
    let total: usize = generated.values().map(Vec::len).sum();
    assert!(total < MAX_CORPUS_BYTES, "the corpus is {total} bytes");
}
