#!/usr/bin/env python3
"""Provision the trafficshift test scenario in moto (or any AWS endpoint) with boto3.

Subcommands:
  scenario  hosted zone, API Gateway custom domain, VPC + ALB + target group + listener, ECS
            cluster + Fargate service, a plain alias record at --record and an unrelated record;
            prints one JSON object with every id, ARN and DNS name.
  records   print a zone's records as a table (or --json).
  alarm     create a CloudWatch alarm if needed and set its state.
  ecs       print a service's desired/running/pending counts as JSON.

Everything is idempotent where a lookup is cheap, so running `scenario` twice yields the same ids.
Names derive from --zone/--cluster/--service; pick unique ones to let tests run in parallel.
"""

from __future__ import annotations

import argparse
import json
import re
import sys

import boto3
from botocore.config import Config

REGION = "us-east-1"
CERT_ARN = "arn:aws:acm:us-east-1:123456789012:certificate/00000000-0000-0000-0000-000000000000"


class ProvisionError(Exception):
    pass


def clients(endpoint: str):
    kw = dict(
        endpoint_url=endpoint,
        region_name=REGION,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        config=Config(retries={"total_max_attempts": 3, "mode": "standard"}),
    )
    return lambda service: boto3.client(service, **kw)


def fqdn(name: str) -> str:
    return name if name.endswith(".") else name + "."


def short_id(zone_id: str) -> str:
    return zone_id.rsplit("/", 1)[-1]


def elb_name(*parts: str, suffix: str) -> str:
    """ALB / target group names: 1-32 of [A-Za-z0-9-], no leading/trailing hyphen."""
    base = re.sub(r"[^A-Za-z0-9-]", "-", "-".join(parts))
    base = base[: 32 - len(suffix) - 1].strip("-")
    return f"{base}-{suffix}"


# ---------------------------------------------------------------------------------------------
# scenario


def ensure_zone(r53, zone: str) -> str:
    name = fqdn(zone)
    found = r53.list_hosted_zones_by_name(DNSName=name, MaxItems="1")["HostedZones"]
    if found and found[0]["Name"] == name:
        return short_id(found[0]["Id"])
    created = r53.create_hosted_zone(Name=name, CallerReference=f"trafficshift-{name}")
    return short_id(created["HostedZone"]["Id"])


def ensure_apigw_domain(apigw, domain: str) -> dict:
    try:
        d = apigw.get_domain_name(domainName=domain)
    except apigw.exceptions.NotFoundException:
        # moto re-creates (with a new regionalDomainName) on a second create: look up first.
        d = apigw.create_domain_name(
            domainName=domain,
            regionalCertificateArn=CERT_ARN,
            endpointConfiguration={"types": ["REGIONAL"]},
            securityPolicy="TLS_1_2",
        )
    regional = d.get("regionalDomainName")
    zone_id = d.get("regionalHostedZoneId")
    if not regional or not zone_id:
        raise ProvisionError(
            f"API Gateway returned no regionalDomainName/regionalHostedZoneId for {domain}: {d!r}"
        )
    return {"apigw_regional_domain": regional, "apigw_zone_id": zone_id}


def ensure_network(ec2, tag: str) -> dict:
    vpcs = ec2.describe_vpcs(Filters=[{"Name": "tag:Name", "Values": [tag]}])["Vpcs"]
    if vpcs:
        vpc_id = vpcs[0]["VpcId"]
    else:
        vpc_id = ec2.create_vpc(
            CidrBlock="10.0.0.0/16",
            TagSpecifications=[{"ResourceType": "vpc", "Tags": [{"Key": "Name", "Value": tag}]}],
        )["Vpc"]["VpcId"]
    subnets = ec2.describe_subnets(Filters=[{"Name": "vpc-id", "Values": [vpc_id]}])["Subnets"]
    by_az = {s["AvailabilityZone"]: s["SubnetId"] for s in subnets}
    for i, az in enumerate(("us-east-1a", "us-east-1b"), start=1):
        if az not in by_az:
            by_az[az] = ec2.create_subnet(VpcId=vpc_id, CidrBlock=f"10.0.{i}.0/24", AvailabilityZone=az)[
                "Subnet"
            ]["SubnetId"]
    groups = ec2.describe_security_groups(
        Filters=[{"Name": "vpc-id", "Values": [vpc_id]}, {"Name": "group-name", "Values": [tag]}]
    )["SecurityGroups"]
    if groups:
        sg = groups[0]["GroupId"]
    else:
        sg = ec2.create_security_group(GroupName=tag, Description="trafficshift test", VpcId=vpc_id)["GroupId"]
    return {
        "vpc_id": vpc_id,
        "subnet_ids": [by_az["us-east-1a"], by_az["us-east-1b"]],
        "security_group_id": sg,
    }


