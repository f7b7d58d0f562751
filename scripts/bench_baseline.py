#!/usr/bin/env python3
"""Benchmark baseline: a plain asyncio queue-driven LLM extraction worker.

Same per-job work as the Rust worker (SQS receive, DynamoDB claim, chat completion, JSON Schema check,
S3 result, DynamoDB complete, batched SQS delete) against the same endpoints, written as a competent
team would: boto3/http.client calls on a thread pool via run_in_executor, at most N jobs in flight.
Usage: bench_baseline.py --endpoint URL --model-url URL --concurrency N --jobs M  (one JSON line out)
"""
import argparse, asyncio, concurrent.futures, datetime as dt, http.client, json, os, resource
import sys, threading, time, urllib.parse

import boto3, botocore.config, jsonschema

TEXT = "Summit 45 Pack. Price $189.00. Weight 1.2 kg. In stock."
INSTRUCTIONS = "Extract the product name and price."
SCHEMA = {"type": "object", "properties": {"name": {"type": "string"}, "price": {"type": "number"}},
          "required": ["name", "price"]}
SYSTEM = "Extract data from the page as JSON matching the schema."
PRICE_IN, PRICE_OUT = 0.25e-6, 2.0e-6  # USD per prompt / completion token


class Duplicate(Exception):
    """Another delivery of the message completed (or is completing) the job: acknowledge it."""


def log(*a):
    print("[baseline]", *a, file=sys.stderr, flush=True)


def now_iso(offset_secs=0):
    t = dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=offset_secs)
    return t.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def strict(node):
    """OpenAI strict mode: every object closed, all of its properties required."""
    if isinstance(node, list):
        return [strict(v) for v in node]
    if not isinstance(node, dict):
        return node
    out = {k: strict(v) for k, v in node.items()}
    if out.get("type") == "object" and isinstance(out.get("properties"), dict):
        out["additionalProperties"], out["required"] = False, list(out["properties"])
    return out


def cpu_now():
    return sum(resource.getrusage(resource.RUSAGE_SELF)[:2])  # user + system


