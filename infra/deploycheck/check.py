"""All deployability checks on one template, as one report."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import emulator, graph, iam, params, quotas, sam
from .resolve import Resolver

ROOT = Path(__file__).resolve().parents[2]

# Findings that are how the document is meant to be, with why.
ACCEPTED = {
    # A key policy's Resource "*" means "this key"; granting the account root kms:*
    # is AWS's default key policy, which hands the key's access to IAM policies.
    ("KeyPolicy", "RESOURCE_STAR"),
}
TRUST_ACTIONS = {"sts:AssumeRole", "sts:TagSession", "sts:SetSourceIdentity"}


@dataclass
class Report:
    errors: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    transformed: dict[str, Any] = field(default_factory=dict)
    deployment: emulator.Deployment | None = None

    def fail(self, check: str, detail: str) -> None:
        self.errors.append(f"{check}: {detail}")


def lint(transformed: dict[str, Any]) -> list[str]:
    """cfn-lint on the CloudFormation JSON (the venv's pinned cfn-lint)."""
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(transformed, f, indent=1)
    cfn_lint = Path(sys.executable).with_name("cfn-lint")
    done = subprocess.run(
        [str(cfn_lint), "--format", "parseable", f.name], capture_output=True, text=True
    )
    Path(f.name).unlink()
    lines = [l for l in (done.stdout + done.stderr).splitlines() if l.strip()]
    if done.returncode != 0 and not lines:
        lines = [f"cfn-lint exited {done.returncode}"]
    return lines


def trust_policy_problems(template: dict[str, Any]) -> list[str]:
    out = []
    for logical, res in template.get("Resources", {}).items():
        if res.get("Type") != "AWS::IAM::Role":
            continue
        for stmt in res["Properties"]["AssumeRolePolicyDocument"].get("Statement", []):
            actions = stmt.get("Action", [])
            actions = [actions] if isinstance(actions, str) else actions
            if not stmt.get("Principal"):
                out.append(f"{logical}: trust statement without Principal")
            for action in actions:
                if action not in TRUST_ACTIONS:
                    out.append(f"{logical}: {action} in a trust policy")
    return out


def run(
    template_path: Path = ROOT / "template.yaml",
    samconfig_path: Path = ROOT / "samconfig.toml",
) -> Report:
    report = Report()
    sam_template = sam.load(template_path)
    config = params.samconfig_deploy(samconfig_path)
    values = params.samconfig_parameters(samconfig_path)
    stack = config.get("stack_name", "custody")

    for name in params.unconstrained(sam_template):
        report.fail("parameters", f"{name} has no deploy-time constraint")
    for problem in params.violations(sam_template, values):
        report.fail("samconfig.toml parameters", problem)

    transformed = sam.transform(sam_template, values)
    report.transformed = transformed

    for line in lint(transformed):
        report.fail("cfn-lint (transformed)", line)

    for cycle in graph.cycles(graph.dependencies(transformed)):
        report.fail("dependency cycle", " -> ".join(cycle))

    resolver = Resolver(transformed, values, stack)
    for finding in iam.check(transformed, resolver):
        kind = finding.where.rsplit("/", 1)[-1]
        if (kind, finding.issue) in ACCEPTED:
            continue
        if kind == "AssumeRolePolicyDocument" and finding.issue == "MALFORMED":
            continue  # trust policies have no Resource; checked below instead
        report.fail("IAM", str(finding))
    for problem in trust_policy_problems(transformed):
        report.fail("IAM trust", problem)

    for problem in quotas.violations(transformed, resolver):
        report.fail("quota", problem)

    capabilities = config.get("capabilities", "CAPABILITY_IAM")
    capabilities = capabilities.split() if isinstance(capabilities, str) else list(capabilities)
    d = emulator.deploy(sam.package(sam_template), transformed, values, capabilities, stack)
    report.deployment = d
    for err in d.validate_errors:
        report.fail("validate-template (packaged)", err)
    if d.change_set_status != "CREATE_COMPLETE":
        report.fail("change set", f"{d.change_set_status} {d.change_set_reason}")
    if d.stack_status != "CREATE_COMPLETE":
        report.fail("emulator deploy", f"{d.stack_status} {d.stack_reason}")
    report.notes.append(
        f"emulator deploy: {len(d.created)} resources created; "
        f"skipped (moto has no CloudFormation support): {', '.join(sorted(d.skipped_types)) or 'none'}; "
        f"their attributes as placeholders: {', '.join(d.facts.get('placeholder_attributes', [])) or 'none'}"
    )
    return report


def main() -> int:
    report = run()
    for note in report.notes:
        print(f"deploycheck: {note}")
    if report.errors:
        for error in report.errors:
            print(f"deploycheck: FAIL {error}", file=sys.stderr)
        return 1
    print(
        "deploycheck: template.yaml transforms, lints clean, has no dependency cycle, "
        "valid IAM, parameters constrained, deploys into the emulator"
    )
    return 0
