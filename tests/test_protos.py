"""The committed gencode matches protos/ and loads on every protobuf runtime we declare."""

from __future__ import annotations

import logging
import re
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2

from convstream.v1 import convstream_pb2

ROOT = Path(__file__).resolve().parents[1]
PROTO = ROOT / "protos" / "convstream" / "v1" / "convstream.proto"
WIRE = Path(__file__).with_name("proto_v1.wire")
_TYPES = {
    number: name[5:].lower() for name, number in descriptor_pb2.FieldDescriptorProto.Type.items()
}


def _strip_json_names(message: descriptor_pb2.DescriptorProto) -> None:
    for field in message.field:
        field.ClearField("json_name")
    for nested in message.nested_type:
        _strip_json_names(nested)


def test_gencode_is_not_stale(tmp_path: Path) -> None:
    # Compare what protoc makes of the .proto today with the descriptor baked into the
    # committed convstream_pb2.py; any edit to the .proto without regenerating shows here.
    out = tmp_path / "set.pb"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{ROOT / 'protos'}",
            f"--descriptor_set_out={out}",
            str(PROTO.relative_to(ROOT / "protos")),
        ],
        check=True,
        cwd=ROOT / "protos",
    )
    fresh = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()).file[0]
    for message in fresh.message_type:
        _strip_json_names(message)  # the Python generator leaves them out of its gencode
    committed = descriptor_pb2.FileDescriptorProto.FromString(
        convstream_pb2.DESCRIPTOR.serialized_pb
    )
    assert fresh == committed, "protos changed: run scripts/gen_protos.sh and commit the result"


def test_the_commented_descriptors_are_the_protos_own(tmp_path: Path) -> None:
    """convstream.binpb, which reflection serves for its comments, is what protoc makes of
    the .proto today, comments and all: a comment edited without regenerating shows here."""
    out = tmp_path / "commented.binpb"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{ROOT / 'protos'}",
            "--include_source_info",
            f"--descriptor_set_out={out}",
            str(PROTO.relative_to(ROOT / "protos")),
        ],
        check=True,
        cwd=ROOT / "protos",
    )
    fresh = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
    committed = descriptor_pb2.FileDescriptorSet.FromString(
        (PROTO.parent / "convstream.binpb").read_bytes()
    )
    assert fresh == committed, "protos changed: run scripts/gen_protos.sh and commit the result"
    comments = [c.leading_comments for c in fresh.file[0].source_code_info.location]
    assert any("Client-pushed frames over one long stream" in c for c in comments)


def test_the_stubs_types_name_every_method_as_the_proto_does() -> None:
    """convstream_pb2_grpc.pyi (mypy-protobuf) types a raw stub's calls for an integrator's
    mypy --strict, sync and asyncio alike; a method added or changed in the .proto without
    regenerating shows here. Without it, every call on a raw stub was untyped."""
    stubs = (PROTO.parent / "convstream_pb2_grpc.pyi").read_text()
    kinds = {(False, False): "UnaryUnary", (False, True): "UnaryStream"}
    kinds |= {(True, False): "StreamUnary", (True, True): "StreamStream"}
    service = descriptor_pb2.FileDescriptorProto.FromString(
        convstream_pb2.DESCRIPTOR.serialized_pb
    ).service[0]
    assert service.name == "Convstream" and len(service.method) == 5
    for method in service.method:
        kind = kinds[method.client_streaming, method.server_streaming]
        types = ", ".join(
            f"_convstream_pb2.{name.rsplit('.', 1)[-1]}"
            for name in (method.input_type, method.output_type)
        )
        for module in ("_grpc", "_aio"):  # ConvstreamStub's and ConvstreamAsyncStub's
            assert f"    {method.name}: {module}.{kind}MultiCallable[{types}]" in stubs, (
                method.name,
                module,
            )


