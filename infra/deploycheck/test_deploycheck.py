"""Tests of the deployability checks: template.yaml passes them, and each check
fails on the kind of template it exists to refuse."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from . import check, graph, iam, params, quotas, sam
from .resolve import Resolver

ROOT = check.ROOT
VALUES = params.samconfig_parameters(ROOT / "samconfig.toml")

# What moto's CloudFormation cannot create, and so what the emulator deploy cannot
# prove (lint, the cycle check and the IAM check still cover them).
MOTO_UNSUPPORTED = {
    "AWS::ApiGatewayV2::Api",
    "AWS::ApiGatewayV2::Stage",
    # The operational alarms: cfn-lint still checks them on the transformed template.
    "AWS::CloudWatch::Alarm",
    "AWS::S3::BucketPolicy",
    "AWS::Scheduler::ScheduleGroup",
    "AWS::SecretsManager::Secret",
    # The functions' on-failure destinations for asynchronous invocations
    # (test_each_function_may_send_only_to_its_own_failure_queue reads them).
    "AWS::Lambda::EventInvokeConfig",
    # The user pool (IdentityProvider=cognito): shared/tests/integration/template.rs
    # holds what matters, that no app client may write tenant or role.
    "AWS::Cognito::UserPool",
    "AWS::Cognito::UserPoolClient",
    # The console: the hosted UI domain, and the distribution with its origin access
    # control and headers policy (template.rs holds their CSP, HSTS, OAC-only bucket
    # policy and CORS; the emulator gives their attributes placeholders).
    "AWS::Cognito::UserPoolDomain",
    "AWS::CloudFront::Distribution",
    "AWS::CloudFront::OriginAccessControl",
    "AWS::CloudFront::ResponseHeadersPolicy",
}


@pytest.fixture(scope="module")
def report() -> check.Report:
    return check.run()


@pytest.fixture(scope="module")
def transformed(report: check.Report) -> dict:
    # What the full run transformed, not a second transform.
    return report.transformed


def test_template_yaml_is_deployable(report: check.Report) -> None:
    assert report.errors == []
    d = report.deployment
    assert d is not None
    assert d.change_set_status == "CREATE_COMPLETE"
    assert d.stack_status == "CREATE_COMPLETE"
    assert d.validate_errors == []
    # Skips only types moto lacks; a new one shows up here and needs a reason.
    assert d.skipped_types <= MOTO_UNSUPPORTED, d.skipped_types - MOTO_UNSUPPORTED
    kinds = set(d.created.values())
    for kind in ("AWS::Lambda::Function", "AWS::IAM::Role", "AWS::DynamoDB::Table",
                 "AWS::S3::Bucket", "AWS::KMS::Key", "AWS::Lambda::EventSourceMapping",
                 "AWS::SQS::Queue"):
        assert kind in kinds, f"the emulator deploy created no {kind}"


def test_functions_name_the_imports_bucket_the_stack_creates(report: check.Report) -> None:
    """The literal bucket name in the functions (which breaks the cycle) is the name
    the bucket really gets: read back from the emulator after the deploy."""
    d = report.deployment
    assert d is not None
    names = {env.get("CUSTODY_IMPORTS_BUCKET") for env in d.facts["functions"].values()}
    assert len(names) == 1, names
    (name,) = names
    assert name in d.facts["buckets"]
    assert name == f"custody-imports-{VALUES['Stage']}-{sam.ACCOUNT_ID}"
    assert d.facts["event_source_mappings"] == 2


def test_policies_on_the_imports_bucket_use_its_arn(transformed: dict) -> None:
    resolver = Resolver(transformed, VALUES, "custody-prod")
    bucket_arn = resolver.value({"Fn::GetAtt": ["ImportsBucket", "Arn"]})
    seen = 0
    for where, document in iam.documents(transformed):
        for stmt in resolver.value(document)["Statement"]:
            resources = stmt.get("Resource", [])
            for r in [resources] if isinstance(resources, str) else resources:
                if "custody-imports" in r:
                    seen += 1
                    assert r == bucket_arn or r.startswith(bucket_arn + "/"), (where, r)
    assert seen >= 6


# ---------------------------------------------------------------- cycles

OLD_WIRING = """
Transform: AWS::Serverless-2016-10-31
Resources:
  Bucket:
    Type: AWS::S3::Bucket
  Fn:
    Type: AWS::Serverless::Function
    Properties:
      CodeUri: .
      Runtime: provided.al2023
      Handler: bootstrap
      Environment:
        Variables:
          BUCKET: !Ref Bucket
      Events:
        Uploaded:
          Type: S3
          Properties:
            Bucket: !Ref Bucket
            Events: s3:ObjectCreated:*