def ensure_alb(elb, name: str, tg_name: str, net: dict) -> dict:
    try:
        lb = elb.describe_load_balancers(Names=[name])["LoadBalancers"][0]
    except elb.exceptions.LoadBalancerNotFoundException:
        # moto creates a second ALB of the same name (real AWS returns the first): look up first.
        lb = elb.create_load_balancer(
            Name=name,
            Subnets=net["subnet_ids"],
            SecurityGroups=[net["security_group_id"]],
            Scheme="internet-facing",
            Type="application",
        )["LoadBalancers"][0]
    try:
        tg = elb.describe_target_groups(Names=[tg_name])["TargetGroups"][0]
    except elb.exceptions.TargetGroupNotFoundException:
        tg = elb.create_target_group(
            Name=tg_name,
            Protocol="HTTP",
            Port=80,
            VpcId=net["vpc_id"],
            TargetType="ip",
            HealthCheckPath="/healthz",
        )["TargetGroups"][0]
    listeners = elb.describe_listeners(LoadBalancerArn=lb["LoadBalancerArn"])["Listeners"]
    if listeners:
        listener_arn = listeners[0]["ListenerArn"]
    else:
        listener_arn = elb.create_listener(
            LoadBalancerArn=lb["LoadBalancerArn"],
            Protocol="HTTP",
            Port=80,
            DefaultActions=[{"Type": "forward", "TargetGroupArn": tg["TargetGroupArn"]}],
        )["Listeners"][0]["ListenerArn"]
    return {
        "alb_arn": lb["LoadBalancerArn"],
        "alb_name": name,
        "alb_dns": lb["DNSName"],
        "alb_zone_id": lb["CanonicalHostedZoneId"],
        "target_group_arn": tg["TargetGroupArn"],
        "target_group_name": tg_name,
        "listener_arn": listener_arn,
    }


def ensure_ecs(ecs, cluster: str, service: str, tasks: int, net: dict, tg_arn: str, settle: bool) -> dict:
    cluster_arn = ecs.create_cluster(clusterName=cluster)["cluster"]["clusterArn"]  # idempotent
    existing = ecs.describe_services(cluster=cluster, services=[service])["services"]
    live = [s for s in existing if s["status"] == "ACTIVE"]
    if live:
        svc = live[0]
        td_arn = svc["taskDefinition"]
    else:
        td_arn = ecs.register_task_definition(
            family=f"{cluster}-{service}",
            requiresCompatibilities=["FARGATE"],
            networkMode="awsvpc",
            cpu="256",
            memory="512",
            containerDefinitions=[
                {"name": service, "image": "public.ecr.aws/nginx/nginx:1.27", "portMappings": [{"containerPort": 80}]}
            ],
        )["taskDefinition"]["taskDefinitionArn"]
        svc = ecs.create_service(
            cluster=cluster,
            serviceName=service,
            taskDefinition=td_arn,
            desiredCount=tasks,
            launchType="FARGATE",
            loadBalancers=[{"targetGroupArn": tg_arn, "containerName": service, "containerPort": 80}],
            # moto answers 500 (KeyError) when securityGroups is missing here.
            networkConfiguration={
                "awsvpcConfiguration": {
                    "subnets": net["subnet_ids"],
                    "securityGroups": [net["security_group_id"]],
                    "assignPublicIp": "DISABLED",
                }
            },
        )["service"]
        if settle:
            # moto leaves runningCount at 0 after CreateService and sets it to desiredCount on
            # UpdateService; one update makes the service look steady (ServicesStable holds).
            svc = ecs.update_service(cluster=cluster, service=service, desiredCount=tasks)["service"]
    return {
        "cluster": cluster,
        "cluster_arn": cluster_arn,
        "service": service,
        "service_arn": svc["serviceArn"],
        "task_definition_arn": td_arn,
        "desired_count": svc["desiredCount"],
        "running_count": svc["runningCount"],
    }


def ensure_targets(elb, tg_arn: str, n: int):
    """Register n IP targets, which moto reports `healthy` at once.

    moto never registers ECS tasks in their target groups, and trafficshift raises an ECS weight
    only when enough targets are healthy. Without a realistic AWS layer in front of moto (which
    derives targets from running tasks), a fixed pool of healthy targets stands in for the
    service's tasks, as moto's instant scaling stands in for task starts.
    """
    have = len(elb.describe_target_health(TargetGroupArn=tg_arn)["TargetHealthDescriptions"])
    if have < n:
        targets = [{"Id": f"10.0.{200 + i // 250}.{1 + i % 250}", "Port": 80} for i in range(have, n)]
        elb.register_targets(TargetGroupArn=tg_arn, Targets=targets)


