//! The shipped documents agree with the code: every schema property is in the reference, the
//! example schema file is what `trafficshift schema` prints, and every example document validates.

use std::path::Path;
use std::process::Command;

use serde_json::Value;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn properties(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            if let Some(Value::Object(props)) = m.get("properties") {
                out.extend(props.keys().cloned());
            }
            m.values().for_each(|x| properties(x, out));
        }
        Value::Array(a) => a.iter().for_each(|x| properties(x, out)),
        _ => {}
    }
}

#[test]
fn reference_mentions_every_schema_property() {
    let schema = trafficshift::spec::schema::json_schema();
    let mut props = Vec::new();
    properties(&schema, &mut props);
    props.sort();
    props.dedup();
    assert!(props.len() > 30, "schema walk found only {props:?}");
    let reference = std::fs::read_to_string(repo().join("docs/reference.md")).unwrap();
    // A property is documented as `name` or as the last part of a dotted path (`spec.name`).
    let missing: Vec<&String> = props
        .iter()
        .filter(|p| {
            !reference.contains(&format!("`{p}`")) && !reference.contains(&format!(".{p}`"))
        })
        .collect();
    assert!(
        missing.is_empty(),
        "docs/reference.md does not document: {missing:?}"
    );
}

#[test]
fn example_schema_file_is_generated() {
    let out = Command::new(env!("CARGO_BIN_EXE_trafficshift"))
        .arg("schema")
        .output()
        .unwrap();
    assert!(out.status.success());
    let printed: Value = serde_json::from_slice(&out.stdout).unwrap();
    let file = repo().join("examples/gitops/schema/trafficsplit.schema.json");
    let committed: Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    assert_eq!(
        printed,
        committed,
        "regenerate with: trafficshift schema > {}",
        file.display()
    );
}

#[test]
fn every_example_document_validates() {
    // One controller per environment: each directory is validated on its own.
    let mut dirs = vec![
        repo().join("examples/gitops/splits/staging"),
        repo().join("examples/gitops/splits/production"),
    ];
    // The valid corpus reuses split names across files: each file stands alone.
    for f in std::fs::read_dir(repo().join("tests/corpus/valid")).unwrap() {
        dirs.push(f.unwrap().path());
    }
    for d in dirs {
        let out = Command::new(env!("CARGO_BIN_EXE_trafficshift"))
            .arg("validate")
            .arg(&d)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{} does not validate:\n{}",
            d.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