class Worker:
    def __init__(self, args):
        self.a, self.n, self.m = args, args.concurrency, args.jobs
        self.pool = concurrent.futures.ThreadPoolExecutor(max_workers=self.n + 8)
        cfg = botocore.config.Config(max_pool_connections=self.n + 8, s3={"addressing_style": "path"},
                                     retries={"max_attempts": 3, "mode": "standard"})
        kw = dict(endpoint_url=args.endpoint, region_name=args.region, config=cfg)
        self.sqs, self.ddb, self.s3 = (boto3.client(s, **kw) for s in ("sqs", "dynamodb", "s3"))
        self.counting, self.calls, self.calls_lock = False, 0, threading.Lock()
        for c in (self.sqs, self.ddb, self.s3):
            c.meta.events.register("before-call", self._count)
        p = args.prefix
        self.queue, self.table, self.bucket = None, f"{p}-jobs", f"{p}-artifacts"
        u = urllib.parse.urlsplit(args.model_url)
        self.model_conn = (http.client.HTTPSConnection if u.scheme == "https" else
                           http.client.HTTPConnection, u.netloc)
        self.model_path, self.tls = u.path.rstrip("/") + "/chat/completions", threading.local()
        self.validators, self.tasks, self.deletes, self.wake = {}, set(), [], None
        self.inflight = self.completed = self.failed = self.duplicates = 0

    def _count(self, **_):
        if self.counting:
            with self.calls_lock:
                self.calls += 1

    async def run(self, fn, *a, **kw):
        return await asyncio.get_running_loop().run_in_executor(self.pool, lambda: fn(*a, **kw))

    def spawn(self, coro):
        t = asyncio.ensure_future(coro)
        self.tasks.add(t)  # keep a reference until done
        t.add_done_callback(self.tasks.discard)
        return t

    def setup(self):
        self.queue = self.sqs.create_queue(QueueName=f"{self.a.prefix}-queue")["QueueUrl"]
        try:
            self.ddb.create_table(TableName=self.table, BillingMode="PAY_PER_REQUEST",
                                  AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
                                  KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}])
        except self.ddb.exceptions.ResourceInUseException:
            pass
        self.ddb.get_waiter("table_exists").wait(TableName=self.table, WaiterConfig={"Delay": 1})
        extra = {} if self.a.region == "us-east-1" else {
            "CreateBucketConfiguration": {"LocationConstraint": self.a.region}}
        try:
            self.s3.create_bucket(Bucket=self.bucket, **extra)
        except (self.s3.exceptions.BucketAlreadyOwnedByYou, self.s3.exceptions.BucketAlreadyExists):
            pass

    def teardown(self):  # best effort
        def bucket():
            for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket):
                if keys := [{"Key": o["Key"]} for o in page.get("Contents", [])]:
                    self.s3.delete_objects(Bucket=self.bucket, Delete={"Objects": keys, "Quiet": True})
            self.s3.delete_bucket(Bucket=self.bucket)
        for step in (lambda: self.queue and self.sqs.delete_queue(QueueUrl=self.queue),
                     lambda: self.ddb.delete_table(TableName=self.table), bucket):
            try:
                step()
            except Exception as e:
                log("cleanup:", type(e).__name__, e)

    async def enqueue(self):
        async def batch(lo):
            entries = [{"Id": str(i), "MessageBody": json.dumps({
                "job_id": f"base-{i}", "type": "extract", "text": TEXT,
                "instructions": INSTRUCTIONS, "schema": SCHEMA})} for i in range(lo, min(lo + 10, self.m))]
            r = await self.run(self.sqs.send_message_batch, QueueUrl=self.queue, Entries=entries)
            if r.get("Failed"):
                raise RuntimeError(f"send_message_batch failed: {r['Failed']}")
        await asyncio.gather(*(batch(lo) for lo in range(0, self.m, 10)))

    def post_model(self, payload):  # on a pool thread; one kept-alive connection per thread
        body = json.dumps(payload).encode()
        headers = {"Content-Type": "application/json", "Authorization": "Bearer bench-key"}
        for attempt in (1, 2):  # the server may have closed an idle kept-alive connection
            conn = getattr(self.tls, "conn", None) or self.model_conn[0](self.model_conn[1], timeout=120)
            self.tls.conn = conn
            try:
                conn.request("POST", self.model_path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
            except (http.client.HTTPException, OSError):
                conn.close()
                self.tls.conn = None
                if attempt == 2:
                    raise
                continue
            if resp.status != 200:
                raise RuntimeError(f"model HTTP {resp.status}: {data[:200]!r}")
            return json.loads(data)

    def validator(self, schema):
        key = json.dumps(schema, sort_keys=True)
        if key not in self.validators:
            self.validators[key] = jsonschema.Draft202012Validator(schema)
        return self.validators[key]

    async def conditional(self, jid, fn, **kw):
        try:
            await self.run(fn, **kw)
        except self.ddb.exceptions.ConditionalCheckFailedException:
            raise Duplicate(jid) from None

    async def process(self, body):
        job = json.loads(body)
        jid, schema = job["job_id"], job["schema"]
        await self.conditional(jid, self.ddb.put_item, TableName=self.table, Item={
            "id": {"S": jid}, "status": {"S": "processing"}, "created_at": {"S": now_iso()},
            "attempts": {"N": "1"}, "lease_until": {"S": now_iso(300)}},
            ConditionExpression="attribute_not_exists(id) OR #s <> :completed",
            ExpressionAttributeNames={"#s": "status"},
            ExpressionAttributeValues={":completed": {"S": "completed"}})
        resp = await self.run(self.post_model, {
            "model": self.a.model,
            "messages": [{"role": "system", "content": SYSTEM},
                         {"role": "user", "content": job["instructions"] + "\n\n" + job["text"]}],
            "max_completion_tokens": 1024,
            "response_format": {"type": "json_schema", "json_schema": {
                "name": "extraction", "strict": True, "schema": strict(schema)}}})
        content, usage = resp["choices"][0]["message"]["content"], resp.get("usage") or {}
        data = json.loads(content)
        self.validator(schema).validate(data)
        key = f"jobs/{jid}/result.json"
        result = {"job_id": jid, "data": data, "usage": usage, "model": self.a.model}
        await self.run(self.s3.put_object, Bucket=self.bucket, Key=key,
                       Body=json.dumps(result).encode(), ContentType="application/json")
        pin, pout = int(usage.get("prompt_tokens", 0)), int(usage.get("completion_tokens", 0))
        await self.conditional(
            jid, self.ddb.update_item, TableName=self.table, Key={"id": {"S": jid}},
            UpdateExpression="SET #s = :completed, prompt_tokens = :pin, completion_tokens = :pout,"
                             " cost_usd = :cost, result_key = :key, updated_at = :now",
            ConditionExpression="#s = :processing", ExpressionAttributeNames={"#s": "status"},
            ExpressionAttributeValues={
                ":completed": {"S": "completed"}, ":processing": {"S": "processing"},
                ":pin": {"N": str(pin)}, ":pout": {"N": str(pout)},
                ":cost": {"N": f"{pin * PRICE_IN + pout * PRICE_OUT:.8f}"},
                ":key": {"S": key}, ":now": {"S": now_iso()}})

    async def job(self, msg):
        try:
            try:
                await self.process(msg["Body"])
                self.completed += 1
            except Duplicate as e:
                self.duplicates += 1
                log(f"duplicate delivery of {e}; acknowledging it")
            self.deletes.append(msg["ReceiptHandle"])
            if len(self.deletes) >= 10:
                self.flush_deletes()
        except Exception as e:  # leave the message: it reappears after its visibility timeout
            self.failed += 1
            log(f"job failed: {type(e).__name__}: {e}")
        finally:
            self.inflight -= 1
            self.wake.set()

    def flush_deletes(self):
        while self.deletes:
            batch, self.deletes = self.deletes[:10], self.deletes[10:]
            self.spawn(self.delete(batch))

    async def delete(self, handles):
        entries = [{"Id": str(i), "ReceiptHandle": h} for i, h in enumerate(handles)]
        try:
            r = await self.run(self.sqs.delete_message_batch, QueueUrl=self.queue, Entries=entries)
            if r.get("Failed"):
                log("delete_message_batch failures:", r["Failed"])
        except Exception as e:
            log("delete_message_batch:", e)

    def done(self):
        return self.completed + self.failed >= self.m

    async def poller(self):
        while not self.done():
            want = min(10, self.n - self.inflight, self.m - self.completed - self.failed - self.inflight)
            if want <= 0:
                self.wake.clear()
                await self.wake.wait()
                continue
            self.inflight += want  # reserve the slots while the receive is outstanding
            try:
                msgs = (await self.run(self.sqs.receive_message, QueueUrl=self.queue, WaitTimeSeconds=1,
                                       MaxNumberOfMessages=want, VisibilityTimeout=300)).get("Messages", [])
            except Exception as e:
                log("receive_message:", e)
                msgs = []
                await asyncio.sleep(0.5)
            self.inflight -= want - len(msgs)
            for msg in msgs:
                self.spawn(self.job(msg))
            self.wake.set()

    async def work(self):
        self.wake = asyncio.Event()

        async def ticker():  # flush a partial delete batch every 200 ms
            while True:
                await asyncio.sleep(0.2)
                self.flush_deletes()
        tick = asyncio.ensure_future(ticker())
        # A few concurrent long-pollers, so one receive round trip does not cap throughput.
        await asyncio.gather(*(self.poller() for _ in range(max(1, min(8, self.n // 10)))))
        tick.cancel()
        while self.tasks or self.deletes:  # stray duplicates and outstanding delete batches
            self.flush_deletes()
            await asyncio.gather(*list(self.tasks))


async def amain(args):
    w = Worker(args)
    try:
        await w.run(w.setup)
        await w.enqueue()
        log(f"enqueued {args.jobs} jobs on {w.queue}")
        w.counting, t0, c0 = True, time.perf_counter(), cpu_now()
        await w.work()
        wall, cpu, w.counting = time.perf_counter() - t0, cpu_now() - c0, False
    finally:
        await w.run(w.teardown)
        w.pool.shutdown(wait=True)
    jobs = max(w.completed, 1)
    print(json.dumps({
        "jobs": w.completed, "concurrency": args.concurrency, "wall_secs": round(wall, 3),
        "cpu_secs": round(cpu, 3), "cpu_ms_per_job": round(cpu * 1000 / jobs, 3),
        "jobs_per_sec": round(w.completed / wall, 2), "aws_calls": w.calls,
        "aws_calls_per_job": round(w.calls / jobs, 3)}), flush=True)
    if w.duplicates:
        log(f"{w.duplicates} duplicate deliveries acknowledged")
    if w.failed:
        log(f"{w.failed} jobs failed")
    return 1 if w.failed else 0


def main():
    p = argparse.ArgumentParser(description="Benchmark baseline: asyncio + boto3 extraction worker.")
    p.add_argument("--endpoint", required=True, help="AWS endpoint URL (moto)")
    p.add_argument("--model-url", required=True, help="OpenAI-compatible base URL, e.g. http://h:p/v1")
    p.add_argument("--concurrency", type=int, required=True)
    p.add_argument("--jobs", type=int, required=True)
    p.add_argument("--prefix", default=f"atlas-baseline-{os.getpid()}")
    p.add_argument("--region", default="us-east-1")
    p.add_argument("--model", default="gpt-5-mini")
    args = p.parse_args()
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    try:
        sys.exit(asyncio.run(amain(args)))
    except Exception as e:
        log(f"error: {type(e).__name__}: {e}")
        sys.exit(1)


if __name__ == "__main__":
    main()
