//! Corpus tests of the document loader: every file under `tests/corpus/invalid` states, in its first
//! line, the error it must produce (`# expect: LINE:COLUMN: message substring`); every file under
//! `tests/corpus/valid` must load without errors. Hostile inputs (huge, deeply nested, alias
//! bombs, invalid UTF-8) are generated here rather than committed.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use trafficshift::spec::{load_paths, Loaded};

fn corpus(dir: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/corpus")
        .join(dir);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

/// `# expect: 12:7: message` → (12, 7, "message"); an optional second line `# docs: N` says how
/// many documents of the file still load (default 0).
fn expectation(text: &str) -> Option<(u64, u64, String, usize)> {
    let mut lines = text.lines();
    let rest = lines.next()?.strip_prefix("# expect: ")?;
    let mut parts = rest.splitn(3, ':');
    let line = parts.next()?.trim().parse().ok()?;
    let column = parts.next()?.trim().parse().ok()?;
    let message = parts.next()?.trim().to_string();
    let docs = lines
        .next()
        .and_then(|l| l.strip_prefix("# docs: "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0);
    Some((line, column, message, docs))
}

fn show(loaded: &Loaded) -> String {
    loaded.errors.iter().map(|e| format!("\n    {e}")).collect()
}

/// Check one loaded file against its expectation; `Err` says what is wrong.
fn check_expected(
    file: &Path,
    loaded: &Loaded,
    line: u64,
    column: u64,
    message: &str,
    docs: usize,
) -> Result<(), String> {
    let hit = loaded.errors.iter().any(|e| {
        e.pos.file == file
            && e.pos.line == line
            && e.pos.column == column
            && e.message.contains(message)
    });
    if !hit {
        return Err(format!(
            "{}: expected an error at {line}:{column} containing {message:?}, got:{}",
            file.display(),
            show(loaded)
        ));
    }
    if loaded.docs.len() != docs {
        return Err(format!(
            "{}: expected {docs} loaded document(s), got {}",
            file.display(),
            loaded.docs.len()
        ));
    }
    Ok(())
}

#[test]
fn invalid_corpus_reports_each_error_with_its_position() {
    let files = corpus("invalid");
    assert!(
        files.len() >= 55,
        "the invalid corpus has only {} files",
        files.len()
    );
    let mut failures = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).expect("corpus file is UTF-8");
        let Some((line, column, message, docs)) = expectation(&text) else {
            let loaded = load_paths(std::slice::from_ref(file));
            failures.push(format!(
                "{}: first line must be `# expect: LINE:COLUMN: message`; the loader says:{}",
                file.display(),
                show(&loaded)
            ));
            continue;
        };
        let loaded = load_paths(std::slice::from_ref(file));
        if let Err(e) = check_expected(file, &loaded, line, column, &message, docs) {
            failures.push(e);
        }
        // Messages are single-line and carry a position: `file:line:column: message`.
        for e in &loaded.errors {
            assert!(!e.message.contains('\n'), "multi-line message: {e}");
            assert!(e.pos.line >= 1 && e.pos.column >= 1, "no position: {e}");
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} corpus files failed:\n{}",
        failures.len(),
        files.len(),
        failures.join("\n")
    );
}

#[test]
fn valid_corpus_loads_without_errors() {
    let files = corpus("valid");
    assert!(files.len() >= 3);
    for file in &files {
        let loaded = load_paths(std::slice::from_ref(file));
        assert!(
            loaded.errors.is_empty(),
            "{}:{}",
            file.display(),
            show(&loaded)
        );
        assert!(!loaded.docs.is_empty(), "{}: no documents", file.display());
        assert_eq!(loaded.files, vec![file.clone()]);
        for doc in &loaded.docs {
            assert_eq!(doc.file, *file);
            assert_eq!(doc.hash.len(), 12, "{}", doc.hash);
            assert!(doc
                .hash
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
        }
    }
}

#[test]
fn examples_load_as_written() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus/valid");
    let plain = load_paths(&[dir.join("example-api.yaml")]);
    let full = load_paths(&[dir.join("example-api-rollout.yaml")]);
    assert!(
        plain.errors.is_empty() && full.errors.is_empty(),
        "{}{}",
        show(&plain),
        show(&full)
    );
    let (plain, full) = (&plain.docs[0], &full.docs[0]);
    assert_eq!(plain.line, 1);
    assert_eq!(plain.split.name(), "api");
    assert!(plain.split.spec.record.adopt_existing);
    assert_eq!(plain.split.spec.weights["fargate"], 100);
    assert_eq!(
        plain
            .split
            .backend("fargate")
            .and_then(|b| b.ecs.as_ref())
            .map(|e| e.max_tasks()),
        Some(40)
    );
    let rollout = full.split.spec.rollout.as_ref().expect("rollout");
    assert_eq!(rollout.steps.as_deref(), Some(&[5, 25, 50, 100][..]));
    assert_eq!(rollout.interval.get(), Duration::from_secs(300));
    assert_eq!(full.split.spec.gates.len(), 5);
    let prom = full.split.spec.gates[3]
        .prometheus
        .as_ref()
        .expect("prometheus gate");
    assert!(prom.query.contains(r#"code=~"5..""#));
    assert_eq!(prom.max, Some(0.01));
    // Different documents, different hashes; the same document, the same hash.
    assert_ne!(plain.hash, full.hash);
    assert_eq!(
        plain.hash,
        trafficshift::spec::SplitDoc::hash_of(&plain.split)
    );
}

#[test]
fn multi_document_file_skips_empty_documents() {
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus/valid/multi-doc.yaml");
    let loaded = load_paths(&[file]);
    assert!(loaded.errors.is_empty(), "{}", show(&loaded));
    let names: Vec<(&str, u64)> = loaded
        .docs
        .iter()
        .map(|d| (d.split.name(), d.line))
        .collect();
    assert_eq!(names, [("www", 4), ("single", 26)]);
}

fn write(dir: &Path, name: &str, bytes: impl AsRef<[u8]>) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).expect("write temp file");
    path
}

