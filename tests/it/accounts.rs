//! Cross-account splits (issue #10 part 2): a split with `spec.aws.roleArn` writes into the zone of
//! the role's account and only there; a split without one stays in the controller's own account;
//! one controller does both. moto keeps accounts apart when the credentials come from
//! `sts assume-role` (the access key it hands out maps to the role's account), so the results are
//! read back with the AWS CLI under each account's own credentials.

use crate::support;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use support::controller::{metric_sum, run_cli, wait_for, Controller, FaultProxy};
use support::{unique, Moto};

const DEADLINE: Duration = Duration::from_secs(90);
/// moto's default account: what the controller's own ("testing") credentials are.
const DEFAULT_ACCOUNT: &str = "123456789012";
const OTHER_ACCOUNT: &str = "222222222222";
const ROLE: &str = "arn:aws:iam::222222222222:role/dns-writer";
const EXTERNAL_ID: &str = "ext-7f3a";

/// Credentials of one account: the test's own keys, or a session from `sts assume-role`.
#[derive(Clone)]
struct Creds {
    key: String,
    secret: String,
    token: Option<String>,
}

impl Creds {
    fn base() -> Creds {
        Creds {
            key: "testing".into(),
            secret: "testing".into(),
            token: None,
        }
    }
}

/// `aws <args> --output json` against moto itself (not the layer the controller talks to) with
/// `creds`; the parsed answer, or the CLI's error text.
fn aws(moto: &Moto, creds: &Creds, args: &[&str]) -> Result<Value, String> {
    moto.try_cli_with_env(
        args,
        &[
            ("AWS_ACCESS_KEY_ID", Some(&creds.key)),
            ("AWS_SECRET_ACCESS_KEY", Some(&creds.secret)),
            ("AWS_SESSION_TOKEN", creds.token.as_deref()),
            ("AWS_CONFIG_FILE", Some("/dev/null")),
            ("AWS_SHARED_CREDENTIALS_FILE", Some("/dev/null")),
        ],
    )
}

fn must(moto: &Moto, creds: &Creds, args: &[&str]) -> Value {
    aws(moto, creds, args).unwrap_or_else(|e| panic!("aws {args:?} failed: {e}"))
}

/// A session in `OTHER_ACCOUNT`, as an operator would get one.
fn assume(moto: &Moto) -> Creds {
    let out = must(
        moto,
        &Creds::base(),
        &[
            "sts",
            "assume-role",
            "--role-arn",
            ROLE,
            "--role-session-name",
            "test-setup",
            "--external-id",
            EXTERNAL_ID,
        ],
    );
    let c = &out["Credentials"];
    let creds = Creds {
        key: c["AccessKeyId"].as_str().expect("AccessKeyId").into(),
        secret: c["SecretAccessKey"]
            .as_str()
            .expect("SecretAccessKey")
            .into(),
        token: c["SessionToken"].as_str().map(String::from),
    };
    let who = must(moto, &creds, &["sts", "get-caller-identity"]);
    assert_eq!(
        who["Account"], OTHER_ACCOUNT,
        "moto must map the assumed session to the role's account, or this test proves nothing"
    );
    creds
}

/// Create `zone` with a TXT sentinel `keep.<zone>` saying `owner`; returns the zone id.
fn create_zone(moto: &Moto, creds: &Creds, zone: &str, owner: &str) -> String {
    let out = must(
        moto,
        creds,
        &[
            "route53",
            "create-hosted-zone",
            "--name",
            zone,
            "--caller-reference",
            &unique("ref"),
        ],
    );
    let id = out["HostedZone"]["Id"]
        .as_str()
        .expect("zone id")
        .trim_start_matches("/hostedzone/")
        .to_string();
    let batch = serde_json::json!({"Changes": [{"Action": "CREATE", "ResourceRecordSet": {
        "Name": format!("keep.{zone}"), "Type": "TXT", "TTL": 300,
        "ResourceRecords": [{"Value": format!("\"{owner}\"")}]}}]});
    must(
        moto,
        creds,
        &[
            "route53",
            "change-resource-record-sets",
            "--hosted-zone-id",
            &id,
            "--change-batch",
            &batch.to_string(),
        ],
    );
    id
}

