"""The realistic AWS layer of scripts/faultproxy.py, judged with boto3 through it and against moto.

Delays are configured short (1-2 s) or the layer's clock is advanced through /__proxy/clock; every
wait polls with a deadline and says what it waited for.
"""

from __future__ import annotations

import datetime
import time
import urllib.parse
import urllib.request
import xml.etree.ElementTree as ET

import botocore.exceptions
import pytest


def poll(what: str, fn, seconds: float = 15.0, every: float = 0.1):
    deadline = time.monotonic() + seconds
    last = None
    while time.monotonic() < deadline:
        last = fn()
        if last:
            return last
        time.sleep(every)
    pytest.fail(f"timed out after {seconds}s waiting for {what}; last: {last!r}")


def world(client, moto_url, unique, desired=0, target_group=None, td_family=None):
    """A cluster with service `api` created straight in moto (so the layer first sees it steady)."""
    ecs = client("ecs", moto_url)
    cluster = f"rl-{unique}"
    ecs.create_cluster(clusterName=cluster)
    td = ecs.register_task_definition(
        family=td_family or cluster, containerDefinitions=[{"name": "app", "image": "x", "memory": 128}]
    )["taskDefinition"]["taskDefinitionArn"]
    lbs, tg_arn = [], None
    if target_group is not None:
        vpc = client("ec2", moto_url).create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
        elb = client("elbv2", moto_url)
        tg_arn = elb.create_target_group(
            Name=f"tg-{unique}", Protocol="HTTP", Port=80, VpcId=vpc, TargetType="ip", **target_group.get("tg", {})
        )["TargetGroups"][0]["TargetGroupArn"]
        if "delay" in target_group:
            elb.modify_target_group_attributes(
                TargetGroupArn=tg_arn,
                Attributes=[{"Key": "deregistration_delay.timeout_seconds", "Value": str(target_group["delay"])}],
            )
        lbs = [{"targetGroupArn": tg_arn, "containerName": "app", "containerPort": 8080}]
    ecs.create_service(cluster=cluster, serviceName="api", taskDefinition=td, desiredCount=desired, loadBalancers=lbs)
    return cluster, td, tg_arn


def service(client, url, cluster) -> dict:
    return client("ecs", url).describe_services(cluster=cluster, services=["api"])["services"][0]


def targets(client, url, tg_arn) -> list[tuple[str, str]]:
    out = client("elbv2", url).describe_target_health(TargetGroupArn=tg_arn)["TargetHealthDescriptions"]
    return sorted((d["Target"]["Id"], d["TargetHealth"]["State"]) for d in out)


def states(client, url, tg_arn) -> list[str]:
    return sorted(s for _, s in targets(client, url, tg_arn))


# --- defaults -------------------------------------------------------------------------------------


def test_everything_is_off_by_default(start_proxy, client, moto_url, unique):
    cluster, _, tg = world(client, moto_url, unique, desired=0, target_group={})
    proxy = start_proxy("--fault-rate", "0")
    layer = proxy.control("layer")["settings"]
    assert layer["task_start"] is None and layer["change_pending"] is None and layer["route53_rps"] is None
    assert not layer["target_health"] and not layer["route53_validate"] and not layer["autoscaling"]
    client("ecs", proxy.url).update_service(cluster=cluster, service="api", desiredCount=3)
    assert service(client, proxy.url, cluster)["runningCount"] == 3  # moto's answer, untouched
    assert targets(client, proxy.url, tg) == []
    assert all(e["service"] != "layer" for e in proxy.entries())
    assert proxy.stats()["refusals"] == []


def test_realistic_turns_everything_on_and_flags_and_env_override(start_proxy, monkeypatch):
    proxy = start_proxy("--fault-rate", "0", "--realistic", "--task-start", "2")
    s = proxy.control("layer")["settings"]
    assert s["realistic"] is True
    assert s["task_start"] == 2.0  # the flag wins over the realistic default
    assert (s["change_pending"], s["route53_rps"], s["alarm_insufficient_data"], s["circuit_breaker"]) == (
        30.0,
        5.0,
        60.0,
        300.0,
    )
    assert s["target_health"] and s["route53_validate"] and s["autoscaling"] and s["alb_5xx_absent"]
    assert s["health_check_seconds"] is None and s["deregistration_delay"] is None  # from the target group
    monkeypatch.setenv("FAULTPROXY_CHANGE_PENDING", "4")
    monkeypatch.setenv("FAULTPROXY_FAILING_SERVICE", "c/s")
    s = start_proxy("--fault-rate", "0").control("layer")["settings"]
    assert s["change_pending"] == 4.0 and s["failing_services"] == ["c/s"] and s["task_start"] is None
    assert proxy.control("config", {"task_start": 5})["layer"]["task_start"] == 5.0
    off = start_proxy("--fault-rate", "0")
    on = off.control("config", {"realistic": True, "change_pending": 1})["layer"]
    assert (on["realistic"], on["task_start"], on["change_pending"], on["route53_rps"]) == (True, 30.0, 1.0, 5.0)
    assert off.control("config")["fault_rate"] == 0.0  # GET /__proxy/config keeps its old shape


