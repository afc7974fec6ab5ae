//! Property tests: the loader never panics and always returns quickly, whatever the file holds.
//! Every reported problem has a position inside the file.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use proptest::prelude::*;
use trafficshift::spec::load_paths;

/// Generous: a single load takes milliseconds; this only catches blow-ups.
const DEADLINE: Duration = Duration::from_secs(5);

fn valid_fixtures() -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus/valid");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("list valid corpus")
        .map(|e| e.expect("dir entry").path())
        .collect();
    files.sort();
    // An empty or missing corpus would make every property below vacuous.
    assert!(
        !files.is_empty(),
        "no fixtures in {}: the fuzz properties would test nothing",
        dir.display()
    );
    files
        .iter()
        .map(|f| std::fs::read(f).expect("read fixture"))
        .collect()
}

/// Write `bytes` to a temp file, load it, and check the loader's promises.
fn load_bytes(bytes: &[u8]) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().map_err(|e| TestCaseError::fail(e.to_string()))?;
    let file = dir.path().join("fuzz.yaml");
    std::fs::write(&file, bytes).map_err(|e| TestCaseError::fail(e.to_string()))?;
    let start = Instant::now();
    let loaded = load_paths(std::slice::from_ref(&file));
    let took = start.elapsed();
    prop_assert!(took < DEADLINE, "loading took {took:?}");
    prop_assert_eq!(&loaded.files, &vec![file.clone()]);
    let lines = bytes.split(|b| *b == b'\n').count() as u64;
    for e in &loaded.errors {
        prop_assert_eq!(&e.pos.file, &file);
        prop_assert!(
            e.pos.line >= 1 && e.pos.line <= lines.max(1),
            "line out of file: {} ({} lines)",
            e,
            lines
        );
        prop_assert!(e.pos.column >= 1, "no column: {}", e);
        prop_assert!(!e.message.is_empty());
    }
    for doc in &loaded.docs {
        // What loads is valid and hashed.
        prop_assert!(trafficshift::spec::validate::check(&doc.split).is_empty());
        prop_assert_eq!(doc.hash.len(), 12);
    }
    Ok(())
}

#[derive(Debug, Clone)]
enum Yaml {
    Scalar(String),
    Seq(Vec<Yaml>),
    Map(Vec<(String, Yaml)>),
}

impl Yaml {
    fn write(&self, indent: usize, out: &mut String) {
        let pad = " ".repeat(indent);
        match self {
            Yaml::Scalar(s) => {
                out.push_str(s);
                out.push('\n');
            }
            Yaml::Seq(items) if items.is_empty() => out.push_str("[]\n"),
            Yaml::Map(entries) if entries.is_empty() => out.push_str("{}\n"),
            Yaml::Seq(items) => {
                out.push('\n');
                for item in items {
                    out.push_str(&format!("{pad}- "));
                    item.write(indent + 2, out);
                }
            }
            Yaml::Map(entries) => {
                out.push('\n');
                for (k, v) in entries {
                    out.push_str(&format!("{pad}{k}: "));
                    v.write(indent + 2, out);
                }
            }
        }
    }
}

/// Keys from the real schema (so deserialization gets deep) and some noise.
fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(vec![
            "apiVersion", "kind", "metadata", "name", "labels", "spec", "record", "hostedZone", "type",
            "ttl", "backends", "apiGateway", "domainName", "ecs", "cluster", "service",
            "tasksAtFullTraffic", "minTasks", "maxTasks", "target", "alias", "cname", "weights",
            "rollout", "steps", "stepPercent", "interval", "gates", "http", "url", "prometheus",
            "lambda", "fargate",
        ])
        .prop_map(str::to_string),
        1 => "[a-z]{1,8}",
    ]
}

fn scalar() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("trafficshift.dev/v1alpha1".to_string()),
        Just("TrafficSplit".to_string()),
        Just("A".to_string()),
        Just("CNAME".to_string()),
        Just("5m".to_string()),
        Just("~".to_string()),
        Just("&x 1".to_string()),
        Just("*x".to_string()),
        Just("'quoted: value'".to_string()),
        Just("-1".to_string()),
        Just(".nan".to_string()),
        (0u64..200).prop_map(|n| n.to_string()),
        any::<i64>().prop_map(|n| n.to_string()),
        "[a-z.]{0,12}",
    ]
}

