//! Scale benchmark of trafficshift (issue #6 parts 4 and 5). `harness = false`: `main` below.
//!
//! `cargo bench --bench scale -- [--parts plan,calls,latency,resources,baseline] [--splits-per-zone N]
//! [--zones N] [--big-foreign N] [--latency-samples N] [--baseline-splits N] [--out FILE]`
//! (or `scripts/bench`, which also checks the bootstrap). Every AWS call goes through
//! `scripts/faultproxy.py` at fault rate 0, which counts calls per operation; the theoretical
//! minimum is computed from the fleet's layout and the zones' record counts (see `fleet::minimum`).
//!
//! The `fleet` module is shared with `tests/call_counts.rs` (the CI guard, at a smaller scale).

#[allow(dead_code)]
#[path = "../tests/support/mod.rs"]
pub mod support;

/// Provisioning a fleet of splits in moto, counting AWS calls through the fault proxy, and the
/// theoretical minimum of calls a cycle needs.
pub mod fleet {
    use std::collections::{BTreeMap, BTreeSet};
    use std::io::{BufRead, BufReader};
    use std::path::{Path, PathBuf};
    use std::process::{Child, Command, Stdio};
    use std::time::{Duration, Instant};

    use serde_json::{json, Value};

    use super::support::controller::{bin, free_port, Scenario};
    use super::support::{python, repo, Moto};

    /// Route53's page size of ListResourceRecordSets.
    pub const PAGE: usize = 300;
    /// The issue's batch limits: 1,000 changes and 32,000 value characters per call.
    pub const MAX_CHANGES: usize = 1000;
    pub const MAX_CHARS: usize = 32_000;

    /// One hosted zone of the fleet.
    #[derive(Debug, Clone)]
    pub struct ZonePlan {
        /// Label of the zone under the fleet's tag, e.g. `z0` or `big`.
        pub label: String,
        /// Records that are not trafficshift's.
        pub foreign: usize,
        /// Splits with fixed alias targets.
        pub fixed: usize,
        /// Splits with an API Gateway and an ECS backend (the issue's scenario, adopted).
        pub scenarios: usize,
    }

    /// `zones` zones of `per_zone` splits (the first zone holds the `scenarios` ECS/API Gateway
    /// splits among them) with `foreign` records each, plus one zone of `big_foreign` foreign
    /// records and `big_owned` splits (skipped when `big_owned` is 0).
    pub fn layout(
        zones: usize,
        per_zone: usize,
        foreign: usize,
        scenarios: usize,
        big_foreign: usize,
        big_owned: usize,
    ) -> Vec<ZonePlan> {
        let mut out: Vec<ZonePlan> = (0..zones)
            .map(|k| {
                let sc = if k == 0 { scenarios.min(per_zone) } else { 0 };
                ZonePlan {
                    label: format!("z{k}"),
                    foreign,
                    fixed: per_zone - sc,
                    scenarios: sc,
                }
            })
            .collect();
        if big_owned > 0 {
            out.push(ZonePlan {
                label: "big".into(),
                foreign: big_foreign,
                fixed: big_owned,
                scenarios: 0,
            });
        }
        out
    }

    /// A provisioned zone.
    #[derive(Debug, Clone)]
    pub struct ZoneInfo {
        pub plan: ZonePlan,
        /// `z0.<tag>.example.`
        pub name: String,
        pub id: String,
    }

    /// A split of the fleet.
    #[derive(Debug, Clone)]
    pub struct SplitInfo {
        pub name: String,
        /// Zone name with the trailing dot.
        pub zone: String,
        /// Record name, fully qualified.
        pub record: String,
        pub file: PathBuf,
        /// The ECS/API Gateway scenario behind the split, if it is one.
        pub scenario: Option<Scenario>,
    }

    /// A fleet in moto and its documents (one file per split in `dir`).
    pub struct Fleet {
        pub tag: String,
        pub dir: PathBuf,
        _tmp: tempfile::TempDir,
        pub zones: Vec<ZoneInfo>,
        pub splits: Vec<SplitInfo>,
    }

    /// Foreign record names of a zone, and where the owned names go (spread among them).
    fn big_owned_label(i: usize, owned: usize, foreign: usize) -> String {
        format!("f{:05}x", (i + 1) * foreign / (owned + 1))
    }

