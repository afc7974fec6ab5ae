"""scripts/faultproxy.py in front of a real moto server, exercised with boto3."""

from __future__ import annotations

import http.client
import importlib.util
import json

import botocore.exceptions
import pytest

from conftest import SCRIPTS

spec = importlib.util.spec_from_file_location("faultproxy", SCRIPTS / "faultproxy.py")
faultproxy = importlib.util.module_from_spec(spec)
spec.loader.exec_module(faultproxy)


def zone(client, moto_url, unique) -> str:
    r53 = client("route53", moto_url)
    return r53.create_hosted_zone(Name=f"fp-{unique}.example.", CallerReference=unique)["HostedZone"]["Id"]


def change(name: str, value: str = "192.0.2.1") -> dict:
    return {
        "Changes": [
            {
                "Action": "UPSERT",
                "ResourceRecordSet": {"Name": name, "Type": "A", "TTL": 60, "ResourceRecords": [{"Value": value}]},
            }
        ]
    }


def names_in(client, moto_url, zone_id) -> set[str]:
    rrsets = client("route53", moto_url).list_resource_record_sets(HostedZoneId=zone_id)["ResourceRecordSets"]
    return {r["Name"] for r in rrsets}


# One read per service and protocol family: (service, boto3 call, operation name the proxy reports).
READS = [
    ("route53", lambda c: c.list_hosted_zones(), "ListHostedZones"),
    ("ecs", lambda c: c.list_clusters(), "ListClusters"),
    ("elbv2", lambda c: c.describe_load_balancers(), "DescribeLoadBalancers"),
    ("cloudwatch", lambda c: c.describe_alarms(), "DescribeAlarms"),
    ("apigateway", lambda c: c.get_domain_names(), "GetDomainNames"),
]

THROTTLE = {
    "route53": (400, "Throttling"),
    "ecs": (400, "ThrottlingException"),
    "elbv2": (400, "Throttling"),
    "cloudwatch": (400, "Throttling"),
    "apigateway": (429, "TooManyRequestsException"),
}
SERVER_ERRORS = {
    "500": {
        "route53": "InternalFailure",
        "ecs": "ServerException",
        "elbv2": "InternalFailure",
        "cloudwatch": "InternalFailure",
        "apigateway": "InternalFailure",
    },
    "503": {
        "route53": "ServiceUnavailable",
        "ecs": "ServiceUnavailable",
        "elbv2": "ServiceUnavailable",
        "cloudwatch": "ServiceUnavailable",
        "apigateway": "ServiceUnavailableException",
    },
}


def test_no_faults_pass_through_and_are_counted(start_proxy, client, moto_url, unique):
    zone_id = zone(client, moto_url, unique)
    proxy = start_proxy("--fault-rate", "0", "--seed", "1")
    for service, call, _ in READS:
        call(client(service, proxy.url))
        call(client(service, proxy.url))
    name = f"a.fp-{unique}.example."
    client("route53", proxy.url).change_resource_record_sets(HostedZoneId=zone_id, ChangeBatch=change(name))
    assert name in names_in(client, moto_url, zone_id)

    stats = proxy.stats()
    assert stats["requests"] == 2 * len(READS) + 1
    assert stats["by_fault"] == {}
    for service, _, op in READS:
        assert stats["by_operation"][f"{service}.{op}"] == {"requests": 2, "faults": {}, "status": {"200": 2}}
    assert stats["by_operation"]["route53.ChangeResourceRecordSets"]["requests"] == 1

    entries = proxy.entries()
    assert len(entries) == stats["requests"]
    assert all(e["fault"] is None and e["upstream_status"] == 200 for e in entries)
    writes = [e for e in entries if e["operation"] == "ChangeResourceRecordSets"]
    assert len(writes) == 1 and name in writes[0]["body"]
    assert all("body" not in e for e in entries if e["operation"] != "ChangeResourceRecordSets")


@pytest.mark.parametrize("service,call,op", READS, ids=[r[0] for r in READS])
def test_throttle_in_each_wire_format(start_proxy, client, service, call, op):
    proxy = start_proxy("--fault-rate", "1", "--faults", "throttle")
    with pytest.raises(botocore.exceptions.ClientError) as err:
        call(client(service, proxy.url))
    status, code = THROTTLE[service]
    assert err.value.response["Error"]["Code"] == code
    assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == status
    assert proxy.stats()["by_fault"] == {"throttle": 1}
    (entry,) = proxy.entries()
    assert (entry["service"], entry["operation"], entry["fault"], entry["upstream_status"]) == (
        service,
        op,
        "throttle",
        None,
    )