"""


def test_cycle_check_finds_the_s3_event_cycle(tmp_path: Path) -> None:
    """The wiring this repository had: a bucket notifying a function that refers to
    the bucket. The transformed graph has the cycle, whatever cfn-lint says."""
    path = tmp_path / "t.yaml"
    path.write_text(OLD_WIRING)
    out = sam.transform(sam.load(path), {})
    found = graph.cycles(graph.dependencies(out))
    assert found and "Bucket" in found[0] and "Fn" in found[0], found


def test_cycles_on_small_graphs() -> None:
    assert graph.cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []
    assert graph.cycles({"a": {"b"}, "b": {"a"}, "c": {"a"}}) == [["a", "b"]]
    assert graph.cycles({"a": {"a"}}) == [["a"]]
    assert graph.cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"e"}, "e": {"d"}}) == [
        ["a", "b", "c"], ["d", "e"]]


def test_dependencies_follow_every_intrinsic() -> None:
    template = {"Resources": {
        "A": {"Type": "X", "Properties": {"P": {"Fn::Sub": "${B.Arn}/${C}/${!D}/${AWS::Region}/${Local}"},
                                           "Q": {"Fn::Sub": ["${Local}", {"Local": {"Ref": "E"}}]}}},
        "B": {"Type": "X", "DependsOn": "C"},
        "C": {"Type": "X", "Properties": {"P": {"Fn::GetAtt": "E.Arn"}}},
        "D": {"Type": "X"},
        "E": {"Type": "X", "Properties": {"P": {"Fn::GetAtt": ["B", "Arn"]}}},
    }}
    deps = graph.dependencies(template)
    assert deps["A"] == {"B", "C", "E"}  # not D (escaped), not pseudo or local names
    assert deps["B"] == {"C"}
    assert graph.cycles(deps) == [["B", "C", "E"]]


# ---------------------------------------------------------------- IAM

def _with_statement(transformed: dict, stmt: dict) -> dict:
    out = copy.deepcopy(transformed)
    out["Resources"]["ExpiryFunctionRole"]["Properties"]["Policies"][0]["PolicyDocument"][
        "Statement"].append(stmt)
    return out


@pytest.mark.parametrize("stmt, issue", [
    ({"Effect": "Allow", "Action": "dynamodb:Qurey", "Resource": {"Fn::GetAtt": ["CustodyTable", "Arn"]}},
     "UNKNOWN_ACTION"),
    # GetObject takes object ARNs, not the bucket's.
    ({"Effect": "Allow", "Action": "s3:GetObject", "Resource": {"Fn::GetAtt": ["ImportsBucket", "Arn"]}},
     "RESOURCE_MISMATCH"),
    ({"Effect": "Allow", "Action": "s3:GetObject", "Resource": {"Fn::GetAtt": ["CustodyTable", "Arn"]}},
     "RESOURCE_MISMATCH"),
])
def test_iam_check_refuses_bad_statements(transformed: dict, stmt: dict, issue: str) -> None:
    bad = _with_statement(transformed, stmt)
    findings = iam.check(bad, Resolver(bad, VALUES, "custody-prod"))
    assert issue in {f.issue for f in findings}, findings


def test_trust_policies_are_checked(transformed: dict) -> None:
    bad = copy.deepcopy(transformed)
    bad["Resources"]["ExpiryFunctionRole"]["Properties"]["AssumeRolePolicyDocument"]["Statement"][0][
        "Action"] = ["sts:AssumeRole", "s3:GetObject"]
    assert check.trust_policy_problems(bad) == ["ExpiryFunctionRole: s3:GetObject in a trust policy"]


# ---------------------------------------------------------------- parameters

def test_every_parameter_is_constrained() -> None:
    template = sam.load(ROOT / "template.yaml")
    assert params.unconstrained(template) == []
    loose = copy.deepcopy(template)
    del loose["Parameters"]["OidcIssuer"]["AllowedPattern"]
    assert params.unconstrained(loose) == ["OidcIssuer"]


def test_samconfig_values_pass_and_wrong_values_fail() -> None:
    template = sam.load(ROOT / "template.yaml")
    assert params.violations(template, VALUES) == []
    for name in template["Parameters"]:
        wrong = dict(VALUES, **{name: "has a space"})
        assert params.violations(template, wrong), f"{name} accepts 'has a space'"
    for name, value in [
        ("OidcIssuer", "http://issuer.example.com"),
        ("OidcIssuer", "https://issuer.example.com/"),
        ("PublicApiBaseUrl", "https://api.example.com/"),
        ("Stage", "Prod"),
        ("GoogleClientId", "123.apps.googleusercontent.com.evil.com"),
        ("ExportS3DestinationRoleArns", "arn:aws:iam::123456789012:role/*"),
        ("OauthReturnUrls", "https://app.example.com, https://x.example.com"),
    ]:
        assert params.violations(template, dict(VALUES, **{name: value})), f"{name}={value!r} passes"
    required = copy.deepcopy(template)
    del required["Parameters"]["Stage"]["Default"]
    missing = {k: v for k, v in VALUES.items() if k != "Stage"}
    assert params.violations(required, missing) == ["Stage: required (no Default) but not given"]


def test_an_external_issuer_must_be_named() -> None:
    """The Rules section, which moto ignores: IdentityProvider=external without an
    issuer or audience would deploy an API no token can pass."""
    template = sam.load(ROOT / "template.yaml")
    external = dict(VALUES, IdentityProvider="external")
    assert params.violations(template, external) == [
        "rule ExternalIssuerNamed: IdentityProvider=external needs OidcIssuer.",
        "rule ExternalIssuerNamed: IdentityProvider=external needs OidcAudience (no empty entry).",
    ]
    named = dict(external, OidcIssuer="https://issuer.example.com", OidcAudience="client-1")
    assert params.violations(template, named) == []
    assert params.violations(template, dict(named, OidcAudience="client-1,")) != []


def test_readme_documents_every_parameter() -> None:
    readme = (ROOT / "README.md").read_text()
    template = sam.load(ROOT / "template.yaml")
    for name in template["Parameters"]:
        assert f"`{name}`" in readme, f"README's Deploy section does not name {name}"


# ---------------------------------------------------------------- quotas

def test_quotas_hold_and_are_checked(transformed: dict) -> None:
    resolver = Resolver(transformed, VALUES, "custody-prod")
    assert quotas.violations(transformed, resolver) == []
    big = copy.deepcopy(transformed)
    big["Resources"]["ExpiryFunction"]["Properties"]["Environment"]["Variables"]["X"] = "x" * 4096
    stmt = {"Effect": "Allow", "Action": "s3:GetObject", "Resource": [f"arn:aws:s3:::b/{i:05}/*" for i in range(500)]}
    big["Resources"]["ExpiryFunctionRole"]["Properties"]["Policies"][0]["PolicyDocument"]["Statement"].append(stmt)
    problems = quotas.violations(big, Resolver(big, VALUES, "custody-prod"))
    assert any("ExpiryFunction: environment" in p for p in problems), problems
    assert any("ExpiryFunctionRole: inline policies" in p for p in problems), problems


def test_transformed_template_lints_clean_and_lint_can_fail(transformed: dict) -> None:
    assert check.lint(transformed) == []
    bad = copy.deepcopy(transformed)
    bad["Resources"]["CustodyTable"]["Properties"]["BillingMode"] = "FREE"
    assert check.lint(bad), "cfn-lint accepted BillingMode FREE"


# ---------------------------------------------------------------- failure destinations

FAILURE_QUEUES = {
    "ImportFunction": "ImportFailureQueue",
    "ExpiryFunction": "ExpiryFailureQueue",
    "DsarFunction": "DsarFailureQueue",
    "ExportFunction": "ExportFailureQueue",
    "OauthFunction": "OauthFailureQueue",
}


def _role_statements(transformed: dict, role: str) -> list[dict]:
    props = transformed["Resources"][role]["Properties"]
    return [s for p in props.get("Policies", []) for s in p["PolicyDocument"]["Statement"]]


def test_each_function_may_send_only_to_its_own_failure_queue(transformed: dict) -> None:
    """What SAM grants for `OnFailure: Type: SQS` (not guessed): the function's role
    may `sqs:SendMessage` to its failure queue, and to no other queue; and every
    on-failure destination in the transformed template is that queue."""
    resources = transformed["Resources"]
    for function, queue in FAILURE_QUEUES.items():
        sends = [s for s in _role_statements(transformed, f"{function}Role")
                 if "sqs:" in json.dumps(s.get("Action"))]
        assert sends, f"{function} may not send to {queue}"
        for s in sends:
            assert s["Action"] == "sqs:SendMessage", s
            assert s["Resource"] == {"Fn::GetAtt": [queue, "Arn"]}, (function, s)
    destinations = {
        logical: res["Properties"]["DestinationConfig"]["OnFailure"]["Destination"]
        for logical, res in resources.items()
        if res["Type"] in ("AWS::Lambda::EventInvokeConfig", "AWS::Lambda::EventSourceMapping")
    }
    # import, expiry, export, dsar (its daily deadline check), oauth (its sweep of
    # unclaimed installs): EventInvokeConfig; expiry, dsar: stream mappings.
    assert len(destinations) == 7, destinations
    for logical, destination in destinations.items():
        function = next(f for f in FAILURE_QUEUES if logical.startswith(f))
        assert destination == {"Fn::GetAtt": [FAILURE_QUEUES[function], "Arn"]}, logical


def test_only_sams_destination_policy_may_lack_a_version(transformed: dict) -> None:
    resolver = Resolver(transformed, VALUES, "custody-prod")
    changed = copy.deepcopy(transformed)
    role = changed["Resources"]["ImportFunctionRole"]["Properties"]
    # SAM's own policy passes; the same statement in a policy of ours does not,
    # nor does SAM's policy once it grants more than sending.
    role["Policies"].append({"PolicyName": "Mine", "PolicyDocument": {"Statement": [
        {"Effect": "Allow", "Action": "sqs:SendMessage",
         "Resource": {"Fn::GetAtt": ["ImportFailureQueue", "Arn"]}}]}})
    findings = [str(f) for f in iam.check(changed, resolver)]
    assert any("ImportFunctionRole/Mine: NO_VERSION" in f for f in findings), findings
    assert not any("SQSPolicy: NO_VERSION" in f for f in findings), findings
    sam_policy = next(p for p in role["Policies"] if p["PolicyName"].endswith("SQSPolicy"))
    sam_policy["PolicyDocument"]["Statement"][0]["Action"] = "sqs:*"
    findings = [str(f) for f in iam.check(changed, resolver)]
    assert any("SQSPolicy: NO_VERSION" in f for f in findings), findings


def test_emulator_stands_in_only_for_attributes_of_types_moto_lacks() -> None:
    """A GetAtt of a type moto cannot create becomes a placeholder (it would fail the
    whole emulator deploy); one of a type moto creates is left for moto to resolve."""
    from .emulator import _without_skipped_attributes

    template = {"Resources": {
        "Cdn": {"Type": "AWS::CloudFront::Distribution"},
        "Queue": {"Type": "AWS::SQS::Queue"},
        "Bucket": {"Type": "AWS::S3::Bucket", "Properties": {
            "A": {"Fn::GetAtt": ["Cdn", "DomainName"]},
            "B": {"Fn::Sub": "https://${Cdn.DomainName}/${Queue.Arn}"},
            "C": {"Fn::GetAtt": ["Queue", "Arn"]},
        }},
    }}
    out, used = _without_skipped_attributes(template)
    props = out["Resources"]["Bucket"]["Properties"]
    assert isinstance(props["A"], str) and props["A"].endswith(".invalid")
    assert props["B"] == {"Fn::Sub": f"https://{props['A']}/${{Queue.Arn}}"}
    assert props["C"] == {"Fn::GetAtt": ["Queue", "Arn"]}
    assert used == ["Cdn.DomainName"]