    /// The YAML of a fixed-target split.
    pub fn fixed_doc(name: &str, zone: &str, record: &str, tag: &str, blue: u32) -> String {
        format!(
            r#"apiVersion: trafficshift.dev/v1alpha1
kind: TrafficSplit
metadata:
  name: {name}
spec:
  record:
    hostedZone: {zone}
    name: {record}
    type: A
    ttl: 60
  backends:
    - name: {name}-blue
      target:
        alias:
          dnsName: blue-{name}.lb.{tag}.example
          hostedZoneId: Z35SXDOTRQ7X7K
          evaluateTargetHealth: false
    - name: {name}-green
      target:
        alias:
          dnsName: green-{name}.lb.{tag}.example
          hostedZoneId: Z35SXDOTRQ7X7K
          evaluateTargetHealth: false
  weights:
    {name}-blue: {blue}
    {name}-green: {green}
"#,
            green = 100 - blue
        )
    }

    /// Create the zones and their foreign records with boto3 (batched), the scenarios with
    /// `scripts/provision.py`, and one document per split.
    pub fn provision(moto: &Moto, plans: &[ZonePlan]) -> Fleet {
        let tag = super::support::unique("b").replace('-', "");
        let zones_in: Vec<Value> = plans
            .iter()
            .map(|p| {
                let name = format!("{}.{tag}.example.", p.label);
                let foreign: Vec<String> = (0..p.foreign)
                    .map(|i| {
                        if p.label == "big" {
                            format!("f{i:05}.{name}")
                        } else {
                            format!("w{i:05}.{name}")
                        }
                    })
                    .collect();
                json!({"name": name, "foreign": foreign})
            })
            .collect();
        // UPSERT, 500 per call (an UPSERT counts twice toward the 1,000 records of a call):
        // moto's CREATE checks each change against the zone's whole change journal, which is
        // quadratic; UPSERT scans the zone's records once per change, which is cheaper.
        let ids = moto.py(
            r#"
c = client("route53")
out = {}
for z in input["zones"]:
    zid = c.create_hosted_zone(Name=z["name"], CallerReference=z["name"])["HostedZone"]["Id"].rsplit("/", 1)[-1]
    out[z["name"]] = zid
    names = z["foreign"]
    for i in range(0, len(names), 500):
        changes = [{"Action": "UPSERT", "ResourceRecordSet": {"Name": n, "Type": "A", "TTL": 300,
                    "ResourceRecords": [{"Value": "192.0.2.%d" % (1 + j % 250)}]}}
                   for j, n in enumerate(names[i:i + 500])]
        c.change_resource_record_sets(HostedZoneId=zid, ChangeBatch={"Changes": changes})
"#,
            json!({ "zones": zones_in }),
        );
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("splits");
        std::fs::create_dir_all(&dir).expect("mkdir");
        let mut zones = Vec::new();
        let mut splits = Vec::new();
        for p in plans {
            let name = format!("{}.{tag}.example.", p.label);
            let id = ids[&name].as_str().expect("zone id").to_string();
            for j in 0..p.scenarios {
                let label = format!("e{j}");
                let sname = format!("{}-{label}", p.label);
                let sc = Scenario::provision_in(moto, name.trim_end_matches('.'), &label, 10);
                // 50/50 needs ceil(20 * 50%) = 10 tasks: provisioned, so capacity is in place.
                let doc = sc.document(&sname, 50, 50, "");
                let file = dir.join(format!("{sname}.yaml"));
                std::fs::write(&file, doc).expect("write doc");
                splits.push(SplitInfo {
                    name: sname,
                    zone: name.clone(),
                    record: sc.record.clone(),
                    file,
                    scenario: Some(sc),
                });
            }
            for i in 0..p.fixed {
                let rlabel = if p.label == "big" {
                    big_owned_label(i, p.fixed, p.foreign)
                } else {
                    format!("s{i:04}")
                };
                let record = format!("{rlabel}.{name}");
                let sname = format!("{}-{rlabel}", p.label);
                let file = dir.join(format!("{sname}.yaml"));
                std::fs::write(&file, fixed_doc(&sname, &name, &record, &tag, 80))
                    .expect("write doc");
                splits.push(SplitInfo {
                    name: sname,
                    zone: name.clone(),
                    record,
                    file,
                    scenario: None,
                });
            }
            zones.push(ZoneInfo {
                plan: p.clone(),
                name,
                id,
            });
        }
        Fleet {
            tag,
            dir,
            _tmp: tmp,
            zones,
            splits,
        }
    }

