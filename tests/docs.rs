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

// ---------------------------------------------------------------------------------------------
// The flag table of docs/reference.md against clap's own definitions.

/// One row of the flag table: (flags as written, environment cell, default cell).
fn flag_table() -> Vec<(String, String, String)> {
    let reference = std::fs::read_to_string(repo().join("docs/reference.md")).unwrap();
    let mut rows = Vec::new();
    let mut inside = false;
    for line in reference.lines() {
        if line.starts_with("| flag | environment | default |") {
            inside = true;
            continue;
        }
        if !inside {
            continue;
        }
        if !line.starts_with('|') {
            break;
        }
        if line.starts_with("| ---") {
            continue;
        }
        let cells: Vec<&str> = line.trim_matches('|').split(" | ").map(str::trim).collect();
        assert!(cells.len() >= 4, "flag table row with too few cells: {line}");
        rows.push((
            cells[0].to_string(),
            cells[1].to_string(),
            cells[2].to_string(),
        ));
    }
    assert!(rows.len() > 5, "no flag table found in docs/reference.md");
    rows
}

/// `--name` tokens of a flag cell (`` `-o`, `--output FORMAT` `` -> `--output`).
fn long_flags(cell: &str) -> Vec<String> {
    cell.split(|c: char| c == '`' || c == ' ' || c == ',')
        .filter(|t| t.starts_with("--") && t.len() > 2)
        .map(str::to_string)
        .collect()
}

/// What the default column must say for a clap argument: `required`, `off` for a switch, the
/// default in backticks, or nothing.
fn documented_default(arg: &clap::Arg) -> String {
    if arg.is_required_set() {
        return "required".into();
    }
    if matches!(arg.get_action(), clap::ArgAction::SetTrue) {
        return "off".into();
    }
    let d: Vec<String> = arg
        .get_default_values()
        .iter()
        .map(|v| v.to_string_lossy().into_owned())
        .collect();
    if d.is_empty() {
        String::new()
    } else {
        format!("`{}`", d.join(","))
    }
}

/// Every long flag of every command: `--name` -> (env, documented default, commands).
fn clap_flags() -> std::collections::BTreeMap<String, (Option<String>, String, Vec<String>)> {
    use clap::CommandFactory;
    let mut out = std::collections::BTreeMap::new();
    let root = trafficshift::cli::Cli::command();
    let mut cmds = vec![root.clone()];
    cmds.extend(root.get_subcommands().cloned());
    for cmd in &cmds {
        for arg in cmd.get_arguments() {
            let Some(long) = arg.get_long() else { continue };
            if matches!(
                arg.get_action(),
                clap::ArgAction::Help | clap::ArgAction::Version
            ) {
                continue;
            }
            let env = arg.get_env().map(|e| e.to_string_lossy().into_owned());
            let entry = out
                .entry(format!("--{long}"))
                .or_insert_with(|| (env.clone(), documented_default(arg), Vec::new()));
            assert_eq!(
                (&entry.0, &entry.1),
                (&env, &documented_default(arg)),
                "--{long} differs between commands"
            );
            entry.2.push(cmd.get_name().to_string());
        }
    }
    out
}

#[test]
fn flag_table_matches_clap() {
    let flags = clap_flags();
    assert!(flags.len() > 5, "clap walk found only {flags:?}");
    let rows = flag_table();
    let mut problems = Vec::new();
    let mut documented = std::collections::BTreeSet::new();
    for (cell, env_cell, default_cell) in &rows {
        let names = long_flags(cell);
        if names.is_empty() {
            problems.push(format!("row {cell:?} names no --flag"));
        }
        for name in names {
            documented.insert(name.clone());
            let Some((env, default, _)) = flags.get(&name) else {
                problems.push(format!("{name} is documented but no command has it"));
                continue;
            };
            // The environment cell: the variable in backticks, perhaps with a note after it.
            let env_doc = env_cell
                .split('`')
                .find(|t| t.starts_with("TRAFFICSHIFT_"))
                .map(str::to_string);
            if env_doc != *env {
                problems.push(format!(
                    "{name}: environment documented {env_doc:?}, clap has {env:?}"
                ));
            }
            if default_cell != default {
                problems.push(format!(
                    "{name}: default documented {default_cell:?}, clap has {default:?}"
                ));
            }
        }
    }
    for (name, (env, _, cmds)) in &flags {
        if !documented.contains(name) {
            problems.push(format!("{name} ({}) is not in the flag table", cmds.join(", ")));
        }
        // README and reference promise a TRAFFICSHIFT_* fallback for every flag.
        if !env.as_deref().is_some_and(|e| e.starts_with("TRAFFICSHIFT_")) {
            problems.push(format!(
                "{name} ({}) has no TRAFFICSHIFT_* environment fallback",
                cmds.join(", ")
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "docs/reference.md flag table vs clap:\n  {}",
        problems.join("\n  ")
    );
}