# --- ECS ------------------------------------------------------------------------------------------


def test_running_count_follows_desired_one_task_per_task_start(start_proxy, client, moto_url, unique):
    cluster, _, _ = world(client, moto_url, unique, desired=0)
    proxy = start_proxy("--fault-rate", "0", "--task-start", "1")
    ecs = client("ecs", proxy.url)
    assert (service(client, proxy.url, cluster)["runningCount"], service(client, proxy.url, cluster)["pendingCount"]) == (0, 0)
    started = time.monotonic()
    answer = ecs.update_service(cluster=cluster, service="api", desiredCount=3)["service"]
    assert (answer["desiredCount"], answer["runningCount"], answer["pendingCount"]) == (3, 0, 3)
    assert service(client, moto_url, cluster)["runningCount"] == 3  # moto alone would say so at once

    seen = []

    def step():
        s = service(client, proxy.url, cluster)
        seen.append((s["runningCount"], s["pendingCount"]))
        return s["runningCount"] == 3

    poll("runningCount 3", step, seconds=10)
    elapsed = time.monotonic() - started
    assert elapsed >= 2.5, f"three tasks one second apart ran after {elapsed:.2f}s"
    assert all(r + p == 3 for r, p in seen), seen
    assert [r for r, _ in seen] == sorted(r for r, _ in seen)
    assert {(1, 2), (2, 1)} <= set(seen), seen
    snap = proxy.control("ecs")["services"][f"{cluster}/api"]
    assert (snap["desired"], snap["running"], snap["pending"], snap["deployments"]) == (3, 3, 0, 1)


def test_new_task_definition_is_a_second_deployment_that_drains(start_proxy, client, moto_url, unique):
    cluster, td1, _ = world(client, moto_url, unique, desired=2)
    proxy = start_proxy("--fault-rate", "0", "--task-start", "1", "--deregistration-delay", "1")
    assert [d["status"] for d in service(client, proxy.url, cluster)["deployments"]] == ["PRIMARY"]
    td2 = client("ecs", moto_url).register_task_definition(
        family=cluster, containerDefinitions=[{"name": "app", "image": "y", "memory": 128}]
    )["taskDefinition"]["taskDefinitionArn"]
    client("ecs", proxy.url).update_service(cluster=cluster, service="api", taskDefinition=td2)
    deps = service(client, proxy.url, cluster)["deployments"]
    assert [(d["status"], d["taskDefinition"]) for d in deps] == [("PRIMARY", td2), ("ACTIVE", td1)]
    assert deps[0]["rolloutState"] == "IN_PROGRESS" and deps[1]["runningCount"] == 2
    assert deps[0]["id"] != deps[1]["id"]

    def new_tasks_run():
        d = service(client, proxy.url, cluster)["deployments"]
        return d if d[0]["runningCount"] == 2 else None

    # The new tasks run while the old ones still drain: two deployments, still IN_PROGRESS.
    deps = poll("the new deployment's tasks to run", new_tasks_run, seconds=10, every=0.05)
    assert len(deps) == 2 and deps[0]["rolloutState"] == "IN_PROGRESS" and deps[1]["desiredCount"] == 0

    def one_deployment():
        s = service(client, proxy.url, cluster)
        return s if len(s["deployments"]) == 1 else None

    s = poll("the old deployment to drain away", one_deployment, seconds=15)
    (primary,) = s["deployments"]
    assert (primary["taskDefinition"], primary["rolloutState"], primary["runningCount"]) == (td2, "COMPLETED", 2)
    assert s["runningCount"] == 2
    # forceNewDeployment also starts a deployment, of the same task definition.
    client("ecs", proxy.url).update_service(cluster=cluster, service="api", forceNewDeployment=True)
    deps = service(client, proxy.url, cluster)["deployments"]
    assert [(d["status"], d["taskDefinition"]) for d in deps] == [("PRIMARY", td2), ("ACTIVE", td2)]
    assert deps[0]["id"] != primary["id"] and deps[1]["id"] == primary["id"]


