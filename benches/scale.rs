//! Scale benchmark of trafficshift (issue #6 parts 4 and 5). `harness = false`: `main` below.
//!
//! `cargo bench --bench scale -- [--parts plan,calls,latency,resources,baseline,metrics] [--splits-per-zone N]
//! [--zones N] [--big-foreign N] [--latency-samples N] [--baseline-splits N] [--out FILE]
//! [--realistic [--layer-arg ARG]...] [--baseline-bin PATH [--baseline-label TEXT]]` (or
//! `scripts/bench`, which also checks the bootstrap). `--baseline-bin` measures an earlier build's
//! controller binary beside this one in the same run (latency and resources). Every AWS call goes
//! through `scripts/faultproxy.py` at fault rate 0, which counts calls per operation; the
//! theoretical minimum is computed from the fleet's layout and the zones' record counts (see
//! `fleet::minimum`). `--realistic` runs the proxy as the realistic AWS layer
//! (`fleet::REALISTIC_LAYER`: PENDING changes, target health, task starts, and Route53's account
//! rate of 5 requests/s, which the bench then never asks the controller to exceed).
//!
//! The `fleet` module is shared with `tests/it/call_counts.rs` (the CI guard, at a smaller scale).

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

    /// The layer's flags for `--realistic`: every real-AWS behaviour on (`--realistic`), with the
    /// ECS and health-check delays short enough for a fleet run, and Route53's real account rate.
    /// A controller behind it must stay at `--route53-rps 5` (its default) or below: above it the
    /// layer answers `Throttling`, and the retries would count as calls.
    pub const REALISTIC_LAYER: &[&str] = &[
        "--realistic",
        "--task-start",
        "1",
        "--health-check-seconds",
        "2",
        "--change-pending",
        "2",
        "--route53-rps",
        "5",
    ];

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
            Proxy::start_with(upstream, &[])
        }

        /// The proxy with more flags, e.g. [`REALISTIC_LAYER`].
        pub fn start_with(upstream: &str, extra: &[&str]) -> Proxy {
            let tmp = tempfile::tempdir().expect("tempdir");
            let log = tmp.path().join("proxy.jsonl");
            let mut child = Command::new(python())
                .arg(repo().join("scripts/faultproxy.py"))
                .args(["--listen", "127.0.0.1:0", "--upstream", upstream])
                .args(["--seed", "1", "--fault-rate", "0", "--log"])
                .arg(&log)
                .args(extra)
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

    /// What the realistic layer did to the requests among `entries`: how many it answered with
    /// `Throttling` (over the account rate) and the changes it refused as real Route53 would.
    pub fn layer_events(entries: &[Value]) -> (usize, Vec<String>) {
        let throttled = entries
            .iter()
            .filter(|e| e["fault"] == "rate-limit")
            .count();
        let refused = entries
            .iter()
            .filter_map(|e| e["refused"].as_str())
            .map(String::from)
            .collect();
        (throttled, refused)
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
    /// - STS GetCallerIdentity: one when the process starts (the first convergence).
    /// - ListHostedZonesByName: one per zone on a cold cache, none while cached.
    /// - ListResourceRecordSets per zone: min(ceil(zone records / 300), owned record names).
    /// - ChangeResourceRecordSets per zone: max(ceil(changes / 1000), ceil(value chars / 32000))
    ///   (chars as Route53 counts them: Value elements, twice for UPSERT). GetChange: none in the
    ///   cycle that submits (a change is not awaited); one per batch in the split's next cycle.
    /// - ECS DescribeServices: ceil(services / 10) per cluster, every cycle.
    /// - Application Auto Scaling DescribeScalableTargets: ceil(ECS services / 50), every cycle.
    /// - API Gateway GetDomainName, ELBv2 DescribeTargetGroups and DescribeLoadBalancers: one per
    ///   domain / target group on a cold cache.
    /// - ELBv2 DescribeTargetHealth: one per target group of an ECS backend whose weight rises in
    ///   the cycle (first convergence of a scenario: 0% -> 50%), none in a steady state.
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
        if phase == Phase::First {
            // A starting controller asks STS once which account its credentials are (the
            // `account` label and the Route53 limit of its own account).
            add("sts.GetCallerIdentity", 1);
        }
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
        }
        let mut clusters: BTreeMap<&str, usize> = BTreeMap::new();
        for s in due {
            if let Some(sc) = &s.scenario {
                *clusters.entry(&sc.cluster).or_default() += 1;
                if phase == Phase::First {
                    add("apigateway.GetDomainName", 1);
                    add("elbv2.DescribeTargetGroups", 1);
                    add("elbv2.DescribeLoadBalancers", 1);
                    add("elbv2.DescribeTargetHealth", 1);
                }
            }
        }
        for n in clusters.values() {
            add("ecs.DescribeServices", n.div_ceil(10) as u64);
        }
        let services: usize = clusters.values().sum();
        add(
            "application-autoscaling.DescribeScalableTargets",
            services.div_ceil(50) as u64,
        );
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

// ---------------------------------------------------------------------------------------------
// The benchmark run.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use fleet::{Phase, Proxy, SplitInfo};
use support::controller::{wait_for, Controller};
use support::Moto;

const OWNER: &str = "bench";

struct Args {
    parts: Vec<String>,
    zones: usize,
    per_zone: usize,
    foreign: usize,
    scenarios: usize,
    big_foreign: usize,
    big_owned: usize,
    latency_samples: usize,
    baseline_splits: usize,
    plan_iters: usize,
    out: PathBuf,
    /// Run the proxy as the realistic AWS layer (`fleet::REALISTIC_LAYER`).
    realistic: bool,
    /// More flags for the layer, after `REALISTIC_LAYER` so they override it (e.g.
    /// `--route53-validate=false` to see what the layer's own checking costs).
    layer_args: Vec<String>,
    /// An earlier build's controller binary, measured in the same run beside this build's
    /// (latency and resources parts), e.g. the release binary of the previous commit.
    baseline_bin: Option<PathBuf>,
    baseline_label: String,
}

fn args() -> Args {
    let mut a = Args {
        parts: ["plan", "calls", "latency", "resources", "baseline"]
            .map(String::from)
            .to_vec(),
        zones: 10,
        per_zone: 100,
        foreign: 50,
        scenarios: 4,
        big_foreign: 20_000,
        big_owned: 5,
        latency_samples: 100,
        baseline_splits: 50,
        plan_iters: 50,
        out: PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench/scale.md"),
        realistic: false,
        layer_args: Vec::new(),
        baseline_bin: None,
        baseline_label: "before".into(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        // `cargo bench` passes --bench to every bench target.
        if k == "--bench" {
            continue;
        }
        if k == "--realistic" {
            a.realistic = true;
            continue;
        }
        let mut v = || it.next().unwrap_or_else(|| panic!("{k} needs a value"));
        let num = |s: String| -> usize {
            s.parse()
                .unwrap_or_else(|_| panic!("{k}: not a number: {s}"))
        };
        match k.as_str() {
            "--parts" => a.parts = v().split(',').map(String::from).collect(),
            "--zones" => a.zones = num(v()),
            "--splits-per-zone" => a.per_zone = num(v()),
            "--foreign-per-zone" => a.foreign = num(v()),
            "--scenarios" => a.scenarios = num(v()),
            "--big-foreign" => a.big_foreign = num(v()),
            "--big-owned" => a.big_owned = num(v()),
            "--latency-samples" => a.latency_samples = num(v()),
            "--baseline-splits" => a.baseline_splits = num(v()),
            "--plan-iters" => a.plan_iters = num(v()),
            "--out" => a.out = PathBuf::from(v()),
            "--layer-arg" => a.layer_args.push(v()),
            "--baseline-bin" => a.baseline_bin = Some(PathBuf::from(v())),
            "--baseline-label" => a.baseline_label = v(),
            other => {
                panic!("unknown argument {other}; see the top of benches/scale.rs for the options")
            }
        }
    }
    a
}

/// The controllers a part measures, as (label, binary): the baseline first when given, then this
/// build's (`None`: the binary `cargo bench` built).
fn binaries(a: &Args) -> Vec<(String, Option<PathBuf>)> {
    let mut v = Vec::new();
    if let Some(b) = &a.baseline_bin {
        v.push((a.baseline_label.clone(), Some(b.clone())));
    }
    v.push((
        if v.is_empty() { "this build" } else { "after" }.to_string(),
        None,
    ));
    v
}

/// Run `f` with the controller binary `bin` (`support::controller::bin` reads TRAFFICSHIFT_BIN).
/// The bench starts controllers from this one thread only.
fn with_binary<T>(bin: &Option<PathBuf>, f: impl FnOnce() -> T) -> T {
    match bin {
        Some(b) => std::env::set_var("TRAFFICSHIFT_BIN", b),
        None => std::env::remove_var("TRAFFICSHIFT_BIN"),
    }
    let r = f();
    std::env::remove_var("TRAFFICSHIFT_BIN");
    r
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// (p50, p99, max) of samples in milliseconds.
fn percentiles(v: &mut [f64]) -> (f64, f64, f64) {
    v.sort_by(|a, b| a.total_cmp(b));
    let at = |q: f64| v[((q * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1];
    (at(0.5), at(0.99), v[v.len() - 1])
}

// --- (b) in-memory planning -------------------------------------------------------------------

/// decide + classify + route53_changes for `n` fixed-target splits, in process.
fn plan_bench(out: &mut String, n: usize, iters: usize) {
    use trafficshift::aws::{AliasTarget, RecordSet};
    use trafficshift::plan::{self, Target};
    use trafficshift::rollout::{self, GateSummary};
    use trafficshift::spec::fqdn;

    let tmp = tempfile::tempdir().expect("tempdir");
    let zones = 10;
    for i in 0..n {
        let zone = format!("z{}.plan.example.", i % zones);
        let name = format!("z{}-s{i:04}", i % zones);
        let record = format!("s{i:04}.{zone}");
        std::fs::write(
            tmp.path().join(format!("{name}.yaml")),
            fleet::fixed_doc(&name, &zone, &record, "plan", 80),
        )
        .expect("write");
    }
    let loaded = trafficshift::spec::load_paths(&[tmp.path().to_path_buf()]);
    assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
    let splits: Vec<_> = loaded.docs.into_iter().map(|d| d.split).collect();
    let targets: Vec<BTreeMap<String, Target>> = splits
        .iter()
        .map(|s| {
            s.spec
                .backends
                .iter()
                .map(|b| {
                    let a = b
                        .target
                        .as_ref()
                        .and_then(|t| t.alias.as_ref())
                        .expect("alias");
                    (
                        b.name.clone(),
                        Target::Alias(AliasTarget {
                            dns_name: fqdn(&a.dns_name),
                            hosted_zone_id: a.hosted_zone_id.clone(),
                            evaluate_target_health: a.evaluate_target_health,
                        }),
                    )
                })
                .collect()
        })
        .collect();
    let ecs = BTreeMap::new();
    let gates = GateSummary::none();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    // One pass: what a cycle computes per split (no IO). Returns the records it would write.
    let pass = |records: &[Vec<RecordSet>]| -> (Duration, Vec<Vec<RecordSet>>) {
        let t = Instant::now();
        let mut written = Vec::with_capacity(splits.len());
        for ((split, tg), recs) in splits.iter().zip(&targets).zip(records) {
            let refs: Vec<&RecordSet> = recs.iter().collect();
            let obs = plan::classify(split, OWNER, &refs, tg).expect("classify");
            let d = rollout::decide(&rollout::Inputs {
                split,
                owner: OWNER,
                stored: obs.state.as_ref(),
                observed: obs.weights.as_ref(),
                ecs: &ecs,
                gates: &gates,
                now_ms: now * 1000,
                window: None,
            });
            let intended = obs
                .state
                .as_ref()
                .map(|s| s.current.clone())
                .unwrap_or_default();
            let changes = match &d.write {
                Some(w) => {
                    plan::route53_changes(split, &obs, w, &d.state, tg, &intended).expect("changes")
                }
                None => vec![],
            };
            written.push(changes.into_iter().map(|c| c.change.record).collect());
        }
        (t.elapsed(), std::hint::black_box(written))
    };
    let empty: Vec<Vec<RecordSet>> = vec![vec![]; splits.len()];
    let (_, converged) = pass(&empty);
    let (_, again) = pass(&converged);
    assert!(
        again.iter().all(|c| c.is_empty()),
        "steady state plans no change"
    );
    // For a profiler (callgrind counts instructions, repeatable on a loaded machine): only the
    // steady pass, N times; the difference between two N is the cost of N passes.
    if let Some(k) = std::env::var("TRAFFICSHIFT_BENCH_PLAN_PROFILE")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
    {
        for _ in 0..k {
            std::hint::black_box(pass(&converged));
        }
        return;
    }
    // What a full listing hands over: each zone's records, picked per split by name.
    let mut zone_listing: BTreeMap<String, Vec<RecordSet>> = BTreeMap::new();
    for (s, recs) in splits.iter().zip(&converged) {
        zone_listing
            .entry(s.spec.record.hosted_zone.clone())
            .or_default()
            .extend(recs.iter().cloned());
    }
    let pick = || {
        let t = Instant::now();
        let picked: Vec<Vec<&RecordSet>> = splits
            .iter()
            .map(|s| plan::records_for(s, &zone_listing[&s.spec.record.hosted_zone]))
            .collect();
        (t.elapsed(), std::hint::black_box(picked).len())
    };
    // Loading every document without a cache (what a file event cost before the cache).
    let dir = [tmp.path().to_path_buf()];
    let reload = || {
        let t = Instant::now();
        let l = trafficshift::spec::load_paths(&dir);
        (t.elapsed(), std::hint::black_box(l.docs.len()))
    };
    // What one file event costs now: the edited file is read and parsed, the others come from
    // the cache; and the resync's verification of every file (read and hashed, none changed).
    let mut cache = trafficshift::spec::DocCache::default();
    cache.load_all(&dir);
    let edited = tmp.path().join("z0-s0000.yaml");
    let original = std::fs::read_to_string(&edited).expect("read");
    let mut event = |k: usize| {
        let text = if k % 2 == 0 {
            original.replace(": 80", ": 70").replace(": 20", ": 30")
        } else {
            original.clone()
        };
        std::fs::write(&edited, text).expect("write");
        let t = Instant::now();
        let l = cache.load_changed(&dir, std::slice::from_ref(&edited));
        let took = t.elapsed();
        assert!(l.errors.is_empty(), "{:?}", l.errors);
        (took, std::hint::black_box(l.docs.len()))
    };
    let (mut first, mut steady, mut picks, mut reloads) = (vec![], vec![], vec![], vec![]);
    let (mut events, mut verifies) = (vec![], vec![]);
    for k in 0..iters {
        first.push(ms(pass(&empty).0));
        steady.push(ms(pass(&converged).0));
        picks.push(ms(pick().0));
        reloads.push(ms(reload().0));
        events.push(ms(event(k).0));
    }
    for _ in 0..iters {
        let mut cache = trafficshift::spec::DocCache::default();
        cache.load_all(&dir);
        let t = Instant::now();
        std::hint::black_box(cache.load_all(&dir).docs.len());
        verifies.push(ms(t.elapsed()));
    }
    let (e50, e99, _) = percentiles(&mut events);
    let (v50, v99, _) = percentiles(&mut verifies);
    let event_verdict = if e50 < 5.0 { "met" } else { "MISSED" };
    let (r50, r99, _) = percentiles(&mut reloads);
    let (f50, f99, _) = percentiles(&mut first);
    let (s50, s99, _) = percentiles(&mut steady);
    let (p50, p99, _) = percentiles(&mut picks);
    let verdict = if s50 < 5.0 { "met" } else { "MISSED" };
    let _ = write!(
        out,
        "\n## (b) In-memory planning cost, {n} splits, {iters} iterations (release, no IO)\n\n\
         classify + decide + route53_changes for every split, as one cycle does after its listings.\n\n\
         | pass | p50 | p99 | target |\n|---|---:|---:|---|\n\
         | steady state (records in place, nothing to write) | {s50:.2} ms | {s99:.2} ms | < 5 ms: {verdict} |\n\
         | first convergence (nothing exists, 3 creates per split) | {f50:.2} ms | {f99:.2} ms | |\n\
         | picking each split's records out of its zone listing (`plan::records_for`) | {p50:.2} ms | {p99:.2} ms | |\n\
         | loading every document without the cache (`spec::load_paths` over {n} files, what one file event cost before) | {r50:.2} ms | {r99:.2} ms | |\n\
         | reload after one file event (`DocCache::load_changed`, 1 of {n} files edited) | {e50:.2} ms | {e99:.2} ms | < 5 ms: {event_verdict} |\n\
         | resync verification (`DocCache::load_all`: every file read and hashed, none changed) | {v50:.2} ms | {v99:.2} ms | |\n"
    );
}

// --- (f) metrics and status of many splits -----------------------------------------------------

/// Resident set size of this process, KiB.
fn self_rss_kib() -> u64 {
    proc_status_kib(std::process::id(), "VmRSS:")
}

/// The series a steady-state cycle leaves for one split of two backends and one gate: what
/// `Controller::run_due` and the traffic poller set.
fn populate_split(name: &str) {
    use trafficshift::metrics::METRICS;
    METRICS.init_split(name, &["smoke".to_string()]);
    METRICS.splits.update(name, |s| {
        s.set_info(
            &format!("{name}.z.example."),
            "z.example.",
            OWNER,
            "123456789012",
        );
        for _ in 0..3 {
            s.observe_duration(0.2);
            s.count_reconcile(true);
        }
        s.last_success = Some(1.7e9);
        s.set_state("Complete");
        let g = s.gate("smoke");
        g.passing = Some(1);
        g.consecutive_failures = Some(0);
        g.value = Some(0.5);
        for (b, w) in [("blue", 0.8), ("green", 0.2)] {
            let b = s.backend(&format!("{name}-{b}"));
            b.target_weight = Some(w);
            b.step_weight = Some(w);
            b.observed_weight = Some(w);
            b.traffic_share = Some(w);
            b.requests_per_second = Some(100.0 * w);
        }
        s.drift = Some(0.0);
        s.progress = Some(1.0);
        s.step = Some(4);
        s.steps = Some(4);
    });
}

/// A `/status` entry as a converged split of two backends and one gate shows it.
fn status_of(name: &str) -> trafficshift::status::SplitStatus {
    use trafficshift::status::*;
    let t = "2025-01-01T00:00:00Z".to_string();
    SplitStatus {
        name: name.into(),
        record: format!("{name}.z.example. A"),
        hosted_zone: "z.example.".into(),
        state: "Complete".into(),
        conditions: ["Ready", "Progressing", "Degraded", "Paused"]
            .iter()
            .map(|c| Condition {
                type_: c.to_string(),
                status: "False".into(),
                reason: "RolloutComplete".into(),
                message: "Route53 and ECS match the current step".into(),
                last_transition_time: t.clone(),
                observed_generation: "0123456789abcdef".into(),
            })
            .collect(),
        step: 4,
        steps: 4,
        progress: 1.0,
        backends: ["blue", "green"]
            .iter()
            .map(|b| BackendStatus {
                name: format!("{name}-{b}"),
                target_weight: 50,
                step_weight: 50,
                observed_weight: Some(50),
                ecs: None,
                traffic_share: Some(0.5),
            })
            .collect(),
        gates: vec![GateStatus {
            name: "smoke".into(),
            passing: Some(true),
            value: Some(0.5),
            message: "ok".into(),
            last_check: Some(t.clone()),
            ..GateStatus::default()
        }],
        last_reconcile: Some(t.clone()),
        last_success: Some(t.clone()),
        observed_generation: "0123456789abcdef".into(),
        first_seen: t.clone(),
        events: (0..5)
            .map(|k| Event {
                time: t.clone(),
                type_: "Normal".into(),
                reason: "StepAdvanced".into(),
                message: format!("step {k} of 4: weights blue 50 green 50"),
            })
            .collect(),
        ..SplitStatus::default()
    }
}

/// p50 of GET /status and GET /metrics, whole bodies read, from the real server on a runtime
/// shaped like the binary's.
fn over_http(status: &trafficshift::status::ControllerStatus, iters: usize) -> (f64, f64) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let app = trafficshift::server::AppState::new();
        app.set_status(status);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(trafficshift::server::serve(listener, app, async move {
            let _ = stopped.await;
        }));
        let client = reqwest::Client::new();
        let mut times = [vec![], vec![]];
        for _ in 0..iters {
            for (k, path) in ["/status", "/metrics"].iter().enumerate() {
                let t = Instant::now();
                let r = client
                    .get(format!("{base}{path}"))
                    .send()
                    .await
                    .expect("GET");
                assert!(r.status().is_success(), "GET {path}: {}", r.status());
                let body = r.bytes().await.expect("body");
                times[k].push(ms(t.elapsed()));
                std::hint::black_box(body);
            }
        }
        let _ = stop.send(());
        let _ = server.await;
        let [mut a, mut b] = times;
        (percentiles(&mut a).0, percentiles(&mut b).0)
    })
}

/// `/metrics` and `/status` of `n` splits, in process: the store's growth, a scrape's time and
/// size, and what publishing and serving the status cost.
fn metrics_bench(out: &mut String, n: usize, iters: usize) {
    use trafficshift::metrics::METRICS;
    use trafficshift::server::StatusJson;
    use trafficshift::status::ControllerStatus;

    // The registry's own series exist before the splits do.
    let _ = METRICS.render();
    let rss0 = self_rss_kib();
    for i in 0..n {
        populate_split(&format!("z{}-s{i:05}", i % 10));
    }
    let rss1 = self_rss_kib();
    let text = METRICS.render();
    let (bytes, series) = (
        text.len(),
        text.lines().filter(|l| !l.starts_with('#')).count(),
    );
    drop(text);
    let mut whole = Vec::new();
    let mut pieces = Vec::new();
    let mut biggest = 0;
    for _ in 0..iters {
        let t = Instant::now();
        std::hint::black_box(METRICS.render());
        whole.push(ms(t.elapsed()));
        // What the /metrics handler does: one piece at a time, each dropped once sent.
        let t = Instant::now();
        for p in METRICS.render_chunks() {
            biggest = biggest.max(p.len());
            std::hint::black_box(p);
        }
        pieces.push(ms(t.elapsed()));
    }
    let rss2 = self_rss_kib();
    let (w50, w99, _) = percentiles(&mut whole);
    let (p50, p99, _) = percentiles(&mut pieces);

    let status = ControllerStatus {
        version: "bench".into(),
        splits: (0..n)
            .map(|i| status_of(&format!("z{}-s{i:05}", i % 10)))
            .collect(),
        ..ControllerStatus::default()
    };
    let (mut old, mut publish, mut serve) = (vec![], vec![], vec![]);
    let mut json_bytes = 0;
    for _ in 0..iters.min(20) {
        // Before: every request cloned the whole status under the lock, then serialized it.
        let t = Instant::now();
        let body = serde_json::to_vec(&status.clone()).expect("json");
        old.push(ms(t.elapsed()));
        json_bytes = body.len();
        let t = Instant::now();
        let json = std::sync::Arc::new(StatusJson::new(&status));
        publish.push(ms(t.elapsed()));
        let t = Instant::now();
        let sent: usize = json.chunks().map(|b| b.len()).sum();
        serve.push(ms(t.elapsed()));
        assert_eq!(sent, json_bytes, "the same document");
    }
    let (http_status, http_metrics) = over_http(&status, iters.min(10));
    let (o50, _, _) = percentiles(&mut old);
    let (pb50, _, _) = percentiles(&mut publish);
    let (s50, _, _) = percentiles(&mut serve);
    let mib = |k: u64| k as f64 / 1024.0;
    let _ = write!(
        out,
        "\n## (f) /metrics and /status of {n} splits, {iters} iterations (release, in process)\n\n\
         Each split as a steady-state cycle leaves it: two backends, one gate, CloudWatch shares.\n\n\
         | measure | value |\n|---|---:|\n\
         | RSS growth of {n} splits' series | {:.1} MiB ({:.2} KiB per split) |\n\
         | exposition | {bytes} bytes, {series} series |\n\
         | `render()` whole text p50 / p99 | {w50:.2} ms / {w99:.2} ms |\n\
         | `render_chunks()` (the handler) p50 / p99, largest piece | {p50:.2} ms / {p99:.2} ms, {biggest} bytes |\n\
         | RSS after {iters} scrapes, over before them | {:.1} MiB |\n\
         | `/status` JSON | {json_bytes} bytes |\n\
         | `/status` before: clone + serialize per request, p50 | {o50:.2} ms |\n\
         | `/status` now: serialize per publish (`StatusJson::new`), p50 | {pb50:.2} ms |\n\
         | `/status` now: per request (copy the pieces), p50 | {s50:.2} ms |\n\
         | GET `/status` over HTTP (2-worker runtime, reqwest, body read), p50 | {http_status:.2} ms |\n\
         | GET `/metrics` over HTTP, p50 | {http_metrics:.2} ms |\n",
        mib(rss1.saturating_sub(rss0)),
        rss1.saturating_sub(rss0) as f64 / n as f64,
        mib(rss2.saturating_sub(rss1)),
    );
}

// --- fleet runs ---------------------------------------------------------------------------------

fn route53_calls(stats: &BTreeMap<String, u64>) -> u64 {
    stats
        .iter()
        .filter(|(k, _)| k.starts_with("route53."))
        .map(|(_, v)| v)
        .sum()
}

/// Unix time (seconds, fractional) of a proxy log entry.
fn entry_time(e: &serde_json::Value) -> f64 {
    let s = e["time"].as_str().unwrap_or_default();
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .map(|t| t.unix_timestamp_nanos() as f64 / 1e9)
        .unwrap_or(0.0)
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// The PID of the controller listening on `port` (from /proc).
fn pid_of(port: u16) -> u32 {
    let needle = format!("127.0.0.1:{port}");
    for e in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        if cmd.contains("trafficshift") && cmd.contains(&needle) {
            return pid;
        }
    }
    panic!("no trafficshift process listening on {needle}");
}

fn proc_status_kib(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

/// utime + stime of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let f: Vec<&str> = rest.split_whitespace().collect();
    f.get(11).and_then(|x| x.parse().ok()).unwrap_or(0)
        + f.get(12).and_then(|x| x.parse().ok()).unwrap_or(0)
}

fn clk_tck() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

struct Run<'a> {
    moto: &'a Moto,
    fleet: &'a fleet::Fleet,
    proxy: &'a Proxy,
    /// The proxy is the realistic layer: Route53 allows 5 requests/s, so every controller of the
    /// run keeps its default `--route53-rps 5` instead of running unlimited.
    realistic: bool,
}

impl Run<'_> {
    /// The fastest Route53 rate the run may give a controller: unlimited against moto, the
    /// account's 5 requests/s through the realistic layer.
    fn fastest_rps(&self) -> &'static str {
        if self.realistic {
            "5"
        } else {
            "0"
        }
    }
}