fn example() -> String {
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus/valid/example-api.yaml");
    std::fs::read_to_string(file).expect("example")
}

/// Load `path` and require it to take less than a few seconds: hostile input must fail fast.
fn load_quickly(path: &Path) -> Loaded {
    let start = Instant::now();
    let loaded = load_paths(&[path.to_path_buf()]);
    let took = start.elapsed();
    assert!(
        took < Duration::from_secs(5),
        "loading {} took {took:?}",
        path.display()
    );
    loaded
}

#[test]
fn generated_huge_file_is_rejected() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut text = example();
    while text.len() <= 1024 * 1024 {
        text.push_str(
            "# padding padding padding padding padding padding padding padding padding\n",
        );
    }
    let file = write(dir.path(), "huge.yaml", text);
    let loaded = load_quickly(&file);
    check_expected(
        &file,
        &loaded,
        1,
        1,
        "file is larger than 1048576 bytes (1 MiB)",
        0,
    )
    .unwrap();
    assert!(loaded.errors[0]
        .to_string()
        .starts_with(&format!("{}:1:1: ", file.display())));
}

#[test]
fn generated_deep_nesting_is_rejected() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Flow and block nesting, both far deeper than any TrafficSplit.
    let flow = format!(
        "{}{}{}",
        "metadata: ",
        "[".repeat(10_000),
        "]".repeat(10_000)
    );
    let file = write(dir.path(), "flow.yaml", flow);
    let loaded = load_quickly(&file);
    assert_eq!(loaded.errors.len(), 1, "{}", show(&loaded));
    assert!(
        loaded.errors[0].message.contains("nested"),
        "{}",
        show(&loaded)
    );
    assert_eq!(loaded.errors[0].pos.line, 1);

    let block: String = (0..100)
        .map(|i| format!("{}k{i}:\n", " ".repeat(i)))
        .collect();
    let file = write(dir.path(), "block.yaml", block);
    let loaded = load_quickly(&file);
    assert_eq!(loaded.errors.len(), 1, "{}", show(&loaded));
    check_expected(
        &file,
        &loaded,
        21,
        21,
        "document nested 21 levels deep (the limit is 20)",
        0,
    )
    .unwrap();
}

#[test]
fn generated_alias_bomb_is_rejected() {
    let dir = tempfile::tempdir().expect("tempdir");
    // "Billion laughs": 9 levels of 10 aliases each, 10^9 nodes if expanded, inside an otherwise
    // plausible document.
    let mut text = String::from("apiVersion: trafficshift.dev/v1alpha1\nkind: TrafficSplit\nx0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]\n");
    for i in 1..10 {
        let refs = vec![format!("*a{}", i - 1); 10].join(", ");
        text.push_str(&format!("x{i}: &a{i} [{refs}]\n"));
    }
    text.push_str("metadata: {name: *a9}\n");
    let file = write(dir.path(), "bomb.yaml", &text);
    let loaded = load_quickly(&file);
    assert_eq!(loaded.errors.len(), 1, "{}", show(&loaded));
    assert!(
        loaded.errors[0].message.contains("alias"),
        "{}",
        show(&loaded)
    );
    assert!(loaded.docs.is_empty());
}

#[test]
fn generated_invalid_utf8_is_reported_with_its_position() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut bytes =
        b"apiVersion: trafficshift.dev/v1alpha1\nkind: Tr\xc3\xa4fficSplit\nmetadata:\n  name: ap"
            .to_vec();
    bytes.extend_from_slice(&[0xff, 0xfe]);
    bytes.extend_from_slice(b"i\n");
    let file = write(dir.path(), "latin1.yaml", bytes);
    let loaded = load_quickly(&file);
    // Line 4 is `  name: ap`: the bad byte is the 11th character.
    check_expected(&file, &loaded, 4, 11, "invalid UTF-8 at byte offset 78", 0).unwrap();
}