def test_failing_service_never_runs_and_the_circuit_breaker_fails_the_deployment(
    start_proxy, client, moto_url, unique
):
    cluster, _, _ = world(client, moto_url, unique, desired=0)
    proxy = start_proxy(
        "--fault-rate", "0", "--task-start", "1", "--failing-service", f"{cluster}/api", "--circuit-breaker", "2"
    )
    client("ecs", proxy.url).update_service(cluster=cluster, service="api", desiredCount=2)
    first = service(client, proxy.url, cluster)
    assert first["deployments"][0]["rolloutState"] == "IN_PROGRESS"

    def failed():
        s = service(client, proxy.url, cluster)
        assert s["runningCount"] == 0 and s["pendingCount"] == 2, s
        return s if s["deployments"][0]["rolloutState"] == "FAILED" else None

    s = poll("rolloutState FAILED", failed, seconds=10)
    assert "circuit breaker" in s["deployments"][0]["rolloutStateReason"]
    # Healing the service lets tasks start again.
    proxy.control("ecs", {"cluster": cluster, "service": "api", "mode": "normal"})
    poll("tasks to run once healed", lambda: service(client, proxy.url, cluster)["runningCount"] == 2, seconds=10)


# --- ELBv2 ----------------------------------------------------------------------------------------


def test_targets_track_tasks_initial_then_healthy_then_draining(start_proxy, client, moto_url, unique):
    cluster, _, tg = world(client, moto_url, unique, desired=0, target_group={})
    proxy = start_proxy(
        "--fault-rate", "0", "--task-start", "1", "--health-check-seconds", "1", "--deregistration-delay", "2"
    )
    assert targets(client, proxy.url, tg) == []
    client("ecs", proxy.url).update_service(cluster=cluster, service="api", desiredCount=2)
    seen = set()

    def two_healthy():
        st = states(client, proxy.url, tg)
        seen.update(st)
        return st == ["healthy", "healthy"]

    poll("two healthy targets", two_healthy, seconds=10)
    assert "initial" in seen
    ports = {d["Target"]["Port"] for d in client("elbv2", proxy.url).describe_target_health(TargetGroupArn=tg)[
        "TargetHealthDescriptions"]}
    assert ports == {8080}
    client("ecs", proxy.url).update_service(cluster=cluster, service="api", desiredCount=1)
    assert states(client, proxy.url, tg) == ["draining", "healthy"]
    d = client("elbv2", proxy.url).describe_target_health(TargetGroupArn=tg)["TargetHealthDescriptions"]
    draining = [x for x in d if x["TargetHealth"]["State"] == "draining"][0]["TargetHealth"]
    assert draining["Reason"] == "Target.DeregistrationInProgress"
    poll("the drained target to go", lambda: states(client, proxy.url, tg) == ["healthy"], seconds=10)


def test_health_time_and_drain_come_from_the_target_group(start_proxy, client, moto_url, unique):
    cluster, _, tg = world(
        client, moto_url, unique, desired=0,
        target_group={"tg": {"HealthyThresholdCount": 3, "HealthCheckIntervalSeconds": 10}, "delay": 40},
    )
    proxy = start_proxy("--fault-rate", "0", "--task-start", "0", "--target-health")
    client("ecs", proxy.url).update_service(cluster=cluster, service="api", desiredCount=1)
    assert states(client, proxy.url, tg) == ["initial"]
    proxy.control("clock", {"advance": 29})
    assert states(client, proxy.url, tg) == ["initial"]  # 3 x 10 s not yet over
    proxy.control("clock", {"advance": 1.5})
    assert states(client, proxy.url, tg) == ["healthy"]
    client("ecs", proxy.url).update_service(cluster=cluster, service="api", desiredCount=0)
    assert states(client, proxy.url, tg) == ["draining"]
    assert service(client, proxy.url, cluster)["runningCount"] == 1  # still running while it drains
    proxy.control("clock", {"advance": 39})
    assert states(client, proxy.url, tg) == ["draining"]
    proxy.control("clock", {"advance": 1.5})
    assert states(client, proxy.url, tg) == []
    assert service(client, proxy.url, cluster)["runningCount"] == 0


def test_unhealthy_mode(start_proxy, client, moto_url, unique):
    cluster, _, tg = world(client, moto_url, unique, desired=2, target_group={})
    proxy = start_proxy("--fault-rate", "0", "--task-start", "0", "--health-check-seconds", "0")
    assert states(client, proxy.url, tg) == ["healthy", "healthy"]  # already there: serving
    xml = query(proxy, "elasticloadbalancing", {"Action": "DescribeTargetHealth", "Version": "2015-12-01",
                                                 "TargetGroupArn": tg})
    assert xml.count("<State>healthy</State>") == 2 and "ns0:" not in xml
    assert '<DescribeTargetHealthResponse xmlns="http://elasticloadbalancing.amazonaws.com/doc/2015-12-01/">' in xml
    proxy.control("ecs", {"cluster": cluster, "service": "api", "mode": "unhealthy"})
    d = client("elbv2", proxy.url).describe_target_health(TargetGroupArn=tg)["TargetHealthDescriptions"]
    assert [x["TargetHealth"]["State"] for x in d] == ["unhealthy", "unhealthy"]
    assert d[0]["TargetHealth"]["Reason"] == "Target.ResponseCodeMismatch"
    assert proxy.control("ecs")["services"][f"{cluster}/api"]["target_groups"][tg]["unhealthy"] == 2


