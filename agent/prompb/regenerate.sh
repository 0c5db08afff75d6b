#!/bin/sh
# Regenerate the *_pb2.py modules of agent/prompb from proto/.
#
# grpcio-tools 1.62 bundles protoc 25, whose Python output has no runtime
# version check and therefore loads with every protobuf runtime from 5.x on
# (newer protoc releases pin the runtime to at least their own version).
# Run from anywhere; needs network access to PyPI the first time.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
venv=${PROMPB_GEN_VENV:-/tmp/gen-prompb}
[ -x "$venv/bin/python" ] || { python3 -m venv "$venv" && "$venv/bin/pip" install -q 'grpcio-tools==1.62.3'; }
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
cd "$here/proto"
"$venv/bin/python" -m grpc_tools.protoc -I . --python_out="$out" --pyi_out="$out" \
    prometheus/types.proto prometheus/remote.proto io/prometheus/write/v2/types.proto
# Flatten into the package and make the one cross-file import package-relative.
# Module names given to the builder become the classes' __module__ (pickling).
fix='s/^from prometheus import types_pb2 as/from agent.prompb import types_pb2 as/
s/'"'"'prometheus\.types_pb2'"'"'/'"'"'agent.prompb.types_pb2'"'"'/
s/'"'"'prometheus\.remote_pb2'"'"'/'"'"'agent.prompb.remote_pb2'"'"'/
s/'"'"'io\.prometheus\.write\.v2\.types_pb2'"'"'/'"'"'agent.prompb.write_v2_pb2'"'"'/'
for ext in py pyi; do
    sed "$fix" "$out/prometheus/types_pb2.$ext" > "$here/types_pb2.$ext"
    sed "$fix" "$out/prometheus/remote_pb2.$ext" > "$here/remote_pb2.$ext"
    sed "$fix" "$out/io/prometheus/write/v2/types_pb2.$ext" > "$here/write_v2_pb2.$ext"
done
echo "regenerated: $(cd "$here" && ls ./*_pb2.py ./*_pb2.pyi | tr '\n' ' ')"
