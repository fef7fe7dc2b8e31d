"""Deploys the transformed template into the emulator's CloudFormation (moto,
in-process, so it cannot collide with the shared emulator of the test run).

The way `sam deploy` does it: the packaged template is validated
(`ValidateTemplate`), a change set is created with the deploy parameters, it must
reach CREATE_COMPLETE, and executing it must bring the stack to CREATE_COMPLETE.
moto implements most resource types in CloudFormation; the ones it does not are
reported as skipped (it creates nothing for them and says so in a warning).
"""

from __future__ import annotations

import json
import logging
import re
import warnings
from dataclasses import dataclass, field
from typing import Any

import boto3
import yaml
from moto import mock_aws
from moto.cloudformation.parsing import NULL_MODELS, get_model_map

from .sam import ARTIFACT_BUCKET, REGION

# moto also logs each unsupported type; the warnings below are what we report.
logging.getLogger("moto.cloudformation").setLevel(logging.ERROR)

_UNSUPPORTED = re.compile(r"Tried to parse (\S+) but it's not supported")


@dataclass
class Deployment:
    change_set_status: str = ""
    change_set_reason: str = ""
    stack_status: str = ""
    stack_reason: str = ""
    validate_errors: list[str] = field(default_factory=list)
    created: dict[str, str] = field(default_factory=dict)  # logical id -> type
    skipped_types: set[str] = field(default_factory=set)
    facts: dict[str, Any] = field(default_factory=dict)


def deploy(
    packaged_sam: dict[str, Any],
    transformed: dict[str, Any],
    parameters: dict[str, str],
    capabilities: list[str],
    stack_name: str,
) -> Deployment:
    out = Deployment()
    with mock_aws(), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        s3 = boto3.client("s3", region_name=REGION)
        s3.create_bucket(Bucket=ARTIFACT_BUCKET)
        for logical, res in packaged_sam["Resources"].items():
            if res["Type"] == "AWS::Serverless::Function":
                s3.put_object(Bucket=ARTIFACT_BUCKET, Key=f"{logical}.zip", Body=b"PK\x05\x06" + b"\0" * 18)
        cfn = boto3.client("cloudformation", region_name=REGION)

        # `aws cloudformation validate-template` on what `sam package` uploads.
        body = yaml.safe_dump(_plain(packaged_sam), sort_keys=False)
        s3.put_object(Bucket=ARTIFACT_BUCKET, Key="packaged.yaml", Body=body.encode())
        try:
            cfn.validate_template(
                TemplateURL=f"https://{ARTIFACT_BUCKET}.s3.amazonaws.com/packaged.yaml"
            )
        except cfn.exceptions.ClientError as err:  # pragma: no cover - reported
            out.validate_errors.append(str(err))

        emulated, placeholders = _without_skipped_attributes(transformed)
        out.facts["placeholder_attributes"] = placeholders
        transformed_body = json.dumps(emulated)
        s3.put_object(Bucket=ARTIFACT_BUCKET, Key="transformed.json", Body=transformed_body.encode())
        cfn.create_change_set(
            StackName=stack_name,
            ChangeSetName="deploycheck",
            ChangeSetType="CREATE",
            TemplateURL=f"https://{ARTIFACT_BUCKET}.s3.amazonaws.com/transformed.json",
            Parameters=[{"ParameterKey": k, "ParameterValue": v} for k, v in parameters.items()],
            Capabilities=capabilities,
        )
        cs = cfn.describe_change_set(StackName=stack_name, ChangeSetName="deploycheck")
        out.change_set_status = cs["Status"]
        out.change_set_reason = cs.get("StatusReason", "")
        if out.change_set_status == "CREATE_COMPLETE":
            cfn.execute_change_set(StackName=stack_name, ChangeSetName="deploycheck")
        stack = cfn.describe_stacks(StackName=stack_name)["Stacks"][0]
        out.stack_status = stack["StackStatus"]
        out.stack_reason = stack.get("StackStatusReason", "")
        for summary in cfn.list_stack_resources(StackName=stack_name)["StackResourceSummaries"]:
            # moto lists a skipped type with no logical id.
            if summary.get("LogicalResourceId") and summary["ResourceStatus"] == "CREATE_COMPLETE":
                out.created[summary["LogicalResourceId"]] = summary["ResourceType"]
        for w in caught:
            m = _UNSUPPORTED.search(str(w.message))
            if m:
                out.skipped_types.add(m.group(1))

        # What the stack made, read back through the service APIs.
        ddb = boto3.client("dynamodb", region_name=REGION)
        out.facts["tables"] = sorted(ddb.list_tables()["TableNames"])
        out.facts["buckets"] = sorted(b["Name"] for b in s3.list_buckets()["Buckets"])
        lam = boto3.client("lambda", region_name=REGION)
        out.facts["functions"] = {
            f["FunctionName"]: f.get("Environment", {}).get("Variables", {})
            for f in lam.list_functions()["Functions"]
        }
        out.facts["event_source_mappings"] = len(lam.list_event_source_mappings()["EventSourceMappings"])
    return out


def _plain(node: Any) -> Any:
    """samtranslator's YAML loader returns dict subclasses; PyYAML dumps plain ones."""
    if isinstance(node, dict):
        return {str(k): _plain(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_plain(v) for v in node]
    return node


_SUB_ATTRIBUTE = re.compile(r"\$\{([A-Za-z0-9]+)\.([A-Za-z0-9.]+)\}")


def _without_skipped_attributes(template: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """moto creates nothing for a type it lacks and leaves a Ref to it unresolved, but
    a Fn::GetAtt of it fails the whole deploy. Such attributes become placeholders
    (returned, for the report), so the resources that use them are still created and
    checked: the imports bucket's CORS origin is the console distribution's domain."""
    supported = get_model_map()
    skipped = {
        logical
        for logical, res in template.get("Resources", {}).items()
        if (kind := res.get("Type", "")) in NULL_MODELS
        or (kind not in supported and not kind.startswith("Custom::"))
    }
    used: set[str] = set()

    def placeholder(logical: str, attribute: str) -> str:
        used.add(f"{logical}.{attribute}")
        return f"{logical.lower()}-{attribute.lower().replace('.', '-')}.emulator.invalid"

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            if len(node) == 1 and "Fn::GetAtt" in node:
                target = node["Fn::GetAtt"]
                logical, attribute = target.split(".", 1) if isinstance(target, str) else target
                if logical in skipped:
                    return placeholder(logical, attribute)
            if len(node) == 1 and "Fn::Sub" in node:
                sub = node["Fn::Sub"]
                text, variables = (sub, None) if isinstance(sub, str) else sub
                text = _SUB_ATTRIBUTE.sub(
                    lambda m: placeholder(m[1], m[2]) if m[1] in skipped else m[0], text
                )
                return {"Fn::Sub": text if variables is None else [text, walk(variables)]}
            return {k: walk(v) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    return walk(template), sorted(used)