# --- Route53 --------------------------------------------------------------------------------------


def zone(client, moto_url, unique) -> tuple[str, str]:
    name = f"rl-{unique}.example."
    zid = client("route53", moto_url).create_hosted_zone(Name=name, CallerReference=unique)["HostedZone"]["Id"]
    return zid.split("/")[-1], name


def rr(name, typ="A", values=("192.0.2.1",), ttl=60, **extra):
    r = {"Name": name, "Type": typ, "TTL": ttl, "ResourceRecords": [{"Value": v} for v in values]}
    r.update(extra)
    return r


def batch(*changes):
    return {"Changes": [{"Action": a, "ResourceRecordSet": r} for a, r in changes]}


def records(client, moto_url, zid):
    out = client("route53", moto_url).list_resource_record_sets(HostedZoneId=zid)["ResourceRecordSets"]
    return sorted((r["Name"], r["Type"], r.get("SetIdentifier"), r.get("Weight"), r.get("TTL")) for r in out)


def test_get_change_stays_pending(start_proxy, client, moto_url, unique):
    zid, name = zone(client, moto_url, unique)
    proxy = start_proxy("--fault-rate", "0", "--change-pending", "1", "--seed", "3")
    r53 = client("route53", proxy.url)
    started = time.monotonic()
    a = r53.change_resource_record_sets(HostedZoneId=zid, ChangeBatch=batch(("UPSERT", rr(f"a.{name}"))))["ChangeInfo"]
    b = r53.change_resource_record_sets(HostedZoneId=zid, ChangeBatch=batch(("UPSERT", rr(f"b.{name}"))))["ChangeInfo"]
    assert a["Status"] == "PENDING" and a["Id"] != b["Id"]
    assert r53.get_change(Id=a["Id"])["ChangeInfo"]["Status"] == "PENDING"
    poll("INSYNC", lambda: r53.get_change(Id=a["Id"])["ChangeInfo"]["Status"] == "INSYNC", seconds=10)
    assert time.monotonic() - started >= 0.9
    assert client("route53", moto_url).get_change(Id=a["Id"])["ChangeInfo"]["Status"] == "INSYNC"


def refused(proxy) -> list[str]:
    return [r["reason"] for r in proxy.control("refusals")["refusals"]]


def expect_refusal(client, proxy, moto_url, zid, change_batch, code, message):
    before = records(client, moto_url, zid)
    with pytest.raises(botocore.exceptions.ClientError) as err:
        client("route53", proxy.url).change_resource_record_sets(HostedZoneId=zid, ChangeBatch=change_batch)
    assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert err.value.response["Error"]["Code"] == code
    assert err.value.response["Error"]["Message"] == message
    assert records(client, moto_url, zid) == before, "a refused batch reached moto"
    entry = [e for e in proxy.entries() if e["operation"] == "ChangeResourceRecordSets"][-1]
    assert entry["refused"] == f"{code}: {message}" and entry["upstream_status"] is None
    assert refused(proxy)[-1] == f"{code}: {message}"


