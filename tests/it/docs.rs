//! The shipped documents agree with the code: every schema property is in the reference, the
//! example schema file is what `trafficshift schema` prints, every example document validates,
//! the flag table is clap's, the metrics table is what a running controller exposes, and every
//! `trafficshift validate` the docs show runs as documented.

use crate::support;

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

/// The cells of a markdown table row, trimmed (`\|` inside a cell is not a separator).
fn cells(line: &str) -> Vec<String> {
    let mut out = vec![String::new()];
    let mut escaped = false;
    for c in line
        .trim()
        .trim_start_matches('|')
        .trim_end_matches('|')
        .chars()
    {
        match c {
            '|' if !escaped => out.push(String::new()),
            _ => out.last_mut().unwrap().push(c),
        }
        escaped = c == '\\';
    }
    out.iter().map(|c| c.trim().to_string()).collect()
}

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
        let cells = cells(line);
        assert!(
            cells.len() >= 4,
            "flag table row with too few cells: {line}"
        );
        rows.push((cells[0].clone(), cells[1].clone(), cells[2].clone()));
    }
    assert!(rows.len() > 5, "no flag table found in docs/reference.md");
    rows
}

/// `--name` tokens of a flag cell (`` `-o`, `--output FORMAT` `` -> `--output`).
fn long_flags(cell: &str) -> Vec<String> {
    cell.split(['`', ' ', ','])
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
            problems.push(format!(
                "{name} ({}) is not in the flag table",
                cmds.join(", ")
            ));
        }
        // README and reference promise a TRAFFICSHIFT_* fallback for every flag.
        if !env
            .as_deref()
            .is_some_and(|e| e.starts_with("TRAFFICSHIFT_"))
        {
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

// ---------------------------------------------------------------------------------------------
// The metrics table of docs/reference.md against a real scrape.

/// Documented `trafficshift_*` metrics: name -> (type, labels).
fn metric_table() -> std::collections::BTreeMap<String, (String, Vec<String>)> {
    let reference = std::fs::read_to_string(repo().join("docs/reference.md")).unwrap();
    let mut out = std::collections::BTreeMap::new();
    let mut inside = false;
    for line in reference.lines() {
        if line.starts_with("| metric | type | labels |") {
            inside = true;
            continue;
        }
        if !inside {
            continue;
        }
        if !line.starts_with('|') {
            break;
        }
        let cells = cells(line);
        assert!(
            cells.len() >= 4,
            "metrics table row with too few cells: {line}"
        );
        let name = cells[0].trim_matches('`');
        if !name.starts_with("trafficshift_") {
            continue;
        }
        let mut labels: Vec<String> = cells[2]
            .split(',')
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect();
        labels.sort();
        out.insert(name.to_string(), (cells[1].to_string(), labels));
    }
    assert!(
        out.len() > 10,
        "no metrics table found in docs/reference.md"
    );
    out
}

/// Label names of one exposition sample line (`name{a="x",b="y"} 1`).
fn label_names(line: &str) -> Vec<String> {
    let Some(open) = line.find('{') else {
        return Vec::new();
    };
    let mut names = Vec::new();
    let mut rest = &line[open + 1..];
    while let Some(eq) = rest.find("=\"") {
        names.push(rest[..eq].trim_start_matches(',').to_string());
        // Skip the quoted value, escapes included.
        let mut chars = rest[eq + 2..].char_indices();
        let mut end = None;
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    chars.next();
                }
                '"' => {
                    end = Some(eq + 2 + i + 1);
                    break;
                }
                _ => {}
            }
        }
        let Some(end) = end else { break };
        rest = &rest[end..];
        if rest.starts_with('}') {
            break;
        }
    }
    names
}

/// Metrics whose docs/reference.md row says they are absent until something is measured (traffic
/// shares without CloudWatch data, gate values of gates that measure nothing).
fn absent_until_measured(name: &str) -> bool {
    let text = std::fs::read_to_string(support::repo().join("docs/reference.md")).unwrap();
    text.lines()
        .filter(|l| l.starts_with(&format!("| `{name}` |")))
        .any(|l| l.contains("absent while unknown") || l.contains("absent for gates"))
}

