//! The real AWS adapters against moto; every result is read back with boto3.

use crate::support;

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::{json, Value};
use support::{unique, Moto};
use trafficshift::aws::{AliasTarget, Change, ChangeAction, RecordSet};
use trafficshift::metrics::METRICS;
use trafficshift::Error;

/// Create a public hosted zone with boto3; returns (bare id, name with trailing dot).
fn create_zone(moto: &Moto, name: &str) -> (String, String) {
    let out = moto.boto3_json(
        "route53",
        "create_hosted_zone",
        json!({"Name": name, "CallerReference": unique("ref")}),
    );
    let id = out["HostedZone"]["Id"].as_str().expect("zone id");
    (
        id.trim_start_matches("/hostedzone/").to_string(),
        format!("{}.", name.trim_end_matches('.')),
    )
}

/// Every record of a zone, read with boto3's paginator.
fn boto3_records(moto: &Moto, zone_id: &str) -> Vec<Value> {
    moto.py(
        r#"
p = client("route53").get_paginator("list_resource_record_sets")
out = [r for page in p.paginate(HostedZoneId=input["zone"]) for r in page["ResourceRecordSets"]]
"#,
        json!({"zone": zone_id}),
    )
    .as_array()
    .expect("list")
    .clone()
}

fn weighted(name: &str, id: &str, weight: i64, target: &str) -> RecordSet {
    RecordSet {
        name: name.to_string(),
        rtype: "A".into(),
        set_identifier: Some(id.to_string()),
        weight: Some(weight),
        ttl: None,
        alias: Some(AliasTarget {
            dns_name: target.to_string(),
            hosted_zone_id: "Z1UJRXOUMOOFQ8".into(),
            evaluate_target_health: true,
        }),
        values: vec![],
        health_check_id: None,
        other_routing: false,
    }
}

fn txt(name: &str, value: &str) -> RecordSet {
    RecordSet {
        name: name.to_string(),
        rtype: "TXT".into(),
        set_identifier: None,
        weight: None,
        ttl: Some(300),
        alias: None,
        values: vec![format!("\"{value}\"")],
        health_check_id: None,
        other_routing: false,
    }
}

/// Records in a fixed order, to compare lists whatever order they were read in.
fn sorted(mut v: Vec<RecordSet>) -> Vec<RecordSet> {
    v.sort_by(|a, b| {
        (&a.name, &a.rtype, &a.set_identifier).cmp(&(&b.name, &b.rtype, &b.set_identifier))
    });
    v
}

fn change(action: ChangeAction, record: &RecordSet) -> Change {
    Change {
        action,
        record: record.clone(),
    }
}

