"""Every IAM document in the transformed template, checked with parliament: actions
that exist, condition keys that apply, and resources of the form each action takes."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Iterator

import parliament

from .resolve import Resolver


@dataclass(frozen=True)
class Finding:
    where: str
    issue: str
    detail: str

    def __str__(self) -> str:
        return f"{self.where}: {self.issue} {self.detail}"


def documents(template: dict[str, Any]) -> Iterator[tuple[str, Any]]:
    """(where, unresolved document) for every policy the template attaches."""
    for logical, res in sorted(template.get("Resources", {}).items()):
        kind, props = res.get("Type"), res.get("Properties", {})
        if kind == "AWS::IAM::Role":
            for policy in props.get("Policies", []):
                yield f"{logical}/{policy.get('PolicyName')}", policy["PolicyDocument"]
            yield f"{logical}/AssumeRolePolicyDocument", props["AssumeRolePolicyDocument"]
        elif kind in ("AWS::IAM::Policy", "AWS::IAM::ManagedPolicy"):
            yield logical, props["PolicyDocument"]
        elif kind in ("AWS::S3::BucketPolicy", "AWS::SQS::QueuePolicy", "AWS::SNS::TopicPolicy"):
            yield logical, props["PolicyDocument"]
        elif kind == "AWS::KMS::Key":
            yield f"{logical}/KeyPolicy", props["KeyPolicy"]


def managed_policy_arns(template: dict[str, Any]) -> Iterator[tuple[str, Any]]:
    for logical, res in sorted(template.get("Resources", {}).items()):
        if res.get("Type") == "AWS::IAM::Role":
            for arn in res.get("Properties", {}).get("ManagedPolicyArns", []):
                yield logical, arn


def sam_destination_policy(where: str, document: Any) -> bool:
    """The policy SAM adds for an on-failure destination of `Type: SQS`
    (`<Function><Event|EventInvokeConfigOnFailure>SQSPolicy`): one `sqs:SendMessage`
    statement on the queue, written without `Version`. Its missing Version is SAM's
    and harmless (the 2008 language differs only in policy variables, of which it has
    none); every other finding on it still counts."""
    if not where.endswith("SQSPolicy") or "Version" in document:
        return False
    statements = document.get("Statement", [])
    return (
        len(statements) == 1
        and statements[0].get("Action") == "sqs:SendMessage"
        and statements[0].get("Effect") == "Allow"
        and "${" not in json.dumps(statements[0])
    )


def check(template: dict[str, Any], resolver: Resolver) -> list[Finding]:
    findings: list[Finding] = []
    for where, document in documents(template):
        resolved = resolver.value(document)
        result = parliament.analyze_policy_string(json.dumps(resolved))
        for f in result.findings:
            if f.issue == "NO_VERSION" and sam_destination_policy(where, document):
                continue
            findings.append(Finding(where, f.issue, json.dumps(f.detail, default=str)))
    for logical, arn in managed_policy_arns(template):
        value = resolver.string(arn)
        if not value.startswith("arn:aws:iam::aws:policy/"):
            findings.append(Finding(logical, "MANAGED_POLICY_ARN", f"not an AWS managed policy ARN: {value}"))
    return findings