    impl Fleet {
        /// A directory holding the documents of the first `n` splits (symlinks), for runs over a
        /// subset.
        pub fn subset_dir(&self, n: usize) -> PathBuf {
            let d = self.dir.with_file_name(format!("subset-{n}"));
            let _ = std::fs::remove_dir_all(&d);
            std::fs::create_dir_all(&d).expect("mkdir");
            for s in self.splits.iter().take(n) {
                let f = s.file.file_name().expect("file name");
                std::os::unix::fs::symlink(&s.file, d.join(f)).expect("symlink");
            }
            d
        }

        /// The split named `name`.
        pub fn split(&self, name: &str) -> &SplitInfo {
            self.splits
                .iter()
                .find(|s| s.name == name)
                .expect("known split")
        }
    }

    /// ResourceRecordSetCount of every zone (by id), read with boto3.
    pub fn record_counts(moto: &Moto) -> BTreeMap<String, usize> {
        let v = moto.py(
            r#"
c = client("route53")
out = {}
for page in c.get_paginator("list_hosted_zones").paginate():
    for z in page["HostedZones"]:
        out[z["Id"].rsplit("/", 1)[-1]] = z["ResourceRecordSetCount"]
"#,
            json!({}),
        );
        v.as_object()
            .expect("object")
            .iter()
            .map(|(k, n)| (k.clone(), n.as_u64().unwrap_or(0) as usize))
            .collect()
    }

    /// `scripts/faultproxy.py` at fault rate 0 in front of moto: counts calls, logs writes.
    pub struct Proxy {
        child: Child,
        /// `http://127.0.0.1:PORT`
        pub url: String,
        pub log: PathBuf,
        _tmp: tempfile::TempDir,
    }

    impl Proxy {
        pub fn start(upstream: &str) -> Proxy {
            let tmp = tempfile::tempdir().expect("tempdir");
            let log = tmp.path().join("proxy.jsonl");
            let mut child = Command::new(python())
                .arg(repo().join("scripts/faultproxy.py"))
                .args(["--listen", "127.0.0.1:0", "--upstream", upstream])
                .args(["--seed", "1", "--fault-rate", "0", "--log"])
                .arg(&log)
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .expect("run faultproxy.py");
            let mut line = String::new();
            BufReader::new(child.stdout.take().expect("stdout"))
                .read_line(&mut line)
                .expect("faultproxy prints its port");
            let port: Value = serde_json::from_str(line.trim())
                .unwrap_or_else(|e| panic!("faultproxy first line {line:?}: {e}"));
            let url = format!("http://127.0.0.1:{}", port["port"]);
            Proxy {
                child,
                url,
                log,
                _tmp: tmp,
            }
        }

        /// Requests per `service.Operation` since the last reset.
        pub fn stats(&self) -> BTreeMap<String, u64> {
            let body = curl(&["-s", &format!("{}/__proxy/stats", self.url)]);
            let v: Value = serde_json::from_str(&body).expect("stats JSON");
            v["by_operation"]
                .as_object()
                .expect("by_operation")
                .iter()
                .map(|(k, o)| (k.clone(), o["requests"].as_u64().unwrap_or(0)))
                .collect()
        }

        pub fn reset(&self) {
            curl(&["-s", "-X", "POST", &format!("{}/__proxy/reset", self.url)]);
        }

        /// Every logged request so far (one JSON object per line).
        pub fn entries(&self) -> Vec<Value> {
            std::fs::read_to_string(&self.log)
                .unwrap_or_default()
                .lines()
                .filter_map(|l| serde_json::from_str(l).ok())
                .collect()
        }
    }

    impl Drop for Proxy {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    pub fn curl(args: &[&str]) -> String {
        let out = Command::new("curl")
            .args(["-m", "30"])
            .args(args)
            .output()
            .expect("run curl");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// One Route53 change of a logged ChangeResourceRecordSets body.
    #[derive(Debug, Clone)]
    pub struct LoggedChange {
        pub action: String,
        pub name: String,
        /// Characters of the Value elements (what Route53's 32,000 limit counts).
        pub value_chars: usize,
    }

    fn between<'a>(s: &'a str, open: &str, close: &str) -> Vec<&'a str> {
        let mut out = Vec::new();
        let mut rest = s;
        while let Some(i) = rest.find(open) {
            let after = &rest[i + open.len()..];
            let Some(j) = after.find(close) else { break };
            out.push(&after[..j]);
            rest = &after[j + close.len()..];
        }
        out
    }

    fn xml_unescape(s: &str) -> String {
        s.replace("&quot;", "\"")
            .replace("&apos;", "'")
            .replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&amp;", "&")
    }

