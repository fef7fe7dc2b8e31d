"""CloudFormation, Lambda and IAM quotas the emulator does not enforce but AWS does."""

from __future__ import annotations

import json
from typing import Any

from .resolve import Resolver

# https://docs.aws.amazon.com/AWSCloudFormation/latest/UserGuide/cloudformation-limits.html
MAX_RESOURCES = 500
MAX_PARAMETERS = 200
MAX_OUTPUTS = 200
MAX_TEMPLATE_BYTES_S3 = 1_000_000  # TemplateURL; sam deploy uploads the template to S3
MAX_LOGICAL_ID = 255
# https://docs.aws.amazon.com/lambda/latest/dg/gettingstarted-limits.html
MAX_LAMBDA_ENV_BYTES = 4096
MAX_FUNCTION_NAME = 64
# https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_iam-quotas.html
MAX_ROLE_INLINE_POLICY_CHARS = 10_240  # all inline policies of a role, whitespace excluded


def violations(template: dict[str, Any], resolver: Resolver) -> list[str]:
    out = []
    resources = template.get("Resources", {})
    if len(resources) > MAX_RESOURCES:
        out.append(f"{len(resources)} resources > {MAX_RESOURCES}")
    if len(template.get("Parameters", {})) > MAX_PARAMETERS:
        out.append(f"more than {MAX_PARAMETERS} parameters")
    if len(template.get("Outputs", {})) > MAX_OUTPUTS:
        out.append(f"more than {MAX_OUTPUTS} outputs")
    size = len(json.dumps(template, separators=(",", ":")).encode())
    if size > MAX_TEMPLATE_BYTES_S3:
        out.append(f"transformed template is {size} bytes > {MAX_TEMPLATE_BYTES_S3}")
    for logical, res in resources.items():
        if len(logical) > MAX_LOGICAL_ID:
            out.append(f"{logical[:40]}…: logical id longer than {MAX_LOGICAL_ID}")
        props = res.get("Properties", {})
        if res.get("Type") == "AWS::Lambda::Function":
            variables = resolver.value(props.get("Environment", {}).get("Variables", {}))
            # Lambda counts the JSON of the variables map.
            env = len(json.dumps(variables, separators=(",", ":")).encode())
            if env > MAX_LAMBDA_ENV_BYTES:
                out.append(f"{logical}: environment is {env} bytes > {MAX_LAMBDA_ENV_BYTES}")
            if "FunctionName" in props:
                name = resolver.string(props["FunctionName"])
                if len(name) > MAX_FUNCTION_NAME:
                    out.append(f"{logical}: function name {name!r} longer than {MAX_FUNCTION_NAME}")
        if res.get("Type") == "AWS::IAM::Role":
            chars = sum(
                len("".join(json.dumps(resolver.value(p["PolicyDocument"])).split()))
                for p in props.get("Policies", [])
            )
            if chars > MAX_ROLE_INLINE_POLICY_CHARS:
                out.append(
                    f"{logical}: inline policies are {chars} characters > {MAX_ROLE_INLINE_POLICY_CHARS}"
                )
    return out