/// (a) and (e): first convergence with `--once` at 5 requests/s, then the steady-state cycle of a
/// long-running controller (unlimited rate against moto, so its wall time is the controller's own
/// plus AWS's; 5 requests/s through the realistic layer, which allows no more).
fn calls(out: &mut String, r: &Run, flush: &dyn Fn(&str)) -> (f64, u64) {
    let n = r.fleet.splits.len();
    let before = fleet::record_counts(r.moto);
    r.proxy.reset();
    let skip = r.proxy.entries().len();
    let t0 = unix_now();
    let (code, took, log) =
        fleet::run_once(&r.proxy.url, &r.fleet.dir, OWNER, &["--route53-rps", "5"]);
    assert_eq!(
        code,
        Some(0),
        "first convergence failed after {took:?}:\n{log}"
    );
    let actual = r.proxy.stats();
    let entries = r.proxy.entries();
    let writes = fleet::writes(&entries[skip..]);
    let due: Vec<&SplitInfo> = r.fleet.splits.iter().collect();
    let min = fleet::minimum(
        r.fleet,
        &due,
        Phase::First,
        &before,
        &fleet::value_chars(&writes),
    );
    let changes: usize = writes.iter().map(|(_, c)| c.len()).sum();
    let want_changes = fleet::expected_changes(due.iter().copied(), Phase::First);
    let rows = fleet::compare(&actual, &min);
    let _ = write!(
        out,
        "\n## (a) AWS calls, {n} splits in {} zones\n\n{}\nRoute53 changes written: {changes} (needed: {want_changes}).\n",
        r.fleet.zones.len(),
        fleet::table("### First convergence (`run --once`, nothing cached)", &rows)
    );
    let r53 = route53_calls(&actual);
    let mut e_table = String::new();
    if r.realistic {
        let (throttled, refused) = fleet::layer_events(&entries[skip..]);
        let _ = writeln!(
            out,
            "Through the layer: {throttled} requests answered `Throttling`, {} changes refused{}.",
            refused.len(),
            if refused.is_empty() {
                String::new()
            } else {
                format!(": {refused:?}")
            }
        );
        // The layer keeps every change PENDING for `--change-pending` seconds after it accepted
        // it; the fleet has converged when the last batch is INSYNC.
        let pending: f64 = fleet::REALISTIC_LAYER
            .windows(2)
            .find(|w| w[0] == "--change-pending")
            .and_then(|w| w[1].parse().ok())
            .expect("--change-pending in REALISTIC_LAYER");
        // A log entry's time is when the request arrived; it was accepted when it was answered.
        let last_write = entries[skip..]
            .iter()
            .filter(|e| e["operation"] == "ChangeResourceRecordSets" && e["status"] == 200)
            .map(|e| entry_time(e) + e["duration_seconds"].as_f64().unwrap_or(0.0))
            .fold(t0, f64::max)
            - t0;
        let insync = last_write + pending;
        let floor = r53 as f64 / 5.0;
        let _ = write!(
            e_table,
            "\n## (e) Converging {n} splits under Route53's 5 requests/s (realistic layer)\n\n\
             `run --once` at `--route53-rps 5` through the layer, which throttles above 5 requests/s \
             and keeps each change PENDING for {pending:.0} s. Floor: every Route53 call of the run \
             at 5 per second.\n\n\
             | last batch accepted (from process start) | `run --once` exit | every change INSYNC (last batch + {pending:.0} s) | Route53 calls | floor (calls / 5) | ratio (accepted / floor) |\n|---:|---:|---:|---:|---:|---:|\n\
             | {last_write:.1} s | {:.1} s | {insync:.1} s | {r53} | {floor:.1} s | {:.2} |\n",
            took.as_secs_f64(),
            last_write / floor.max(0.001)
        );
        // Where the time went: the requests' own durations in the layer (moto included), by
        // operation; the rest is the controller's work and its rate limiter's waits.
        let mut by_op: BTreeMap<String, (u64, f64)> = BTreeMap::new();
        for e in &entries[skip..] {
            let Some(op) = e["operation"].as_str() else {
                continue;
            };
            let d = by_op
                .entry(format!("{}.{op}", e["service"].as_str().unwrap_or("?")))
                .or_default();
            d.0 += 1;
            d.1 += e["duration_seconds"].as_f64().unwrap_or(0.0);
        }
        let _ = write!(
            e_table,
            "\nTime inside the proxy (moto included) during that run, by operation: {}.\n",
            by_op
                .iter()
                .map(|(k, (n, d))| format!("{k} {n} calls {d:.1} s"))
                .collect::<Vec<_>>()
                .join(", ")
        );
    } else {
        let floor = (r53.saturating_sub(1)) as f64 / 5.0;
        let _ = write!(
        e_table,
        "\n## (e) Converging {n} splits at `--route53-rps 5`\n\n\
         | measured (`run --once`, process start to exit) | Route53 calls | minimum the limit allows ((calls - 1) / 5) | ratio |\n|---:|---:|---:|---:|\n\
         | {:.1} s | {r53} | {floor:.1} s | {:.2} |\n",
            took.as_secs_f64(),
            took.as_secs_f64() / floor.max(0.001)
        );
    }

    // Saved before the steady-state part, which may fail on its own at a large scale.
    flush(&format!("{out}{e_table}"));

    // Steady state: the second cycle of a long-running controller.
    let after = fleet::record_counts(r.moto);
    let rps = r.fastest_rps();
    let mut c = Controller::start(
        &r.proxy.url,
        &[r.fleet.dir.as_path()],
        OWNER,
        &[
            "--resync",
            "30s",
            "--route53-rps",
            rps,
            "--traffic-poll-interval",
            "0s",
        ],
    );
    c.wait_ready(Duration::from_secs(300));
    let m1 = c.metrics().expect("metrics");
    assert_eq!(
        fleet::reconciles(&m1) as usize,
        n,
        "reset after exactly one cycle"
    );
    r.proxy.reset();
    let skip = r.proxy.entries().len();
    let probe = &r.fleet.splits[0].name;
    let (sum1, _) = fleet::reconcile_duration(&m1, probe);
    wait_for("the steady-state cycle", Duration::from_secs(300), || {
        (fleet::reconciles(&c.metrics()?) >= 2 * n as u64).then_some(())
    });
    let actual = r.proxy.stats();
    let m2 = c.metrics().expect("metrics");
    assert_eq!(
        fleet::reconciles(&m2),
        2 * n as u64,
        "one steady cycle counted"
    );
    let st = c.status().expect("status");
    assert!(
        fleet::all_converged(&st, n),
        "all splits Complete and Ready"
    );
    let entries = r.proxy.entries();
    let window = &entries[skip..];
    let writes = fleet::writes(window);
    let min = fleet::minimum(r.fleet, &due, Phase::Steady, &after, &Default::default());
    let rows = fleet::compare(&actual, &min);
    let (sum2, _) = fleet::reconcile_duration(&m2, probe);
    let wall = sum2 - sum1;
    let aws: f64 = window
        .iter()
        .map(|e| e["duration_seconds"].as_f64().unwrap_or(0.0))
        .sum();
    let _ = write!(
        out,
        "\n{}\nWrites in the steady-state cycle: {}.{}\n\n\
         ### (b) Steady-state cycle wall time ({n} splits, `--route53-rps {rps}`)\n\n\
         | cycle wall time | AWS time (sum of proxy-measured request durations{}) | cycle minus AWS time{} |\n|---:|---:|---:|\n\
         | {:.0} ms | {:.0} ms | {:.0} ms |\n",
        fleet::table("### Steady-state cycle (second cycle of `run`, zones cached)", &rows),
        writes.len(),
        if r.realistic {
            let (throttled, refused) = fleet::layer_events(window);
            format!(
                " Through the layer: {throttled} requests answered `Throttling`, {} changes refused.",
                refused.len()
            )
        } else {
            String::new()
        },
        if r.realistic {
            ", through the layer"
        } else {
            ", moto"
        },
        if r.realistic {
            " (includes the controller's own waits for its 5 requests/s)"
        } else {
            ""
        },
        wall * 1000.0,
        aws * 1000.0,
        (wall - aws) * 1000.0
    );
    c.sigterm(Duration::from_secs(30));
    out.push_str(&e_table);
    (took.as_secs_f64(), r53)
}

