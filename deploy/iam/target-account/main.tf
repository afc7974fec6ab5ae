# The role a cross-account split assumes (spec.aws.roleArn), created in the account that holds the
# hosted zone (e.g. a shared networking account). Apply it there; give its ARN to the controller's
# role (irsa.tf: assume_role_arns) and to the split:
#
#   spec:
#     aws:
#       roleArn: <output target_role_arn>
#       externalId: <var.external_id>
#
# The trust policy lets only the controller's role assume it, and only with the external id, so
# another tenant that learns the role ARN cannot use it (the confused-deputy case). The policy is
# the Route53 part of manifests/iam-policy.json, limited to the managed records of this account's
# zones; add ECS/ELB/CloudWatch statements if the split's backends live in this account too (a
# split uses the role for all its calls).

terraform {
  required_version = ">= 1.5"
  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = ">= 5.0"
    }
  }
}

variable "controller_role_arn" {
  description = "ARN of the controller's own role (irsa.tf output trafficshift_role_arn), in the controller's account."
  type        = string
}

variable "external_id" {
  description = "Shared secret the controller sends as sts:ExternalId (spec.aws.externalId); 2-1224 characters of [\\w+=,.@:/-]."
  type        = string
  sensitive   = true
}

variable "role_name" {
  description = "Name of the role in this account (spec.aws.roleArn ends with it)."
  type        = string
  default     = "trafficshift-dns"
}

variable "hosted_zones" {
  description = "Hosted zone id in this account => the weighted record names trafficshift manages in it."
  type        = map(list(string))
  # e.g. { "Z0123456789ABCDEFGHIJ" = ["api.example.com"] }
}

locals {
  # Route53 compares normalized names: lower case, no trailing dot, `*` as its octal escape \052.
  managed_names = {
    for zone, names in var.hosted_zones : zone => flatten([
      for n in names : [
        replace(lower(trimsuffix(n, ".")), "*", "\\052"),
        "_trafficshift.${replace(lower(trimsuffix(n, ".")), "*", "\\052")}",
      ]
    ])
  }
}

data "aws_iam_policy_document" "trust" {
  statement {
    sid     = "TrafficshiftControllerWithExternalId"
    actions = ["sts:AssumeRole"]
    principals {
      type        = "AWS"
      identifiers = [var.controller_role_arn]
    }
    condition {
      test     = "StringEquals"
      variable = "sts:ExternalId"
      values   = [var.external_id]
    }
  }
}

data "aws_iam_policy_document" "dns" {
  dynamic "statement" {
    for_each = local.managed_names
    content {
      sid       = "Route53WriteManagedRecords${replace(statement.key, "/[^A-Za-z0-9]/", "")}"
      actions   = ["route53:ChangeResourceRecordSets"]
      resources = ["arn:aws:route53:::hostedzone/${statement.key}"]
      condition {
        test     = "ForAllValues:StringEquals"
        variable = "route53:ChangeResourceRecordSetsNormalizedRecordNames"
        values   = statement.value
      }
      condition {
        test     = "ForAllValues:StringEquals"
        variable = "route53:ChangeResourceRecordSetsRecordTypes"
        values   = ["A", "AAAA", "CNAME", "TXT"]
      }
      condition {
        test     = "ForAllValues:StringEquals"
        variable = "route53:ChangeResourceRecordSetsActions"
        values   = ["CREATE", "UPSERT", "DELETE"]
      }
    }
  }

  statement {
    sid       = "Route53ReadTheZones"
    actions   = ["route53:GetHostedZone", "route53:ListResourceRecordSets"]
    resources = [for zone in keys(var.hosted_zones) : "arn:aws:route53:::hostedzone/${zone}"]
  }

  statement {
    sid       = "Route53WaitForChanges"
    actions   = ["route53:GetChange"]
    resources = ["arn:aws:route53:::change/*"]
  }

  statement {
    sid       = "Route53FindZonesByName"
    actions   = ["route53:ListHostedZonesByName"]
    resources = ["*"] # no resource-level permissions for this read-only call
  }
}

resource "aws_iam_role" "target" {
  name                 = var.role_name
  description          = "trafficshift cross-account splits (assumed by ${var.controller_role_arn})"
  assume_role_policy   = data.aws_iam_policy_document.trust.json
  max_session_duration = 3600
}

resource "aws_iam_role_policy" "dns" {
  name   = var.role_name
  role   = aws_iam_role.target.id
  policy = data.aws_iam_policy_document.dns.json
}

output "target_role_arn" {
  description = "spec.aws.roleArn of the splits whose zones are in this account; add it to irsa.tf assume_role_arns."
  value       = aws_iam_role.target.arn
}
