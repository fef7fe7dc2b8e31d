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
