# IRSA for trafficshift: an IAM role the controller's ServiceAccount assumes through the EKS
# cluster's OIDC provider, with the least-privilege policy of manifests/iam-policy.json expressed
# over variables. Drop it into your infrastructure module and pass the outputs to the chart:
#
#   helm install trafficshift charts/trafficshift \
#     --set serviceAccount.roleArn=$(terraform output -raw trafficshift_role_arn) ...
#
# With EKS Pod Identity instead of IRSA, use the aws_eks_pod_identity_association at the bottom
# (and the pods.eks.amazonaws.com trust policy), and leave serviceAccount.roleArn empty.

terraform {
  required_version = ">= 1.5"
  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = ">= 5.0"
    }
  }
}

variable "cluster_oidc_provider_arn" {
  description = "ARN of the EKS cluster's IAM OIDC provider (aws_iam_openid_connect_provider.arn)."
  type        = string
}

variable "cluster_oidc_issuer_url" {
  description = "The cluster's OIDC issuer URL (https://oidc.eks.<region>.amazonaws.com/id/...)."
  type        = string
}

variable "role_name" {
  description = "Name of the IAM role (and its inline policy). One per cluster/account pair, e.g. trafficshift-prod."
  type        = string
  default     = "trafficshift"
}

variable "namespace" {
  description = "Namespace of the trafficshift ServiceAccount."
  type        = string
  default     = "trafficshift"
}

variable "service_account" {
  description = "Name of the trafficshift ServiceAccount."
  type        = string
  default     = "trafficshift"
}

variable "hosted_zones" {
  description = "Hosted zone id => the weighted record names trafficshift manages in it."
  type        = map(list(string))
  # e.g. { "Z0123456789ABCDEFGHIJ" = ["api.example.com"] }
}

variable "ecs_service_arns" {
  description = "ARNs of the ECS services trafficshift scales (arn:aws:ecs:<region>:<account>:service/<cluster>/<service>; `service/<cluster>/*` is safe only with ecs_update_service_tag)."
  type        = list(string)
}

variable "ecs_update_service_tag" {
  description = <<-EOT
    When set, ecs:UpdateService is allowed only on services carrying this tag (aws:ResourceTag
    condition), e.g. { key = "trafficshift.dev/managed", value = "true" }: the role then cannot
    scale an untagged service even when ecs_service_arns names a whole cluster. Services must use
    the long ARN format, which ECS requires for tags.
  EOT
  type = object({
    key   = string
    value = string
  })
  default = null
}

variable "apigateway_domain_names" {
  description = "API Gateway custom domain names used as backends."
  type        = list(string)
  default     = []
}

variable "assume_role_arns" {
  description = "Roles in other accounts that cross-account splits name in spec.aws.roleArn (deploy/iam/target-account creates one per account). Empty: no sts:AssumeRole."
  type        = list(string)
  default     = []
}

variable "region" {
  description = "Region of the API Gateway custom domains and of the ECS services' scalable targets."
  type        = string
}

locals {
  oidc_host = replace(var.cluster_oidc_issuer_url, "https://", "")
  # Route53 compares normalized names: lower case, no trailing dot, and every character outside
  # [a-z0-9_.-] as a three-digit octal escape, so a wildcard `*` is written `\052`. Each weighted
  # record comes with its ownership TXT record `_trafficshift.<name>`.
  record_names = {
    for zone, names in var.hosted_zones : zone => {
      for n in names : lower(trimsuffix(n, ".")) => [
        replace(lower(trimsuffix(n, ".")), "*", "\\052"),
        "_trafficshift.${replace(lower(trimsuffix(n, ".")), "*", "\\052")}",
      ]
    }
  }
  # Per zone, every managed record and its ownership TXT.
  write_names = { for zone, recs in local.record_names : zone => flatten(values(recs)) }
}

data "aws_iam_policy_document" "trust" {
  statement {
    actions = ["sts:AssumeRoleWithWebIdentity"]
    principals {
      type        = "Federated"
      identifiers = [var.cluster_oidc_provider_arn]
    }
    condition {
      test     = "StringEquals"
      variable = "${local.oidc_host}:sub"
      values   = ["system:serviceaccount:${var.namespace}:${var.service_account}"]
    }
    condition {
      test     = "StringEquals"
      variable = "${local.oidc_host}:aud"
      values   = ["sts.amazonaws.com"]
    }
  }
}

