#!/usr/bin/env python3
"""Run the moto AWS emulator on 127.0.0.1 for the tests and the local stack.

    python infra/emulator.py [--port N] [--watch-stdin] [--pidfile F]

Once the server answers HTTP, prints exactly one JSON line on stdout:
    {"endpoint": "http://127.0.0.1:PORT", "pid": PID}
Everything else (errors, moto/werkzeug logs) goes to stderr.
Stops on SIGTERM/SIGINT/SIGHUP, and with --watch-stdin also when stdin hits
EOF, so a parent holding the write end of our stdin takes us down when it dies.
"""

import argparse
import json
import logging
import os
import signal
import sys
import threading
import time
import urllib.request

HOST = "127.0.0.1"
STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}

# moto only needs *some* region and credentials; never pick up real ones.
for key, value in {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_REGION": "us-east-1",
}.items():
    os.environ.setdefault(key, value)
for key in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN"):
    os.environ.pop(key, None)


def die(msg: str) -> None:
    print(f"emulator: {msg}", file=sys.stderr, flush=True)
    sys.exit(1)


def enforce_trust_policies() -> None:
    """AWS refuses AssumeRole unless the role exists and its trust policy allows it,
    including a `sts:ExternalId` condition; moto issues credentials for any ARN. The
    export's S3 destinations rest on that rule (a tenant must not be able to use
    another customer's role), so the emulator holds it: the role must exist in the
    emulator's IAM, and when its trust policy's Allow statements for sts:AssumeRole
    all name an ExternalId, the caller's must be one of them. Principals are not
    modelled (every caller is the emulator's one account)."""
    from moto.iam.models import iam_backends
    from moto.sts.exceptions import STSClientError
    from moto.sts.models import STSBackend

    class AccessDenied(STSClientError):
        code = "AccessDenied"

    original = STSBackend.assume_role

    def allowed(document: str, external_id: str | None) -> bool:
        policy = json.loads(document) if isinstance(document, str) else document
        statements = policy.get("Statement", [])
        if isinstance(statements, dict):
            statements = [statements]
        for statement in statements:
            actions = statement.get("Action", [])
            actions = [actions] if isinstance(actions, str) else actions
            if statement.get("Effect") != "Allow" or not any(
                a in ("sts:AssumeRole", "sts:*", "*") for a in actions
            ):
                continue
            wanted = (
                statement.get("Condition", {}).get("StringEquals", {}).get("sts:ExternalId")
            )
            if wanted is None:
                return True
            wanted = [wanted] if isinstance(wanted, str) else wanted
            if external_id in wanted:
                return True
        return False

    def assume_role(self, region_name, role_session_name, role_arn, policy, duration, external_id):
        parts = role_arn.split(":")
        account = parts[4] if len(parts) > 5 else ""
        name = role_arn.split("/")[-1]
        role = None
        if account.isdigit():
            roles = iam_backends[account]["aws"].roles.values()
            role = next((r for r in roles if r.name == name), None)
        if role is None:
            raise AccessDenied(f"User is not authorized to perform: sts:AssumeRole on resource: {role_arn}")
        if not allowed(role.assume_role_policy_document, external_id or None):
            raise AccessDenied(f"User is not authorized to perform: sts:AssumeRole on resource: {role_arn}")
        return original(self, region_name, role_session_name, role_arn, policy, duration, external_id)

    STSBackend.assume_role = assume_role


def serialize_dynamodb() -> None:
    """DynamoDB applies each conditional write atomically; moto's threaded server
    checks the condition and writes in whichever threads happen to run, so two
    concurrent conditional puts on one key can both succeed. One lock around each
    DynamoDB request restores the real rule (the audit chain's concurrent-writer
    test depends on it)."""
    from moto.dynamodb.responses import DynamoHandler

    lock = threading.RLock()
    original = DynamoHandler.call_action

    def call_action(self):
        with lock:
            return original(self)

    DynamoHandler.call_action = call_action


