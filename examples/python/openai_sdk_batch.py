"""Run an OpenAI batch through Fusillade with the official `openai` SDK, unchanged.

Fusillade serves OpenAI's /v1/files and /v1/batches on its API port
(docs/openai-api.md). An admin first says where each model's requests go:

    fusillade routes set '*' --endpoint https://api.openai.com --api-key-file ~/.openai-key

then, with `pip install openai`:

    python3 openai_sdk_batch.py batch.jsonl [--base-url http://127.0.0.1:8080/v1]

Local mode (`npm start` on loopback) accepts any key; with tokens, set
OPENAI_API_KEY to a Fusillade client token. Not run by CI (the SDK is not
installable there); test/e2e/openai-sdk.test.ts runs the same flow with the
TypeScript SDK.
"""

import argparse
import os
import sys
import time

from openai import OpenAI

FINAL = {"completed", "failed", "expired", "cancelled"}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("file", help="OpenAI batch input: one {custom_id, method, url, body} per line")
    p.add_argument("--base-url", default="http://127.0.0.1:8080/v1")
    p.add_argument("--endpoint", default="/v1/chat/completions", help="every line's url")
    p.add_argument("--priority", type=int, default=0, help="Fusillade extension, -100..100")
    args = p.parse_args()

    client = OpenAI(base_url=args.base_url, api_key=os.environ.get("OPENAI_API_KEY", "local"))
    with open(args.file, "rb") as f:
        upload = client.files.create(file=f, purpose="batch")
    batch = client.batches.create(
        input_file_id=upload.id,
        endpoint=args.endpoint,
        completion_window="24h",
        # Fusillade's extensions ride in extra_body; OpenAI itself would refuse them.
        extra_body={"priority": args.priority, "max_retries": 3},
    )
    print(f"batch {batch.id} created from file {upload.id}")
    while batch.status not in FINAL:
        time.sleep(2)
        batch = client.batches.retrieve(batch.id)
        c = batch.request_counts
        print(f"{batch.status}: {c.completed} completed, {c.failed} failed of {c.total}")
    if batch.output_file_id:
        with open("output.jsonl", "wb") as out:
            out.write(client.files.content(batch.output_file_id).read())
    if batch.error_file_id:
        with open("errors.jsonl", "wb") as out:
            out.write(client.files.content(batch.error_file_id).read())
    print(f"batch {batch.status}; results in output.jsonl / errors.jsonl")
    return 0


if __name__ == "__main__":
    sys.exit(main())