data "aws_iam_policy_document" "trafficshift" {
  # One statement per zone: each zone may only change its own records.
  dynamic "statement" {
    for_each = { for zone, names in local.write_names : zone => names if length(names) > 0 }
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
        # DELETE: every batch replaces the state TXT it read with DELETE(old) + CREATE(new), a
        # fence against a second writer; adoption deletes the plain record it replaces. IAM
        # judges a batch against one statement, so the names above are what limits DELETE.
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

  statement {
    sid       = "EcsScaleTheManagedServices"
    actions   = ["ecs:UpdateService"]
    resources = var.ecs_service_arns
    dynamic "condition" {
      for_each = var.ecs_update_service_tag == null ? [] : [var.ecs_update_service_tag]
      content {
        test     = "StringEquals"
        variable = "aws:ResourceTag/${condition.value.key}"
        values   = [condition.value.value]
      }
    }
  }

  statement {
    sid       = "EcsReadTheManagedServices"
    actions   = ["ecs:DescribeServices"]
    resources = var.ecs_service_arns
  }

  statement {
    sid       = "AutoScalingReadScalableTargets"
    actions   = ["application-autoscaling:DescribeScalableTargets"]
    resources = ["*"] # no resource-level permissions for this read-only call
  }

  statement {
    sid     = "AutoScalingMoveTheMinimumOfScalableTargets"
    actions = ["application-autoscaling:RegisterScalableTarget"]
    # Scalable-target ARNs carry an id AWS chooses; trafficshift only registers targets that
    # already exist (the ECS services' own), moving their minimum and restoring it.
    resources = ["arn:aws:application-autoscaling:${var.region}:*:scalable-target/*"]
  }

  statement {
    sid = "ElbReadTargetGroupsAndHealth"
    actions = [
      "elasticloadbalancing:DescribeTargetGroups",
      "elasticloadbalancing:DescribeLoadBalancers",
      "elasticloadbalancing:DescribeTargetHealth",
    ]
    resources = ["*"] # Describe* calls have no resource-level permissions
  }

  dynamic "statement" {
    for_each = length(var.apigateway_domain_names) > 0 ? [1] : []
    content {
      sid     = "ApiGatewayReadCustomDomains"
      actions = ["apigateway:GET"]
      # The domain (alias target), its REST base path mappings and HTTP API mappings, and the
      # mapped REST APIs' names: the traffic share counts requests by API name and stage.
      resources = concat(
        flatten([for d in var.apigateway_domain_names : [
          "arn:aws:apigateway:${var.region}::/domainnames/${d}",
          "arn:aws:apigateway:${var.region}::/domainnames/${d}/basepathmappings",
          "arn:aws:apigateway:${var.region}::/domainnames/${d}/apimappings",
        ]]),
        ["arn:aws:apigateway:${var.region}::/restapis/*"],
      )
    }
  }

  statement {
    sid       = "CloudWatchReadGateAlarms"
    actions   = ["cloudwatch:DescribeAlarms"]
    resources = ["*"]
  }

  statement {
    sid       = "CloudWatchReadRequestCounts"
    actions   = ["cloudwatch:GetMetricData"]
    resources = ["*"] # GetMetricData has no resource-level permissions
  }

  # Cross-account splits (spec.aws.roleArn): only the named roles, never "*". The target role's
  # trust policy must name this role too (and the external id); see deploy/iam/target-account.
  dynamic "statement" {
    for_each = length(var.assume_role_arns) > 0 ? [1] : []
    content {
      sid       = "StsAssumeCrossAccountSplitRoles"
      actions   = ["sts:AssumeRole"]
      resources = var.assume_role_arns
    }
  }
}

resource "aws_iam_role" "trafficshift" {
  name               = var.role_name
  description        = "trafficshift controller (IRSA ${var.namespace}/${var.service_account})"
  assume_role_policy = data.aws_iam_policy_document.trust.json
}

resource "aws_iam_role_policy" "trafficshift" {
  name   = var.role_name
  role   = aws_iam_role.trafficshift.id
  policy = data.aws_iam_policy_document.trafficshift.json
}

output "trafficshift_role_arn" {
  description = "Set as the chart's serviceAccount.roleArn."
  value       = aws_iam_role.trafficshift.arn
}

# EKS Pod Identity alternative (the role's trust policy must then allow pods.eks.amazonaws.com to
# sts:AssumeRole and sts:TagSession):
#
# resource "aws_eks_pod_identity_association" "trafficshift" {
#   cluster_name    = "prod"
#   namespace       = var.namespace
#   service_account = var.service_account
#   role_arn        = aws_iam_role.trafficshift.arn
# }
