"""Offline proof that template.yaml deploys: the SAM transform `sam deploy` applies,
cfn-lint on its output, a dependency-cycle check of our own, IAM policy validation,
parameter constraints, and a deploy into the emulator's CloudFormation.

Run all of it with `.venv/bin/python -m infra.deploycheck` from the repository root;
`make test` runs it and its tests (`.venv/bin/python -m pytest infra/deploycheck`).
"""
