"""scripts/provision.py against a real moto server, read back with boto3."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import SCRIPTS


def provision(moto_url: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPTS / "provision.py"), "--endpoint", moto_url, *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def scenario(moto_url: str, u: str, *extra: str) -> dict:
    res = provision(
        moto_url,
        "scenario",
        "--zone", f"z{u}.example",
        "--record", f"api.z{u}.example",
        "--cluster", f"c{u}",
        "--service", "api",
        "--apigw-domain", f"api.z{u}.example",
        "--unrelated", f"www.z{u}.example",
        "--tasks", "2",
        *extra,
    )
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def test_scenario_creates_everything_and_is_idempotent(moto_url, client, unique):
    first = scenario(moto_url, unique)
    second = scenario(moto_url, unique)
    assert first == second

    r53 = client("route53", moto_url)
    rrsets = r53.list_resource_record_sets(HostedZoneId=first["zone_id"])["ResourceRecordSets"]
    by_name = {(r["Name"], r["Type"]): r for r in rrsets}
    api = by_name[(f"api.z{unique}.example.", "A")]
    assert "SetIdentifier" not in api and "Weight" not in api
    assert api["AliasTarget"]["DNSName"].rstrip(".") == first["apigw_regional_domain"]
    assert api["AliasTarget"]["HostedZoneId"] == first["apigw_zone_id"]
    www = by_name[(f"www.z{unique}.example.", "CNAME")]
    assert www["ResourceRecords"] == [{"Value": first["unrelated"]["value"]}]
    assert len([r for r in rrsets if r["Name"] == f"api.z{unique}.example."]) == 1

    apigw = client("apigateway", moto_url).get_domain_name(domainName=f"api.z{unique}.example")
    assert apigw["regionalDomainName"] == first["apigw_regional_domain"]

    elb = client("elbv2", moto_url)
    lbs = elb.describe_load_balancers(Names=[first["alb_name"]])["LoadBalancers"]
    assert [lb["DNSName"] for lb in lbs] == [first["alb_dns"]]
    tg = elb.describe_target_groups(TargetGroupArns=[first["target_group_arn"]])["TargetGroups"][0]
    assert tg["TargetType"] == "ip" and tg["LoadBalancerArns"] == [first["alb_arn"]]

    svc = client("ecs", moto_url).describe_services(cluster=f"c{unique}", services=["api"])["services"][0]
    assert svc["serviceArn"] == first["service_arn"]
    assert svc["desiredCount"] == 2 and svc["runningCount"] == 2 and len(svc["deployments"]) == 1
    assert svc["loadBalancers"][0]["targetGroupArn"] == first["target_group_arn"]
    assert svc["launchType"] == "FARGATE"


def test_record_target_none_and_a_unrelated(moto_url, client, unique):
    out = scenario(moto_url, unique, "--record-target", "none", "--unrelated-type", "A")
    rrsets = client("route53", moto_url).list_resource_record_sets(HostedZoneId=out["zone_id"])["ResourceRecordSets"]
    names = {(r["Name"], r["Type"]) for r in rrsets}
    assert (f"api.z{unique}.example.", "A") not in names
    assert (f"www.z{unique}.example.", "A") in names


def test_scenario_leaves_a_weighted_set_alone(moto_url, client, unique):
    out = scenario(moto_url, unique)
    r53 = client("route53", moto_url)
    name = f"api.z{unique}.example."
    plain = {"Name": name, "Type": "A", "AliasTarget": {"DNSName": out["apigw_regional_domain"],
                                                        "HostedZoneId": out["apigw_zone_id"],
                                                        "EvaluateTargetHealth": False}}
    weighted = {**plain, "SetIdentifier": "lambda", "Weight": 100}
    r53.change_resource_record_sets(
        HostedZoneId=out["zone_id"],
        ChangeBatch={"Changes": [{"Action": "DELETE", "ResourceRecordSet": plain},
                                 {"Action": "CREATE", "ResourceRecordSet": weighted}]},
    )
    scenario(moto_url, unique)
    rrsets = [r for r in r53.list_resource_record_sets(HostedZoneId=out["zone_id"])["ResourceRecordSets"]
              if r["Name"] == name]
    assert [(r.get("SetIdentifier"), r.get("Weight")) for r in rrsets] == [("lambda", 100)]


def test_records_table_and_json(moto_url, unique):
    out = scenario(moto_url, unique)
    table = provision(moto_url, "records", "--zone-id", out["zone_id"])
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["NAME", "TYPE", "SET_ID", "WEIGHT", "TARGET"]
    assert any(line.startswith(f"api.z{unique}.example.") and "alias d-" in line for line in lines)
    rows = json.loads(provision(moto_url, "records", "--zone-id", out["zone_id"], "--json").stdout)
    assert {"name": f"www.z{unique}.example.", "type": "CNAME", "set_id": None, "weight": None,
            "target": out["unrelated"]["value"]} in rows


def test_alarm_and_ecs(moto_url, client, unique):
    for state in ("ALARM", "OK", "ALARM"):
        res = provision(moto_url, "alarm", "--name", f"alarm-{unique}", "--state", state)
        assert res.returncode == 0, res.stderr
        assert json.loads(res.stdout)["state"] == state
    alarms = client("cloudwatch", moto_url).describe_alarms(AlarmNames=[f"alarm-{unique}"])["MetricAlarms"]
    assert [a["StateValue"] for a in alarms] == ["ALARM"]

    scenario(moto_url, unique)
    ecs = json.loads(provision(moto_url, "ecs", "--cluster", f"c{unique}", "--service", "api").stdout)
    assert ecs["desired_count"] == 2 and ecs["running_count"] == 2


def test_errors_are_one_line(unique):
    res = provision("http://127.0.0.1:9", "records", "--zone-id", "Z1")
    assert res.returncode == 1
    assert "Traceback" not in res.stderr and "failed" in res.stderr


def test_evaluate_target_health_flag(moto_url, client, unique):
    out = scenario(moto_url, unique, "--evaluate-target-health")
    rrsets = client("route53", moto_url).list_resource_record_sets(HostedZoneId=out["zone_id"])["ResourceRecordSets"]
    api = [r for r in rrsets if r["Name"] == f"api.z{unique}.example." and r["Type"] == "A"][0]
    assert api["AliasTarget"]["EvaluateTargetHealth"] is True
