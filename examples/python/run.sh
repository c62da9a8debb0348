#!/bin/sh
# Generates the Python gRPC stubs from proto/ into ./gen (gitignored) with
# Debian's protoc and grpc_python_plugin, then runs submit_and_watch.py
# with Debian's /usr/bin/python3 (which sees python3-grpcio and
# python3-protobuf; another python3 may come first on PATH).
#
# Debian packages: protobuf-compiler protobuf-compiler-grpc python3-grpcio python3-protobuf
#
#   examples/python/run.sh --server 127.0.0.1:8080 --endpoint http://127.0.0.1:9000 batch.jsonl
set -eu

here=$(cd "$(dirname "$0")" && pwd)
protos=$(cd "$here/../../proto" && pwd)
gen="$here/gen"
python=/usr/bin/python3

for tool in protoc grpc_python_plugin "$python"; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "run.sh: $tool not found; install: apt-get install protobuf-compiler protobuf-compiler-grpc python3-grpcio python3-protobuf" >&2
    exit 1
  fi
done

rm -rf "$gen"
mkdir -p "$gen"

# Our protos import google/protobuf/{duration,timestamp}.proto. Debian ships
# those .proto files only in libprotobuf-dev (headers); python3-protobuf
# already carries their descriptors, so hand protoc those instead.
"$python" - "$gen/well-known.binpb" <<'PY'
import sys
from google.protobuf import descriptor_pb2, duration_pb2, timestamp_pb2
out = descriptor_pb2.FileDescriptorSet()
for module in (duration_pb2, timestamp_pb2):
    module.DESCRIPTOR.CopyToProto(out.file.add())
with open(sys.argv[1], "wb") as f:
    f.write(out.SerializeToString())
PY

(cd "$protos" && protoc \
  --proto_path=. \
  --descriptor_set_in="$gen/well-known.binpb" \
  --plugin=protoc-gen-grpc_python="$(command -v grpc_python_plugin)" \
  --python_out="$gen" \
  --grpc_python_out="$gen" \
  fusillade/v1/*.proto)

PYTHONPATH="$gen${PYTHONPATH:+:$PYTHONPATH}" exec "$python" "$here/submit_and_watch.py" "$@"