def test_throttled_route53_write_is_prior_request_not_complete_and_never_applied(
    start_proxy, client, moto_url, unique
):
    zone_id = zone(client, moto_url, unique)
    proxy = start_proxy("--fault-rate", "1", "--faults", "throttle", "--only", "route53.ChangeResourceRecordSets")
    name = f"t.fp-{unique}.example."
    r53 = client("route53", proxy.url)
    r53.list_hosted_zones()  # not in --only: passes
    with pytest.raises(botocore.exceptions.ClientError) as err:
        r53.change_resource_record_sets(HostedZoneId=zone_id, ChangeBatch=change(name))
    assert err.value.response["Error"]["Code"] == "PriorRequestNotComplete"
    assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert name not in names_in(client, moto_url, zone_id)
    write = [e for e in proxy.entries() if e["operation"] == "ChangeResourceRecordSets"][0]
    assert write["fault"] == "throttle" and write["upstream_status"] is None and name in write["body"]


@pytest.mark.parametrize("fault", ["500", "503"])
@pytest.mark.parametrize("service,call,op", READS, ids=[r[0] for r in READS])
def test_server_errors(start_proxy, client, fault, service, call, op):
    proxy = start_proxy("--fault-rate", "1", "--faults", fault)
    with pytest.raises(botocore.exceptions.ClientError) as err:
        call(client(service, proxy.url))
    assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == int(fault)
    assert err.value.response["Error"]["Code"] == SERVER_ERRORS[fault][service]
    assert proxy.stats()["by_operation"][f"{service}.{op}"]["faults"] == {fault: 1}


def test_drop_closes_without_response(start_proxy, client):
    proxy = start_proxy("--fault-rate", "1", "--faults", "drop")
    with pytest.raises(botocore.exceptions.ConnectionClosedError):
        client("ecs", proxy.url).list_clusters()
    assert proxy.stats()["by_fault"] == {"drop": 1}
    assert proxy.entries()[0]["status"] is None


def test_delay_still_answers(start_proxy, client):
    proxy = start_proxy("--fault-rate", "1", "--faults", "delay", "--max-delay", "0.2")
    for _ in range(3):
        client("elbv2", proxy.url).describe_load_balancers()
    stats = proxy.stats()
    assert stats["by_fault"] == {"delay": 3}
    assert stats["by_operation"]["elbv2.DescribeLoadBalancers"]["status"] == {"200": 3}
    assert all(0 <= e["delay_seconds"] <= 0.2 for e in proxy.entries())


def test_post_write_drop_applies_the_write_but_loses_the_answer(start_proxy, client, moto_url, unique):
    zone_id = zone(client, moto_url, unique)
    proxy = start_proxy("--fault-rate", "0", "--post-write-faults", "1")
    name = f"p.fp-{unique}.example."
    r53 = client("route53", proxy.url)
    r53.list_hosted_zones()  # reads are never post-write faulted
    with pytest.raises(botocore.exceptions.ConnectionClosedError):
        r53.change_resource_record_sets(HostedZoneId=zone_id, ChangeBatch=change(name))
    assert name in names_in(client, moto_url, zone_id)
    write = [e for e in proxy.entries() if e["operation"] == "ChangeResourceRecordSets"][0]
    assert write["fault"] == "post-write-drop" and write["upstream_status"] == 200


def test_post_write_500_on_ecs_update_service(start_proxy, client, moto_url, unique):
    ecs = client("ecs", moto_url)
    cluster = f"fp-{unique}"
    ecs.create_cluster(clusterName=cluster)
    td = ecs.register_task_definition(family=cluster, containerDefinitions=[{"name": "a", "image": "x", "memory": 128}])
    ecs.create_service(cluster=cluster, serviceName="api", taskDefinition=td["taskDefinition"]["taskDefinitionArn"],
                       desiredCount=1)
    proxy = start_proxy("--post-write-faults", "1", "--post-write-kinds", "500", "--fault-rate", "0")
    with pytest.raises(botocore.exceptions.ClientError) as err:
        client("ecs", proxy.url).update_service(cluster=cluster, service="api", desiredCount=5)
    assert err.value.response["Error"]["Code"] == "ServerException"
    assert ecs.describe_services(cluster=cluster, services=["api"])["services"][0]["desiredCount"] == 5
    write = [e for e in proxy.entries() if e["operation"] == "UpdateService"][0]
    assert json.loads(write["body"])["desiredCount"] == 5
    assert write["fault"] == "post-write-500"


def test_post_write_next_loses_exactly_the_next_matching_write(start_proxy, client, moto_url, unique):
    zone_id = zone(client, moto_url, unique)
    proxy = start_proxy("--fault-rate", "0")
    proxy.control("config", {"only": ["route53.ChangeResourceRecordSets"], "post_write_kinds": ["500"],
                             "post_write_next": 1})
    r53 = client("route53", proxy.url)
    first, second = f"a.fp-{unique}.example.", f"b.fp-{unique}.example."
    with pytest.raises(botocore.exceptions.ClientError):
        r53.change_resource_record_sets(HostedZoneId=zone_id, ChangeBatch=change(first))
    r53.change_resource_record_sets(HostedZoneId=zone_id, ChangeBatch=change(second))
    assert {first, second} <= set(names_in(client, moto_url, zone_id))
    faults = [e["fault"] for e in proxy.entries() if e["operation"] == "ChangeResourceRecordSets"]
    assert faults == ["post-write-500", None]
    assert proxy.stats()["config"]["post_write_next"] == 0