/// Every record set of the zone, as `creds` see it.
fn records(moto: &Moto, creds: &Creds, zone_id: &str) -> Vec<Value> {
    let out = must(
        moto,
        creds,
        &[
            "route53",
            "list-resource-record-sets",
            "--hosted-zone-id",
            zone_id,
        ],
    );
    out["ResourceRecordSets"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// SetIdentifier -> Weight of the weighted records at `name`.
fn weights(records: &[Value], name: &str) -> Vec<(String, i64)> {
    let mut w: Vec<(String, i64)> = records
        .iter()
        .filter(|r| r["Name"] == name && r.get("SetIdentifier").is_some())
        .map(|r| {
            (
                r["SetIdentifier"].as_str().unwrap_or_default().to_string(),
                r["Weight"].as_i64().unwrap_or(-1),
            )
        })
        .collect();
    w.sort();
    w
}

fn names(records: &[Value]) -> BTreeSet<String> {
    records
        .iter()
        .filter_map(|r| r["Name"].as_str().map(String::from))
        .collect()
}

/// A CNAME split over two fixed targets; `aws` is appended under `spec:`.
fn document(name: &str, zone: &str, record: &str, blue: u32, green: u32, aws: &str) -> String {
    format!(
        r#"apiVersion: trafficshift.dev/v1alpha1
kind: TrafficSplit
metadata:
  name: {name}
spec:
  record:
    hostedZone: {zone}
    name: {record}
    type: CNAME
    ttl: 60
  backends:
    - name: blue
      target:
        cname: blue.example.net
    - name: green
      target:
        cname: green.example.net
  weights:
    blue: {blue}
    green: {green}
{aws}"#
    )
}

fn role_block() -> String {
    format!(
        "  aws:\n    roleArn: {ROLE}\n    externalId: {EXTERNAL_ID}\n    sessionName: trafficshift-test\n"
    )
}

fn write(dir: &Path, file: &str, text: &str) {
    std::fs::write(dir.join(file), text).unwrap();
}

/// Count `blue`'s and `green`'s requests with `requestMetric` series `Test/Traffic Requests
/// {Backend=<dim>}` (any backend may name its series this way).
fn with_request_metrics(doc: &str, blue: &str, green: &str) -> String {
    let metric = |dim: &str| {
        format!(
            "      requestMetric:\n        namespace: {TRAFFIC_NAMESPACE}\n        metricName: Requests\n        dimensions:\n          Backend: {dim}\n"
        )
    };
    let out = doc
        .replace(
            "        cname: blue.example.net\n",
            &format!("        cname: blue.example.net\n{}", metric(blue)),
        )
        .replace(
            "        cname: green.example.net\n",
            &format!("        cname: green.example.net\n{}", metric(green)),
        );
    assert_eq!(out.matches("requestMetric:").count(), 2, "{out}");
    out
}

const TRAFFIC_NAMESPACE: &str = "Test/Traffic";

/// Put `per_minute` requests of backend series `dim` in every minute from 10 minutes ago to 10
/// ahead, with `creds` (so in their account).
fn put_requests(moto: &Moto, creds: &Creds, dim: &str, per_minute: f64) {
    let t0 = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let data: Vec<Value> = (-10..=10)
        .map(|m| {
            serde_json::json!({
                "MetricName": "Requests",
                "Dimensions": [{"Name": "Backend", "Value": dim}],
                "Timestamp": t0 + 60 * m - 30,
                "Value": per_minute,
                "Unit": "Count",
            })
        })
        .collect();
    must(
        moto,
        creds,
        &[
            "cloudwatch",
            "put-metric-data",
            "--namespace",
            TRAFFIC_NAMESPACE,
            "--metric-data",
            &Value::Array(data).to_string(),
        ],
    );
}

/// The issue's "done when": one controller, two documents with the same zone name; the roleArn
/// split converges in account 222222222222's zone, the other in the default account's, and
/// neither zone gets the other's records.
#[test]
fn role_split_writes_only_into_its_accounts_zone() {
    two_accounts(false);
}

/// The same, with request counts in account 222222222222 only: the role split's traffic share
/// is read in its role's account (300/700 a minute: 0.3/0.7), and the default-account split
/// naming the same series has none.
#[test]
fn role_split_traffic_share_is_read_in_its_account() {
    two_accounts(true);
}

fn two_accounts(traffic: bool) {
    let moto = Moto::start();
    let other = assume(&moto);
    let base = Creds::base();
    // The same zone name in both accounts: a controller that used the wrong credentials would
    // find the other account's zone and write there.
    let zone = format!("{}.example.", unique("acct"));
    let zone_default = create_zone(&moto, &base, &zone, "default");
    let zone_other = create_zone(&moto, &other, &zone, "other");
    assert_ne!(zone_default, zone_other);
    let record_default = format!("home.{zone}");
    let record_other = format!("remote.{zone}");

    let mut home = document("home", &zone, &record_default, 30, 70, "");
    let mut remote = document("remote", &zone, &record_other, 80, 20, &role_block());
    let mut args = vec!["--resync", "1s"];
    // Both splits name the same series; only account 222222222222 has datapoints for them.
    let (blue_dim, green_dim) = (unique("blue"), unique("green"));
    if traffic {
        home = with_request_metrics(&home, &blue_dim, &green_dim);
        remote = with_request_metrics(&remote, &blue_dim, &green_dim);
        put_requests(&moto, &other, &blue_dim, 300.0);
        put_requests(&moto, &other, &green_dim, 700.0);
        args.extend(["--traffic-poll-interval", "1s"]);
    }
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "home.yaml", &home);
    write(dir.path(), "remote.yaml", &remote);
    let c = Controller::start(moto.aws(), &[dir.path()], "accounts", &args);

    let want_default = vec![("blue".to_string(), 30), ("green".to_string(), 70)];
    let want_other = vec![("blue".to_string(), 80), ("green".to_string(), 20)];
    wait_for(
        "home's weights 30/70 in the default account's zone and remote's 80/20 in account 222222222222's zone",
        DEADLINE,
        || {
            let d = records(&moto, &base, &zone_default);
            let o = records(&moto, &other, &zone_other);
            (weights(&d, &record_default) == want_default && weights(&o, &record_other) == want_other)
                .then_some(())
        },
    );
    // Each zone holds its own split's records and sentinel, nothing of the other's.
    let d = records(&moto, &base, &zone_default);
    let o = records(&moto, &other, &zone_other);
    let txt = |r: &str| format!("_trafficshift.{r}");
    let expect = |record: &str| -> BTreeSet<String> {
        [
            zone.clone(),
            format!("keep.{zone}"),
            record.to_string(),
            txt(record),
        ]
        .into_iter()
        .collect()
    };
    assert_eq!(
        names(&d),
        expect(&record_default),
        "default account's zone: {d:#?}"
    );
    assert_eq!(
        names(&o),
        expect(&record_other),
        "account 222222222222's zone: {o:#?}"
    );
    for (recs, owner) in [(&d, "default"), (&o, "other")] {
        let keep = recs
            .iter()
            .find(|r| r["Name"] == format!("keep.{zone}").as_str())
            .expect("sentinel");
        assert_eq!(keep["ResourceRecords"][0]["Value"], format!("\"{owner}\""));
    }
    // The default account cannot see the other zone at all.
    let err = aws(
        &moto,
        &base,
        &["route53", "get-hosted-zone", "--id", &zone_other],
    )
    .expect_err("the default account must not see account 222222222222's zone");
    assert!(err.contains("NoSuchHostedZone"), "{err}");

    // Requests are counted per account: Route53 writes happened in both.
    let text = wait_for("a metrics scrape", DEADLINE, || c.metrics());
    for account in [DEFAULT_ACCOUNT, OTHER_ACCOUNT] {
        let writes = metric_sum(
            &text,
            "trafficshift_aws_requests_total",
            &[
                ("service", "route53"),
                ("operation", "ChangeResourceRecordSets"),
                ("outcome", "success"),
                ("account", account),
            ],
        );
        assert!(
            writes.is_some_and(|n| n >= 1.0),
            "no Route53 write counted for account {account}: {writes:?}"
        );
    }
    let assumed = metric_sum(
        &text,
        "trafficshift_aws_requests_total",
        &[
            ("service", "sts"),
            ("operation", "AssumeRole"),
            ("outcome", "success"),
            ("account", OTHER_ACCOUNT),
        ],
    );
    // One session serves every cycle: the credentials are cached, not fetched per reconcile.
    assert_eq!(assumed, Some(1.0), "AssumeRole calls: {assumed:?}");
    if traffic {
        check_traffic_share(&moto, &c, &base, &other, &blue_dim);
    }
}

/// `remote`'s share on /metrics is the role account's 0.3/0.7; the default account holds no such
/// series, so `home` (same series, default credentials) has no share at all.
fn check_traffic_share(moto: &Moto, c: &Controller, base: &Creds, other: &Creds, blue_dim: &str) {
    let series = |creds: &Creds| {
        must(
            moto,
            creds,
            &[
                "cloudwatch",
                "list-metrics",
                "--namespace",
                TRAFFIC_NAMESPACE,
                "--dimensions",
                &format!("Name=Backend,Value={blue_dim}"),
            ],
        )["Metrics"]
            .as_array()
            .map_or(0, Vec::len)
    };
    assert_eq!(
        series(base),
        0,
        "the default account must hold no such data"
    );
    assert_eq!(series(other), 1, "account 222222222222 holds blue's series");
    let share = |text: &str, split: &str, b: &str| {
        metric_sum(
            text,
            "trafficshift_traffic_share_ratio",
            &[("split", split), ("backend", b)],
        )
    };
    let text = wait_for("remote's traffic share on /metrics", DEADLINE, || {
        c.metrics().filter(|t| {
            share(t, "remote", "blue").is_some() && share(t, "remote", "green").is_some()
        })
    });
    let (blue, green) = (
        share(&text, "remote", "blue").unwrap(),
        share(&text, "remote", "green").unwrap(),
    );
    assert!(
        (blue - 0.3).abs() < 1e-9 && (green - 0.7).abs() < 1e-9,
        "remote's share must be account 222222222222's 300/700: blue {blue}, green {green}"
    );
    for b in ["blue", "green"] {
        assert_eq!(
            share(&text, "home", b),
            None,
            "home reads the default account, which has no datapoints: unknown, never 0:\n{text}"
        );
    }
    // Both accounts were asked, each under its own label.
    for account in [DEFAULT_ACCOUNT, OTHER_ACCOUNT] {
        let calls = metric_sum(
            &text,
            "trafficshift_aws_requests_total",
            &[
                ("service", "cloudwatch"),
                ("operation", "GetMetricData"),
                ("outcome", "success"),
                ("account", account),
            ],
        );
        assert!(
            calls.is_some_and(|n| n >= 1.0),
            "no GetMetricData counted for account {account}: {calls:?}"
        );
    }
}

/// A role that cannot be assumed fails its own split with one clear line; the other split of the
/// same controller converges. moto grants every AssumeRole, so the layer in front of it fails
/// them (HTTP 500 on every sts AssumeRole, nothing else).
#[test]
fn a_role_that_cannot_be_assumed_fails_only_its_split() {
    let moto = Moto::start();
    let proxy = FaultProxy::start(&moto.endpoint, 3, 1.0, "500", &["--only", "sts.AssumeRole"]);
    let base = Creds::base();
    let zone = format!("{}.example.", unique("deny"));
    let zone_default = create_zone(&moto, &base, &zone, "default");
    let record = format!("home.{zone}");
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "home.yaml",
        &document("home", &zone, &record, 40, 60, ""),
    );
    write(
        dir.path(),
        "remote.yaml",
        &document(
            "remote",
            &zone,
            &format!("remote.{zone}"),
            80,
            20,
            &role_block(),
        ),
    );
    let c = Controller::start(
        &proxy.endpoint,
        &[dir.path()],
        "accounts",
        &["--resync", "1s"],
    );

    let want = vec![("blue".to_string(), 40), ("green".to_string(), 60)];
    wait_for("home's weights 40/60", DEADLINE, || {
        (weights(&records(&moto, &base, &zone_default), &record) == want).then_some(())
    });
    let status = wait_for("remote's AssumeRole error in /status", DEADLINE, || {
        c.split("remote").filter(|s| {
            s["lastError"]
                .as_str()
                .is_some_and(|e| e.contains("AssumeRole") && e.contains(ROLE))
        })
    });
    let err = status["lastError"].as_str().unwrap_or_default();
    eprintln!("remote: {err}");
    assert!(!err.contains('\n'), "one line: {err}");
    assert!(err.len() <= 400, "short: {err}");
    // Nothing of the remote split reached any zone of either account.
    let d = records(&moto, &base, &zone_default);
    assert!(
        !names(&d)
            .iter()
            .any(|n| n.starts_with("remote.") || n.contains("_trafficshift.remote.")),
        "{d:#?}"
    );
    let other = assume(&moto);
    let zones = must(&moto, &other, &["route53", "list-hosted-zones"]);
    assert_eq!(zones["HostedZones"], Value::Array(vec![]), "{zones}");
    let text = wait_for("a metrics scrape", DEADLINE, || c.metrics());
    let failed = metric_sum(
        &text,
        "trafficshift_aws_requests_total",
        &[
            ("service", "sts"),
            ("operation", "AssumeRole"),
            ("outcome", "error"),
            ("account", OTHER_ACCOUNT),
        ],
    );
    assert!(failed.is_some_and(|n| n >= 1.0), "{failed:?}");
}

