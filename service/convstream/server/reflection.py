"""gRPC server reflection in both versions a tool may ask for: v1 and v1alpha.

grpcio-reflection serves only ``grpc.reflection.v1alpha`` (grpc/grpc#38576), the version the
gRPC project deprecated for ``grpc.reflection.v1``; tools that ask for v1 first (grpcurl,
buf curl, Postman) fall back, others stop there. The two versions are one .proto in two
packages, the same messages on the wire, so one servicer answers both: v1's method decodes
and encodes with v1alpha's classes. v1's own descriptor, v1alpha's renamed, joins the default
pool, so that a tool may also describe the reflection service in the version it speaks.

The API's own file goes out with its comments (``grpcurl describe`` prints them), from
``convstream.binpb``, which scripts/gen_protos.sh writes beside the .proto: the descriptors
in Python's pool have none, and the comments are most of the contract.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Iterator
from functools import cache
from importlib import resources

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_reflection.v1alpha import reflection, reflection_pb2

logger = logging.getLogger(__name__)

V1ALPHA = reflection.SERVICE_NAME
V1 = "grpc.reflection.v1.ServerReflection"
METHOD = "ServerReflectionInfo"


def _fields(
    proto: descriptor_pb2.FileDescriptorProto,
) -> Iterator[descriptor_pb2.FieldDescriptorProto]:
    """Every field of every message in proto, nested messages' included, to edit in place."""
    messages = list(proto.message_type)
    while messages:
        message = messages.pop()
        messages.extend(message.nested_type)
        yield from message.field


def _register_v1() -> None:
    """Put ``grpc/reflection/v1/reflection.proto`` in the default pool (once a process)."""
    pool = descriptor_pool.Default()
    try:
        pool.FindServiceByName(V1)
        return
    except KeyError:
        pass
    proto = descriptor_pb2.FileDescriptorProto()
    reflection_pb2.DESCRIPTOR.CopyToProto(proto)
    old, new = "grpc.reflection.v1alpha", "grpc.reflection.v1"
    proto.name = "grpc/reflection/v1/reflection.proto"
    proto.package = new

    def rename(name: str) -> str:
        return name.replace(f".{old}.", f".{new}.", 1)

    for field in _fields(proto):
        if field.HasField("type_name"):
            field.type_name = rename(field.type_name)
    for service in proto.service:
        for method in service.method:
            method.input_type = rename(method.input_type)
            method.output_type = rename(method.output_type)
    pool.AddSerializedFile(proto.SerializeToString())


@cache
def commented_files() -> dict[str, bytes]:
    """convstream's .proto files as protoc wrote them with their comments, by name.

    A file that is not the one the server's code was generated from (the descriptors differ
    but for the comments and the JSON names the Python generator leaves out), or a missing
    convstream.binpb, is said in the log and left out: reflection then hands out the code's
    own file, without comments, rather than one that describes another API.
    """
    try:
        data = resources.files("convstream.v1").joinpath("convstream.binpb").read_bytes()
    except OSError as exc:
        logger.warning("reflection serves the API without its comments: %s", exc)
        return {}
    pool = descriptor_pool.Default()
    kept = {}
    for file in descriptor_pb2.FileDescriptorSet.FromString(data).file:
        if not file.name.startswith("convstream/"):
            continue
        own = descriptor_pb2.FileDescriptorProto()
        pool.FindFileByName(file.name).CopyToProto(own)
        bare = descriptor_pb2.FileDescriptorProto()
        bare.CopyFrom(file)
        bare.ClearField("source_code_info")
        for field in _fields(bare):
            field.ClearField("json_name")
        if bare != own:
            logger.warning(
                "reflection serves %s without its comments: convstream.binpb describes "
                "another version of it (run scripts/gen_protos.sh after changing the .proto)",
                file.name,
            )
            continue
        kept[file.name] = file.SerializeToString()
    return kept


Requests = AsyncIterable[reflection_pb2.ServerReflectionRequest]
Responses = AsyncIterator[reflection_pb2.ServerReflectionResponse]


def _method_to_service(
    request: reflection_pb2.ServerReflectionRequest,
) -> reflection_pb2.ServerReflectionRequest:
    """The request, asking for a method's service where it asks for the file of a method
    (``grpcurl describe convstream.v1.Convstream.StreamFrames``): Python's descriptor pool
    finds no file by a method's name, and grpcio-reflection answered NOT_FOUND (grpc/grpc#34743).
    The file is the service's."""
    if request.WhichOneof("message_request") != "file_containing_symbol":
        return request
    pool = descriptor_pool.Default()
    try:
        pool.FindFileContainingSymbol(request.file_containing_symbol)
        return request
    except KeyError:
        pass
    try:
        method = pool.FindMethodByName(request.file_containing_symbol)
    except KeyError:
        return request  # not a method either: the servicer's NOT_FOUND
    asked = reflection_pb2.ServerReflectionRequest()
    asked.CopyFrom(request)
    asked.file_containing_symbol = method.containing_service.full_name
    return asked


def _with_comments(
    servicer: reflection.aio.ReflectionServicer,
) -> Callable[[Requests, grpc.aio.ServicerContext], Responses]:
    """servicer's ServerReflectionInfo, handing out convstream's files with their comments,
    and the file of a method asked for by the method's name."""
    commented = commented_files()

    async def info(requests: Requests, context: grpc.aio.ServicerContext) -> Responses:
        asked: list[reflection_pb2.ServerReflectionRequest] = []  # one response each, in order

        async def rewritten() -> AsyncIterator[reflection_pb2.ServerReflectionRequest]:
            async for request in requests:
                asked.append(request)
                yield _method_to_service(request)

        async for response in servicer.ServerReflectionInfo(rewritten(), context):
            if asked:  # each response echoes the request as the tool sent it
                response.original_request.CopyFrom(asked.pop(0))
            if response.HasField("file_descriptor_response"):
                files = response.file_descriptor_response.file_descriptor_proto
                for i, blob in enumerate(files):
                    name = descriptor_pb2.FileDescriptorProto.FromString(blob).name
                    files[i] = commented.get(name, blob)
            yield response

    return info


def enable(service_names: Iterable[str], server: grpc.aio.Server) -> None:
    """Serve reflection of ``service_names`` and of reflection itself, in v1 and v1alpha."""
    _register_v1()
    servicer = reflection.aio.ReflectionServicer((*service_names, V1, V1ALPHA))
    handler = grpc.stream_stream_rpc_method_handler(
        _with_comments(servicer),
        request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
        response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers(
        [grpc.method_handlers_generic_handler(name, {METHOD: handler}) for name in (V1, V1ALPHA)]
    )
