#!/usr/bin/env python3
"""Deploys deploy/cloudformation/atlas-codex-stage.yaml into a moto server for preview AND production
side by side, checks what the stacks created, then runs the real worker binary against each stack.

Usage: ATLAS_TEST_MOTO_ENDPOINT=http://127.0.0.1:PORT [ATLAS_BIN=target/debug/atlas-codex] cfn_moto_check.py
       (scripts/moto.sh start prints the endpoint; scripts/test.sh exports both)

The worker run, per stage, with the random account's temporary credentials, the moto endpoint and a
simulated model (resource names are derived by the binary from the stage, exactly as in a pod; only a
suffixed bucket is passed as ATLAS__STORAGE__BUCKET): `submit` three inline html/text jobs with
instructions and a schema, send one invalid message (`type: teleport`) the way a raw producer would,
`worker --exit-when-idle` (60 s limit), then `status --output json` must say `completed` for each job,
the result object must be in the stage's bucket and the record in its table, and `dlq list --output
json` must show the invalid job in this stage's DLQ only. The stack's queue settings (visibility,
redrive) are used as created; nothing is provisioned by the binary. Without ATLAS_BIN this part is
skipped with a loud note, except in CI (`CI` set), where a missing binary is a failed check. Nothing
is ever built here.

So as not to disturb other users of the same moto server, everything happens in a fresh random AWS
account (moto isolates accounts; entered through sts:AssumeRole), and the stacks and their retained
tables and buckets are deleted at the end. S3 bucket names are global even in moto: when a stage's
default bucket name is already taken on this server, the check uses `<default>-<account>` and says so.

What moto does not emulate from CloudFormation (DynamoDB TTL and PITR, S3 lifecycle, public access
block and bucket policy, DLQ RedriveAllowPolicy) is checked statically by deploy_checks.py (group cfn).
"""

from __future__ import annotations

import ast
import json
import os
import random
import subprocess
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

import boto3
from botocore.exceptions import ClientError

sys.path.insert(0, str(Path(__file__).resolve().parent))
from checklib import Results  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = ROOT / "deploy" / "cloudformation" / "atlas-codex-stage.yaml"
STAGES = ("preview", "production")
REGION = "us-east-1"
OIDC = "oidc.eks.us-east-1.amazonaws.com/id/EXAMPLED539D4633E53DE1B71EXAMPLE"
R = Results()


def clients(endpoint: str) -> tuple[dict, str, dict]:
    base = dict(endpoint_url=endpoint, region_name=REGION, aws_access_key_id="testing",
                aws_secret_access_key="testing")
    account = f"{random.randrange(10**11, 10**12):012d}"
    creds = boto3.client("sts", **base).assume_role(
        RoleArn=f"arn:aws:iam::{account}:role/atlas-codex-deploy-check", RoleSessionName="deploy-check")["Credentials"]
    kw = dict(endpoint_url=endpoint, region_name=REGION, aws_access_key_id=creds["AccessKeyId"],
              aws_secret_access_key=creds["SecretAccessKey"], aws_session_token=creds["SessionToken"])
    got = boto3.client("sts", **kw).get_caller_identity()["Account"]
    if got != account:
        raise RuntimeError(f"moto did not switch to account {account} (got {got})")
    return {s: boto3.client(s, **kw) for s in ("cloudformation", "sqs", "dynamodb", "s3", "iam")}, account, creds


def bucket_free(s3, name: str) -> bool:
    try:
        s3.head_bucket(Bucket=name)
        return False
    except ClientError as e:
        code = e.response.get("Error", {}).get("Code", "")
        if code in ("404", "NoSuchBucket", "NotFound"):
            return True
        return False  # 403: exists in another account


