#!/usr/bin/python3
"""test/s3/check.py: an independent S3 client for qes_sign's archive tests.

Debian's python3-boto3 (botocore's own SigV4, path-style addressing), so the
tests read the bucket with a client that shares no code with the worker.
Every command prints one JSON object on stdout; an S3 error prints
{"error": {"status", "code", "message"}} and exits 1 (status null when no
answer came: connection refused, timeout).

usage: check.py --endpoint URL --bucket B [--access-key K] --secret S [--region R] COMMAND
  list [PREFIX]            {"objects": [{"key", "size", "etag"}...]}
  head KEY                 {"key", "size", "content_type", "etag", "metadata": {...},
                            "object_lock_mode", "object_lock_retain_until_date"}
  get KEY [--out FILE]     head's fields and "sha256", "md5" (hex) of the bytes read;
                           with --out the bytes go to FILE
  put KEY FILE [--content-type T] [--meta k=v ...]
                           stores FILE as is (boto3 signs its SHA-256); {"key", "etag", "sha256"}
  sums [PREFIX] [--key K ...]
                           every object under PREFIX (or each KEY given) read back:
                           {"objects": [{"key", "size", "sha256" (of the bytes),
                           "metadata_sha256", "content_type"}...]}
  delete KEY               {"key", "deleted": true}

Run it with /usr/bin/python3: another python3 on PATH may bring a newer boto3
that sends checksum headers by default.
"""
import argparse
import hashlib
import json
import sys

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError


def client(a):
    return boto3.client(
        "s3", endpoint_url=a.endpoint, region_name=a.region,
        aws_access_key_id=a.access_key, aws_secret_access_key=a.secret,
        config=Config(signature_version="s3v4", s3={"addressing_style": "path"},
                      retries={"total_max_attempts": 1, "mode": "standard"}, connect_timeout=5, read_timeout=20))


def head_fields(key, r):
    until = r.get("ObjectLockRetainUntilDate")
    return {
        "key": key,
        "size": r.get("ContentLength"),
        "content_type": r.get("ContentType"),
        "etag": (r.get("ETag") or "").strip('"'),
        "metadata": r.get("Metadata", {}),
        "object_lock_mode": r.get("ObjectLockMode"),
        "object_lock_retain_until_date": until.isoformat() if until else None,
    }


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--endpoint", required=True)
    p.add_argument("--bucket", required=True)
    p.add_argument("--access-key", default="qes-test-access")
    p.add_argument("--secret", default="qes-test-secret")
    p.add_argument("--region", default="us-east-1")
    sub = p.add_subparsers(dest="cmd", required=True)
    sp = sub.add_parser("list")
    sp.add_argument("prefix", nargs="?", default="")
    sp = sub.add_parser("sums")
    sp.add_argument("prefix", nargs="?", default="")
    sp.add_argument("--key", action="append", default=[], help="read these keys, do not list")
    sp = sub.add_parser("head")
    sp.add_argument("key")
    sp = sub.add_parser("get")
    sp.add_argument("key")
    sp.add_argument("--out")
    sp = sub.add_parser("put")
    sp.add_argument("key")
    sp.add_argument("file")
    sp.add_argument("--content-type", default="application/octet-stream")
    sp.add_argument("--meta", action="append", default=[], help="k=v, x-amz-meta-k")
    sp = sub.add_parser("delete")
    sp.add_argument("key")
    a = p.parse_args()
    s3 = client(a)
    try:
        if a.cmd in ("list", "sums"):
            out, token = [{"key": k} for k in getattr(a, "key", [])], None
            while not getattr(a, "key", []):
                kw = {"Bucket": a.bucket, "Prefix": a.prefix}
                if token:
                    kw["ContinuationToken"] = token
                r = s3.list_objects_v2(**kw)
                out += [{"key": o["Key"], "size": o["Size"], "etag": o["ETag"].strip('"')}
                        for o in r.get("Contents", [])]
                token = r.get("NextContinuationToken")
                if not token:
                    break
            if a.cmd == "sums":
                for o in out:
                    r = s3.get_object(Bucket=a.bucket, Key=o["key"])
                    data = r["Body"].read()
                    o.update(sha256=hashlib.sha256(data).hexdigest(), size=len(data),
                             metadata_sha256=r.get("Metadata", {}).get("sha256"),
                             content_type=r.get("ContentType"))
            res = {"objects": out}
        elif a.cmd == "head":
            res = head_fields(a.key, s3.head_object(Bucket=a.bucket, Key=a.key))
        elif a.cmd == "get":
            r = s3.get_object(Bucket=a.bucket, Key=a.key)
            data = r["Body"].read()
            res = head_fields(a.key, r)
            res.update(sha256=hashlib.sha256(data).hexdigest(), md5=hashlib.md5(data).hexdigest(),
                       bytes_read=len(data))
            if a.out:
                with open(a.out, "wb") as f:
                    f.write(data)
        elif a.cmd == "put":
            with open(a.file, "rb") as f:
                data = f.read()
            meta = dict(m.split("=", 1) for m in a.meta)
            r = s3.put_object(Bucket=a.bucket, Key=a.key, Body=data, ContentType=a.content_type,
                              Metadata=meta)
            res = {"key": a.key, "etag": r["ETag"].strip('"'), "sha256": hashlib.sha256(data).hexdigest()}
        elif a.cmd == "delete":
            s3.delete_object(Bucket=a.bucket, Key=a.key)
            res = {"key": a.key, "deleted": True}
    except ClientError as e:
        err = e.response.get("Error", {})
        print(json.dumps({"error": {
            "status": e.response.get("ResponseMetadata", {}).get("HTTPStatusCode"),
            "code": err.get("Code"), "message": err.get("Message")}}))
        return 1
    except BotoCoreError as e:  # no connection, timeout, ...
        print(json.dumps({"error": {"status": None, "code": type(e).__name__, "message": str(e)}}))
        return 1
    print(json.dumps(res, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
