#!/usr/bin/env bash
# Regenerate the committed Python code for protos/convstream/v1/*.proto.
#
# grpcio-tools is pinned to 1.80.0 on purpose: it bundles protoc 6.31.1, and protobuf's
# runtime accepts gencode as old as itself or older, so this code loads on protobuf 6.31.1
# through 7.x. A newer grpcio-tools would emit 7.x gencode that refuses a 6.x runtime, and
# integrators beside tritonclient or kserve are pinned to protobuf<7.
set -euo pipefail
cd "$(dirname "$0")/.."
python="${PYTHON:-python3}"
tools=$(mktemp -d)
trap 'rm -rf "$tools"' EXIT
# mypy-protobuf types the gRPC stubs (convstream_pb2_grpc.pyi): protoc types only the messages,
# and a raw stub's calls were untyped under mypy --strict.
"$python" -m pip install --quiet --disable-pip-version-check --target "$tools" \
  grpcio-tools==1.80.0 mypy-protobuf==5.1.0
PYTHONPATH="$tools" "$python" -m grpc_tools.protoc -Iprotos \
  --python_out=protos --pyi_out=protos --grpc_python_out=protos \
  --plugin=protoc-gen-mypy_grpc="$tools/bin/protoc-gen-mypy_grpc" --mypy_grpc_out=protos \
  protos/convstream/v1/*.proto
# The same files with their comments, for server reflection to hand to grpcurl, Postman and
# the like (the generated Python code keeps no comments)
PYTHONPATH="$tools" "$python" -m grpc_tools.protoc -Iprotos --include_source_info \
  --descriptor_set_out=protos/convstream/v1/convstream.binpb protos/convstream/v1/*.proto
echo "regenerated: $(ls protos/convstream/v1/*_pb2*.py*)"