def test_route53_refuses_what_real_route53_refuses(start_proxy, client, moto_url, unique):
    zid, name = zone(client, moto_url, unique)
    moto = client("route53", moto_url)
    moto.change_resource_record_sets(
        HostedZoneId=zid,
        ChangeBatch=batch(
            ("CREATE", rr(f"w.{name}", SetIdentifier="blue", Weight=10)),
            ("CREATE", rr(f"plain.{name}", values=("192.0.2.7",), ttl=300)),
            ("CREATE", rr(f"c.{name}", typ="CNAME", values=("target.example.com",))),
            ("CREATE", rr(f"t.{name}", typ="TXT", values=('"owner=a"', '"v=1"'))),
            ("CREATE", {"Name": f"al.{name}", "Type": "A", "SetIdentifier": "x", "Weight": 0, "AliasTarget": {
                "HostedZoneId": "Z35SXDOTRQ7X7K", "DNSName": "dualstack.lb-1.us-east-1.elb.amazonaws.com.",
                "EvaluateTargetHealth": True}}),
        ),
    )
    proxy = start_proxy("--fault-rate", "0", "--route53-validate")
    expect_refusal(
        client, proxy, moto_url, zid, batch(("UPSERT", rr(f"w.{name}", SetIdentifier="blue", Weight=256))),
        "InvalidInput",
        "1 validation error detected: Value '256' at 'changeBatch.changes.1.member.resourceRecordSet.weight' "
        "failed to satisfy constraint: Member must have value less than or equal to 255",
    )
    cf = {"HostedZoneId": "Z2FDTNDATAQYW2", "DNSName": "d111111abcdef8.cloudfront.net", "EvaluateTargetHealth": True}
    expect_refusal(
        client, proxy, moto_url, zid,
        batch(("UPSERT", {"Name": f"cf.{name}", "Type": "A", "AliasTarget": cf})),
        "InvalidChangeBatch",
        "[Tried to create an alias that targets d111111abcdef8.cloudfront.net., type A in zone Z2FDTNDATAQYW2, "
        "but EvaluateTargetHealth is not supported for CloudFront distributions]",
    )
    expect_refusal(
        client, proxy, moto_url, zid, batch(("DELETE", rr(f"plain.{name}", values=("192.0.2.7",), ttl=60))),
        "InvalidChangeBatch",
        f"[Tried to delete resource record set [name='plain.{name}', type='A'] but the values provided do not "
        "match the current values]",
    )
    expect_refusal(
        client, proxy, moto_url, zid, batch(("DELETE", rr(f"w.{name}", SetIdentifier="blue", Weight=11))),
        "InvalidChangeBatch",
        f"[Tried to delete resource record set [name='w.{name}', type='A', set-identifier='blue'] but the values "
        "provided do not match the current values]",
    )
    expect_refusal(
        client, proxy, moto_url, zid, batch(("DELETE", rr(f"nothing.{name}"))),
        "InvalidChangeBatch",
        f"[Tried to delete resource record set [name='nothing.{name}', type='A'] but it was not found]",
    )
    expect_refusal(
        client, proxy, moto_url, zid, batch(("CREATE", rr(f"w.{name}", SetIdentifier="blue", Weight=10))),
        "InvalidChangeBatch",
        f"[Tried to create resource record set [name='w.{name}', type='A', set-identifier='blue'] but it already "
        "exists]",
    )
    expect_refusal(
        client, proxy, moto_url, zid, batch(("UPSERT", rr(f"plain.{name}", typ="CNAME", values=("x.example.com",)))),
        "InvalidChangeBatch",
        f"[RRSet of type CNAME with DNS name plain.{name} is not permitted as it conflicts with other records with "
        f"the same DNS name in zone {name}]",
    )
    expect_refusal(
        client, proxy, moto_url, zid, batch(("UPSERT", rr(f"c.{name}", typ="TXT", values=('"v"',)))),
        "InvalidChangeBatch",
        f"[RRSet of type TXT with DNS name c.{name} is not permitted because a conflicting RRSet of type CNAME with "
        f"the same DNS name already exists in zone {name}]",
    )
    assert len(proxy.stats()["refusals"]) == 8

    # What Route53 accepts passes: an exact DELETE, a DELETE then CREATE of the same record, a weight of 255.
    proxy.control("reset", {})
    client("route53", proxy.url).change_resource_record_sets(
        HostedZoneId=zid,
        ChangeBatch=batch(
            ("DELETE", rr(f"plain.{name}", values=("192.0.2.7",), ttl=300)),
            ("DELETE", rr(f"w.{name}", SetIdentifier="blue", Weight=10)),
            ("CREATE", rr(f"w.{name}", SetIdentifier="blue", Weight=255)),
            ("UPSERT", {"Name": f"cf.{name}", "Type": "A", "AliasTarget": dict(cf, EvaluateTargetHealth=False)}),
            # (moto itself wants a DELETE to repeat the CREATE byte for byte, value order included)
            ("DELETE", rr(f"t.{name}", typ="TXT", values=('"owner=a"', '"v=1"'))),
            ("DELETE", {"Name": f"al.{name}", "Type": "A", "SetIdentifier": "x", "Weight": 0, "AliasTarget": {
                "HostedZoneId": "Z35SXDOTRQ7X7K", "DNSName": "dualstack.lb-1.us-east-1.elb.amazonaws.com.",
                "EvaluateTargetHealth": True}}),
        ),
    )
    assert refused(proxy) == []
    assert (f"w.{name}", "A", "blue", 255, 60) in records(client, moto_url, zid)