/// (c) file change -> first ChangeResourceRecordSets, through the watcher and its debounce.
fn latency(
    out: &mut String,
    parts: &mut String,
    r: &Run,
    samples: usize,
    rps: &str,
    label: &str,
) -> (f64, f64) {
    let mut c = Controller::start(
        &r.proxy.url,
        &[r.fleet.dir.as_path()],
        OWNER,
        &["--resync", "10m", "--route53-rps", rps],
    );
    c.wait_ready(Duration::from_secs(300));
    let fixed: Vec<&SplitInfo> = r
        .fleet
        .splits
        .iter()
        .filter(|s| s.scenario.is_none())
        .collect();
    let mut lat = Vec::new();
    // Where the time goes, per edit: until the listing arrives (debounce, reading the edited
    // file, scheduling), the listing itself (AWS), from the listing's answer to the write
    // (planning and the limiter's wait).
    let (mut noticed, mut listed, mut planned) = (Vec::new(), Vec::new(), Vec::new());
    let mut lists = 0u64;
    for k in 0..samples {
        let s = fixed[(k * 7919) % fixed.len()];
        // Alternate between two target weights so every edit starts a new rollout.
        let blue = if (k / fixed.len()) % 2 == 0 {
            60 + (k % 2) as u32 * 10
        } else {
            80
        };
        let text = std::fs::read_to_string(&s.file).expect("read doc");
        let blue = if text.contains(&format!("{}-blue: {blue}", s.name)) {
            blue + 5
        } else {
            blue
        };
        // A user's edit meets a controller at rest: wait until no call has reached AWS for a
        // second (the limiter's burst is full again) rather than editing while the previous
        // edit's GetChange and listings still drain it (which measured the bench's own pace).
        wait_for(
            "the controller to be quiet for a second",
            Duration::from_secs(60),
            || {
                let last = r
                    .proxy
                    .entries()
                    .last()
                    .map(|e| entry_time(e) + e["duration_seconds"].as_f64().unwrap_or(0.0));
                last.is_none_or(|t| unix_now() - t >= 1.0).then_some(())
            },
        );
        r.proxy.reset();
        let skip = r.proxy.entries().len();
        let t0 = unix_now();
        std::fs::write(
            &s.file,
            fleet::fixed_doc(&s.name, &s.zone, &s.record, &r.fleet.tag, blue),
        )
        .expect("edit doc");
        let write_at = wait_for(
            "the edited split's ChangeResourceRecordSets",
            Duration::from_secs(60),
            || {
                let e = r.proxy.entries();
                let e = &e[skip.min(e.len())..];
                let w = e.iter().find(|e| {
                    e["operation"] == "ChangeResourceRecordSets"
                        && e["body"].as_str().is_some_and(|b| b.contains(&s.record))
                })?;
                Some(entry_time(w))
            },
        );
        lat.push((write_at - t0) * 1000.0);
        let e = r.proxy.entries();
        if let Some(l) = e[skip.min(e.len())..]
            .iter()
            .find(|e| e["operation"] == "ListResourceRecordSets")
        {
            let at = entry_time(l);
            let took = l["duration_seconds"].as_f64().unwrap_or(0.0);
            noticed.push((at - t0) * 1000.0);
            listed.push(took * 1000.0);
            planned.push((write_at - at - took) * 1000.0);
        }
        wait_for(
            "the edited split to be Complete at its new weights",
            Duration::from_secs(60),
            || {
                let st = c.split(&s.name)?;
                let ok = st["state"] == "Complete"
                    && st["backends"]
                        .as_array()?
                        .iter()
                        .all(|b| b["observedWeight"] == b["targetWeight"])
                    && st["backends"][0]["targetWeight"] == blue;
                ok.then_some(())
            },
        );
        lists += r
            .proxy
            .stats()
            .get("route53.ListResourceRecordSets")
            .copied()
            .unwrap_or(0);
    }
    c.sigterm(Duration::from_secs(30));
    let (p50, p99, max) = percentiles(&mut lat);
    let target = if rps == "0" { 150.0 } else { 200.0 };
    let _ = writeln!(
        out,
        "| {label} | `--route53-rps {rps}` | {samples} | {p50:.0} ms | {p99:.0} ms | {max:.0} ms | {:.2} | < {target:.0} ms: {} |",
        lists as f64 / samples as f64,
        if p50 < target { "met" } else { "MISSED" }
    );
    let (n50, _, _) = percentiles(&mut noticed);
    let (l50, _, _) = percentiles(&mut listed);
    let (w50, _, _) = percentiles(&mut planned);
    let _ = writeln!(
        parts,
        "| {label} | `--route53-rps {rps}` | {n50:.0} ms | {l50:.0} ms | {w50:.0} ms | {p50:.0} ms |"
    );
    (p50, p99)
}