/// (name, set identifier, weight, alias dns name) of boto3 records of one type.
fn weights_of(records: &[Value], name: &str) -> BTreeSet<(String, i64, String)> {
    records
        .iter()
        .filter(|r| r["Name"] == name && r["Type"] == "A")
        .map(|r| {
            (
                r["SetIdentifier"].as_str().unwrap_or_default().to_string(),
                r["Weight"].as_i64().unwrap_or(-1),
                r["AliasTarget"]["DNSName"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            )
        })
        .collect()
}

/// Create a private hosted zone with boto3; returns its bare id.
fn create_private_zone(moto: &Moto, name: &str) -> String {
    let vpc = moto.boto3_json("ec2", "create_vpc", json!({"CidrBlock": "10.1.0.0/16"}));
    let vpc_id = vpc["Vpc"]["VpcId"].as_str().expect("vpc id");
    let out = moto.boto3_json(
        "route53",
        "create_hosted_zone",
        json!({"Name": name, "CallerReference": unique("ref"),
               "HostedZoneConfig": {"PrivateZone": true},
               "VPC": {"VPCRegion": "us-east-1", "VPCId": vpc_id}}),
    );
    let id = out["HostedZone"]["Id"].as_str().expect("zone id");
    id.trim_start_matches("/hostedzone/").to_string()
}

#[tokio::test]
async fn zones_are_found_by_name_and_by_id() {
    let moto = Moto::start();
    let aws = moto.connect().await;
    let name = format!("{}.example.com", unique("zone"));
    let (id, fqdn) = create_zone(&moto, &name);
    // A zone of a name under it and one of a longer name beside it are other zones.
    create_zone(&moto, &format!("sub.{name}"));
    create_zone(&moto, &format!("{name}x"));

    for query in [name.clone(), fqdn.clone(), name.to_uppercase()] {
        let z = aws.dns.find_zone(&query).await.expect("found by name");
        assert_eq!(z.id, id, "{query}");
        assert_eq!(z.name, fqdn);
        assert!(!z.private, "{query}");
    }
    for query in [id.clone(), format!("/hostedzone/{id}")] {
        let z = aws.dns.find_zone(&query).await.expect("found by id");
        assert_eq!(
            (z.id.as_str(), z.name.as_str()),
            (id.as_str(), fqdn.as_str())
        );
    }

    for missing in [
        format!("missing-{name}"),
        "/hostedzone/ZNOSUCHZONE1".to_string(),
        "ZNOSUCHZONE2".into(),
    ] {
        match aws.dns.find_zone(&missing).await {
            Err(Error::NotFound(msg)) => {
                assert!(msg.contains(&missing), "{msg}");
                assert!(msg.contains("spec.record.hostedZone"), "{msg}");
            }
            other => panic!("{missing}: expected NotFound, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn weighted_set_is_created_upserted_and_deleted_in_batches() {
    let moto = Moto::start();
    let aws = moto.connect().await;
    let (zone, fqdn) = create_zone(&moto, &format!("{}.example.com", unique("rw")));
    let name = format!("api.{fqdn}");
    let owner = format!("_trafficshift.{name}");
    let blue = weighted(
        &name,
        "blue",
        100,
        "d-blue.execute-api.us-east-1.amazonaws.com.",
    );
    let green = weighted(&name, "green", 0, "green-lb-1.us-east-1.elb.amazonaws.com.");
    let state = txt(&owner, "split=demo");

    let id = aws
        .dns
        .change(
            &zone,
            "trafficshift: create",
            &[
                change(ChangeAction::Create, &blue),
                change(ChangeAction::Create, &green),
                change(ChangeAction::Create, &state),
            ],
        )
        .await
        .expect("create batch");
    assert!(
        !id.is_empty() && !id.starts_with("/change/"),
        "bare change id: {id}"
    );
    assert!(
        aws.dns.insync(&id).await.expect("GetChange"),
        "moto: INSYNC at once"
    );

    let read = boto3_records(&moto, &zone);
    assert_eq!(
        weights_of(&read, &name),
        BTreeSet::from([
            (
                "blue".into(),
                100,
                "d-blue.execute-api.us-east-1.amazonaws.com.".into()
            ),
            (
                "green".into(),
                0,
                "green-lb-1.us-east-1.elb.amazonaws.com.".into()
            ),
        ])
    );
    let txt_read: Vec<&Value> = read
        .iter()
        .filter(|r| r["Name"] == owner.as_str())
        .collect();
    assert_eq!(txt_read.len(), 1, "{read:?}");
    assert_eq!(txt_read[0]["ResourceRecords"][0]["Value"], "\"split=demo\"");

    // What we read back is what we wrote, field for field.
    let listed = aws.dns.list_from(&zone, &name).await.expect("list_from");
    assert_eq!(
        sorted(listed),
        sorted(vec![blue.clone(), green.clone(), state.clone()])
    );

    // Shift weight in one batch.
    let blue90 = RecordSet {
        weight: Some(90),
        ..blue.clone()
    };
    let green10 = RecordSet {
        weight: Some(10),
        ..green.clone()
    };
    let id = aws
        .dns
        .change(
            &zone,
            "trafficshift: step",
            &[
                change(ChangeAction::Upsert, &blue90),
                change(ChangeAction::Upsert, &green10),
            ],
        )
        .await
        .expect("upsert batch");
    assert!(
        aws.dns.insync(&id).await.expect("GetChange"),
        "moto: INSYNC at once"
    );
    let read = boto3_records(&moto, &zone);
    let weights: BTreeSet<(String, i64)> = weights_of(&read, &name)
        .into_iter()
        .map(|(s, w, _)| (s, w))
        .collect();
    assert_eq!(
        weights,
        BTreeSet::from([("blue".into(), 90), ("green".into(), 10)])
    );

    // A DELETE repeats the record exactly as listed.
    let listed = aws.dns.list_from(&zone, &name).await.expect("list_from");
    let green_now = listed
        .iter()
        .find(|r| r.set_identifier.as_deref() == Some("green"))
        .expect("green listed");
    let txt_now = listed
        .iter()
        .find(|r| r.rtype == "TXT")
        .expect("txt listed");
    aws.dns
        .change(
            &zone,
            "trafficshift: finish",
            &[
                change(ChangeAction::Delete, green_now),
                change(ChangeAction::Delete, txt_now),
            ],
        )
        .await
        .expect("delete batch");
    let read = boto3_records(&moto, &zone);
    let left: BTreeSet<(String, i64)> = weights_of(&read, &name)
        .into_iter()
        .map(|(s, w, _)| (s, w))
        .collect();
    assert_eq!(left, BTreeSet::from([("blue".into(), 90)]));
    assert!(
        !read.iter().any(|r| r["Name"] == owner.as_str()),
        "TXT deleted: {read:?}"
    );
}

#[tokio::test]
async fn rejected_batch_is_permanent_and_says_nothing_was_written() {
    let moto = Moto::start();
    let aws = moto.connect().await;
    let (zone, fqdn) = create_zone(&moto, &format!("{}.example.com", unique("bad")));
    let ghost = txt(&format!("ghost.{fqdn}"), "never created");
    let before = METRICS
        .aws_requests
        .with_label_values(&[
            "route53",
            "ChangeResourceRecordSets",
            "error",
            &trafficshift::aws::accounts::current(),
        ])
        .get();
    let err = aws
        .dns
        .change(
            &zone,
            "delete what is not there",
            &[change(ChangeAction::Delete, &ghost)],
        )
        .await
        .expect_err("moto rejects the DELETE");
    assert_eq!(err.kind(), "aws_permanent", "{err}");
    let msg = err.to_string();
    assert!(msg.contains("route53 ChangeResourceRecordSets"), "{msg}");
    assert!(
        msg.contains("InvalidInput") || msg.contains("InvalidChangeBatch"),
        "{msg}"
    );
    assert!(msg.contains("nothing was written"), "{msg}");
    // Permanent: exactly one attempt.
    let after = METRICS
        .aws_requests
        .with_label_values(&[
            "route53",
            "ChangeResourceRecordSets",
            "error",
            &trafficshift::aws::accounts::current(),
        ])
        .get();
    assert_eq!(after - before, 1);
}

#[tokio::test]
async fn list_all_pages_over_300_records() {
    let moto = Moto::start();
    let aws = moto.connect().await;
    let (zone, fqdn) = create_zone(&moto, &format!("{}.example.com", unique("many")));
    moto.py(
        r#"
c = client("route53")
names = ["h%03d.%s" % (i, input["zone_name"]) for i in range(650)]
for start in range(0, len(names), 100):
    c.change_resource_record_sets(HostedZoneId=input["zone"], ChangeBatch={"Changes": [
        {"Action": "CREATE", "ResourceRecordSet": {"Name": n, "Type": "A", "TTL": 60,
         "ResourceRecords": [{"Value": "10.0.%d.%d" % (i // 250, i % 250)}]}}
        for i, n in enumerate(names[start:start + 100], start)]})
"#,
        json!({"zone": zone, "zone_name": fqdn}),
    );
    let pages_before = METRICS
        .aws_requests
        .with_label_values(&[
            "route53",
            "ListResourceRecordSets",
            "success",
            &trafficshift::aws::accounts::current(),
        ])
        .get();
    let all = aws.dns.list_all(&zone).await.expect("list_all");
    let pages = METRICS
        .aws_requests
        .with_label_values(&[
            "route53",
            "ListResourceRecordSets",
            "success",
            &trafficshift::aws::accounts::current(),
        ])
        .get()
        - pages_before;
    // 650 A records plus the apex NS and SOA; 300 per page makes at least 3 pages. Other tests
    // of this binary may list concurrently, so only the lower bound is exact.
    assert_eq!(all.len(), 652);
    assert!(pages >= 3, "{pages} pages");
    let ours: BTreeSet<String> = all.iter().map(|r| r.name.clone()).collect();
    let theirs: BTreeSet<String> = boto3_records(&moto, &zone)
        .iter()
        .map(|r| r["Name"].as_str().expect("name").to_string())
        .collect();
    assert_eq!(ours, theirs);
    let h649 = all
        .iter()
        .find(|r| r.name == format!("h649.{fqdn}"))
        .expect("last record");
    assert_eq!(h649.values, vec!["10.0.2.149".to_string()]);
    assert_eq!(h649.ttl, Some(60));
}

#[tokio::test]
async fn list_from_returns_the_name_and_its_state_record_only() {
    let moto = Moto::start();
    let aws = moto.connect().await;
    let (zone, fqdn) = create_zone(&moto, &format!("{}.example.com", unique("from")));
    let name = format!("app.{fqdn}");
    let mine = [
        weighted(&name, "blue", 70, "blue.example.net."),
        weighted(&name, "green", 30, "green.example.net."),
        txt(&format!("_trafficshift.{name}"), "split=app"),
    ];
    // Neighbours on both sides in Route53 order, and names under `app` that sort after the
    // state record.
    let others = [
        txt(&fqdn.to_string(), "apex"),
        txt(&format!("a.{fqdn}"), "before"),
        txt(&format!("app-2.{fqdn}"), "sibling"),
        txt(&format!("apq.{fqdn}"), "sibling"),
        txt(&format!("b.app.{fqdn}"), "child after state"),
        txt(&format!("z.app.{fqdn}"), "child after state"),
        txt(&format!("zz.{fqdn}"), "after"),
    ];
    let changes: Vec<Change> = mine
        .iter()
        .chain(others.iter())
        .map(|r| change(ChangeAction::Create, r))
        .collect();
    aws.dns
        .change(&zone, "setup", &changes)
        .await
        .expect("setup batch");

    let got = aws.dns.list_from(&zone, &name).await.expect("list_from");
    assert_eq!(sorted(got), sorted(mine.to_vec()));
    // Upper case and a missing trailing dot name the same records.
    let again = aws
        .dns
        .list_from(&zone, &name.trim_end_matches('.').to_uppercase())
        .await
        .expect("list_from");
    assert_eq!(again.len(), 3);
    // A name with no records at all.
    let none = aws
        .dns
        .list_from(&zone, &format!("nothing.{fqdn}"))
        .await
        .expect("list_from");
    assert!(none.is_empty(), "{none:?}");
}

/// Create an ECS cluster and services with boto3; `lb` services get a load balancer entry.
fn create_services(moto: &Moto, cluster: &str, services: &[&str], desired: i64, tg: &str) {
    moto.py(
        r#"
c = client("ecs")
c.create_cluster(clusterName=input["cluster"])
for s in input["services"]:
    c.create_service(cluster=input["cluster"], serviceName=s, desiredCount=input["desired"],
        loadBalancers=[{"targetGroupArn": input["tg"], "containerName": "web", "containerPort": 80}])
"#,
        json!({"cluster": cluster, "services": services, "desired": desired, "tg": tg}),
    );
}

#[tokio::test]
async fn ecs_services_are_described_in_batches_and_scaled() {
    let moto = Moto::start();
    let aws = moto.connect().await;
    let cluster = unique("cluster");
    let tg = "arn:aws:elasticloadbalancing:us-east-1:123456789012:targetgroup/web/0123456789abcdef";
    let names: Vec<String> = (0..12).map(|i| format!("svc-{i:02}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    create_services(&moto, &cluster, &refs, 2, tg);
    moto.boto3_json(
        "ecs",
        "update_service",
        json!({"cluster": cluster, "service": "svc-11", "desiredCount": 0}),
    );
    moto.boto3_json(
        "ecs",
        "delete_service",
        json!({"cluster": cluster, "service": "svc-11"}),
    );

    let mut ask = names.clone();
    ask.push("does-not-exist".into());
    let calls_before = METRICS
        .aws_requests
        .with_label_values(&[
            "ecs",
            "DescribeServices",
            "success",
            &trafficshift::aws::accounts::current(),
        ])
        .get();
    let got = aws.ecs.describe(&cluster, &ask).await.expect("describe");
    let calls = METRICS
        .aws_requests
        .with_label_values(&[
            "ecs",
            "DescribeServices",
            "success",
            &trafficshift::aws::accounts::current(),
        ])
        .get()
        - calls_before;
    assert!(calls >= 2, "13 names need 2 calls, counted {calls}");
    let got_names: Vec<&str> = got.iter().map(|s| s.service.as_str()).collect();
    assert_eq!(
        got_names,
        refs[..11].to_vec(),
        "INACTIVE and missing services are absent"
    );
    let s0 = &got[0];
    assert_eq!(
        (s0.cluster.as_str(), s0.status.as_str(), s0.desired),
        (cluster.as_str(), "ACTIVE", 2)
    );
    assert_eq!(s0.deployments, 1);
    assert!(s0.rollout_state.is_some(), "{s0:?}");
    assert_eq!(s0.target_groups, vec![tg.to_string()]);
    assert!(s0.arn.ends_with("/svc-00"), "{}", s0.arn);

    aws.ecs
        .set_desired(&cluster, "svc-00", 5)
        .await
        .expect("set_desired");
    let read = moto.boto3_json(
        "ecs",
        "describe_services",
        json!({"cluster": cluster, "services": ["svc-00"]}),
    );
    assert_eq!(read["services"][0]["desiredCount"], 5);
    let after = aws
        .ecs
        .describe(&cluster, &names[..1])
        .await
        .expect("describe");
    assert_eq!(after[0].desired, 5);

    match aws.ecs.describe(&unique("no-cluster"), &names[..1]).await {
        Err(Error::NotFound(msg)) => assert!(msg.contains("cluster"), "{msg}"),
        other => panic!("expected NotFound for a missing cluster, got {other:?}"),
    }
    match aws.ecs.set_desired(&cluster, "does-not-exist", 1).await {
        Err(Error::NotFound(msg)) => assert!(msg.contains("does-not-exist"), "{msg}"),
        other => panic!("expected NotFound for a missing service, got {other:?}"),
    }
}

#[tokio::test]
async fn moto_holds_new_services_below_desired_until_updated() {
    // moto sets runningCount from MOTO_ECS_SERVICE_RUNNING (default 0) when a service is
    // created, and to desiredCount on every UpdateService that sets desiredCount.
    let moto = Moto::start_with_env(&[("MOTO_ECS_SERVICE_RUNNING", "1")]);
    let aws = moto.connect().await;
    let cluster = unique("cluster");
    create_services(
        &moto,
        &cluster,
        &["web"],
        3,
        "arn:aws:elasticloadbalancing:us-east-1:123456789012:targetgroup/w/1",
    );
    let s = &aws
        .ecs
        .describe(&cluster, &["web".to_string()])
        .await
        .expect("describe")[0];
    assert_eq!((s.desired, s.running, s.pending), (3, 1, 2));
    assert_eq!(s.rollout_state.as_deref(), Some("IN_PROGRESS"));
    assert!(!s.is_stable());
    aws.ecs
        .set_desired(&cluster, "web", 4)
        .await
        .expect("set_desired");
    let s = &aws
        .ecs
        .describe(&cluster, &["web".to_string()])
        .await
        .expect("describe")[0];
    assert_eq!((s.desired, s.running, s.pending), (4, 4, 0));
    assert!(s.is_stable(), "{s:?}");
}

#[tokio::test]
async fn api_gateway_domains_resolve_to_alias_targets() {
    let moto = Moto::start();
    let aws = moto.connect().await;
    let regional = format!("{}.example.com", unique("rest"));
    let edge = format!("{}.example.com", unique("edge"));
    let cert = "arn:aws:acm:us-east-1:123456789012:certificate/abc";
    let r = moto.boto3_json(
        "apigateway",
        "create_domain_name",
        json!({"domainName": regional, "regionalCertificateArn": cert, "endpointConfiguration": {"types": ["REGIONAL"]}}),
    );
    let t = aws
        .targets
        .api_gateway_domain(&regional)
        .await
        .expect("regional domain");
    let expect_name = format!(
        "{}.",
        r["regionalDomainName"]
            .as_str()
            .expect("regionalDomainName")
    );
    assert_eq!(t.dns_name, expect_name);
    assert_eq!(
        t.hosted_zone_id,
        r["regionalHostedZoneId"]
            .as_str()
            .expect("regionalHostedZoneId")
    );
    assert!(t.evaluate_target_health);

    let e = moto.boto3_json(
        "apigateway",
        "create_domain_name",
        json!({"domainName": edge, "certificateArn": cert}),
    );
    let t = aws
        .targets
        .api_gateway_domain(&format!("{edge}."))
        .await
        .expect("edge domain");
    assert_eq!(
        t.dns_name,
        format!(
            "{}.",
            e["distributionDomainName"]
                .as_str()
                .expect("distributionDomainName")
        )
    );
    assert_eq!(
        t.hosted_zone_id,
        e["distributionHostedZoneId"]
            .as_str()
            .expect("distributionHostedZoneId")
    );
    // A CloudFront target: Route53 refuses EvaluateTargetHealth=true on it.
    assert!(!t.evaluate_target_health, "{t:?}");

    let http = format!("{}.example.com", unique("http"));
    let h = moto.boto3_json(
        "apigatewayv2",
        "create_domain_name",
        json!({"DomainName": http, "DomainNameConfigurations": [{"CertificateArn": cert, "EndpointType": "REGIONAL"}]}),
    );
    let conf = &h["DomainNameConfigurations"][0];
    match (
        conf["ApiGatewayDomainName"].as_str(),
        aws.targets.api_gateway_domain(&http).await,
    ) {
        (Some(name), Ok(t)) => assert_eq!(t.dns_name, format!("{name}.")),
        // moto 5.2 leaves ApiGatewayDomainName/HostedZoneId out of HTTP API domains.
        (None, Err(Error::NotFound(msg))) => {
            assert!(msg.contains("HTTP") && msg.contains(&http), "{msg}")
        }
        (name, got) => panic!("HTTP domain: boto3 says {name:?}, trafficshift says {got:?}"),
    }

    let missing = format!("{}.example.com", unique("nope"));
    match aws.targets.api_gateway_domain(&missing).await {
        Err(Error::NotFound(msg)) => {
            assert!(
                msg.contains(&missing) && msg.contains("spec.backends[].apiGateway.domainName"),
                "{msg}"
            )
        }
        other => panic!("expected NotFound, got {other:?}"),
    }
}

#[tokio::test]
async fn target_groups_resolve_to_their_load_balancer() {
    let moto = Moto::start();
    let aws = moto.connect().await;
    let name = unique("lb");
    let out = moto.py(
        r#"
ec2 = client("ec2"); elb = client("elbv2")
vpc = ec2.create_vpc(CidrBlock="10.9.0.0/16")["Vpc"]["VpcId"]
subnets = [ec2.create_subnet(VpcId=vpc, CidrBlock=c, AvailabilityZone=z)["Subnet"]["SubnetId"]
           for c, z in (("10.9.1.0/24", "us-east-1a"), ("10.9.2.0/24", "us-east-1b"))]
lb = elb.create_load_balancer(Name=input["name"], Subnets=subnets, Type="application")["LoadBalancers"][0]
tg = elb.create_target_group(Name=input["name"], Protocol="HTTP", Port=80, VpcId=vpc, TargetType="ip")["TargetGroups"][0]
lonely = elb.create_target_group(Name=input["name"][:-1] + "x", Protocol="HTTP", Port=80, VpcId=vpc, TargetType="ip")["TargetGroups"][0]
elb.create_listener(LoadBalancerArn=lb["LoadBalancerArn"], Protocol="HTTP", Port=80,
                    DefaultActions=[{"Type": "forward", "TargetGroupArn": tg["TargetGroupArn"]}])
elb.register_targets(TargetGroupArn=tg["TargetGroupArn"], Targets=[{"Id": "10.9.1.10"}, {"Id": "10.9.2.10"}])
health = elb.describe_target_health(TargetGroupArn=tg["TargetGroupArn"])["TargetHealthDescriptions"]
out = {"tg": tg["TargetGroupArn"], "lonely": lonely["TargetGroupArn"], "dns": lb["DNSName"],
       "zone": lb["CanonicalHostedZoneId"],
       "healthy": sum(1 for h in health if h["TargetHealth"]["State"] == "healthy"), "total": len(health)}
"#,
        json!({"name": name}),
    );
    let tg = out["tg"].as_str().expect("tg arn");
    let t = aws
        .targets
        .target_group_lb(tg)
        .await
        .expect("target_group_lb");
    // The ALB's dualstack name, which answers AAAA as well as A.
    assert_eq!(
        t.dns_name,
        format!(
            "dualstack.{}.",
            out["dns"].as_str().expect("dns").to_lowercase()
        )
    );
    assert_eq!(t.hosted_zone_id, out["zone"].as_str().expect("zone"));
    assert!(t.evaluate_target_health);

    let (healthy, total) = aws.targets.target_health(tg).await.expect("target_health");
    assert_eq!(total, 2);
    assert_eq!(
        u64::from(healthy),
        out["healthy"].as_u64().expect("healthy")
    );

    match aws
        .targets
        .target_group_lb(out["lonely"].as_str().expect("arn"))
        .await
    {
        Err(Error::NotFound(msg)) => {
            assert!(msg.contains("not attached to a load balancer"), "{msg}")
        }
        other => {
            panic!("expected NotFound for a target group without load balancer, got {other:?}")
        }
    }
    let gone = tg.replace(&name, "gone");
    match aws.targets.target_group_lb(&gone).await {
        Err(Error::NotFound(msg)) => assert!(msg.contains(&gone), "{msg}"),
        other => panic!("expected NotFound for a missing target group, got {other:?}"),
    }
}

#[tokio::test]
async fn alarm_states_are_read() {
    let moto = Moto::start();
    let aws = moto.connect().await;
    let firing = unique("alarm-firing");
    let quiet = unique("alarm-quiet");
    moto.py(
        r#"
cw = client("cloudwatch")
for n in (input["firing"], input["quiet"]):
    cw.put_metric_alarm(AlarmName=n, MetricName="5XXError", Namespace="AWS/ApiGateway", Statistic="Sum",
                        Period=60, EvaluationPeriods=1, Threshold=1, ComparisonOperator="GreaterThanThreshold")
cw.set_alarm_state(AlarmName=input["firing"], StateValue="ALARM", StateReason="test")
cw.set_alarm_state(AlarmName=input["quiet"], StateValue="OK", StateReason="test")
"#,
        json!({"firing": firing, "quiet": quiet}),
    );
    let names = vec![firing.clone(), quiet.clone(), unique("alarm-missing")];
    let mut got = aws.alarms.alarm_states(&names).await.expect("alarm_states");
    got.sort();
    let mut want = vec![
        (firing.clone(), "ALARM".to_string()),
        (quiet.clone(), "OK".to_string()),
    ];
    want.sort();
    assert_eq!(got, want);
    // Read back with boto3 as well, so a moto change shows up here first.
    let read = moto.boto3_json(
        "cloudwatch",
        "describe_alarms",
        json!({"AlarmNames": [firing]}),
    );
    assert_eq!(read["MetricAlarms"][0]["StateValue"], "ALARM");
}

#[tokio::test]
async fn unreachable_endpoint_is_transient_and_every_attempt_counted() {
    // Nothing listens there, and nothing can start to meanwhile.
    let (_held, port) = support::refusing_port();
    let loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .endpoint_url(format!("http://127.0.0.1:{port}"))
        .region(aws_config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_route53::config::Credentials::new(
            "t", "t", None, None, "test",
        ));
    let opts = trafficshift::aws::connect::AwsOptions {
        attempt_timeout: Duration::from_secs(2),
        ..Default::default()
    };
    let aws = trafficshift::aws::connect::connect_with(&opts, loader).await;
    let before = METRICS
        .aws_requests
        .with_label_values(&[
            "cloudwatch",
            "DescribeAlarms",
            "error",
            &trafficshift::aws::accounts::current(),
        ])
        .get();
    let err = aws
        .alarms
        .alarm_states(&["x".to_string()])
        .await
        .expect_err("nothing listens");
    let after = METRICS
        .aws_requests
        .with_label_values(&[
            "cloudwatch",
            "DescribeAlarms",
            "error",
            &trafficshift::aws::accounts::current(),
        ])
        .get();
    assert_eq!(err.kind(), "aws_transient", "{err}");
    assert!(err.is_retryable());
    assert_eq!(after - before, 5, "5 attempts, each counted");
}

/// Issue #9 3j: a name that matches two hosted zones (two public, or public and private) is an
/// error naming both ids; the zone id picks one.
#[tokio::test]
async fn a_zone_name_matching_two_zones_is_an_error_unless_the_id_is_given() {
    let moto = Moto::start();
    let aws = moto.connect().await;

    let shared = format!("{}.example.com", unique("twin"));
    let (public, fqdn) = create_zone(&moto, &shared);
    let private = create_private_zone(&moto, &shared);
    let both_public = format!("{}.example.com", unique("dup"));
    let (first, _) = create_zone(&moto, &both_public);
    let (second, _) = create_zone(&moto, &both_public);

    for (query, ids) in [
        (shared.clone(), [public.clone(), private.clone()]),
        (format!("{both_public}."), [first.clone(), second.clone()]),
    ] {
        match aws.dns.find_zone(&query).await {
            Err(Error::Conflict(msg)) => {
                for id in &ids {
                    assert!(msg.contains(id.as_str()), "{query}: {id} not named: {msg}");
                }
                assert!(msg.contains("spec.record.hostedZone"), "{msg}");
            }
            other => panic!("{query}: expected a Conflict naming {ids:?}, got {other:?}"),
        }
    }
    for (id, private_zone) in [(public.clone(), false), (private.clone(), true)] {
        let z = aws.dns.find_zone(&id).await.expect("found by id");
        assert_eq!(
            (z.id.as_str(), z.name.as_str()),
            (id.as_str(), fqdn.as_str())
        );
        assert_eq!(z.private, private_zone);
    }
}

/// Issue #9 3i: Route53 lists `_trafficshift-x.<name>` before `_trafficshift.<name>` ('-' sorts
/// before '.'), moto after it; with the page boundary anywhere around them, a targeted listing
/// must still return the name's records and its state TXT.
#[tokio::test]
async fn list_from_finds_the_state_record_across_page_boundaries() {
    let moto = Moto::start();
    let (zone, fqdn) = create_zone(&moto, &format!("{}.example.com", unique("order")));
    let name = format!("api.{fqdn}");
    let mine = [
        weighted(&name, "blue", 70, "blue.example.net."),
        weighted(&name, "green", 30, "green.example.net."),
        txt(&format!("_trafficshift.{name}"), "split=api"),
    ];
    let others = [
        txt(
            &format!("_trafficshift-x.{name}"),
            "beside the state record",
        ),
        txt(&format!("_trafficshift-x.{fqdn}"), "beside the name"),
        txt(&format!("api-x.{fqdn}"), "sibling"),
        txt(&format!("a._trafficshift.{name}"), "under the state record"),
        txt(&format!("b.{name}"), "child after state"),
        txt(&format!("zz.{fqdn}"), "after"),
    ];
    let batch: Vec<Value> = mine
        .iter()
        .chain(others.iter())
        .map(|r| {
            let mut rr = json!({"Name": r.name, "Type": r.rtype});
            if let Some(a) = &r.alias {
                rr["SetIdentifier"] = json!(r.set_identifier);
                rr["Weight"] = json!(r.weight);
                rr["AliasTarget"] = json!({"DNSName": a.dns_name, "HostedZoneId": a.hosted_zone_id,
                                           "EvaluateTargetHealth": a.evaluate_target_health});
            } else {
                rr["TTL"] = json!(r.ttl);
                rr["ResourceRecords"] = json!(r
                    .values
                    .iter()
                    .map(|v| json!({"Value": v}))
                    .collect::<Vec<_>>());
            }
            json!({"Action": "CREATE", "ResourceRecordSet": rr})
        })
        .collect();
    moto.boto3_json(
        "route53",
        "change_resource_record_sets",
        json!({"HostedZoneId": zone, "ChangeBatch": {"Changes": batch}}),
    );
    // The zone as moto lists it: the state record and its `-x` neighbour are adjacent, so some
    // page size below puts a boundary between them.
    let listed: Vec<String> = boto3_records(&moto, &zone)
        .iter()
        .map(|r| r["Name"].as_str().unwrap_or_default().to_string())
        .collect();
    let at = listed
        .iter()
        .position(|n| n == &format!("_trafficshift.{name}"))
        .expect("state record listed");
    assert!(
        listed.get(at + 1) == Some(&format!("_trafficshift-x.{name}"))
            || listed.get(at.wrapping_sub(1)) == Some(&format!("_trafficshift-x.{name}")),
        "neighbours in moto's order: {listed:?}"
    );

    let config = moto.loader().load().await;
    let limiter = std::sync::Arc::new(trafficshift::aws::limiter::RateLimiter::with_burst(
        1000.0, 100,
    ));
    // From 2: moto ignores StartRecordIdentifier, so a page must hold both weighted records of
    // the name or the listing cannot move past them.
    for page in 2..=listed.len() as i32 {
        let dns = trafficshift::aws::route53::Route53Dns::new(
            aws_sdk_route53::Client::new(&config),
            limiter.clone(),
        )
        .with_page_size(page);
        let got = trafficshift::aws::Dns::list_from(&dns, &zone, &name)
            .await
            .expect("list_from");
        let got: Vec<RecordSet> = got
            .into_iter()
            .filter(|r| r.name == name || r.name == format!("_trafficshift.{name}"))
            .collect();
        assert_eq!(
            sorted(got),
            sorted(mine.to_vec()),
            "page size {page}; moto's order {listed:?}"
        );
    }
}