def test_seed_makes_the_schedule_repeat(start_proxy, client):
    runs = []
    for _ in range(2):
        proxy = start_proxy("--seed", "42", "--fault-rate", "0.5", "--faults", "throttle,500")
        c = client("elbv2", proxy.url)
        outcomes = []
        for _ in range(16):
            try:
                c.describe_load_balancers()
                outcomes.append("ok")
            except botocore.exceptions.ClientError as exc:
                outcomes.append(exc.response["Error"]["Code"])
        runs.append(outcomes)
    assert runs[0] == runs[1]
    assert "ok" in runs[0] and len(set(runs[0])) > 1, runs[0]


def test_runtime_config_and_reset(start_proxy, client):
    proxy = start_proxy("--fault-rate", "0")
    c = client("cloudwatch", proxy.url)
    c.describe_alarms()
    assert proxy.control("config", {"fault_rate": 1.0, "faults": "throttle"})["fault_rate"] == 1.0
    with pytest.raises(botocore.exceptions.ClientError):
        c.describe_alarms()
    assert proxy.stats()["requests"] == 2
    assert proxy.control("reset", {}) == {"reset": True}
    assert proxy.stats()["requests"] == 0 and proxy.stats()["by_fault"] == {}
    conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=5)
    conn.request("POST", "/__proxy/config", body=b'{"fault_rate": 2}')
    resp = conn.getresponse()
    assert resp.status == 400 and b"fault_rate" in resp.read()


def test_awsquery_cloudwatch_as_the_rust_sdk_sends_it(start_proxy):
    """aws-sdk-cloudwatch 1.99 speaks awsQuery (Action= form body), unlike boto3's JSON."""
    proxy = start_proxy("--fault-rate", "1", "--faults", "throttle")
    conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=5)
    conn.request(
        "POST",
        "/",
        body=b"Action=DescribeAlarms&Version=2010-08-01",
        headers={
            "Content-Type": "application/x-www-form-urlencoded",
            "Authorization": "AWS4-HMAC-SHA256 Credential=AKID/20260101/us-east-1/monitoring/aws4_request, "
            "SignedHeaders=host, Signature=0",
        },
    )
    resp = conn.getresponse()
    body = resp.read().decode()
    assert resp.status == 400
    assert "<Code>Throttling</Code>" in body and "<Type>Sender</Type>" in body
    assert proxy.entries()[0]["operation"] == "DescribeAlarms"


class Headers(dict):
    def get(self, key, default=None):
        return super().get(key.lower(), default)


@pytest.mark.parametrize(
    "method,path,headers,body,expected",
    [
        ("POST", "/2013-04-01/hostedzone/Z1/rrset/", {}, b"", ("route53", "ChangeResourceRecordSets")),
        ("GET", "/2013-04-01/hostedzone/Z1/rrset?maxitems=300", {}, b"", ("route53", "ListResourceRecordSets")),
        ("GET", "/2013-04-01/change/C1", {}, b"", ("route53", "GetChange")),
        ("GET", "/2013-04-01/hostedzonesbyname?dnsname=a", {}, b"", ("route53", "ListHostedZonesByName")),
        ("GET", "/2013-04-01/hostedzone/Z1", {}, b"", ("route53", "GetHostedZone")),
        (
            "POST",
            "/",
            {"x-amz-target": "AmazonEC2ContainerServiceV20141113.UpdateService"},
            b"{}",
            ("ecs", "UpdateService"),
        ),
        (
            "POST",
            "/",
            {"authorization": "AWS4-HMAC-SHA256 Credential=A/20260101/us-east-1/elasticloadbalancing/aws4_request"},
            b"Action=DescribeTargetHealth&Version=2015-12-01",
            ("elbv2", "DescribeTargetHealth"),
        ),
        ("GET", "/domainnames/api.example.com", {}, b"", ("apigateway", "GetDomainName")),
        ("GET", "/v2/domainnames/api.example.com", {}, b"", ("apigatewayv2", "GetDomainName")),
        (
            "POST",
            "/service/GraniteServiceVersion20100801/operation/DescribeAlarms",
            {"authorization": "AWS4-HMAC-SHA256 Credential=A/20260101/us-east-1/monitoring/aws4_request"},
            b"",
            ("cloudwatch", "DescribeAlarms"),
        ),
    ],
)
def test_identify(method, path, headers, body, expected):
    assert faultproxy.identify(method, path, Headers(headers), body) == expected