fn yaml() -> impl Strategy<Value = Yaml> {
    scalar()
        .prop_map(Yaml::Scalar)
        .prop_recursive(6, 64, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..5).prop_map(Yaml::Seq),
                prop::collection::vec((key(), inner), 0..6).prop_map(Yaml::Map),
            ]
        })
}

#[derive(Debug, Clone)]
enum Mutation {
    Flip(prop::sample::Index, u8),
    Delete(prop::sample::Index, usize),
    Insert(prop::sample::Index, Vec<u8>),
    Duplicate(prop::sample::Index, prop::sample::Index),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<prop::sample::Index>(), any::<u8>()).prop_map(|(i, b)| Mutation::Flip(i, b)),
        (any::<prop::sample::Index>(), 1usize..40).prop_map(|(i, n)| Mutation::Delete(i, n)),
        (
            any::<prop::sample::Index>(),
            prop_oneof![
                prop::collection::vec(any::<u8>(), 1..8),
                prop::sample::select(vec![
                    b"\t".to_vec(),
                    b"---\n".to_vec(),
                    b": ".to_vec(),
                    b"- ".to_vec(),
                    b"{".to_vec(),
                    b"[".to_vec(),
                    b"&a ".to_vec(),
                    b"*a".to_vec(),
                    b"\n  ".to_vec(),
                    b"#".to_vec(),
                    b"\"".to_vec(),
                    b"\xff".to_vec(),
                    b"!!binary ".to_vec(),
                    b"<<: ".to_vec(),
                ]),
            ]
        )
            .prop_map(|(i, bytes)| Mutation::Insert(i, bytes)),
        (any::<prop::sample::Index>(), any::<prop::sample::Index>())
            .prop_map(|(a, b)| Mutation::Duplicate(a, b)),
    ]
}

fn mutate(mut bytes: Vec<u8>, mutations: &[Mutation]) -> Vec<u8> {
    for m in mutations {
        if bytes.is_empty() {
            break;
        }
        match m {
            Mutation::Flip(i, b) => {
                let at = i.index(bytes.len());
                bytes[at] = *b;
            }
            Mutation::Delete(i, n) => {
                let at = i.index(bytes.len());
                let end = (at + n).min(bytes.len());
                bytes.drain(at..end);
            }
            Mutation::Insert(i, ins) => {
                let at = i.index(bytes.len() + 1);
                bytes.splice(at..at, ins.iter().copied());
            }
            Mutation::Duplicate(a, b) => {
                // Copy one line-sized chunk elsewhere: repeats keys, documents and structure.
                let from = a.index(bytes.len());
                let end = bytes[from..]
                    .iter()
                    .position(|b| *b == b'\n')
                    .map_or(bytes.len(), |p| from + p + 1);
                let chunk = bytes[from..end].to_vec();
                let to = b.index(bytes.len() + 1);
                bytes.splice(to..to, chunk);
            }
        }
    }
    bytes
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_strings_never_panic(text in "\\PC*") {
        load_bytes(text.as_bytes())?;
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        load_bytes(&bytes)?;
    }

    #[test]
    fn mutated_fixtures_never_panic(
        which in any::<prop::sample::Index>(),
        mutations in prop::collection::vec(mutation(), 1..6),
    ) {
        let fixtures = valid_fixtures();
        let base = fixtures[which.index(fixtures.len())].clone();
        load_bytes(&mutate(base, &mutations))?;
    }

    #[test]
    fn random_yaml_never_panics(docs in prop::collection::vec(yaml(), 1..4)) {
        let mut text = String::new();
        for doc in &docs {
            text.push_str("---");
            doc.write(0, &mut text);
        }
        load_bytes(text.as_bytes())?;
    }
}

#[test]
fn valid_fixtures_load_through_the_fuzz_harness() {
    // The harness itself must accept good input, or the properties above prove little.
    for bytes in valid_fixtures() {
        load_bytes(&bytes).expect("valid fixture");
    }
}