def test_route53_account_rate_throttles(start_proxy, client):
    proxy = start_proxy("--fault-rate", "0", "--route53-rps", "5")
    r53 = client("route53", proxy.url)
    outcomes = []
    started = time.monotonic()
    for _ in range(15):
        try:
            r53.list_hosted_zones()
            outcomes.append("ok")
        except botocore.exceptions.ClientError as exc:
            outcomes.append((exc.response["ResponseMetadata"]["HTTPStatusCode"], exc.response["Error"]["Code"]))
    elapsed = time.monotonic() - started
    ok = outcomes.count("ok")
    assert (400, "Throttling") in outcomes, outcomes
    assert ok <= 5 + 5 * elapsed + 1, (ok, elapsed)
    assert {o for o in outcomes if o != "ok"} == {(400, "Throttling")}
    assert proxy.stats()["by_fault"]["rate-limit"] == 15 - ok
    # The bucket refills: a request passes again within a second or so.

    def passes():
        try:
            r53.list_hosted_zones()
            return True
        except botocore.exceptions.ClientError:
            return False

    poll("a request under the rate", passes, seconds=3, every=0.25)


def test_prior_request_not_complete_is_injectable(start_proxy, client, moto_url, unique):
    zid, name = zone(client, moto_url, unique)
    proxy = start_proxy("--fault-rate", "0")
    assert proxy.control("route53", {"prior_request_not_complete": 1}) == {"prior_request_not_complete": 1}
    r53 = client("route53", proxy.url)
    with pytest.raises(botocore.exceptions.ClientError) as err:
        r53.change_resource_record_sets(HostedZoneId=zid, ChangeBatch=batch(("UPSERT", rr(f"p.{name}"))))
    assert err.value.response["Error"]["Code"] == "PriorRequestNotComplete"
    assert f"p.{name}" not in {r[0] for r in records(client, moto_url, zid)}
    r53.change_resource_record_sets(HostedZoneId=zid, ChangeBatch=batch(("UPSERT", rr(f"p.{name}"))))
    assert f"p.{name}" in {r[0] for r in records(client, moto_url, zid)}


# --- CloudWatch -----------------------------------------------------------------------------------


def alarm(cw, name):
    cw.put_metric_alarm(
        AlarmName=name, Namespace="AWS/ApplicationELB", MetricName="HTTPCode_Target_5XX_Count", Statistic="Sum",
        Period=60, EvaluationPeriods=1, Threshold=1, ComparisonOperator="GreaterThanOrEqualToThreshold",
    )


def alarm_state(cw, name):
    return cw.describe_alarms(AlarmNames=[name])["MetricAlarms"][0]["StateValue"]


def test_new_alarm_starts_insufficient_data(start_proxy, client, moto_url, unique):
    proxy = start_proxy("--fault-rate", "0", "--alarm-insufficient-data", "1")
    cw = client("cloudwatch", proxy.url)
    name = f"rl-{unique}"
    started = time.monotonic()
    alarm(cw, name)
    first = cw.describe_alarms(AlarmNames=[name])["MetricAlarms"][0]
    assert first["StateValue"] == "INSUFFICIENT_DATA"
    assert first["StateReason"] == "Unchecked: Initial alarm creation"
    assert alarm_state(client("cloudwatch", moto_url), name) == "OK"  # moto's own idea
    poll("the alarm to leave INSUFFICIENT_DATA", lambda: alarm_state(cw, name) == "OK", seconds=10)
    assert time.monotonic() - started >= 0.9


def test_alarm_held_until_released_also_over_awsquery(start_proxy, client, unique):
    proxy = start_proxy("--fault-rate", "0", "--alarm-insufficient-data", "-1")
    cw = client("cloudwatch", proxy.url)
    name = f"rl-{unique}"
    alarm(cw, name)

    def query_state():  # as aws-sdk-cloudwatch (awsQuery) asks
        body = urllib.parse.urlencode(
            {"Action": "DescribeAlarms", "Version": "2010-08-01", "AlarmNames.member.1": name}
        ).encode()
        req = urllib.request.Request(
            proxy.url + "/", data=body, method="POST",
            headers={
                "Content-Type": "application/x-www-form-urlencoded",
                "Authorization": "AWS4-HMAC-SHA256 Credential=testing/20260101/us-east-1/monitoring/aws4_request, "
                "SignedHeaders=host, Signature=0",
            },
        )
        with urllib.request.urlopen(req, timeout=5) as resp:
            text = resp.read().decode()
        return text.split("<StateValue>")[1].split("<")[0]

    assert query_state() == "INSUFFICIENT_DATA" and alarm_state(cw, name) == "INSUFFICIENT_DATA"
    proxy.control("clock", {"advance": 3600})
    assert alarm_state(cw, name) == "INSUFFICIENT_DATA"
    proxy.control("alarms", {"name": name, "release": True})
    assert alarm_state(cw, name) == "OK" and query_state() == "OK"


