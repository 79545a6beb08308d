#!/usr/bin/python3
"""bench/boto3_uploads.py ENDPOINT N SIZES PAR PREFIX: the baseline of the
archive benchmarks.  An independent S3 client (Debian's boto3, configured
as test/s3/check.py configures it: SigV4, path-style) uploads N requests'
objects, one object of each size in SIZES (comma-separated bytes), PUT then
HEAD each, PAR requests at a time, to the bucket "archive" under PREFIX.
Prints the seconds it took and the bytes uploaded."""
import os
import sys
import time
import types
from concurrent.futures import ThreadPoolExecutor

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "test", "s3"))
import check  # noqa: E402  (test/s3/check.py: its boto3 client configuration)

endpoint, n, sizes, par, prefix = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), sys.argv[5]
s3 = check.client(types.SimpleNamespace(endpoint=endpoint, region="us-east-1",
                                        access_key="qes-test-access", secret="qes-test-secret"))
bodies = [os.urandom(int(s)) for s in sizes.split(",")]


def one(i):
    total = 0
    for k, body in enumerate(bodies):
        key = "%s/%d/object%d" % (prefix, i, k)
        s3.put_object(Bucket="archive", Key=key, Body=body, ContentType="application/octet-stream",
                      Metadata={"sha256": "x"})
        assert s3.head_object(Bucket="archive", Key=key)["ContentLength"] == len(body)
        total += len(body)
    return total


t0 = time.monotonic()
with ThreadPoolExecutor(par) as ex:
    total = sum(ex.map(one, range(n)))
print(time.monotonic() - t0, total)
