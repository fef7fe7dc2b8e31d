#!/usr/bin/env python3
"""The Python baseline of the cold-start benchmark: a minimal Lambda custom runtime.

It does at init what a Python function doing custody's job would do (import boto3
and create the same five clients the Rust functions build in `custody::aws::Clients`:
dynamodb, kms, s3, secretsmanager, scheduler), then polls the Runtime API exactly as
the Rust runtime does. Only the standard library besides boto3, so the import cost
measured is boto3's own.

The benchmark runs a copy of this file whose first line names the project venv's
python (see bench/src/python.rs), so no shell or `env` lookup is timed.
"""

import json
import os
import urllib.request

import boto3

API = "http://" + os.environ["AWS_LAMBDA_RUNTIME_API"] + "/2018-06-01/runtime"

# Built once per cold start, as the Rust functions do. boto3 reads AWS_REGION and
# AWS_ENDPOINT_URL from the environment like the Rust SDK.
session = boto3.session.Session()
clients = {
    name: session.client(name)
    for name in ("dynamodb", "kms", "s3", "secretsmanager", "scheduler")
}


def handler(event):
    return {"hello": event.get("name") if isinstance(event, dict) else None}


def main():
    while True:
        with urllib.request.urlopen(API + "/invocation/next") as response:
            request_id = response.headers["Lambda-Runtime-Aws-Request-Id"]
            event = json.loads(response.read() or b"null")
        body = json.dumps(handler(event)).encode()
        reply = urllib.request.Request(
            API + "/invocation/" + request_id + "/response", data=body, method="POST"
        )
        urllib.request.urlopen(reply).close()


if __name__ == "__main__":
    main()
