#!/usr/bin/env python3
"""moto_server with atomic DynamoDB writes.

moto serves requests on many threads, and its DynamoDB backend evaluates a ConditionExpression
and applies the write without a lock, so two concurrent conditional writes on one item can both
succeed. Real DynamoDB never allows that, and the worker's correctness (one claim wins, the
budget ledger's optimistic version check) rests on it. This wrapper serialises DynamoDB's
writing operations with one lock and otherwise runs moto's own server unchanged (same flags).
"""
import functools
import sys
import threading

from moto.dynamodb.models import DynamoDBBackend
from moto.server import main

_LOCK = threading.RLock()


def _atomic(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with _LOCK:
            return fn(*args, **kwargs)

    return wrapper


for _name in ("put_item", "update_item", "delete_item", "transact_write_items", "get_item"):
    setattr(DynamoDBBackend, _name, _atomic(getattr(DynamoDBBackend, _name)))

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
