"""The SAM transform, as `sam deploy` (CloudFormation's AWS::Serverless transform) applies it."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import boto3
from samtranslator.parser import parser
from samtranslator.translator.translator import Translator
from samtranslator.yaml_helper import yaml_parse

# What `sam package` puts in place of a local CodeUri: an object in the artifact bucket.
ARTIFACT_BUCKET = "custody-sam-artifacts-123456789012"
REGION = "us-east-1"
ACCOUNT_ID = "123456789012"


def load(path: Path) -> dict[str, Any]:
    return yaml_parse(path.read_text())


def package(sam: dict[str, Any]) -> dict[str, Any]:
    """The template as `sam package` uploads it: every local CodeUri becomes an S3 URI."""
    packaged = copy.deepcopy(sam)
    for logical, resource in packaged.get("Resources", {}).items():
        if resource.get("Type") == "AWS::Serverless::Function":
            props = resource.setdefault("Properties", {})
            uri = props.get("CodeUri", ".")
            if isinstance(uri, str) and not uri.startswith("s3://"):
                props["CodeUri"] = f"s3://{ARTIFACT_BUCKET}/{logical}.zip"
    return packaged


def transform(sam: dict[str, Any], parameters: dict[str, str]) -> dict[str, Any]:
    """CloudFormation JSON, as the service sees it after the SAM transform.

    The translator needs a boto session only for the partition/region; it makes no
    call, and the managed-policy map is empty because the template names managed
    policies by ARN only.
    """
    session = boto3.session.Session(
        region_name=REGION, aws_access_key_id="offline", aws_secret_access_key="offline"
    )
    values = {
        "AWS::Region": REGION,
        "AWS::AccountId": ACCOUNT_ID,
        "AWS::Partition": "aws",
        **parameters,
    }
    translator = Translator(None, parser.Parser(), boto_session=session)
    return translator.translate(
        sam_template=package(sam),
        parameter_values=values,
        get_managed_policy_map=lambda: {},
    )