def query(proxy, signing: str, params: dict) -> str:
    """An awsQuery request as the Rust SDK sends it (CloudWatch 1.99, ELBv2)."""
    req = urllib.request.Request(
        proxy.url + "/", data=urllib.parse.urlencode(params).encode(), method="POST",
        headers={
            "Content-Type": "application/x-www-form-urlencoded",
            "Authorization": f"AWS4-HMAC-SHA256 Credential=testing/20260101/us-east-1/{signing}/aws4_request, "
            "SignedHeaders=host, Signature=0",
        },
    )
    with urllib.request.urlopen(req, timeout=5) as resp:
        return resp.read().decode()


def test_alb_5xx_metrics_are_absent_without_errors(start_proxy, client, moto_url, unique):
    lb = f"app/rl-{unique}/0123456789abcdef"
    now = datetime.datetime.now(datetime.timezone.utc)
    dims = [{"Name": "LoadBalancer", "Value": lb}]
    client("cloudwatch", moto_url).put_metric_data(
        Namespace="AWS/ApplicationELB",
        MetricData=[
            {"MetricName": "HTTPCode_Target_5XX_Count", "Dimensions": dims, "Value": 0.0, "Timestamp": now},
            {"MetricName": "RequestCount", "Dimensions": dims, "Value": 0.0, "Timestamp": now},
        ],
    )
    queries = [
        {"Id": m, "MetricStat": {"Metric": {"Namespace": "AWS/ApplicationELB", "MetricName": n, "Dimensions": dims},
                                 "Period": 60, "Stat": "Sum"}}
        for m, n in (("errors", "HTTPCode_Target_5XX_Count"), ("requests", "RequestCount"))
    ]
    window = {"StartTime": now - datetime.timedelta(minutes=5), "EndTime": now + datetime.timedelta(minutes=5)}

    def values(url):
        out = client("cloudwatch", url).get_metric_data(MetricDataQueries=queries, **window)["MetricDataResults"]
        return {r["Id"]: r["Values"] for r in out}

    assert values(moto_url) == {"errors": [0.0], "requests": [0.0]}  # moto reports the zero
    proxy = start_proxy("--fault-rate", "0", "--alb-5xx-absent")
    assert values(proxy.url) == {"errors": [], "requests": [0.0]}
    params = {"Action": "GetMetricData", "Version": "2010-08-01",
              "StartTime": window["StartTime"].isoformat(), "EndTime": window["EndTime"].isoformat()}
    for i, q in enumerate(queries, start=1):
        p = f"MetricDataQueries.member.{i}."
        m = q["MetricStat"]["Metric"]
        params.update({p + "Id": q["Id"], p + "MetricStat.Period": "60", p + "MetricStat.Stat": "Sum",
                       p + "MetricStat.Metric.Namespace": m["Namespace"], p + "MetricStat.Metric.MetricName": m["MetricName"],
                       p + "MetricStat.Metric.Dimensions.member.1.Name": "LoadBalancer",
                       p + "MetricStat.Metric.Dimensions.member.1.Value": lb})
    root = ET.fromstring(query(proxy, "monitoring", params))
    ns = root.tag[: root.tag.index("}") + 1]
    by_id = {
        r.find(f"{ns}Id").text: [float(v.text) for v in r.findall(f"{ns}Values/{ns}member")]
        for r in root.iter(f"{ns}member")
        if r.find(f"{ns}Id") is not None
    }
    assert by_id == {"errors": [], "requests": [0.0]}, by_id


def test_get_metric_data_refuses_what_cloudwatch_refuses(start_proxy, client, moto_url, unique):
    now = datetime.datetime.now(datetime.timezone.utc)
    window = {"StartTime": now - datetime.timedelta(minutes=5), "EndTime": now}

    def queries(n, period=60):
        return [
            {"Id": f"q{i}", "MetricStat": {"Metric": {"Namespace": "AWS/ApiGateway", "MetricName": "Count",
                                                       "Dimensions": [{"Name": "ApiName", "Value": f"{unique}-{i}"}]},
                                            "Period": period, "Stat": "Sum"}}
            for i in range(n)
        ]

    # Any active layer checks these (the Rust tests' layer always validates).
    proxy = start_proxy("--fault-rate", "0", "--route53-validate", "true")
    cw = client("cloudwatch", proxy.url)
    assert len(cw.get_metric_data(MetricDataQueries=queries(500), **window)["MetricDataResults"]) == 500
    for bad, code in ((queries(501), "ValidationError"), (queries(1, period=90), "InvalidParameterValue")):
        with pytest.raises(botocore.exceptions.ClientError) as e:
            cw.get_metric_data(MetricDataQueries=bad, **window)
        assert e.value.response["Error"]["Code"] == code, e.value.response
    # moto itself takes both.
    client("cloudwatch", moto_url).get_metric_data(MetricDataQueries=queries(501), **window)