#[test]
fn directory_loads_good_files_and_reports_bad_ones() {
    let dir = tempfile::tempdir().expect("tempdir");
    let good = write(dir.path(), "a-good.yaml", example());
    let bad = write(
        dir.path(),
        "b-bad.yml",
        example()
            .replace("fargate: 100", "fargate: 90")
            .replace("name: api ", "name: bad "),
    );
    write(dir.path(), "notes.txt", "not yaml");
    write(dir.path(), ".hidden.yaml", "garbage: [");
    std::fs::create_dir(dir.path().join("sub.yaml")).expect("mkdir");
    write(&dir.path().join("sub.yaml"), "nested.yaml", "garbage: [");
    let loaded = load_paths(&[dir.path().to_path_buf()]);
    assert_eq!(loaded.files, vec![good.clone(), bad.clone()]);
    assert_eq!(loaded.docs.len(), 1);
    assert_eq!(loaded.docs[0].file, good);
    assert_eq!(loaded.errors.len(), 1, "{}", show(&loaded));
    assert_eq!(loaded.errors[0].pos.file, bad);
    assert!(
        loaded.errors[0].message.contains("weights sum to 90"),
        "{}",
        show(&loaded)
    );
}

#[cfg(unix)]
#[test]
fn configmap_mount_follows_symlinks_and_skips_internals() {
    // The layout kubelet gives a mounted ConfigMap.
    let dir = tempfile::tempdir().expect("tempdir");
    let ts = dir.path().join("..2024_05_01_12_00_00.123");
    std::fs::create_dir(&ts).expect("mkdir");
    write(&ts, "api.yaml", example());
    std::os::unix::fs::symlink("..2024_05_01_12_00_00.123", dir.path().join("..data"))
        .expect("symlink");
    std::os::unix::fs::symlink("..data/api.yaml", dir.path().join("api.yaml")).expect("symlink");
    let loaded = load_paths(&[dir.path().to_path_buf()]);
    assert!(loaded.errors.is_empty(), "{}", show(&loaded));
    assert_eq!(loaded.files, vec![dir.path().join("api.yaml")]);
    assert_eq!(loaded.docs.len(), 1);
}

#[test]
fn duplicate_names_across_files_keep_the_first() {
    let dir = tempfile::tempdir().expect("tempdir");
    let first = write(dir.path(), "1.yaml", example());
    let second = write(dir.path(), "2.yaml", format!("# same name\n{}", example()));
    let loaded = load_paths(&[dir.path().to_path_buf()]);
    assert_eq!(loaded.docs.len(), 1);
    assert_eq!(loaded.docs[0].file, first);
    check_expected(
        &second,
        &loaded,
        5,
        9,
        &format!(
            "duplicate TrafficSplit name 'api' (first defined at {}:1)",
            first.display()
        ),
        1,
    )
    .unwrap();
}

#[test]
fn missing_path_is_an_error_and_others_still_load() {
    let dir = tempfile::tempdir().expect("tempdir");
    let good = write(dir.path(), "good.yaml", example());
    let missing = dir.path().join("missing.yaml");
    let loaded = load_paths(&[missing.clone(), good]);
    assert_eq!(loaded.docs.len(), 1);
    assert_eq!(loaded.errors.len(), 1);
    assert_eq!(loaded.errors[0].pos.file, missing);
    assert!(
        loaded.errors[0].message.contains("cannot read"),
        "{}",
        show(&loaded)
    );
}

#[test]
fn errors_in_one_document_do_not_drop_the_others() {
    let dir = tempfile::tempdir().expect("tempdir");
    let other = example().replace("name: api ", "name: other ");
    let text = format!(
        "{}---\nkind: [\n---\n{other}",
        example().replace("ttl: 60", "ttl: x")
    );
    let file = write(dir.path(), "mixed.yaml", text);
    let loaded = load_paths(&[file]);
    // The type error is reported and recovered from; the syntax error ends the file.
    assert!(
        loaded
            .errors
            .iter()
            .any(|e| e.message.contains("spec.record.ttl")),
        "{}",
        show(&loaded)
    );
    assert!(
        loaded.errors.iter().any(|e| e.pos.line == 27),
        "{}",
        show(&loaded)
    );
    assert!(loaded.docs.is_empty());

    let text = format!("{}---\n{other}", example().replace("ttl: 60", "ttl: x"));
    let file = write(dir.path(), "recover.yaml", text);
    let loaded = load_paths(&[file]);
    assert_eq!(loaded.errors.len(), 1, "{}", show(&loaded));
    assert_eq!(loaded.docs.len(), 1);
    assert_eq!(loaded.docs[0].split.name(), "other");
    assert_eq!(loaded.docs[0].line, 27);
}