/// (d) peak RSS and idle CPU with the first `n` splits (already converged).
/// Writes the RSS row to `out`; returns the row of the RSS-by-part table.
fn resources(out: &mut String, r: &Run, n: usize, label: &str) -> String {
    let dir = r.fleet.subset_dir(n);
    let mut c = Controller::start(
        &r.moto.endpoint,
        &[dir.as_path()],
        OWNER,
        &["--resync", "60s"],
    );
    c.wait_ready(Duration::from_secs(300));
    // Ready is the end of the first cycle; at 10,000 splits some splits' status can still be
    // catching up with it, so poll.
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let st = c.status().unwrap_or_default();
        if fleet::all_converged(&st, n) {
            break;
        }
        let mut states = BTreeMap::<String, usize>::new();
        for s in st["splits"].as_array().into_iter().flatten() {
            *states.entry(s["state"].to_string()).or_default() += 1;
        }
        assert!(
            Instant::now() < deadline,
            "{n} splits not all Complete and Ready within 300 s; states: {states:?}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let pid = pid_of(c.port);
    let t0 = cpu_ticks(pid);
    let start = Instant::now();
    // The idle window itself: no cycle is due for 60 s.
    std::thread::sleep(Duration::from_secs(10));
    let secs = start.elapsed().as_secs_f64();
    let ticks = cpu_ticks(pid) - t0;
    let cpu = ticks as f64 / clk_tck() / secs * 100.0;
    let hwm = proc_status_kib(pid, "VmHWM:") as f64 / 1024.0;
    let rss = proc_status_kib(pid, "VmRSS:") as f64 / 1024.0;
    // Issue 11's targets: 16 MiB idle with one split, 40 MiB with 1,005, 150 MiB with 10,000.
    let target = if n <= 1 {
        16.0
    } else if n < 5_000 {
        40.0
    } else {
        150.0
    };
    let _ = writeln!(
        out,
        "| {label} | {n} | {hwm:.1} MiB | {rss:.1} MiB | {} | {cpu:.2} % ({ticks} ticks in {secs:.1} s) | {} |",
        if n == 1 || n >= 1000 { format!("< {target} MiB: {}", if hwm < target { "met" } else { "MISSED" }) } else { "-".into() },
        if cpu < 1.0 { "met" } else { "MISSED" }
    );
    let parts = rss_by_part(pid)
        .iter()
        .map(|(part, kib)| format!("{part} {:.1}", *kib as f64 / 1024.0))
        .collect::<Vec<_>>()
        .join(", ");
    let threads = proc_status_kib(pid, "Threads:");
    c.sigterm(Duration::from_secs(30));
    format!("| {label} | {n} | {threads} | {parts} |\n")
}

/// Resident KiB of a process by kind of mapping (from /proc/PID/smaps): the binary's code, its
/// other segments, the heap (brk and anonymous mappings: malloc's arenas, thread stacks), shared
/// libraries, and the rest. Which allocation inside the heap is what needs a heap profiler; this
/// says which part of the process the resident pages belong to.
fn rss_by_part(pid: u32) -> Vec<(&'static str, u64)> {
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap_or_default();
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap_or_default();
    let kinds = [
        "binary code",
        "binary data",
        "heap and stacks",
        "shared libraries",
        "other",
    ];
    let mut kib = [0u64; 5];
    let mut kind = 4;
    for line in smaps.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.first()
            .is_some_and(|a| a.contains('-') && !a.ends_with(':'))
        {
            let perms = f.get(1).copied().unwrap_or("");
            let path = f.get(5).copied().unwrap_or("");
            kind = if !path.is_empty() && std::path::Path::new(path) == exe {
                if perms.contains('x') {
                    0
                } else {
                    1
                }
            } else if path.is_empty() || path == "[heap]" || path.starts_with("[stack") {
                2
            } else if path.starts_with('/') {
                3
            } else {
                4
            };
        } else if f.first() == Some(&"Rss:") {
            kib[kind] += f.get(1).and_then(|v| v.parse().ok()).unwrap_or(0);
        }
    }
    kinds.into_iter().zip(kib).collect()
}

