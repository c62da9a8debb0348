"""Submit an OpenAI-style batch file to Fusillade over gRPC and follow it.

Uses only stubs generated from proto/ (see run.sh): uploads the file with
the client-streaming UploadFile, starts a batch with CreateBatch, prints
each WatchBatch message until the batch is terminal, then counts the result
lines from GetBatchResults (optionally writing them to files).

    run.sh --server 127.0.0.1:8080 --endpoint http://127.0.0.1:9000 batch.jsonl

Exit status: 0 when the batch finished (whatever its requests' outcomes),
1 on an RPC or input error, 130 on Ctrl-C.
"""

import argparse
import os
import sys
import uuid

import grpc
from google.protobuf import duration_pb2

from fusillade.v1 import batch_service_pb2 as pb
from fusillade.v1 import batch_service_pb2_grpc as pb_grpc
from fusillade.v1 import resources_pb2 as res

CHUNK_BYTES = 1 << 20
TERMINAL = {
    res.BATCH_STATE_COMPLETED,
    res.BATCH_STATE_CANCELLED,
    res.BATCH_STATE_EXPIRED,
}


def state_name(state: int) -> str:
    return res.BatchState.Name(state).removeprefix("BATCH_STATE_").lower()


def upload_messages(path: str, endpoint: str, api_key: str):
    """The header first, then the file in chunks: any size, little memory."""
    yield pb.UploadFileRequest(
        header=pb.UploadFileHeader(
            request_id=str(uuid.uuid4()),
            filename=os.path.basename(path),
            endpoint=endpoint,
            api_key=api_key,
        )
    )
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK_BYTES):
            yield pb.UploadFileRequest(chunk=chunk)


def progress_line(batch) -> str:
    c = batch.counts
    done = c.completed + c.failed + c.canceled + c.expired
    return (
        f"{state_name(batch.state)} {done}/{c.total} done: "
        f"{c.completed} completed, {c.failed} failed, {c.expired} expired, "
        f"{c.canceled} cancelled, {c.in_progress} running, {c.pending} pending"
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("file", help="JSONL: one {custom_id, method, url, body} object per line")
    ap.add_argument("--server", default="127.0.0.1:8080", help="control plane host:port")
    ap.add_argument("--endpoint", required=True, help="base URL of the model endpoint")
    ap.add_argument("--api-key", default=os.environ.get("OPENAI_API_KEY", ""))
    ap.add_argument(
        "--token",
        default=os.environ.get("FUSILLADE_TOKEN", ""),
        help="Fusillade API token (env FUSILLADE_TOKEN); not needed for a local server",
    )
    ap.add_argument("--completion-window", default="", help='e.g. "24h" (server default)')
    ap.add_argument("--output", help="write output lines (completed requests) here")
    ap.add_argument("--errors", help="write error lines (failed, expired, cancelled) here")
    args = ap.parse_args()

    target = args.server.removeprefix("http://")
    # Every call carries the token, when there is one (docs/trust.md).
    md = [("authorization", f"Bearer {args.token}")] if args.token else []
    with grpc.insecure_channel(target) as channel:
        stub = pb_grpc.BatchServiceStub(channel)

        uploaded = stub.UploadFile(
            upload_messages(args.file, args.endpoint, args.api_key), metadata=md
        )
        created = stub.CreateBatch(
            pb.CreateBatchRequest(
                request_id=str(uuid.uuid4()),
                file_id=uploaded.file.id,
                completion_window=args.completion_window,
            ),
            metadata=md,
        )
        batch = created.batch
        print(
            f"batch {batch.id} created: {uploaded.file.template_count} requests "
            f"(file {uploaded.file.id})",
            flush=True,
        )

        # The batch at once, then on change (at most every 500 ms), until terminal.
        watch = pb.WatchBatchRequest(
            batch_id=batch.id, min_interval=duration_pb2.Duration(nanos=500_000_000)
        )
        for message in stub.WatchBatch(watch, metadata=md):
            batch = message.batch
            print(progress_line(batch), flush=True)
        if batch.state not in TERMINAL:
            print(f"the stream ended while the batch was {state_name(batch.state)}", file=sys.stderr)
            return 1

        counts = {pb.GetBatchResultsResponse.KIND_OUTPUT: 0, pb.GetBatchResultsResponse.KIND_ERROR: 0}
        files = {
            pb.GetBatchResultsResponse.KIND_OUTPUT: open(args.output, "w") if args.output else None,
            pb.GetBatchResultsResponse.KIND_ERROR: open(args.errors, "w") if args.errors else None,
        }
        try:
            for line in stub.GetBatchResults(
                pb.GetBatchResultsRequest(batch_id=batch.id), metadata=md
            ):
                counts[line.kind] += 1
                out = files[line.kind]
                if out is not None:
                    out.write(line.line + "\n")
        finally:
            for f in files.values():
                if f is not None:
                    f.close()
        print(
            f"batch {batch.id} {state_name(batch.state)} (OpenAI: {batch.openai_status}): "
            f"{counts[pb.GetBatchResultsResponse.KIND_OUTPUT]} output lines, "
            f"{counts[pb.GetBatchResultsResponse.KIND_ERROR]} error lines",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except grpc.RpcError as e:
        print(f"submit_and_watch: {e.code().name}: {e.details()}", file=sys.stderr)
        sys.exit(1)
    except OSError as e:
        print(f"submit_and_watch: {e}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