def upsert(r53, zone_id: str, rrset: dict):
    r53.change_resource_record_sets(
        HostedZoneId=zone_id,
        ChangeBatch={"Comment": "trafficshift test scenario", "Changes": [{"Action": "UPSERT", "ResourceRecordSet": rrset}]},
    )


def cmd_scenario(args) -> dict:
    client = clients(args.endpoint)
    r53, apigw, ec2, elb, ecs = (client(s) for s in ("route53", "apigateway", "ec2", "elbv2", "ecs"))
    out: dict = {"endpoint": args.endpoint, "region": REGION, "zone": fqdn(args.zone), "record": fqdn(args.record)}
    out["zone_id"] = ensure_zone(r53, args.zone)
    out["apigw_domain"] = args.apigw_domain
    out.update(ensure_apigw_domain(apigw, args.apigw_domain))
    tag = f"trafficshift-{args.cluster}-{args.service}"
    out.update(ensure_network(ec2, tag))
    alb = args.alb_name or elb_name(args.cluster, args.service, suffix="alb")
    tg = args.target_group_name or elb_name(args.cluster, args.service, suffix="tg")
    out.update(ensure_alb(elb, alb, tg, out))
    out.update(
        ensure_ecs(ecs, args.cluster, args.service, args.tasks, out, out["target_group_arn"], not args.leave_pending)
    )
    if args.healthy_targets:
        ensure_targets(elb, out["target_group_arn"], args.healthy_targets)

    record = fqdn(args.record)
    if args.record_target == "apigw":
        target = {"DNSName": out["apigw_regional_domain"], "HostedZoneId": out["apigw_zone_id"]}
    elif args.record_target == "alb":
        target = {"DNSName": out["alb_dns"], "HostedZoneId": out["alb_zone_id"]}
    else:
        target = None
    if target:
        existing = r53.list_resource_record_sets(
            HostedZoneId=out["zone_id"], StartRecordName=record, StartRecordType=args.record_type, MaxItems="1"
        )["ResourceRecordSets"]
        weighted = [
            r for r in existing if r["Name"] == record and r["Type"] == args.record_type and "SetIdentifier" in r
        ]
        # Once the controller has converted the record to a weighted set, leave it alone.
        if not weighted:
            upsert(
                r53,
                out["zone_id"],
                {
                    "Name": record,
                    "Type": args.record_type,
                    "AliasTarget": {**target, "EvaluateTargetHealth": args.evaluate_target_health},
                },
            )
        out["record_target"] = {"type": args.record_type, **target}

    if args.unrelated:
        unrelated = fqdn(args.unrelated)
        if args.unrelated_type == "CNAME":
            value = args.unrelated_value or f"static.{fqdn(args.zone)}"
        else:
            value = args.unrelated_value or "192.0.2.10"
        upsert(
            r53,
            out["zone_id"],
            {"Name": unrelated, "Type": args.unrelated_type, "TTL": 300, "ResourceRecords": [{"Value": value}]},
        )
        out["unrelated"] = {"name": unrelated, "type": args.unrelated_type, "value": value}
    return out


# ---------------------------------------------------------------------------------------------
# records


def list_records(r53, zone_id: str) -> list[dict]:
    rows = []
    for page in r53.get_paginator("list_resource_record_sets").paginate(HostedZoneId=zone_id):
        for r in page["ResourceRecordSets"]:
            if "AliasTarget" in r:
                target = "alias " + r["AliasTarget"]["DNSName"].rstrip(".")
            else:
                target = ",".join(_value(v["Value"]) for v in r.get("ResourceRecords", []))
            rows.append(
                {
                    "name": r["Name"],
                    "type": r["Type"],
                    "set_id": r.get("SetIdentifier"),
                    "weight": r.get("Weight"),
                    "target": target,
                }
            )
    return rows


def _value(value: str) -> str:
    # moto 5.2.5 serialises the SOA value as a Python dict repr: "{'Value': '...'}".
    m = re.fullmatch(r"\{'Value': '(.*)'\}", value)
    return m.group(1) if m else value


def format_table(rows: list[dict]) -> str:
    cols = ("name", "type", "set_id", "weight", "target")
    cells = [[("-" if row[c] is None else str(row[c])) for c in cols] for row in rows]
    widths = [max([len(c.upper())] + [len(r[i]) for r in cells]) for i, c in enumerate(cols)]
    lines = ["  ".join(c.upper().ljust(w) for c, w in zip(cols, widths)).rstrip()]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in cells]
    return "\n".join(lines)