# --- Application Auto Scaling ---------------------------------------------------------------------


def test_autoscaling_follows_load_within_min_and_max(start_proxy, client, moto_url, unique):
    cluster, _, _ = world(client, moto_url, unique, desired=1)
    proxy = start_proxy("--fault-rate", "0", "--autoscaling", "--autoscaling-interval", "0.2")
    aas = client("application-autoscaling", proxy.url)
    rid = f"service/{cluster}/api"
    aas.register_scalable_target(
        ServiceNamespace="ecs", ResourceId=rid, ScalableDimension="ecs:service:DesiredCount", MinCapacity=1,
        MaxCapacity=8,
    )
    aas.put_scaling_policy(
        PolicyName=f"cpu-{unique}", ServiceNamespace="ecs", ResourceId=rid,
        ScalableDimension="ecs:service:DesiredCount", PolicyType="TargetTrackingScaling",
        TargetTrackingScalingPolicyConfiguration={
            "TargetValue": 10.0,
            "PredefinedMetricSpecification": {"PredefinedMetricType": "ECSServiceAverageCPUUtilization"},
        },
    )

    def desired():
        return service(client, moto_url, cluster)["desiredCount"]

    proxy.control("load", {"cluster": cluster, "service": "api", "load": 45})
    poll("desiredCount 5 (ceil(45 / 10))", lambda: desired() == 5)
    proxy.control("load", {"cluster": cluster, "service": "api", "load": 1000})
    poll("desiredCount capped at MaxCapacity 8", lambda: desired() == 8)
    proxy.control("load", {"cluster": cluster, "service": "api", "load": 0})
    poll("desiredCount down to MinCapacity 1", lambda: desired() == 1)
    # A controller raising MinCapacity sees desiredCount follow.
    aas.register_scalable_target(
        ServiceNamespace="ecs", ResourceId=rid, ScalableDimension="ecs:service:DesiredCount", MinCapacity=4,
        MaxCapacity=8,
    )
    poll("desiredCount raised to the new MinCapacity 4", lambda: desired() == 4)
    writes = [e for e in proxy.entries() if e["operation"] == "autoscaling.SetDesiredCount"]
    assert [(w["from"], w["to"]) for w in writes] == [(1, 5), (5, 8), (8, 1), (1, 4)]
    assert not [e for e in proxy.entries() if e["operation"] == "UpdateService"]
    assert proxy.control("ecs")["autoscaling"][f"{cluster}/api"]["min"] == 4


# --- the capacity oracle --------------------------------------------------------------------------


def test_every_route53_write_records_the_capacity_served(start_proxy, client, moto_url, unique):
    cluster, _, tg = world(client, moto_url, unique, desired=0, target_group={})
    zid, name = zone(client, moto_url, unique)
    proxy = start_proxy("--fault-rate", "0", "--task-start", "1", "--health-check-seconds", "1")
    client("ecs", proxy.url).update_service(cluster=cluster, service="api", desiredCount=2)
    r53 = client("route53", proxy.url)
    r53.change_resource_record_sets(HostedZoneId=zid, ChangeBatch=batch(("UPSERT", rr(f"early.{name}"))))
    poll("two healthy targets", lambda: states(client, proxy.url, tg) == ["healthy", "healthy"], seconds=10)
    r53.change_resource_record_sets(HostedZoneId=zid, ChangeBatch=batch(("UPSERT", rr(f"late.{name}"))))
    early, late = [e for e in proxy.entries() if e["operation"] == "ChangeResourceRecordSets"]
    key = f"{cluster}/api"
    assert early["capacity"][key]["desired"] == 2 and early["capacity"][key]["running"] == 0
    assert early["capacity"][key]["pending"] == 2
    assert early["capacity"][key]["target_groups"][tg] == {"healthy": 0, "initial": 0, "draining": 0, "unhealthy": 0}
    assert late["capacity"][key]["running"] == 2 and late["capacity"][key]["deployments"] == 1
    assert late["capacity"][key]["target_groups"][tg]["healthy"] == 2
    assert late["layer_time"] > early["layer_time"] >= 0


def test_the_seed_fixes_ids_and_addresses(start_proxy, client, moto_url, unique):
    cluster, _, tg = world(client, moto_url, unique, desired=2, target_group={})

    def view(seed):
        proxy = start_proxy("--fault-rate", "0", "--seed", str(seed), "--task-start", "0", "--target-health")
        dep = service(client, proxy.url, cluster)["deployments"][0]["id"]
        return dep, [ip for ip, _ in targets(client, proxy.url, tg)]

    assert view(11) == view(11)
    assert view(11) != view(12)