/// `validate` refuses a malformed role ARN and unknown `spec.aws` fields, at their position.
#[test]
fn validate_points_at_a_bad_role_arn() {
    let moto_free = "http://127.0.0.1:9"; // validate never calls AWS
    let dir = tempfile::tempdir().unwrap();
    let bad = document(
        "bad",
        "z.example.",
        "api.z.example.",
        50,
        50,
        "  aws:\n    roleArn: arn:aws:iam::2222:role/dns-writer\n",
    );
    let path = dir.path().join("bad.yaml");
    std::fs::write(&path, &bad).unwrap();
    let (line, col) = bad
        .lines()
        .enumerate()
        .find_map(|(i, l)| l.find("arn:aws").map(|c| (i + 1, c + 1)))
        .unwrap();
    let (code, out, err) = run_cli(moto_free, &["validate", path.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}\n{err}");
    let all = format!("{out}{err}");
    let at = format!("{}:{line}:{col}:", path.display());
    assert!(
        all.lines()
            .any(|l| l.contains(&at) && l.contains("roleArn") && l.contains("12 digits")),
        "want {at} ... roleArn ... 12 digits in:\n{all}"
    );

    let unknown = document(
        "unknown",
        "z.example.",
        "api.z.example.",
        50,
        50,
        &format!("  aws:\n    roleArn: {ROLE}\n    profile: prod\n"),
    );
    let path = dir.path().join("unknown.yaml");
    std::fs::write(&path, &unknown).unwrap();
    let (code, out, err) = run_cli(moto_free, &["validate", path.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}\n{err}");
    let all = format!("{out}{err}");
    assert!(
        all.contains(&format!("{}:", path.display())) && all.contains("profile"),
        "{all}"
    );

    let good = document(
        "good",
        "z.example.",
        "api.z.example.",
        50,
        50,
        &format!("{}    region: eu-west-1\n", role_block()),
    );
    let path = dir.path().join("good.yaml");
    std::fs::write(&path, &good).unwrap();
    let (code, out, err) = run_cli(moto_free, &["validate", path.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}\n{err}");
}