/// `trafficshift_*` families of a scrape: name -> (type, label names seen on its samples).
fn scraped(text: &str) -> std::collections::BTreeMap<String, (String, Vec<String>)> {
    let mut out: std::collections::BTreeMap<String, (String, std::collections::BTreeSet<String>)> =
        std::collections::BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut it = rest.split_whitespace();
            if let (Some(name), Some(kind)) = (it.next(), it.next()) {
                if name.starts_with("trafficshift_") {
                    out.entry(name.to_string()).or_default().0 = kind.to_string();
                }
            }
            continue;
        }
        if line.starts_with('#') || !line.starts_with("trafficshift_") {
            continue;
        }
        let sample = line.split(['{', ' ']).next().unwrap_or_default();
        // Histogram samples belong to their family without the suffix.
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .filter_map(|s| sample.strip_suffix(s))
            .find(|f| out.get(*f).is_some_and(|(k, _)| k == "histogram"))
            .unwrap_or(sample)
            .to_string();
        let e = out.entry(family).or_default();
        e.1.extend(label_names(line).into_iter().filter(|l| l != "le"));
    }
    out.into_iter()
        .map(|(k, (t, l))| (k, (t, l.into_iter().collect())))
        .collect()
}

#[test]
fn exposition_label_names_parse() {
    assert_eq!(
        label_names(r#"x_total{split="a,b",kind="q\"=x"} 1"#),
        ["split", "kind"]
    );
    assert!(label_names("x 1").is_empty());
}

/// A controller with a split that has an ECS backend, a rollout and a gate, run to completion:
/// every documented metric must have series, every exposed one must be documented, with the same
/// type and label names.
#[test]
fn metrics_table_matches_a_scrape() {
    use std::time::Duration;
    use support::controller::{set_alarm, wait_for, Controller, Scenario};

    let moto = support::Moto::start();
    let sc = Scenario::provision(&moto, 2);
    let alarm = support::unique("alarm");
    set_alarm(&moto, &alarm, "OK");
    let dir = tempfile::tempdir().unwrap();
    let extra = format!(
        "  rollout:\n    steps: [50, 100]\n    interval: 1s\n    gateInterval: 1s\n  gates:\n    - name: errors\n      cloudwatchAlarm:\n        alarmNames: [{alarm}]\n"
    );
    std::fs::write(
        dir.path().join("api.yaml"),
        sc.document("api", 0, 100, &extra),
    )
    .unwrap();
    let mut c = Controller::start(moto.aws(), &[dir.path()], "docs", &["--resync", "1s"]);
    c.wait_ready(Duration::from_secs(60));
    wait_for("split api Complete", Duration::from_secs(90), || {
        c.split("api").filter(|s| s["state"] == "Complete")
    });
    let text = c.metrics().expect("a /metrics scrape");
    let exposed = scraped(&text);
    let documented = metric_table();
    let mut problems = Vec::new();
    for (name, (kind, labels)) in &documented {
        match exposed.get(name) {
            // Documented as absent until measured (a 0 would lie): checked when exposed.
            None if absent_until_measured(name) => {}
            None => problems.push(format!("{name} is documented but not exposed")),
            Some((k, l)) => {
                if k != kind {
                    problems.push(format!("{name}: documented as {kind}, exposed as {k}"));
                }
                if l != labels {
                    problems.push(format!(
                        "{name}: documented labels {labels:?}, exposed {l:?}"
                    ));
                }
            }
        }
    }
    for name in exposed.keys() {
        if !documented.contains_key(name) {
            problems.push(format!("{name} is exposed but not in docs/reference.md"));
        }
    }
    assert!(
        problems.is_empty(),
        "docs/reference.md metrics vs /metrics:\n  {}\n\nscrape:\n{text}",
        problems.join("\n  ")
    );
    assert_eq!(c.sigterm(Duration::from_secs(20)), Some(0));
}

// ---------------------------------------------------------------------------------------------
// Every `trafficshift validate` the docs show, run.

/// Markdown files users read: README, docs/, and the READMEs of examples/ and charts/.
fn user_docs() -> Vec<std::path::PathBuf> {
    fn walk(d: &Path, out: &mut Vec<std::path::PathBuf>) {
        for e in std::fs::read_dir(d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "md") {
                out.push(p);
            }
        }
    }
    let mut out = vec![repo().join("README.md")];
    for d in ["docs", "examples", "charts"] {
        walk(&repo().join(d), &mut out);
    }
    out.sort();
    out
}

