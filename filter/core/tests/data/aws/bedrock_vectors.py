#!/usr/bin/env python3
"""Writes the Bedrock-shaped SigV4 vectors of tests/sigv4_vectors.rs with botocore's signer.

AWS's test suite signs for a made-up service with paths that need no second encoding; these
cases sign what the Bedrock provider sends: POST /model/<model id>/converse(-stream), the id
holding a colon (and, for an inference profile ARN, slashes) that the request line carries
percent-encoded once and the canonical URI encodes again.

botocore.auth.SigV4Auth is the reference (the signer of boto3 and the AWS CLI). Run it by hand
(`pip install botocore`, then `python3 bedrock_vectors.py` in this directory) after changing
a case; the Rust tests only read the files it writes, they never need botocore.

Each case gets `<case>/<case>.req` (the request, in the test suite's layout), `.creq` (the
canonical request), `.sts` (the string to sign) and `.authz` (the Authorization header).
"""

import datetime
import os
from unittest import mock

from botocore.auth import SIGV4_TIMESTAMP, SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

ACCESS_KEY_ID = "AKIDEXAMPLE"
SECRET_ACCESS_KEY = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"
# A made-up session token with the characters real ones have ('/', '+', '=').
SESSION_TOKEN = "IQoJb3JpZ2luX2VjEXAMPLE//////////wEaCXVzLWVhc3QtMSJHMEUCIQDexample+token/value=="
REGION = "us-east-1"
SERVICE = "bedrock"
HOST = "bedrock-runtime.us-east-1.amazonaws.com"
# 2023-11-14T22:13:20Z, Unix time 1700000000.
SIGNING_TIME = datetime.datetime(2023, 11, 14, 22, 13, 20)

CASES = [
    {
        "name": "bedrock-converse-session-token",
        "path": "/model/anthropic.claude-3-5-sonnet-20240620-v1%3A0/converse",
        "token": SESSION_TOKEN,
        "headers": [("Content-Type", "application/json"), ("Accept", "application/json")],
        "body": b'{"messages":[{"role":"user","content":[{"text":"Hello"}]}],'
        b'"inferenceConfig":{"maxTokens":64}}',
    },
    {
        "name": "bedrock-converse-stream-inference-profile-arn",
        "path": "/model/arn%3Aaws%3Abedrock%3Aus-east-1%3A123456789012%3Ainference-profile"
        "%2Fus.anthropic.claude-3-5-sonnet-20240620-v1%3A0/converse-stream",
        "token": None,
        "headers": [("Content-Type", "application/json")],
        "body": b'{"messages":[{"role":"user","content":[{"text":"Hi"}]}]}',
    },
]


def write(directory, name, suffix, text):
    with open(os.path.join(directory, f"{name}{suffix}"), "w", newline="\n") as out:
        out.write(text)


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    for case in CASES:
        name = case["name"]
        directory = os.path.join(here, "sigv4", name)
        os.makedirs(directory, exist_ok=True)
        def new_request():
            return AWSRequest(
                method="POST",
                url=f"https://{HOST}{case['path']}",
                headers=dict(case["headers"]),
                data=case["body"],
            )

        auth = SigV4Auth(
            Credentials(ACCESS_KEY_ID, SECRET_ACCESS_KEY, case["token"]), SERVICE, REGION
        )
        request = new_request()
        with mock.patch("botocore.auth.get_current_datetime", return_value=SIGNING_TIME):
            auth.add_auth(request)
        # add_auth logs its intermediate strings only: the same steps again on a fresh request
        # give them, and must give the same signature.
        steps = new_request()
        steps.context["timestamp"] = SIGNING_TIME.strftime(SIGV4_TIMESTAMP)
        auth._modify_request_before_signing(steps)
        canonical_request = auth.canonical_request(steps)
        string_to_sign = auth.string_to_sign(steps, canonical_request)
        signature = auth.signature(string_to_sign, steps)
        assert request.headers["Authorization"].endswith(f"Signature={signature}")
        lines = [f"POST {case['path']} HTTP/1.1", f"Host:{HOST}"]
        lines += [f"{key}:{value}" for key, value in case["headers"]]
        write(directory, name, ".req", "\n".join(lines) + "\n\n" + case["body"].decode())
        write(directory, name, ".creq", canonical_request)
        write(directory, name, ".sts", string_to_sign)
        write(directory, name, ".authz", request.headers["Authorization"])
        print(f"{name}: {request.headers['Authorization']}")


if __name__ == "__main__":
    main()