def test_reflection_leaves_out_comments_that_describe_another_api(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A convstream.binpb left over from another version of the .proto (protoc run by hand,
    not gen_protos.sh) is not handed out as the API's description; nor does a missing one
    stop the server: reflection then serves the code's own file, without comments."""
    from convstream.server import reflection

    files = descriptor_pb2.FileDescriptorSet.FromString(
        (PROTO.parent / "convstream.binpb").read_bytes()
    )
    api = next(f for f in files.file if f.name.startswith("convstream/"))
    api.message_type[0].field[0].name += "_renamed"
    (tmp_path / "convstream.binpb").write_bytes(files.SerializeToString())
    monkeypatch.setattr(reflection.resources, "files", lambda package: tmp_path)
    reflection.commented_files.cache_clear()
    try:
        with caplog.at_level(logging.WARNING, "convstream.server.reflection"):
            assert reflection.commented_files() == {}
            assert "convstream.binpb describes another version of it" in caplog.text
            (tmp_path / "convstream.binpb").unlink()
            reflection.commented_files.cache_clear()
            assert reflection.commented_files() == {}
            assert "reflection serves the API without its comments" in caplog.text
        monkeypatch.undo()
        reflection.commented_files.cache_clear()
        assert list(reflection.commented_files()) == ["convstream/v1/convstream.proto"]
    finally:
        reflection.commented_files.cache_clear()


def test_gencode_runs_on_the_oldest_declared_protobuf() -> None:
    # New gencode on an old runtime is refused at import, so the gencode's version must not
    # pass the lowest protobuf the package declares (integrators pin protobuf<7).
    gencode = (ROOT / "protos/convstream/v1/convstream_pb2.py").read_text()
    made_with = tuple(
        int(x) for x in re.search(r"Protobuf Python Version: ([\d.]+)", gencode)[1].split(".")
    )
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    spec = next(d for d in deps if d.startswith("protobuf"))
    lowest = tuple(int(x) for x in re.search(r">=([\d.]+)", spec)[1].split("."))
    assert made_with <= lowest, f"gencode {made_with} needs protobuf>={made_with}, declared {spec}"
    assert re.search(r"<8\b", spec), f"protobuf 7.x must stay allowed, declared {spec}"


def _contract() -> Iterator[str]:
    """v1's wire contract as lines: each enum value, field and RPC with its number and type."""
    proto = descriptor_pb2.FileDescriptorProto()
    convstream_pb2.DESCRIPTOR.CopyToProto(proto)

    def values(enum: descriptor_pb2.EnumDescriptorProto, prefix: str) -> Iterator[str]:
        for value in enum.value:
            yield f"enum {prefix}.{enum.name}.{value.name} = {value.number}"

    def fields(message: descriptor_pb2.DescriptorProto, prefix: str) -> Iterator[str]:
        name = f"{prefix}.{message.name}"
        for field in message.field:
            kind = field.type_name.lstrip(".") or _TYPES[field.type]
            label = {3: "repeated "}.get(field.label, "optional " * field.proto3_optional)
            oneof = ""
            if field.HasField("oneof_index") and not field.proto3_optional:
                oneof = f" oneof {message.oneof_decl[field.oneof_index].name}"
            yield f"field {name}.{field.name} = {field.number} {label}{kind}{oneof}"
        for enum in message.enum_type:
            yield from values(enum, name)
        for nested in message.nested_type:
            yield from fields(nested, name)

    for enum in proto.enum_type:
        yield from values(enum, proto.package)
    for message in proto.message_type:
        yield from fields(message, proto.package)
    for service in proto.service:
        for rpc in service.method:
            sent = "stream " * rpc.client_streaming + rpc.input_type.lstrip(".")
            answered = "stream " * rpc.server_streaming + rpc.output_type.lstrip(".")
            yield f"rpc {proto.package}.{service.name}.{rpc.name}({sent}) returns ({answered})"


def test_v1_only_grows_what_its_clients_were_built_against() -> None:
    """Within v1 a field, enum value or RPC is never renumbered, retyped, renamed or removed:
    any of these breaks the clients built from an older copy of the .proto, Go, Java or C#
    stubs as well, and silently where a number comes back with another meaning. WIRE records
    them all; an addition is appended to it, so each change of the contract shows in review."""
    recorded = [line for line in WIRE.read_text().splitlines() if line and line[0] != "#"]
    current = list(_contract())
    changed = [line for line in recorded if line not in current]
    assert not changed, (
        "these break v1's clients (a field no longer used stays, unread, and a new meaning "
        "takes a new number):\n" + "\n".join(changed)
    )
    added = [line for line in current if line not in recorded]
    assert not added, f"new in the .proto: append to {WIRE.name}\n" + "\n".join(added)
