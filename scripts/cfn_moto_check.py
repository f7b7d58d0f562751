#!/usr/bin/env python3
"""Deploys deploy/cloudformation/atlas-codex-stage.yaml into a moto server for preview AND production
side by side, and checks what the stacks created.

Usage: ATLAS_TEST_MOTO_ENDPOINT=http://127.0.0.1:PORT cfn_moto_check.py   (scripts/moto.sh start prints it)

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
import sys
import time
from pathlib import Path

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


def clients(endpoint: str) -> tuple[dict, str]:
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
    return {s: boto3.client(s, **kw) for s in ("cloudformation", "sqs", "dynamodb", "s3", "iam")}, account


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
    c, account = clients(endpoint)
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
                                          f"atlas-codex-jobs-{stage}", f"atlas-codex-budget-{stage}", bucket)), arn
    R.run(f"moto {stage}: worker role trusts the stage's ServiceAccount and names only {stage} ARNs", role)


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