def query_partitions() -> None:
    """moto answers every table Query by listing the whole table, sorting it with
    Python comparisons and walking past the exclusive start key one item at a time:
    about 12 s per page once a partition holds 100 000 items, so long paginations
    (an export's manifest, a DSAR over a big tenant) cannot run locally. DynamoDB reads
    one partition in key order from the start key. This does the same before moto's
    own query runs: it hands moto only the partition's items from the start key on,
    up to the first one past the page (the key condition's matches are contiguous in
    key order), so moto's limit, size cap, filter, projection and LastEvaluatedKey
    logic still decide the answer. Index queries, legacy filters and non-string,
    non-number sort keys go to moto unchanged. infra/test_emulator.py checks the
    answers equal moto's own."""
    import bisect

    from moto.dynamodb.models.dynamo_type import DynamoType
    from moto.dynamodb.models.table import RESULT_SIZE_LIMIT, Table

    original = Table.query

    def query(self, hash_key, range_comparison, range_objs, limit, exclusive_start_key,
              scan_index_forward, projection_expressions, index_name=None,
              consistent_read=False, filter_expression=None, hash_key_conditions=None,
              range_key_conditions=None, **filter_kwargs):
        rest = dict(consistent_read=consistent_read, filter_expression=filter_expression,
                    hash_key_conditions=hash_key_conditions,
                    range_key_conditions=range_key_conditions, **filter_kwargs)
        plain = (
            index_name is None
            and not filter_kwargs
            and hash_key is not None
            and self.range_key_attr
            and self.range_key_type in ("S", "N")
            and len(range_key_conditions or []) <= 1
        )
        partition = self.items.get(hash_key) if plain else None
        if not partition:
            return original(self, hash_key, range_comparison, range_objs, limit,
                            exclusive_start_key, scan_index_forward,
                            projection_expressions, index_name, **rest)
        # The native sort key, read once per item: moto's `cast_value` property costs
        # more than the sort itself on a big partition.
        if self.range_key_type == "S":
            pairs = [(item.range_key.value, item) for item in partition.values()]
        else:
            pairs = [(item.range_key.cast_value, item) for item in partition.values()]
        pairs.sort(key=lambda pair: pair[0])
        keys = [key for key, _ in pairs]
        items = [item for _, item in pairs]
        if scan_index_forward:
            start = 0
            if exclusive_start_key and self.range_key_attr in exclusive_start_key:
                after = DynamoType(exclusive_start_key[self.range_key_attr]).cast_value
                start = bisect.bisect_right(keys, after)
            if range_comparison in ("EQ", "GE", "GT", "BETWEEN", "BEGINS_WITH"):
                start = max(start, bisect.bisect_left(keys, range_objs[0].cast_value))
            candidates = items[start:]
        else:
            end = len(items)
            if exclusive_start_key and self.range_key_attr in exclusive_start_key:
                before = DynamoType(exclusive_start_key[self.range_key_attr]).cast_value
                end = bisect.bisect_left(keys, before)
            candidates = items[end - 1::-1] if end else []
        page, matched, size, started = [], 0, 0, False
        for item in candidates:
            if range_comparison and not item.range_key.compare(range_comparison, range_objs):
                if started:
                    # Past the contiguous run of matches. moto still looks at this
                    # item: a full page then reports a LastEvaluatedKey (as DynamoDB
                    # may), which must not change.
                    page.append(item)
                    break
                continue
            started = True
            page.append(item)
            matched += 1
            size += item.size()
            # One past the page: moto then reports the page's LastEvaluatedKey.
            if (limit is not None and matched > limit) or size > RESULT_SIZE_LIMIT:
                break
        self.all_items = lambda: page  # moto's query lists candidates through this
        try:
            return original(self, hash_key, range_comparison, range_objs, limit, None,
                            scan_index_forward, projection_expressions, index_name,
                            **rest)
        finally:
            del self.all_items

    Table.query = query


def start_server(port: int):
    from moto.server import ThreadedMotoServer

    # ThreadedMotoServer.start() binds in a worker thread and waits on an event
    # that is never set if the bind fails (port in use): it would hang forever.
    # Run start() in its own thread and notice the bind thread's exception.
    failed = threading.Event()
    default_hook = threading.excepthook

    def hook(args):
        failed.set()
        default_hook(args)  # prints the traceback to stderr

    threading.excepthook = hook
    # verbose=False: start() would otherwise print a banner to stdout.
    # port=0 works: the OS picks a free port, get_host_and_port() reports it.
    server = ThreadedMotoServer(ip_address=HOST, port=port, verbose=False)
    starter = threading.Thread(target=server.start, daemon=True)
    starter.start()
    while starter.is_alive() and not failed.is_set():
        starter.join(0.05)
    threading.excepthook = default_hook
    if failed.is_set():
        die(f"could not start moto on {HOST}:{port}")
    return server


def wait_ready(endpoint: str, timeout: float = 30.0) -> None:
    # No proxies: an HTTP(S)_PROXY in the environment must not catch 127.0.0.1.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    deadline = time.monotonic() + timeout
    while True:
        try:
            with opener.open(f"{endpoint}/moto-api/", timeout=2) as resp:
                resp.read()
                return
        except OSError as err:
            if time.monotonic() > deadline:
                die(f"{endpoint} not answering after {timeout:.0f}s: {err}")
            time.sleep(0.05)


def watch_stdin() -> None:
    # Drain stdin until EOF, then signal ourselves like a SIGTERM would.
    # os.read, not sys.stdin: a daemon thread blocked inside a buffered reader
    # makes interpreter shutdown abort ("could not acquire lock for <stdin>").
    while os.read(0, 65536):
        pass
    os.kill(os.getpid(), signal.SIGTERM)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, default=0, help="0 (default): any free port")
    parser.add_argument("--watch-stdin", action="store_true", help="exit at EOF on stdin")
    parser.add_argument("--pidfile", help="write our pid here while running")
    args = parser.parse_args()

    # stdout carries only the JSON line: route any stray print() to stderr.
    out, sys.stdout = sys.stdout, sys.stderr
    # werkzeug logs every request at INFO; keep warnings and errors, on stderr.
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)

    # Block the stop signals in every thread (threads inherit the mask, so do it
    # first); the main thread collects them with sigwait(). No signal handler
    # runs at an arbitrary point, so there is no locking hazard.
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)

    serialize_dynamodb()
    query_partitions()
    enforce_trust_policies()
    server = start_server(args.port)
    port = server.get_host_and_port()[1]
    # Some moto services build URLs pointing back at the server from MOTO_PORT.
    os.environ["MOTO_PORT"] = str(port)
    endpoint = f"http://{HOST}:{port}"
    wait_ready(endpoint)

    if args.pidfile:
        with open(args.pidfile, "w") as f:
            f.write(f"{os.getpid()}\n")
    if args.watch_stdin:
        threading.Thread(target=watch_stdin, daemon=True).start()

    out.write(json.dumps({"endpoint": endpoint, "pid": os.getpid()}) + "\n")
    out.flush()

    signal.sigwait(STOP_SIGNALS)
    server.stop()
    if args.pidfile:
        try:
            with open(args.pidfile) as f:
                ours = f.read().strip() == str(os.getpid())
            if ours:
                os.remove(args.pidfile)
        except OSError:
            pass


if __name__ == "__main__":
    main()
