"""The emulator holds DynamoDB's real rule for conditional writes: atomic per item.

moto's threaded server alone lets two concurrent `attribute_not_exists` puts on one
key both succeed (seen: one key in 150 with six writers); infra/emulator.py
serializes DynamoDB requests so exactly one wins, as on AWS.
"""

import json
import subprocess
import sys
import threading
from pathlib import Path

import boto3

EMULATOR = Path(__file__).with_name("emulator.py")


def test_concurrent_conditional_puts_have_one_winner() -> None:
    proc = subprocess.Popen(
        [sys.executable, str(EMULATOR), "--watch-stdin"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        endpoint = json.loads(proc.stdout.readline())["endpoint"]

        def client():
            return boto3.client(
                "dynamodb", endpoint_url=endpoint, region_name="us-east-1",
                aws_access_key_id="testing", aws_secret_access_key="testing",
            )

        client().create_table(
            TableName="race",
            KeySchema=[{"AttributeName": "k", "KeyType": "HASH"}],
            AttributeDefinitions=[{"AttributeName": "k", "AttributeType": "S"}],
            BillingMode="PAY_PER_REQUEST",
        )
        wins: dict[int, int] = {}
        lock = threading.Lock()

        def writer(w: int) -> None:
            c = client()
            for i in range(150):
                try:
                    c.put_item(
                        TableName="race",
                        Item={"k": {"S": str(i)}, "w": {"S": str(w)}},
                        ConditionExpression="attribute_not_exists(k)",
                    )
                    with lock:
                        wins[i] = wins.get(i, 0) + 1
                except c.exceptions.ConditionalCheckFailedException:
                    pass

        threads = [threading.Thread(target=writer, args=(w,)) for w in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(wins) == 150
        assert [k for k, n in wins.items() if n != 1] == []
    finally:
        proc.stdin.close()
        proc.wait(timeout=30)


def test_partition_queries_answer_as_moto_does() -> None:
    """The emulator's partition-indexed Query (emulator.query_partitions) gives the
    same pages as moto's own: every item, count, scanned count and LastEvaluatedKey,
    over 120 random key conditions, limits, both directions, the 1 MB page cap, filters and
    projections, on string and number sort keys."""
    import random

    from moto import mock_aws
    from moto.dynamodb.models.table import Table

    sys.path.insert(0, str(EMULATOR.parent))
    import emulator

    moto_query = Table.query
    emulator.query_partitions()
    fast_query = Table.query
    assert fast_query is not moto_query
    rng = random.Random(7)
    try:
        with mock_aws():
            c = boto3.client(
                "dynamodb", region_name="us-east-1",
                aws_access_key_id="testing", aws_secret_access_key="testing",
            )
            for table, kind in (("s", "S"), ("n", "N")):
                c.create_table(
                    TableName=table,
                    KeySchema=[
                        {"AttributeName": "pk", "KeyType": "HASH"},
                        {"AttributeName": "sk", "KeyType": "RANGE"},
                    ],
                    AttributeDefinitions=[
                        {"AttributeName": "pk", "AttributeType": "S"},
                        {"AttributeName": "sk", "AttributeType": kind},
                    ],
                    BillingMode="PAY_PER_REQUEST",
                )
            prefixes = ["CONN#", "RUN#", "RUNFILE#r1#", "RUNFILE#r2#", "RUNPAGE#r1#", "Z"]
            for pk, count in (("a", 400), ("b", 60), ("c", 1)):
                for i in range(count):
                    sk = f"{rng.choice(prefixes)}{rng.randrange(10**6):06d}"
                    # A few ~90 KB items: pages end at moto's 1 MB cap, not the limit.
                    blob = "x" * (90_000 if rng.random() < 0.05 else rng.randrange(200))
                    item = {"pk": {"S": pk}, "blob": {"S": blob}, "n": {"N": str(i % 5)}}
                    c.put_item(TableName="s", Item={**item, "sk": {"S": sk}})
                    c.put_item(TableName="n", Item={**item, "sk": {"N": str(rng.randrange(-500, 500))}})

            def pages(params: dict, query) -> list:
                Table.query = query
                out, start = [], None
                while True:
                    request = dict(params)
                    if start:
                        request["ExclusiveStartKey"] = start
                    page = c.query(**request)
                    page.pop("ResponseMetadata", None)
                    out.append(page)
                    start = page.get("LastEvaluatedKey")
                    if not start:
                        return out

            checked = 0
            for _ in range(120):
                table = rng.choice(["s", "n"])
                pk = rng.choice(["a", "b", "c", "missing"])
                values = {":pk": {"S": pk}}
                condition = "pk = :pk"
                shape = rng.choice(["none", "begins", "between", "ge", "gt", "lt", "le", "eq"])
                if table == "s":
                    lo, hi = sorted(f"{rng.choice(prefixes)}{rng.randrange(10**6):06d}" for _ in range(2))
                    values[":lo"], values[":hi"] = {"S": lo}, {"S": hi}
                    values[":p"] = {"S": rng.choice(prefixes + ["RUNFILE#"])}
                else:
                    lo, hi = sorted(rng.randrange(-600, 600) for _ in range(2))
                    values[":lo"], values[":hi"] = {"N": str(lo)}, {"N": str(hi)}
                    if shape == "begins":
                        shape = "none"
                condition += {
                    "none": "", "begins": " AND begins_with(sk, :p)",
                    "between": " AND sk BETWEEN :lo AND :hi", "ge": " AND sk >= :lo",
                    "gt": " AND sk > :lo", "lt": " AND sk < :hi", "le": " AND sk <= :hi",
                    "eq": " AND sk = :lo",
                }[shape]
                used = {k: v for k, v in values.items() if k in condition}
                params = {
                    "TableName": table,
                    "KeyConditionExpression": condition,
                    "ExpressionAttributeValues": used,
                    "ScanIndexForward": rng.random() < 0.6,
                }
                limit = rng.choice([None, 1, 3, 17, 100])
                if limit:
                    params["Limit"] = limit
                if rng.random() < 0.3:
                    params["FilterExpression"] = "n <> :zero"
                    params["ExpressionAttributeValues"] = {**used, ":zero": {"N": "0"}}
                if rng.random() < 0.2:
                    params["ProjectionExpression"] = "pk, sk, n"
                assert pages(params, fast_query) == pages(params, moto_query), params
                checked += 1
            assert checked == 120
    finally:
        Table.query = moto_query
