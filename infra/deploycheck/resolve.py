"""Resolves CloudFormation intrinsics to the concrete strings AWS would produce, so
IAM documents can be checked as IAM receives them (actions and ARN forms).

Each resource type says what its Ref and its attributes return (the AWS resource
reference); a type not listed here is an error, so a new resource forces a decision
instead of being checked against a made-up value.
"""

from __future__ import annotations

import re
from typing import Any

from .sam import ACCOUNT_ID, REGION

PARTITION = "aws"
_KEY_ID = "1234abcd-12ab-34cd-56ef-1234567890ab"


class Unresolvable(Exception):
    pass


def _name(props: dict[str, Any], field: str | None, stack: str, logical: str, r: "Resolver") -> str:
    if field and field in props:
        return r.string(props[field])
    return f"{stack}-{logical}-EXAMPLE1234"


class Resolver:
    def __init__(self, template: dict[str, Any], parameters: dict[str, str], stack: str):
        self.resources = template.get("Resources", {})
        self.parameters = dict(parameters)
        for name, spec in template.get("Parameters", {}).items():
            if name not in self.parameters and "Default" in spec:
                self.parameters[name] = str(spec["Default"])
        self.stack = stack
        # List parameters resolve to lists (Resource: !Ref SomeArns is a list of ARNs).
        self.lists = {
            n for n, spec in template.get("Parameters", {}).items()
            if spec.get("Type", "String").startswith(("CommaDelimitedList", "List<"))
        }

    # -- what each type returns
    def _ref(self, logical: str) -> str:
        res = self.resources[logical]
        kind, props = res["Type"], res.get("Properties", {})
        arn = lambda: self._att(logical, "Arn")  # noqa: E731
        refs = {
            "AWS::DynamoDB::Table": lambda: _name(props, "TableName", self.stack, logical, self),
            "AWS::S3::Bucket": lambda: _name(props, "BucketName", self.stack, logical, self),
            "AWS::KMS::Key": lambda: _KEY_ID,
            "AWS::KMS::Alias": lambda: self.string(props["AliasName"]),
            "AWS::SecretsManager::Secret": arn,
            "AWS::Scheduler::ScheduleGroup": lambda: _name(props, "Name", self.stack, logical, self),
            "AWS::IAM::Role": lambda: _name(props, "RoleName", self.stack, logical, self),
            "AWS::Lambda::Function": lambda: _name(props, "FunctionName", self.stack, logical, self),
            "AWS::SQS::Queue": lambda: f"https://sqs.{REGION}.amazonaws.com/{ACCOUNT_ID}/"
            + _name(props, "QueueName", self.stack, logical, self),
            "AWS::SNS::Topic": arn,
            "AWS::ApiGatewayV2::Api": lambda: "a1b2c3d4e5",
            # A distribution's id (its ARN is arn:aws:cloudfront::<account>:distribution/<id>).
            "AWS::CloudFront::Distribution": lambda: "EDFDVBD6EXAMPLE",
        }
        if kind not in refs:
            raise Unresolvable(f"Ref {logical}: no rule for {kind} (add one to deploycheck/resolve.py)")
        return refs[kind]()

    def _att(self, logical: str, attribute: str) -> str:
        res = self.resources[logical]
        kind, props = res["Type"], res.get("Properties", {})
        p, r, a = PARTITION, REGION, ACCOUNT_ID
        if attribute == "Arn":
            if kind == "AWS::DynamoDB::Table":
                return f"arn:{p}:dynamodb:{r}:{a}:table/{self._ref(logical)}"
            if kind == "AWS::S3::Bucket":
                return f"arn:{p}:s3:::{self._ref(logical)}"
            if kind == "AWS::KMS::Key":
                return f"arn:{p}:kms:{r}:{a}:key/{_KEY_ID}"
            if kind == "AWS::SecretsManager::Secret":
                return f"arn:{p}:secretsmanager:{r}:{a}:secret:{_name(props, 'Name', self.stack, logical, self)}-AbCdEf"
            if kind == "AWS::Scheduler::ScheduleGroup":
                return f"arn:{p}:scheduler:{r}:{a}:schedule-group/{self._ref(logical)}"
            if kind == "AWS::IAM::Role":
                return f"arn:{p}:iam::{a}:role/{self._ref(logical)}"
            if kind == "AWS::Lambda::Function":
                return f"arn:{p}:lambda:{r}:{a}:function:{self._ref(logical)}"
            if kind == "AWS::SQS::Queue":
                return f"arn:{p}:sqs:{r}:{a}:{_name(props, 'QueueName', self.stack, logical, self)}"
            if kind == "AWS::SNS::Topic":
                return f"arn:{p}:sns:{r}:{a}:{_name(props, 'TopicName', self.stack, logical, self)}"
        if kind == "AWS::DynamoDB::Table" and attribute == "StreamArn":
            return f"{self._att(logical, 'Arn')}/stream/2026-01-01T00:00:00.000"
        if kind == "AWS::SQS::Queue" and attribute == "QueueName":
            return _name(props, "QueueName", self.stack, logical, self)
        raise Unresolvable(f"GetAtt {logical}.{attribute}: no rule for {kind} (add one to deploycheck/resolve.py)")

    # -- intrinsics
    def name(self, name: str) -> str:
        pseudo = {
            "AWS::AccountId": ACCOUNT_ID,
            "AWS::Region": REGION,
            "AWS::Partition": PARTITION,
            "AWS::URLSuffix": "amazonaws.com",
            "AWS::StackName": self.stack,
        }
        if name in pseudo:
            return pseudo[name]
        if name in self.parameters:
            return self.parameters[name]
        if name in self.resources:
            return self._ref(name)
        raise Unresolvable(f"Ref {name}: not a parameter, pseudo parameter or resource")

    def string(self, node: Any) -> str:
        value = self.value(node)
        if isinstance(value, list):
            return ",".join(value)
        return str(value)

    def value(self, node: Any) -> Any:
        if isinstance(node, list):
            return [self.value(item) for item in node]
        if not isinstance(node, dict):
            return node
        if len(node) == 1:
            (key, arg), = node.items()
            if key == "Ref":
                ref = self.name(arg)
                if arg in self.lists and arg not in self.resources:
                    return [item.strip() for item in ref.split(",")]
                return ref
            if key == "Fn::GetAtt":
                logical, attribute = arg if isinstance(arg, list) else arg.split(".", 1)
                return self._att(logical, attribute)
            if key == "Fn::Sub":
                text, variables = (arg, {}) if isinstance(arg, str) else (arg[0], arg[1])
                local = {k: self.string(v) for k, v in variables.items()}

                def one(m: re.Match[str]) -> str:
                    name = m.group(1)
                    if name.startswith("!"):
                        return "${" + name[1:] + "}"
                    if name in local:
                        return local[name]
                    if "." in name and name.split(".", 1)[0] in self.resources:
                        logical, attribute = name.split(".", 1)
                        return self._att(logical, attribute)
                    return self.name(name)

                return re.sub(r"\$\{([^}]*)\}", one, text)
            if key == "Fn::Join":
                sep, items = arg
                return sep.join(self.string(i) for i in self.value(items))
            if key == "Fn::Select":
                i, items = arg
                return self.value(items)[int(self.string(i))]
            if key == "Fn::Split":
                sep, text = arg
                return self.string(text).split(sep)
            if key.startswith("Fn::") or key == "Condition":
                raise Unresolvable(f"{key}: not supported by deploycheck/resolve.py")
        return {k: self.value(v) for k, v in node.items()}