/// The baseline: one `aws route53 change-resource-record-sets` per weighted record.
fn baseline(out: &mut String, r: &Run, b: usize, first_wall: Option<f64>, first_r53: Option<u64>) {
    let zone = format!("cli.{}.example.", r.fleet.tag);
    let zid = r.moto.py(
        r#"out = client("route53").create_hosted_zone(Name=input["z"], CallerReference=input["z"])["HostedZone"]["Id"].rsplit("/", 1)[-1]"#,
        serde_json::json!({"z": zone}),
    );
    let zid = zid.as_str().expect("zone id").to_string();
    let aws = support::venv_tool("aws", "aws");
    r.proxy.reset();
    let started = Instant::now();
    for i in 0..b {
        let name = format!("s{i:04}.{zone}");
        for (color, w) in [("blue", 80), ("green", 20)] {
            let batch = serde_json::json!({"Changes": [{"Action": "UPSERT", "ResourceRecordSet": {
                "Name": name, "Type": "A", "SetIdentifier": format!("cli-{i}-{color}"), "Weight": w,
                "AliasTarget": {"DNSName": format!("{color}-{i}.lb.example."), "HostedZoneId": "Z35SXDOTRQ7X7K",
                                "EvaluateTargetHealth": false}}}]});
            let st = Command::new(&aws)
                .args([
                    "route53",
                    "change-resource-record-sets",
                    "--hosted-zone-id",
                    &zid,
                ])
                .args([
                    "--change-batch",
                    &batch.to_string(),
                    "--endpoint-url",
                    &r.proxy.url,
                ])
                .args(["--output", "json"])
                .envs(r.moto.aws_env())
                .stdout(std::process::Stdio::null())
                .status()
                .expect("run aws");
            assert!(
                st.success(),
                "aws route53 change-resource-record-sets failed"
            );
        }
    }
    let wall = started.elapsed().as_secs_f64();
    let calls = route53_calls(&r.proxy.stats());
    let n = r.fleet.splits.len() as f64;
    let scale = n / b as f64;
    let _ = write!(
        out,
        "\n## Baseline: one `aws route53 change-resource-record-sets` per record\n\n\
         Measured on {b} splits (2 records each) and extrapolated linearly to {n} splits (x{scale:.1}).\n\n\
         | | Route53 calls | wall time |\n|---|---:|---:|\n\
         | AWS CLI, measured on {b} splits | {calls} | {wall:.1} s |\n\
         | AWS CLI, extrapolated to {n} splits | {:.0} | {:.0} s |\n",
        calls as f64 * scale,
        wall * scale
    );
    if let (Some(fw), Some(fc)) = (first_wall, first_r53) {
        let _ = write!(
            out,
            "| trafficshift first convergence at 5 req/s, measured on {n} splits | {fc} | {fw:.1} s |\n\
             | ratio CLI / trafficshift | {:.1}x | {:.1}x |\n\n\
             The CLI script also re-sends every record each time it runs ({:.0} calls), where a \
             steady-state trafficshift cycle only lists (see (a)); it writes no ownership/state \
             record and is not rate limited (against real Route53 its {:.0} calls need at least \
             {:.0} s at 5 req/s).\n",
            calls as f64 * scale / fc as f64,
            wall * scale / fw,
            calls as f64 * scale,
            calls as f64 * scale,
            calls as f64 * scale / 5.0
        );
    }
}