def cmd_records(args):
    rows = list_records(clients(args.endpoint)("route53"), short_id(args.zone_id))
    if args.json:
        return rows
    print(format_table(rows))
    return None


# ---------------------------------------------------------------------------------------------
# alarm and ecs


def cmd_alarm(args) -> dict:
    cw = clients(args.endpoint)("cloudwatch")
    if not cw.describe_alarms(AlarmNames=[args.name])["MetricAlarms"]:
        cw.put_metric_alarm(
            AlarmName=args.name,
            Namespace="trafficshift/test",
            MetricName="Errors",
            Statistic="Sum",
            Period=60,
            EvaluationPeriods=1,
            Threshold=1.0,
            ComparisonOperator="GreaterThanOrEqualToThreshold",
        )
    cw.set_alarm_state(AlarmName=args.name, StateValue=args.state, StateReason=f"set by provision.py to {args.state}")
    alarm = cw.describe_alarms(AlarmNames=[args.name])["MetricAlarms"][0]
    return {"name": alarm["AlarmName"], "arn": alarm["AlarmArn"], "state": alarm["StateValue"]}


def cmd_ecs(args) -> dict:
    resp = clients(args.endpoint)("ecs").describe_services(cluster=args.cluster, services=[args.service])
    if not resp["services"]:
        raise ProvisionError(f"ECS service {args.service} not found in cluster {args.cluster}: {resp['failures']}")
    s = resp["services"][0]
    return {
        "desired_count": s["desiredCount"],
        "running_count": s["runningCount"],
        "pending_count": s["pendingCount"],
        "deployments": len(s.get("deployments", [])),
        "status": s["status"],
    }


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--endpoint", required=True, help="AWS endpoint URL, e.g. http://127.0.0.1:5000 (moto)")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("scenario", help="create the zone, backends and records")
    s.add_argument("--zone", default="abceed.example")
    s.add_argument("--record", default="api.abceed.example")
    s.add_argument("--record-type", default="A", choices=["A", "AAAA"])
    s.add_argument(
        "--record-target",
        default="apigw",
        choices=["apigw", "alb", "none"],
        help="what the plain (non-weighted) alias record at --record points at; none = no record",
    )
    s.add_argument(
        "--evaluate-target-health",
        action="store_true",
        help="set EvaluateTargetHealth on the plain alias record (default false)",
    )
    s.add_argument("--cluster", default="prod")
    s.add_argument("--service", default="api")
    s.add_argument("--apigw-domain", default="api.abceed.example")
    s.add_argument("--alb-name", default=None, help="default: <cluster>-<service>-alb")
    s.add_argument("--target-group-name", default=None, help="default: <cluster>-<service>-tg")
    s.add_argument("--unrelated", default="www.abceed.example", help="a record that must never change ('' = none)")
    s.add_argument("--unrelated-type", default="CNAME", choices=["CNAME", "A"])
    s.add_argument("--unrelated-value", default=None)
    s.add_argument("--tasks", type=int, default=2, help="initial desiredCount of the ECS service")
    s.add_argument(
        "--healthy-targets",
        type=int,
        default=40,
        help="healthy IP targets to register in the service's target group (moto registers none "
        "for ECS tasks; 0 = none). Default 40, the examples' maxTasks",
    )
    s.add_argument(
        "--leave-pending",
        action="store_true",
        help="skip the UpdateService that makes moto report runningCount == desiredCount",
    )

    r = sub.add_parser("records", help="print a zone's record sets")
    r.add_argument("--zone-id", required=True)
    r.add_argument("--json", action="store_true", help="print JSON instead of a table")

    a = sub.add_parser("alarm", help="create a CloudWatch alarm if needed and set its state")
    a.add_argument("--name", required=True)
    a.add_argument("--state", required=True, choices=["OK", "ALARM", "INSUFFICIENT_DATA"])

    e = sub.add_parser("ecs", help="print an ECS service's counts")
    e.add_argument("--cluster", required=True)
    e.add_argument("--service", required=True)
    args = p.parse_args(argv)
    if args.command == "scenario" and args.tasks < 0:
        p.error("--tasks must be >= 0")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    handler = {"scenario": cmd_scenario, "records": cmd_records, "alarm": cmd_alarm, "ecs": cmd_ecs}[args.command]
    try:
        out = handler(args)
    except ProvisionError as exc:
        print(f"provision.py {args.command}: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # boto errors, connection refused: one line, not a traceback
        print(f"provision.py {args.command} against {args.endpoint} failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    if out is not None:
        print(json.dumps(out, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