    /// The changes of one logged write, with its zone id.
    pub fn parse_change_batch(entry: &Value) -> (String, Vec<LoggedChange>) {
        let path = entry["path"].as_str().unwrap_or_default();
        let zone = path
            .split("/hostedzone/")
            .nth(1)
            .and_then(|r| r.split('/').next())
            .unwrap_or_default()
            .to_string();
        let body = entry["body"].as_str().unwrap_or_default();
        let changes = between(body, "<Change>", "</Change>")
            .into_iter()
            .map(|c| LoggedChange {
                action: between(c, "<Action>", "</Action>")
                    .first()
                    .map(|s| s.to_string())
                    .unwrap_or_default(),
                name: between(c, "<Name>", "</Name>")
                    .first()
                    .map(|s| s.to_string())
                    .unwrap_or_default(),
                value_chars: between(c, "<Value>", "</Value>")
                    .iter()
                    .map(|v| xml_unescape(v).chars().count())
                    .sum(),
            })
            .collect();
        (zone, changes)
    }

    /// The logged Route53 writes among `entries`.
    pub fn writes(entries: &[Value]) -> Vec<(String, Vec<LoggedChange>)> {
        entries
            .iter()
            .filter(|e| e["operation"] == "ChangeResourceRecordSets" && e["status"] == 200)
            .map(parse_change_batch)
            .collect()
    }