def wait_stack(cf, name: str, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        s = cf.describe_stacks(StackName=name)["Stacks"][0]
        if not s["StackStatus"].endswith("IN_PROGRESS") or time.monotonic() > deadline:
            return s
        time.sleep(0.5)


def main() -> None:
    endpoint = os.environ.get("ATLAS_TEST_MOTO_ENDPOINT", "")
    if not endpoint:
        print("ATLAS_TEST_MOTO_ENDPOINT is not set (start one with scripts/moto.sh start)", file=sys.stderr)
        sys.exit(2)
    c, account, creds = clients(endpoint)
    cf, sqs, ddb, s3, iam = (c[k] for k in ("cloudformation", "sqs", "dynamodb", "s3", "iam"))
    R.note(f"moto account {account} at {endpoint}")
    body = TEMPLATE.read_text()
    stacks: dict[str, dict] = {}
    buckets: dict[str, str] = {}
    try:
        # Both stacks are created before either is inspected: they must coexist.
        for stage in STAGES:
            default = f"atlas-codex-artifacts-{stage}"
            params = [{"ParameterKey": "Stage", "ParameterValue": stage},
                      {"ParameterKey": "OidcProvider", "ParameterValue": OIDC}]
            if bucket_free(s3, default):
                buckets[stage] = default
            else:
                buckets[stage] = f"{default}-{account}"
                R.note(f"bucket {default} already exists on this moto server; using {buckets[stage]}")
                params.append({"ParameterKey": "BucketName", "ParameterValue": buckets[stage]})
            cf.create_stack(StackName=f"atlas-codex-{stage}", TemplateBody=body, Parameters=params,
                            Capabilities=["CAPABILITY_NAMED_IAM"])
        for stage in STAGES:
            stacks[stage] = wait_stack(cf, f"atlas-codex-{stage}")
            R.check(f"moto: stack atlas-codex-{stage} is CREATE_COMPLETE beside the other stage's",
                    stacks[stage]["StackStatus"] == "CREATE_COMPLETE",
                    f"{stacks[stage]['StackStatus']}: {stacks[stage].get('StackStatusReason')}")
        for stage in STAGES:
            if stacks[stage]["StackStatus"] == "CREATE_COMPLETE":
                check_stage(stage, stacks[stage], buckets[stage], account, sqs, ddb, s3, iam)
        # The real worker binary against the stacks as created (both exist side by side).
        binary = atlas_bin()
        if binary and all(stacks[s]["StackStatus"] == "CREATE_COMPLETE" for s in STAGES):
            ran: set[str] = set()
            for stage in STAGES:
                run_worker(binary, stage, stacks, buckets[stage], endpoint, creds, sqs, ddb, s3, ran)
    finally:
        cleanup(cf, ddb, s3, buckets)
    R.exit()


def check_stage(stage, stack, bucket, account, sqs, ddb, s3, iam) -> None:
    other = next(s for s in STAGES if s != stage)
    out = {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", [])}

    def outputs():
        assert out["QueueUrl"].endswith(f"/{account}/atlas-codex-queue-{stage}"), out["QueueUrl"]
        assert out["DeadLetterQueueUrl"].endswith(f"/{account}/atlas-codex-dlq-{stage}"), out["DeadLetterQueueUrl"]
        assert out["JobsTableName"] == f"atlas-codex-jobs-{stage}"
        assert out["BudgetTableName"] == f"atlas-codex-budget-{stage}"
        assert out["ArtifactsBucketName"] == bucket
        assert out["EventTopicArn"] == f"arn:aws:sns:us-east-1:{account}:atlas-codex-events-{stage}", out["EventTopicArn"]
        assert out["WorkerRoleArn"] == f"arn:aws:iam::{account}:role/atlas-codex-worker-{stage}"
    R.run(f"moto {stage}: outputs name the stage's queue, DLQ, tables, bucket and role", outputs)

    def queues():
        q = sqs.get_queue_attributes(QueueUrl=out["QueueUrl"], AttributeNames=["All"])["Attributes"]
        d = sqs.get_queue_attributes(QueueUrl=out["DeadLetterQueueUrl"], AttributeNames=["All"])["Attributes"]
        rp = json.loads(q["RedrivePolicy"])
        assert rp["deadLetterTargetArn"] == d["QueueArn"] and d["QueueArn"].endswith(f":atlas-codex-dlq-{stage}"), rp
        assert int(rp["maxReceiveCount"]) == 5, rp
        assert q["VisibilityTimeout"] == "1800", q["VisibilityTimeout"]  # 6 x 300 s
        assert d["MessageRetentionPeriod"] == "1209600", d["MessageRetentionPeriod"]
        assert q.get("SqsManagedSseEnabled") == "true" and d.get("SqsManagedSseEnabled") == "true"
    R.run(f"moto {stage}: queue -> own DLQ after 5 receives, visibility 1800 s, DLQ 14 days, SSE", queues)

    def redrive():
        # A message received more than maxReceiveCount times lands in this stage's DLQ.
        body = json.dumps({"probe": stage, "n": random.random()})
        sqs.send_message(QueueUrl=out["QueueUrl"], MessageBody=body)
        for _ in range(5):
            got = sqs.receive_message(QueueUrl=out["QueueUrl"], MaxNumberOfMessages=1, VisibilityTimeout=0,
                                      WaitTimeSeconds=0).get("Messages", [])
            assert got and got[0]["Body"] == body, "probe message not received"
        assert not sqs.receive_message(QueueUrl=out["QueueUrl"], VisibilityTimeout=0,
                                       WaitTimeSeconds=0).get("Messages"), "message not dead-lettered"
        dl = sqs.receive_message(QueueUrl=out["DeadLetterQueueUrl"], WaitTimeSeconds=0).get("Messages", [])
        assert dl and dl[0]["Body"] == body, "probe message not in the stage's DLQ"
        sqs.delete_message(QueueUrl=out["DeadLetterQueueUrl"], ReceiptHandle=dl[0]["ReceiptHandle"])
    R.run(f"moto {stage}: a poison message ends in the stage's own DLQ", redrive)

    def tables():
        j = ddb.describe_table(TableName=f"atlas-codex-jobs-{stage}")["Table"]
        b = ddb.describe_table(TableName=f"atlas-codex-budget-{stage}")["Table"]
        assert j["KeySchema"] == [{"AttributeName": "id", "KeyType": "HASH"}], j["KeySchema"]
        assert b["KeySchema"] == [{"AttributeName": "period", "KeyType": "HASH"}], b["KeySchema"]
        for t in (j, b):
            assert t["BillingModeSummary"]["BillingMode"] == "PAY_PER_REQUEST"
        gsi = {g["IndexName"]: g for g in j.get("GlobalSecondaryIndexes", [])}
        assert [k["AttributeName"] for k in gsi["status-created_at-index"]["KeySchema"]] == ["status", "created_at"]
        # The GSI answers a newest-first status query.
        tname = j["TableName"]
        for i, ts in enumerate(("2025-01-01T00:00:00.000000000Z", "2025-01-02T00:00:00.000000000Z")):
            ddb.put_item(TableName=tname, Item={"id": {"S": f"probe-{i}"}, "status": {"S": "pending"},
                                                 "created_at": {"S": ts}})
        q = ddb.query(TableName=tname, IndexName="status-created_at-index", KeyConditionExpression="#s = :p",
                      ExpressionAttributeNames={"#s": "status"}, ExpressionAttributeValues={":p": {"S": "pending"}},
                      ScanIndexForward=False)
        assert [it["id"]["S"] for it in q["Items"]] == ["probe-1", "probe-0"], q["Items"]
    R.run(f"moto {stage}: job table (id, GSI status-created_at-index answers queries) and budget table (period)", tables)

    def bucket_ok():
        s3.head_bucket(Bucket=bucket)
        enc = s3.get_bucket_encryption(Bucket=bucket)["ServerSideEncryptionConfiguration"]["Rules"]
        assert enc and enc[0]["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] in ("AES256", "aws:kms"), enc
        s3.put_object(Bucket=bucket, Key="jobs/probe/result.json", Body=b"{}")
        assert s3.get_object(Bucket=bucket, Key="jobs/probe/result.json")["Body"].read() == b"{}"
    R.run(f"moto {stage}: artifacts bucket exists, is encrypted and stores objects", bucket_ok)

    def role():
        r = iam.get_role(RoleName=f"atlas-codex-worker-{stage}")["Role"]
        trust = policy_doc(r["AssumeRolePolicyDocument"])
        st = trust["Statement"]
        assert len(st) == 1, f"unexpected trust statements: {st}"  # no KEDA role given
        cond = st[0]["Condition"]["StringEquals"]
        assert st[0]["Principal"]["Federated"] == f"arn:aws:iam::{account}:oidc-provider/{OIDC}"
        assert cond[f"{OIDC}:sub"] == f"system:serviceaccount:atlas-codex-{stage}:atlas-codex-worker-{stage}"
        assert cond[f"{OIDC}:aud"] == "sts.amazonaws.com"
        names = iam.list_role_policies(RoleName=r["RoleName"])["PolicyNames"]
        resources = []
        for n in names:
            doc = policy_doc(iam.get_role_policy(RoleName=r["RoleName"], PolicyName=n)["PolicyDocument"])
            for s in doc["Statement"]:
                rs = s["Resource"] if isinstance(s["Resource"], list) else [s["Resource"]]
                resources += rs
        assert resources, "role has no policy resources"
        for arn in resources:
            assert arn != "*" and f"-{other}" not in arn, f"{arn} is not a {stage} resource"
            assert any(x in arn for x in (f"atlas-codex-queue-{stage}", f"atlas-codex-dlq-{stage}",
                                          f"atlas-codex-jobs-{stage}", f"atlas-codex-budget-{stage}",
                                          f"atlas-codex-events-{stage}", bucket)), arn
    R.run(f"moto {stage}: worker role trusts the stage's ServiceAccount and names only {stage} ARNs", role)


def ci() -> bool:
    """True on a CI runner (`CI` set to anything but empty/0/false), where nothing may be skipped."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def atlas_bin() -> str | None:
    """The worker binary from $ATLAS_BIN (scripts/test.sh exports the release build). Unset: a loud
    note locally, a failed check in CI. Nothing is ever built here."""
    path = os.environ.get("ATLAS_BIN", "").strip()
    if not path:
        if ci():
            R.check("moto: ATLAS_BIN names the worker binary (required in CI)", False,
                    "ATLAS_BIN is not set; scripts/test.sh exports it after `cargo build --release`")
        else:
            R.note("!!! ATLAS_BIN is not set: the worker was NOT run against the stacks (SKIPPED). "
                   "Set ATLAS_BIN=target/debug/atlas-codex after `cargo build` to run it.")
        return None
    ok = os.path.isfile(path) and os.access(path, os.X_OK)
    R.check("moto: ATLAS_BIN is an executable file", ok, f"ATLAS_BIN={path} is not an executable file")
    return str(Path(path).resolve()) if ok else None


def worker_env(stage: str, endpoint: str, creds: dict, bucket: str) -> dict[str, str]:
    """The environment of the binary: the stage's config files, the random account's temporary
    credentials, the moto endpoint and a simulated model; nothing inherited that could point it
    elsewhere (ATLAS__*, AWS_*, STAGE, OPENAI_*). Resource names are NOT given, except the bucket
    when the check had to suffix it: the binary derives them from the stage, as in a pod, and the
    fresh account holds nothing but the two stacks, so a wrong name cannot find anything."""
    keep = {k: v for k, v in os.environ.items()
            if not (k.startswith(("ATLAS_", "AWS_", "OPENAI_")) or k in ("STAGE", "RUST_LOG"))}
    keep.update({
        "ATLAS_CONFIG_DIR": str(ROOT / "config"),
        "AWS_ACCESS_KEY_ID": creds["AccessKeyId"],
        "AWS_SECRET_ACCESS_KEY": creds["SecretAccessKey"],
        "AWS_SESSION_TOKEN": creds["SessionToken"],
        "AWS_REGION": REGION,
        "AWS_EC2_METADATA_DISABLED": "true",
        "ATLAS__AWS__ENDPOINT_URL": endpoint,
        "ATLAS__AWS__REGION": REGION,
        "ATLAS__ADMIN__LISTEN": "",
        "ATLAS__QUEUE__WAIT_TIME_SECS": "1",
        "ATLAS__LLM__PROVIDER": "simulated",
        "ATLAS__LLM__SIMULATED_LATENCY_MS": "20",
        "ATLAS__TELEMETRY__LOG_FORMAT": "json",
    })
    if bucket != f"atlas-codex-artifacts-{stage}":
        keep["ATLAS__STORAGE__BUCKET"] = bucket
    return keep


def sample_jobs(stage: str, tag: str) -> list[dict]:
    """Three extract jobs with inline sources, instructions and a schema (no network needed)."""
    invoice = {"type": "object", "properties": {"number": {"type": "integer"}, "total_eur": {"type": "number"}},
               "required": ["number", "total_eur"]}
    meeting = {"type": "object", "properties": {"day": {"type": "string"}, "time": {"type": "string"},
                                                 "room": {"type": "string"}},
               "required": ["day", "time", "room"]}
    product = {"type": "object", "properties": {"name": {"type": "string"}, "in_stock": {"type": "boolean"}},
               "required": ["name", "in_stock"]}
    return [
        {"job_id": f"moto-{stage}-{tag}-html", "tenant": "deploy-check",
         "html": "<html><head><title>Invoice 17</title></head><body><h1>Invoice 17</h1>"
                 "<p>Total: 12.50 EUR</p></body></html>",
         "instructions": "Return the invoice number and the total in EUR.", "schema": invoice,
         "formats": ["markdown", "metadata"]},
        {"job_id": f"moto-{stage}-{tag}-text", "tenant": "deploy-check",
         "text": "Meeting moved to Thursday 10:00, room 4B. Bring the Q3 numbers.",
         "instructions": "Extract the day, the time and the room.", "schema": meeting},
        {"job_id": f"moto-{stage}-{tag}-product",
         "text": "The Atlas desk lamp (model AL-2) is back in stock, ships in 2 days.",
         "instructions": "Give the product name and whether it is in stock.", "schema": product},
    ]


# The stage policies (config/{stage}.toml): production answers with GPT-4-class models only.
MODEL_FAMILIES = {m: v.get("family") for m, v in
                  tomllib.loads((ROOT / "config" / "default.toml").read_text()).get("models", {}).items()}
ALLOWED_FAMILIES = {"preview": {"gpt5", "gpt4"}, "production": {"gpt4"}}
BAD_MESSAGE = '{"job_id":"bad-1","type":"teleport","text":"x"}'


def dlq_bodies(sqs, url: str) -> list[str]:
    """Bodies in a DLQ, read without consuming (visibility 0; moto returns every visible message)."""
    got = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, VisibilityTimeout=0,
                              WaitTimeSeconds=0).get("Messages", [])
    return [m["Body"] for m in got]


def run_worker(binary, stage, stacks, bucket, endpoint, creds, sqs, ddb, s3, ran: set[str]) -> None:
    """Runs the real binary against the stack of `stage`: `submit` three jobs, dead-letter one invalid
    message, `worker --exit-when-idle`, then `status`, S3, DynamoDB and `dlq list` must agree."""
    out = {o["OutputKey"]: o["OutputValue"] for o in stacks[stage].get("Outputs", [])}
    other = next(s for s in STAGES if s != stage)
    other_dlq = {o["OutputKey"]: o["OutputValue"] for o in stacks[other].get("Outputs", [])}.get("DeadLetterQueueUrl")
    env = worker_env(stage, endpoint, creds, bucket)
    jobs = sample_jobs(stage, f"{random.randrange(16**8):08x}")
    ids = [j["job_id"] for j in jobs]
    state: dict[str, Any] = {}

    def cli(*args: str, stdin: str | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run([binary, "--stage", stage, *args], input=stdin, env=env, cwd=ROOT,
                              capture_output=True, text=True, timeout=timeout)

    def tail(p: subprocess.CompletedProcess, n: int = 15) -> str:
        return " | ".join((p.stdout + p.stderr).strip().splitlines()[-n:])

    def submit():
        p = cli("--output", "json", "submit", "-", stdin="\n".join(json.dumps(j) for j in jobs) + "\n")
        assert p.returncode == 0, f"submit exited {p.returncode}: {tail(p)}"
        assert json.loads(p.stdout) == ids, f"submit printed {p.stdout.strip()}, expected {ids}"
        # submit writes each job's pending record into the stage's table before sending.
        for i in ids:
            item = ddb.get_item(TableName=out["JobsTableName"], Key={"id": {"S": i}}).get("Item")
            assert item, f"no record for {i} in {out['JobsTableName']} after submit"
        attrs = sqs.get_queue_attributes(QueueUrl=out["QueueUrl"],
                                         AttributeNames=["ApproximateNumberOfMessages"])["Attributes"]
        assert int(attrs["ApproximateNumberOfMessages"]) == len(ids), f"queue holds {attrs}"
        state["submitted"] = True
    R.run(f"moto {stage}: `atlas-codex submit` puts 3 jobs (inline html/text, instructions, schema) "
          f"into the stack's queue and table", submit)
    if not state.get("submitted"):
        return

    def refuse_bad():
        p = cli("submit", "-", stdin=BAD_MESSAGE + "\n")
        assert p.returncode == 2, f"submit exited {p.returncode} on an invalid message: {tail(p)}"
        assert "nothing submitted" in p.stderr and "teleport" in p.stderr, tail(p)
        attrs = sqs.get_queue_attributes(QueueUrl=out["QueueUrl"],
                                         AttributeNames=["ApproximateNumberOfMessages"])["Attributes"]
        assert int(attrs["ApproximateNumberOfMessages"]) == len(ids), f"submit enqueued something: {attrs}"
        # A producer without the CLI's checks sends it anyway: the worker must dead-letter it.
        sqs.send_message(QueueUrl=out["QueueUrl"], MessageBody=BAD_MESSAGE)
    R.run(f"moto {stage}: submit refuses the invalid job bad-1; a raw producer sends it to the stack's queue",
          refuse_bad)

    def worker():
        started = time.monotonic()
        try:
            p = cli("worker", "--exit-when-idle", timeout=60)
        except subprocess.TimeoutExpired as e:
            out_ = ((e.stdout or b"") + (e.stderr or b"")).decode(errors="replace") if isinstance(e.stdout, bytes) \
                else (e.stdout or "") + (e.stderr or "")
            raise AssertionError(f"worker still running after 60 s: {' | '.join(out_.strip().splitlines()[-15:])}")
        assert p.returncode == 0, f"worker exited {p.returncode}: {tail(p)}"
        R.note(f"{stage}: worker --exit-when-idle finished in {time.monotonic() - started:.1f} s")
    R.run(f"moto {stage}: `atlas-codex worker --exit-when-idle` drains the stack's queue and exits 0", worker)

    def completed():
        for i in ids:
            p = cli("--output", "json", "status", i)
            assert p.returncode == 0, f"status {i} exited {p.returncode}: {tail(p)}"
            rec = json.loads(p.stdout)
            assert rec.get("id") == i and rec.get("stage") == stage, {k: rec.get(k) for k in ("id", "stage")}
            assert rec.get("status") == "completed", f"{i}: status {rec.get('status')}, error {rec.get('error')}"
            assert rec.get("result_key") == f"jobs/{i}/result.json", f"{i}: result_key {rec.get('result_key')}"
            doc = json.loads(s3.get_object(Bucket=bucket, Key=rec["result_key"])["Body"].read())
            assert doc.get("job_id") == i and doc.get("stage") == stage, f"{i}: result names {doc.get('job_id')}/{doc.get('stage')}"
            schema = next(j["schema"] for j in jobs if j["job_id"] == i)
            data = doc.get("data")
            assert isinstance(data, dict) and set(schema["required"]) <= set(data), f"{i}: result data {data}"
            family = MODEL_FAMILIES.get(rec.get("model") or "")
            assert family in ALLOWED_FAMILIES[stage], f"{i}: {stage} answered by {rec.get('model')} ({family})"
            item = ddb.get_item(TableName=out["JobsTableName"], Key={"id": {"S": i}}).get("Item")
            assert item and item.get("status", {}).get("S") == "completed", \
                f"{i}: record in {out['JobsTableName']} is {item and item.get('status')}"
    R.run(f"moto {stage}: every job is `completed` (status --output json), its result object is in "
          f"{bucket} and its record in {out['JobsTableName']}", completed)

    def dead_lettered():
        p = cli("--output", "json", "dlq", "list")
        assert p.returncode == 0, f"dlq list exited {p.returncode}: {tail(p)}"
        items = json.loads(p.stdout)
        bad = [d for d in items if json.loads(d.get("body", "null") or "null") == json.loads(BAD_MESSAGE)]
        assert len(bad) == 1, f"dlq list shows {len(bad)} copies of bad-1: {items}"
        assert bad[0].get("reason"), f"no reason recorded: {bad[0]}"
        assert not any(i in d.get("body", "") for d in items for i in ids), "a good job was dead-lettered"
        mine = dlq_bodies(sqs, out["DeadLetterQueueUrl"]).count(BAD_MESSAGE)
        assert mine == 1, f"{stage}'s DLQ holds {mine} copies of bad-1"
        if other_dlq:
            theirs = dlq_bodies(sqs, other_dlq).count(BAD_MESSAGE)
            want = 1 if other in ran else 0
            assert theirs == want, f"{other}'s DLQ holds {theirs} copies of bad-1 (expected {want})"
        state["reason"] = bad[0]["reason"]
    R.run(f"moto {stage}: the invalid job bad-1 is in {stage}'s own DLQ (dlq list --output json), "
          f"with a reason, and nowhere else", dead_lettered)
    ran.add(stage)


def policy_doc(doc) -> dict:
    """A policy document as a dict. boto3 decodes JSON documents itself; moto hands back inline
    policies created through CloudFormation as the Python repr of a dict, which boto3 leaves a string."""
    if isinstance(doc, dict):
        return doc
    try:
        return json.loads(doc)
    except json.JSONDecodeError:
        value = ast.literal_eval(doc)
        if not isinstance(value, dict):
            raise
        return value


def cleanup(cf, ddb, s3, buckets: dict[str, str]) -> None:
    """Deletes the stacks and the resources they retain, so default names are free for the next user."""
    for stage in STAGES:
        try:
            cf.delete_stack(StackName=f"atlas-codex-{stage}")
        except ClientError:
            pass
        for table in (f"atlas-codex-jobs-{stage}", f"atlas-codex-budget-{stage}"):
            try:
                ddb.delete_table(TableName=table)
            except ClientError:
                pass
        b = buckets.get(stage)
        if b:
            try:
                for o in s3.list_objects_v2(Bucket=b).get("Contents", []):
                    s3.delete_object(Bucket=b, Key=o["Key"])
                s3.delete_bucket(Bucket=b)
            except ClientError:
                pass


if __name__ == "__main__":
    main()