/// `trafficshift validate ...` commands of a markdown text, from fenced code blocks and inline
/// code: (line number, arguments, documented exit). The exit is the `# exit N` comment of the
/// line, 0 without one. Commands with placeholders (`PATH`, `<dir>`, `...`) are left out.
fn validate_examples(text: &str) -> Vec<(usize, Vec<String>, i32)> {
    let mut out = Vec::new();
    let mut fenced = false;
    for (i, line) in text.lines().enumerate() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        let mut commands: Vec<&str> = Vec::new();
        if fenced {
            commands.push(line);
        } else {
            commands.extend(line.split('`').skip(1).step_by(2));
        }
        for cmd in commands {
            let Some(at) = cmd.find("trafficshift validate") else {
                continue;
            };
            let rest = &cmd[at + "trafficshift validate".len()..];
            let (args, comment) = rest.split_once('#').unwrap_or((rest, ""));
            let args = args.split(['&', ';', '|']).next().unwrap_or_default();
            let args: Vec<String> = args.split_whitespace().map(str::to_string).collect();
            let placeholder = |a: &String| {
                a.contains('<')
                    || a.contains("...")
                    || a.chars().any(|c| c.is_ascii_uppercase()) && !a.contains('/')
            };
            if args.is_empty() || args.iter().any(placeholder) {
                continue;
            }
            let exit = comment
                .split_whitespace()
                .skip_while(|w| *w != "exit")
                .nth(1)
                .and_then(|n| n.trim_matches(|c: char| !c.is_ascii_digit()).parse().ok())
                .unwrap_or(0);
            out.push((i + 1, args, exit));
        }
    }
    out
}

#[test]
fn validate_examples_are_found() {
    let md = "Run `trafficshift validate splits/prod` and\n```sh\ntrafficshift validate a b   # exit 1 = invalid\ntrafficshift validate PATH...\n```\n`trafficshift validate` alone";
    assert_eq!(
        validate_examples(md),
        [
            (1, vec!["splits/prod".to_string()], 0),
            (3, vec!["a".to_string(), "b".to_string()], 1)
        ]
    );
}

#[test]
fn every_documented_validate_command_runs_as_documented() {
    // Where a command's paths are meant: the doc's own directory, the repository root, or an
    // example repository (examples/<name>), whichever holds every path it names.
    let mut contexts: Vec<std::path::PathBuf> = vec![repo().to_path_buf()];
    for e in std::fs::read_dir(repo().join("examples"))
        .unwrap()
        .flatten()
    {
        if e.path().is_dir() {
            contexts.push(e.path());
        }
    }
    let mut ran = 0;
    let mut problems = Vec::new();
    for doc in user_docs() {
        let text = std::fs::read_to_string(&doc).unwrap();
        let rel = doc.strip_prefix(repo()).unwrap().display().to_string();
        for (line, args, exit) in validate_examples(&text) {
            let own = doc.parent().unwrap().to_path_buf();
            let Some(dir) = std::iter::once(&own)
                .chain(&contexts)
                .find(|d| args.iter().all(|a| d.join(a).exists()))
            else {
                problems.push(format!(
                    "{rel}:{line}: trafficshift validate {}: no directory of the repository holds these paths",
                    args.join(" ")
                ));
                continue;
            };
            let out = Command::new(env!("CARGO_BIN_EXE_trafficshift"))
                .arg("validate")
                .args(&args)
                .current_dir(dir)
                .output()
                .unwrap();
            ran += 1;
            if out.status.code() != Some(exit) {
                problems.push(format!(
                    "{rel}:{line}: trafficshift validate {} (in {}) exited {:?}, the docs say {exit}:\n{}",
                    args.join(" "),
                    dir.display(),
                    out.status.code(),
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    assert!(
        ran >= 3,
        "only {ran} documented validate command(s) found and run"
    );
}