    /// Which cycle the minimum is computed for.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Phase {
        /// Nothing cached, every split needs its records written.
        First,
        /// Zones and targets cached, nothing to write.
        Steady,
    }

    /// The fewest calls per `service.Operation` one cycle over `due` can make.
    ///
    /// - ListHostedZonesByName: one per zone on a cold cache, none while cached.
    /// - ListResourceRecordSets per zone: min(ceil(zone records / 300), owned record names).
    /// - ChangeResourceRecordSets per zone: max(ceil(changes / 1000), ceil(value chars / 32000))
    ///   (chars as Route53 counts them: Value elements, twice for UPSERT), GetChange one per batch.
    /// - ECS DescribeServices: ceil(services / 10) per cluster, every cycle.
    /// - API Gateway GetDomainName, ELBv2 DescribeTargetGroups and DescribeLoadBalancers: one per
    ///   domain / target group on a cold cache.
    ///
    /// `records` are the zones' record counts when the cycle lists them; `value_chars` per zone are
    /// those of the writes the cycle made (the change contents are the controller's; their number is
    /// checked separately against `expected_changes`).
    pub fn minimum(
        fleet: &Fleet,
        due: &[&SplitInfo],
        phase: Phase,
        records: &BTreeMap<String, usize>,
        value_chars: &BTreeMap<String, usize>,
    ) -> BTreeMap<String, u64> {
        let mut m: BTreeMap<String, u64> = BTreeMap::new();
        let mut add = |k: &str, n: u64| *m.entry(k.to_string()).or_default() += n;
        let mut by_zone: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
        for s in due {
            by_zone.entry(&s.zone).or_default().insert(&s.record);
        }
        for (zone, names) in &by_zone {
            let z = fleet
                .zones
                .iter()
                .find(|z| z.name == *zone)
                .expect("zone of split");
            if phase == Phase::First {
                add("route53.ListHostedZonesByName", 1);
            }
            let n = records.get(&z.id).copied().unwrap_or(0).max(1);
            add(
                "route53.ListResourceRecordSets",
                n.div_ceil(PAGE).min(names.len()) as u64,
            );
            let changes = expected_changes(due.iter().filter(|s| s.zone == *zone).copied(), phase);
            let chars = value_chars.get(&z.id).copied().unwrap_or(0);
            let batches = changes.div_ceil(MAX_CHANGES).max(chars.div_ceil(MAX_CHARS)) as u64;
            add("route53.ChangeResourceRecordSets", batches);
            add("route53.GetChange", batches);
        }
        let mut clusters: BTreeMap<&str, usize> = BTreeMap::new();
        for s in due {
            if let Some(sc) = &s.scenario {
                *clusters.entry(&sc.cluster).or_default() += 1;
                if phase == Phase::First {
                    add("apigateway.GetDomainName", 1);
                    add("elbv2.DescribeTargetGroups", 1);
                    add("elbv2.DescribeLoadBalancers", 1);
                }
            }
        }
        for n in clusters.values() {
            add("ecs.DescribeServices", n.div_ceil(10) as u64);
        }
        m.retain(|_, v| *v > 0);
        m
    }

    /// Route53 changes the splits need: first convergence = one CREATE per backend and the state
    /// TXT, plus the DELETE of the plain record an adopted (scenario) split replaces; steady = 0.
    pub fn expected_changes<'a>(due: impl Iterator<Item = &'a SplitInfo>, phase: Phase) -> usize {
        if phase == Phase::Steady {
            return 0;
        }
        due.map(|s| if s.scenario.is_some() { 4 } else { 3 }).sum()
    }

    /// Value characters of the logged writes, per zone id.
    pub fn value_chars(writes: &[(String, Vec<LoggedChange>)]) -> BTreeMap<String, usize> {
        let mut out: BTreeMap<String, usize> = BTreeMap::new();
        for (zone, changes) in writes {
            let n: usize = changes
                .iter()
                .map(|c| {
                    if c.action == "UPSERT" {
                        2 * c.value_chars
                    } else {
                        c.value_chars
                    }
                })
                .sum();
            *out.entry(zone.clone()).or_default() += n;
        }
        out
    }

    /// Rows `(operation, actual, minimum)` over both key sets.
    pub fn compare(
        actual: &BTreeMap<String, u64>,
        min: &BTreeMap<String, u64>,
    ) -> Vec<(String, u64, u64)> {
        let keys: BTreeSet<&String> = actual.keys().chain(min.keys()).collect();
        keys.into_iter()
            .map(|k| {
                (
                    k.clone(),
                    actual.get(k).copied().unwrap_or(0),
                    min.get(k).copied().unwrap_or(0),
                )
            })
            .collect()
    }

    /// A markdown table of `compare` rows.
    pub fn table(title: &str, rows: &[(String, u64, u64)]) -> String {
        let mut s = format!(
            "{title}\n\n| operation | calls | theoretical minimum | ratio |\n|---|---:|---:|---:|\n"
        );
        let (mut ta, mut tm) = (0, 0);
        for (k, a, m) in rows {
            s += &format!("| {k} | {a} | {m} | {} |\n", ratio(*a, *m));
            ta += a;
            tm += m;
        }
        s += &format!("| **total** | {ta} | {tm} | {} |\n", ratio(ta, tm));
        s
    }

    pub fn ratio(a: u64, m: u64) -> String {
        match (a, m) {
            (0, 0) => "1.00".into(),
            (_, 0) => "∞ (should be 0)".into(),
            _ => format!("{:.2}", a as f64 / m as f64),
        }
    }

    /// `trafficshift run --once` over `configs` against `endpoint`; (exit code, wall time, log).
    pub fn run_once(
        endpoint: &str,
        configs: &Path,
        owner: &str,
        extra: &[&str],
    ) -> (Option<i32>, Duration, String) {
        let started = Instant::now();
        let out = Command::new(bin())
            .args(["run", "--once", "--config"])
            .arg(configs)
            .args(["--listen", &format!("127.0.0.1:{}", free_port())])
            .args(["--owner-id", owner])
            .args(extra)
            .env("AWS_ENDPOINT_URL", endpoint)
            .env("AWS_ACCESS_KEY_ID", "testing")
            .env("AWS_SECRET_ACCESS_KEY", "testing")
            .env("AWS_REGION", "us-east-1")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("TRAFFICSHIFT_LOG", "warn")
            .output()
            .expect("run trafficshift --once");
        (
            out.status.code(),
            started.elapsed(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Sum of `trafficshift_reconciles_total` over every split and result.
    pub fn reconciles(metrics: &str) -> u64 {
        metrics
            .lines()
            .filter(|l| l.starts_with("trafficshift_reconciles_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as u64
    }

    /// `trafficshift_reconcile_duration_seconds` (sum, count) of one split.
    pub fn reconcile_duration(metrics: &str, split: &str) -> (f64, u64) {
        let pick = |suffix: &str| {
            metrics
                .lines()
                .filter(|l| {
                    l.starts_with(&format!(
                        "trafficshift_reconcile_duration_seconds_{suffix}{{"
                    )) && l.contains(&format!("split=\"{split}\""))
                })
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum::<f64>()
        };
        (pick("sum"), pick("count") as u64)
    }

    /// Whether every split of the status is Complete and Ready.
    pub fn all_converged(status: &Value, n: usize) -> bool {
        let Some(splits) = status["splits"].as_array() else {
            return false;
        };
        splits.len() == n
            && splits.iter().all(|s| {
                s["state"] == "Complete"
                    && s["conditions"].as_array().is_some_and(|c| {
                        c.iter()
                            .any(|c| c["type"] == "Ready" && c["status"] == "True")
                    })
            })
    }
}

fn main() {
    eprintln!("not yet");
}