fn machine() -> String {
    let sh = |c: &str| {
        Command::new("sh")
            .args(["-c", c])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default()
    };
    let moto = sh(&format!(
        "{} -c 'import moto; print(moto.__version__)'",
        support::python().display()
    ));
    format!(
        "| | |\n|---|---|\n| CPUs (nproc) | {} |\n| model | {} |\n| RAM | {} |\n| OS | {} |\n| rustc | {} |\n| moto | {} |\n",
        sh("nproc"),
        sh("grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"),
        sh("free -h | awk '/Mem:/ {print $2}'"),
        sh(". /etc/os-release; echo \"$PRETTY_NAME, kernel $(uname -r)\""),
        sh("rustc --version"),
        moto
    )
}

fn main() {
    let a = args();
    let want = |p: &str| a.parts.iter().any(|x| x == p);
    let layer = if a.realistic {
        format!(
            "AWS: moto behind `scripts/faultproxy.py {}{}` (the realistic AWS layer, fault rate 0); \
             controllers at `--route53-rps 5` at most.\n",
            fleet::REALISTIC_LAYER.join(" "),
            a.layer_args
                .iter()
                .map(|x| format!(" {x}"))
                .collect::<String>()
        )
    } else {
        "AWS: moto behind `scripts/faultproxy.py` at fault rate 0 (moto's timings).\n".to_string()
    };
    let mut out = format!("# trafficshift scale benchmark\n\n{}\n{layer}", machine());
    let flush = |out: &str| {
        if let Some(d) = a.out.parent() {
            let _ = std::fs::create_dir_all(d);
        }
        let _ = std::fs::write(&a.out, out);
    };
    let total = a.zones * a.per_zone;
    if want("plan") {
        eprintln!("[bench] (b) planning {total} splits in process");
        plan_bench(&mut out, total, a.plan_iters);
        flush(&out);
    }
    if want("metrics") {
        eprintln!("[bench] (f) metrics and status of {total} splits in process");
        metrics_bench(&mut out, total, a.plan_iters);
        flush(&out);
    }
    if ["calls", "latency", "resources", "baseline"]
        .iter()
        .any(|p| want(p))
    {
        let moto = Moto::start();
        let plans = fleet::layout(
            a.zones,
            a.per_zone,
            a.foreign,
            a.scenarios,
            a.big_foreign,
            a.big_owned,
        );
        eprintln!("[bench] provisioning {} zones", plans.len());
        let t = Instant::now();
        let fleet = fleet::provision(&moto, &plans);
        let _ = write!(
            out,
            "\n## Fleet\n\n{} splits ({} with an API Gateway + ECS backend, adopted from a plain record) in {} zones of {} foreign records each, plus a zone of {} foreign records with {} owned names; provisioned in {:.0} s.\n",
            fleet.splits.len(),
            a.scenarios,
            a.zones,
            a.foreign,
            a.big_foreign,
            a.big_owned,
            t.elapsed().as_secs_f64()
        );
        flush(&out);
        let proxy = if a.realistic {
            let mut flags = fleet::REALISTIC_LAYER.to_vec();
            flags.extend(a.layer_args.iter().map(String::as_str));
            Proxy::start_with(&moto.endpoint, &flags)
        } else {
            Proxy::start(&moto.endpoint)
        };
        let r = Run {
            moto: &moto,
            fleet: &fleet,
            proxy: &proxy,
            realistic: a.realistic,
        };
        let mut first: (Option<f64>, Option<u64>) = (None, None);
        if want("calls") {
            eprintln!("[bench] (a)+(e) first convergence and steady state");
            let (w, c) = calls(&mut out, &r, &flush);
            first = (Some(w), Some(c));
            flush(&out);
        } else {
            // Latency and resources need converged records.
            let (code, took, log) =
                fleet::run_once(&moto.endpoint, &fleet.dir, OWNER, &["--route53-rps", "0"]);
            assert_eq!(code, Some(0), "convergence failed after {took:?}:\n{log}");
        }
        if want("latency") {
            eprintln!(
                "[bench] (c) file change to first write, {} samples",
                a.latency_samples
            );
            let _ = write!(
                out,
                "\n## (c) File change to first ChangeResourceRecordSets ({} splits loaded)\n\n\
                 Time from writing the document to the proxy receiving the write (the {} ms debounce \
                 included); each edit is made once the controller has made no AWS call for a second, as \
                 a user's edit meets a controller at rest. `lists/change`: ListResourceRecordSets calls \
                 per edit.\n\n\
                 | binary | controller | samples | p50 | p99 | max | lists/change | p50 target |\n|---|---|---:|---:|---:|---:|---:|---|\n",
                fleet.splits.len(),
                trafficshift::watch::DEBOUNCE.as_millis()
            );
            let mut parts = String::new();
            let skip = proxy.entries().len();
            for (label, bin) in binaries(&a) {
                with_binary(&bin, || {
                    latency(&mut out, &mut parts, &r, a.latency_samples, "5", &label)
                });
            }
            if r.realistic {
                // The layer allows 5 requests/s: an unlimited controller would be throttled.
                let (throttled, refused) = fleet::layer_events(&proxy.entries()[skip..]);
                let _ = writeln!(
                    out,
                    "\nNot measured at `--route53-rps 0`: the layer allows 5 requests/s. Through the \
                     layer: {throttled} requests answered `Throttling`, {} changes refused.",
                    refused.len()
                );
            } else {
                for (label, bin) in binaries(&a) {
                    with_binary(&bin, || {
                        latency(&mut out, &mut parts, &r, a.latency_samples, "0", &label)
                    });
                }
            }
            let _ = write!(
                out,
                "\nWhere the time goes (p50 of each part, measured at the proxy): until the \
                 listing arrives = the {} ms debounce, reading the edited file, scheduling; \
                 the listing = its time in the proxy and AWS; to the write = planning and \
                 the limiter's wait.\n\n\
                 | binary | controller | until the listing | the listing | to the write | total p50 |\n\
                 |---|---|---:|---:|---:|---:|\n{parts}",
                trafficshift::watch::DEBOUNCE.as_millis()
            );
            flush(&out);
        }
        if want("resources") {
            eprintln!("[bench] (d) RSS and idle CPU");
            let _ = write!(
                out,
                "\n## (d) Peak RSS and idle CPU (release binary, after its first cycle, 10 s idle window)\n\n\
                 | binary | splits | peak RSS (VmHWM) | RSS | RSS target | idle CPU | idle CPU < 1% |\n|---|---:|---:|---:|---|---:|---|\n"
            );
            let mut by_part = String::new();
            for n in [1, 100, fleet.splits.len()] {
                for (label, bin) in binaries(&a) {
                    by_part += &with_binary(&bin, || {
                        resources(&mut out, &r, n.min(fleet.splits.len()), &label)
                    });
                }
            }
            let _ = write!(
                out,
                "\nResident memory by part of the process (MiB, /proc/PID/smaps at the end of \
                 the idle window; heap and stacks = brk and anonymous mappings):\n\n\
                 | binary | splits | threads | parts |\n|---|---:|---:|---|\n{}",
                by_part
            );
            flush(&out);
        }
        if want("baseline") {
            eprintln!("[bench] baseline: AWS CLI on {} splits", a.baseline_splits);
            baseline(&mut out, &r, a.baseline_splits, first.0, first.1);
            flush(&out);
        }
    }
    println!("{out}");
    eprintln!("[bench] results written to {}", a.out.display());
}
