"""Settings: TOML, then environment, then flags; unknown keys refused; safe defaults."""

from __future__ import annotations

import json
import math
import re
import tomllib
from pathlib import Path

import grpc
import pytest
from conftest import jpeg, scene

from convstream.cli import main
from convstream.server import Server
from convstream.server.config import (
    MIN_MESSAGE_BYTES,
    CameraConfig,
    ConfigError,
    Scheduling,
    Settings,
    load_settings,
    parse_size,
)
from convstream.v1 import convstream_pb2 as pb
from convstream.v1 import convstream_pb2_grpc as pb_grpc


def test_defaults_are_safe() -> None:
    settings = Settings()
    assert settings.host == "127.0.0.1"
    assert settings.reflection is True
    assert settings.input_shapes()[0] == (384, 640)


def test_the_model_is_warmed_at_every_size_it_is_known_to_see() -> None:
    # input_sizes, then each camera's own input_size once (on CUDA each size gets its session
    # at start, not on a camera's first frame).
    settings = Settings.model_validate(
        {
            "input_sizes": ["384x640", "480x640"],
            "cameras": [
                {"id": "a", "source": "demo:conveyor", "input_size": "256X256"},
                {"id": "b", "source": "demo:conveyor", "input_size": "256x256"},
                {"id": "c", "source": "demo:conveyor", "input_size": "480x640"},
                {"id": "d", "source": "demo:conveyor"},
            ],
        }
    )
    assert settings.model_shapes() == [(384, 640), (480, 640), (256, 256)]
    assert settings.input_shapes() == [(384, 640), (480, 640)]  # what GetModelInfo lists


def test_scheduling_resolves_automatic_settings_for_the_host() -> None:
    # CPU: one single-threaded run per core, no batches, a lone frame on every core (up to
    # 8); CUDA: one worker feeding batches.
    assert Settings().scheduling(gpu=False, cores=2) == Scheduling(2, 1, 1, 2)
    assert Settings().scheduling(gpu=False, cores=8) == Scheduling(8, 1, 1, 8)
    assert Settings().scheduling(gpu=False, cores=128) == Scheduling(64, 2, 1, 8)  # capped
    assert Settings().scheduling(gpu=True, cores=16) == Scheduling(1, 16, 8, 0, fixed_batch=8)
    loose = Settings(fixed_shapes=False)
    assert loose.scheduling(gpu=True, cores=16) == Scheduling(1, 16, 8, 0, fixed_batch=0)
    # What is set explicitly stays; threads default to the cores each worker has.
    one = Settings(inference_workers=1)
    assert one.scheduling(gpu=False, cores=4) == Scheduling(1, 4, 1, 0)  # one run, every core
    tuned = Settings(inference_workers=3, intra_op_threads=2, max_batch=4)
    assert tuned.scheduling(gpu=False, cores=2) == Scheduling(3, 2, 4, 0)  # already every core
    four = Settings(inference_workers=4, max_batch=16)
    assert four.scheduling(gpu=True, cores=2) == Scheduling(4, 1, 16, 0, fixed_batch=16)
    narrow = Settings(widen_lone_frames=False)
    assert narrow.scheduling(gpu=False, cores=2) == Scheduling(2, 1, 1, 0)


def test_sources_apply_in_order(tmp_path: Path) -> None:
    toml = tmp_path / "convstream.toml"
    toml.write_text('port = 6000\nmax_batch = 4\ninput_sizes = ["256x256"]\nprovider = "cpu"\n')
    env = {"CONVSTREAM_PORT": "7000", "CONVSTREAM_MAX_BATCH": "2", "HOME": "/x"}
    settings = load_settings(toml, environ=env, overrides={"port": 8000, "host": None})
    assert settings.port == 8000  # flag beats environment beats file
    assert settings.max_batch == 2  # environment beats file
    assert settings.input_sizes == ("256x256",) and settings.provider == "cpu"  # file
    assert settings.host == "127.0.0.1"  # an unset flag changes nothing


@pytest.mark.parametrize(
    ("toml", "env", "message"),
    [
        ("prot = 1\n", {}, "prot: unknown setting; did you mean 'port'"),
        ('hots = "x"\n', {}, r"hots: unknown setting; did you mean 'host'\? \(docs/server.md"),
        ('[[camera]]\nid = "a"\n', {}, "camera: unknown setting; did you mean 'cameras'"),
        (
            '[[cameras]]\nid = "a"\nsource = "x.mp4"\nfsp = 5\n',
            {},
            r"\.fsp \(camera 'a'\): .*mean 'fps'",
        ),
        ("quux = 1\n", {}, r"quux: unknown setting \(docs/server.md"),  # no stray ";"
        # appended at the end of a config with cameras: TOML gives it to the last camera
        (
            '[[cameras]]\nid = "a"\nsource = "x.mp4"\n\nthreshold = 0.9\n',
            {},
            r"cameras\[0\]\.threshold \(camera 'a'\): threshold is a top-level setting, and a "
            r"key written below a \[\[cameras\]\] table belongs to that table in TOML: move it "
            r"above",
        ),
        ("", {"CONVSTREAM_HOTS": "x"}, "CONVSTREAM_HOTS; did you mean CONVSTREAM_HOST\\?"),
        ('port = "abc"\n', {}, "c.toml.*\n  line 1: port: Input should be a valid .*got 'abc'"),
        (
            '[[cameras]]\nid = "dock 1"\nsource = "x.mp4"\n',
            {},
            r"cameras\[0\]\.id: a camera id is 1 to 64 letters, digits, '\.', '_' or '-', "
            r"starting with a letter or digit; got 'dock 1'",
        ),
        ('host = "0.0.0.0:50051"\n', {}, "host is an address without a port, got '0.0.0.0:50051'"),
        ('host = "[::1]:50051"\n', {}, "host is an address without a port"),
        ('metrics_host = "0.0.0.0:9464"\n', {}, "metrics_host is an .* with --metrics-port"),
        ("", {"CONVSTREAM_PORT": "abc"}, r"port \(from CONVSTREAM_PORT\): Input should be a valid"),
        ("", {"CONVSTREAM_HOST": "h:1"}, r"host \(from CONVSTREAM_HOST\): host is an address"),
        ("", {"CONVSTREAM_PROT": "1"}, "unknown setting CONVSTREAM_PROT; did you mean .*_PORT"),
        # a client's variable mistyped is named, though it is no setting
        ("", {"CONVSTREAM_ADRESS": "h:1"}, "CONVSTREAM_ADRESS; did you mean CONVSTREAM_ADDRESS?"),
        ('input_sizes = ["385x640"]\n', {}, "multiples of 8"),
        ('input_sizes = ["8x8"]\n', {}, "multiples of 8 from 32 to 4096, got '8x8'"),
        (
            '[[cameras]]\nid = "a"\nsource = "demo:conveyor"\ninput_size = "100000x100000"\n',
            {},
            r"cameras\[0\]\.input_size \(camera 'a'\): .*from 32 to 4096",
        ),
        ('[cameras]\nid = "a"\n', {}, r"cameras: expected \[\[cameras\]\] tables"),
        # the longest retry delay below the first: every retry waited 0.5-1 s, the 60 unsaid
        (
            '[[cameras]]\nid = "a"\nsource = "demo:conveyor"\nreconnect_min_s = 60\n'
            "reconnect_max_s = 1\n",
            {},
            r"cameras\[0\] \(camera 'a'\): reconnect_min_s 60 is longer than reconnect_max_s 1, "
            r"the longest retry delay: expected min <= max",
        ),
        ("max_batch = -1\n", {}, "max_batch"),
        # gRPC's milliseconds are a C int: inf, or 25 days, failed the start after the model
        ("connection_idle_timeout_s = inf\n", {}, r"connection_idle_timeout_s: .*2000000"),
        ("connection_idle_timeout_s = 2500000\n", {}, r"connection_idle_timeout_s: .*2000000"),
        # a threshold is a score from 0 to 1: a percentage is told as one, NaN as itself
        ("threshold = 96.2\n", {}, r"threshold: .* 0 to 1, got 96.2 \(a percentage\? then 0.962\)"),
        ("threshold = nan\n", {}, r"line 1: threshold: must be a score from 0 to 1, got nan$"),
        ("", {"CONVSTREAM_THRESHOLD": "nan"}, r"\(from CONVSTREAM_THRESHOLD\): must be .*got nan"),
        # bounds under which every frame, or every stream, would be refused
        ("max_frame_side = 8\n", {}, "max_frame_side: .*greater than or equal to 32, got 8"),
        ("max_frame_pixels = 1000\n", {}, "max_frame_pixels: .*equal to 1024, got 1000"),
        ("max_message_bytes = 65536\n", {}, "max_message_bytes: .*to 131072, got 65536"),
        (
            "max_queued_frames = 3\n",
            {},
            "max_queued_frames 3 is below stream_queue_size 4: every stream reserves its queue",
        ),
        (
            '[[cameras]]\nid = "a"\nsource = "   "\n',
            {},
            r"cameras\[0\]\.source \(camera 'a'\): a source is empty; expected an rtsp://",
        ),
        ('provider = "tpu"\n', {}, "provider"),
        ("port = [\n", {}, "cannot read config file"),
        # the metrics port on the gRPC port: the server would fail to bind it at start
        (
            "port = 9464\n",
            {},
            "metrics_port 9464 takes port 9464, the gRPC port: the two need ports of their own",
        ),
        (
            'port = 9465\nprocesses = 2\nhost = "0.0.0.0"\n',
            {},
            r"metrics_port 9464 with 2 processes \(ports 9464-9465, one each\) takes port 9465",
        ),
    ],
)
def test_bad_settings_are_refused(
    tmp_path: Path, toml: str, env: dict[str, str], message: str
) -> None:
    path = tmp_path / "c.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError, match=message):
        load_settings(path, environ=env)


def test_a_config_saved_with_a_byte_order_mark_or_not_as_utf8(tmp_path: Path) -> None:
    """Notepad's UTF-8 starts with a byte-order mark, which tomllib called an "Invalid
    statement (at line 1, column 1)"; Latin-1 text was a UnicodeDecodeError's traceback."""
    path = tmp_path / "c.toml"
    path.write_bytes(b"\xef\xbb\xbfport = 50061\nmax_fps_typo = 1\n")
    with pytest.raises(ConfigError, match="line 2: max_fps_typo: unknown setting"):
        load_settings(path, environ={})  # read, and its lines counted as the editor shows
    path.write_bytes(b"\xef\xbb\xbfport = 50061\n")
    assert load_settings(path, environ={}).port == 50061
    path.write_bytes(
        '[[cameras]]\nid = "quai-1"\nsource = "demo:conveyor"\n# caméra\n'.encode("latin-1")
    )
    with pytest.raises(ConfigError, match=r"is not UTF-8 text \(byte 56\); save it as UTF-8"):
        load_settings(path, environ={})


SWITCHES = sorted(name for name, field in Settings.model_fields.items() if field.annotation is bool)


def test_every_switch_is_strict(tmp_path: Path) -> None:
    # as cameras' loop is: "yes" in quotes is a mistake to point out, never a guess
    assert SWITCHES == [
        "fixed_shapes",
        "reduced_jpeg_decode",
        "reflection",
        "spin_wait",
        "widen_lone_frames",
    ]
    path = tmp_path / "c.toml"
    for name in SWITCHES:
        for quoted in ('"yes"', '"true"', "1"):
            path.write_text(f"{name} = {quoted}\n")
            expected = f"{name}: expected true or false \\(unquoted in TOML\\), got "
            with pytest.raises(ConfigError, match=expected):
                load_settings(path, environ={})
        variable = f"CONVSTREAM_{name.upper()}"
        for word in ("yes", "1", "True", ""):
            message = f"{name} \\(from {variable}\\): expected true or false, got '{word}'"
            with pytest.raises(ConfigError, match=message):
                load_settings(environ={variable: word})
        # the environment's words are TOML's
        for word, value in (("true", True), ("false", False)):
            assert getattr(load_settings(environ={variable: word}), name) is value
    path.write_text('[[cameras]]\nid = "a"\nsource = "demo:conveyor"\nloop = "no"\n')
    with pytest.raises(
        ConfigError, match=r"cameras\[0\]\.loop \(camera 'a'\): expected true or false"
    ):
        load_settings(path, environ={})


def test_each_mistake_in_the_file_names_its_line(tmp_path: Path) -> None:
    """`cameras[2].fps` in a file of twenty cameras meant counting tables: the file's line
    comes first, as a compiler gives it; a key missing from a table names the table's header,
    and a setting from the environment names its variable instead."""
    path = tmp_path / "c.toml"
    path.write_text(
        'host = "127.0.0.1"\n\n[[cameras]]\nid = "dock-1"\nsource = "demo:conveyor"\n\n'
        '[[cameras]]\nid = "dock-2"\nsource = "demo:conveyor"\n  fsp = 5\n\n'
        '[[cameras]]\nsource = "demo:conveyor"\nfps = -3\n\n'
        '[[tokens]]\nname = "a"\nrole = "boss"\n'
    )
    with pytest.raises(ConfigError) as caught:
        load_settings(path, environ={"CONVSTREAM_PORT": "x"})
    said = [line.split(": ")[0] for line in str(caught.value).splitlines()[1:]]
    assert said == [
        "  port (from CONVSTREAM_PORT)",
        "  line 10",  # cameras[1].fsp
        "  line 12",  # cameras[2].id, missing: its table
        "  line 14",  # cameras[2].fps
        "  line 18",  # tokens[0].role
        "  line 16",  # tokens[0].sha256, missing: its table
    ], str(caught.value)
    said = str(caught.value)
    # named by id too: "cameras[1]" sent a reader counting tables
    assert "line 10: cameras[1].fsp (camera 'dock-2'): unknown setting; did you mean 'fps'?" in said
    assert "line 14: cameras[2].fps: " in said  # no id to name it by


def test_a_longest_retry_delay_alone_below_the_first_ones_default_is_taken() -> None:
    """Only reconnect_max_s = 0.2 written: the first delay (0.5 by default) is 0.2 too, not a
    refusal naming a 0.5 the config never wrote; both written, and crossed, is refused."""
    camera = CameraConfig(id="a", source="demo:conveyor", reconnect_max_s=0.2)
    assert (camera.reconnect_min_s, camera.reconnect_max_s) == (0.2, 0.2)
    with pytest.raises(ValueError, match=r"reconnect_min_s 0\.5 is longer than reconnect_max_s"):
        CameraConfig(id="a", source="demo:conveyor", reconnect_min_s=0.5, reconnect_max_s=0.2)


def test_a_number_in_quotes_is_pointed_out_with_the_rest(tmp_path: Path) -> None:
    """TOML has numbers: port = "51100" is a string that would pass for one, so it is refused
    like a quoted switch, beside every other mistake of the file; the environment's values
    are strings and are taken."""
    path = tmp_path / "c.toml"
    path.write_text(
        'port = "51100"\nthreshold = "0.9"\nmax_streams = "lots"\nhost = "127.0.0.1"\n'
        '[[cameras]]\nid = "a"\nsource = "demo:conveyor"\nfps = " 15"\n'
    )
    with pytest.raises(ConfigError) as caught:
        load_settings(path, environ={})
    assert str(caught.value).splitlines()[1:] == [
        "  line 1: port: expected a number (unquoted in TOML), got '51100': write port = 51100",
        "  line 2: threshold: expected a number (unquoted in TOML), got '0.9': write "
        "threshold = 0.9",
        "  line 8: cameras[0].fps: expected a number (unquoted in TOML), got ' 15': write fps = 15",
        "  line 3: max_streams: Input should be a valid integer, unable to parse string as an "
        "integer, got 'lots'",
    ]
    # advice only where following it works: "1.5" is no port, "1e4" no TOML integer, "nan"
    # no threshold; "Infinity" (which pydantic takes) is TOML's inf
    for key, text in (("port", "1.5"), ("port", "1e4"), ("threshold", "nan")):
        path.write_text(f'{key} = "{text}"\n')
        with pytest.raises(ConfigError) as caught:
            load_settings(path, environ={})
        assert "write" not in str(caught.value) and len(str(caught.value).splitlines()) == 2
    # advice written as TOML writes numbers, which it takes back as the same number
    for key, text, written in (
        ("port", "05", "5"),
        ("threshold", ".5", "0.5"),
        ("threshold", "1.", "1"),
        ("grace_period_s", "1e-7", "1e-07"),
    ):
        path.write_text(f'{key} = "{text}"\n')
        with pytest.raises(ConfigError, match=f"got '{re.escape(text)}': write {key} = {written}$"):
            load_settings(path, environ={})
        assert tomllib.loads(f"{key} = {written}")[key] == float(text)
    arabic = "\u0665\u0661\u0661\u0660\u0660"  # 51100 in Arabic-Indic digits, which int() takes
    path.write_text(f'port = "{arabic}"\n')  # and TOML does not
    with pytest.raises(ConfigError) as caught:
        load_settings(path, environ={})
    assert "write" not in str(caught.value)
    # a key a variable or flag replaces is not read from the file, quoted or not
    path.write_text('port = "51100"\n')
    assert load_settings(path, environ={"CONVSTREAM_PORT": "51200"}).port == 51200
    assert load_settings(path, environ={}, overrides={"port": 51300}).port == 51300
    # an item of a list: no key to advise
    path.write_text("input_sizes = [640]\n")
    listed = r"line 1: input_sizes\[0\]: expected a string \(in quotes in TOML\), got 640\n"
    with pytest.raises(ConfigError, match=listed):
        load_settings(path, environ={})
    path.write_text('grace_period_s = "Infinity"\n')
    with pytest.raises(ConfigError, match=r"got 'Infinity': write grace_period_s = inf$"):
        load_settings(path, environ={})
    path.write_text("grace_period_s = inf\n")
    assert load_settings(path, environ={}).grace_period_s == math.inf
    path.write_text("stream_idle_timeout_s = inf\n")  # never: only asyncio counts it
    assert load_settings(path, environ={}).stream_idle_timeout_s == math.inf
    # the other way round: a string written as a number, and OpenCV's camera 0
    path.write_text("[[cameras]]\nid = 3\nsource = 0\n")
    with pytest.raises(ConfigError) as caught:
        load_settings(path, environ={})
    assert str(caught.value).splitlines()[1:] == [
        '  line 2: cameras[0].id: expected a string (in quotes in TOML), got 3: write id = "3"',
        "  line 3: cameras[0].source: expected a string, got 0: a USB camera is source = "
        '"device:0"',
    ]
    path.write_text("port = 51100\nthreshold = 0.9\n")
    assert load_settings(path, environ={"CONVSTREAM_MAX_STREAMS": "7"}).max_streams == 7
    assert load_settings(path, environ={}).port == 51100


async def test_the_smallest_limits_accepted_still_serve() -> None:
    """At each limit's lower bound a frame of the smallest size taken is still analysed, with
    its heatmap and input JPEG, and a stream still opens (one step under each is refused)."""
    settings = Settings(
        port=0,
        metrics_port=-1,
        cameras=(),
        max_frame_side=32,
        max_frame_pixels=32 * 32,
        max_message_bytes=MIN_MESSAGE_BYTES,
        max_queued_frames=4,
        stream_queue_size=4,
    )
    server = Server(settings)
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = pb_grpc.ConvstreamStub(channel)
            options = pb.ResultOptions(include_frame=True)
            frame = pb.FrameRequest(encoded=jpeg(scene(1, 32, 32)), options=options)
            result = await stub.Analyze(frame, timeout=30)
            assert result.status.code == 0 and result.heatmap.data and result.frame_jpeg
            stream = stub.StreamFrames(timeout=30)
            await stream.write(frame)
            assert (await stream.read()).status.code == 0
            await stream.done_writing()
    finally:
        await server.stop(grace=0)


@pytest.mark.parametrize(
    ("host", "metrics_host", "clash"),
    [
        ("127.0.0.1", "127.0.0.1", True),
        ("0.0.0.0", "127.0.0.1", True),
        ("[::]", "127.0.0.1", True),  # dual-stack: every address
        ("::", "10.0.0.5", True),
        ("localhost", "127.0.0.1", True),  # gRPC binds 127.0.0.1 and ::1
        ("[::1]", "localhost", True),
        ("10.0.0.5", "127.0.0.1", False),  # one port number on two addresses
        ("10.0.0.5", "10.0.0.6", False),
    ],
)
def test_the_metrics_port_may_not_take_the_grpc_port(
    host: str, metrics_host: str, clash: bool
) -> None:
    same = {"port": 9464, "metrics_port": 9464, "host": host, "metrics_host": metrics_host}
    if clash:
        with pytest.raises(ConfigError, match="takes port 9464, the gRPC port"):
            load_settings(overrides=same)
    else:
        assert load_settings(overrides=same).port == 9464
    assert load_settings(overrides={**same, "metrics_port": -1}).port == 9464  # off: no clash


def test_hosts_without_ports_are_taken_and_a_flag_is_not_blamed_on_the_environment() -> None:
    for host in ("::", "[::1]", "::1", "fe80::1%eth0", "0.0.0.0", "localhost"):
        assert load_settings(environ={}, overrides={"host": host}).host == host
    with pytest.raises(ConfigError) as info:
        load_settings(environ={"CONVSTREAM_PORT": "1"}, overrides={"port": -5})
    assert "CONVSTREAM_PORT" not in str(info.value)


def test_serve_refuses_a_host_with_a_port(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--host", "0.0.0.0:50051", "--metrics-port", "-1"]) == 2
    err = capsys.readouterr().err
    assert (
        "host is an address without a port, got '0.0.0.0:50051'; give the port with --port" in err
    )
    assert "cannot listen" not in err


def test_the_docs_list_every_setting_with_its_default() -> None:
    docs = (Path(__file__).parents[1] / "docs" / "server.md").read_text()
    section = docs[docs.index("# Running the server") : docs.index("## Cameras")]
    block = section.split("```toml\n", 1)[1].split("```", 1)[0]
    listed = tomllib.loads(block)
    commented = set(re.findall(r"^# (\w+)[ :=]", block, re.MULTILINE))
    assert set(Settings.model_fields) - set(listed) - commented == set()
    assert Settings.model_validate(listed) == Settings()  # the defaults as the docs have them


def test_environment_names_the_config_file(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("max_streams = 3\n")
    assert load_settings(environ={"CONVSTREAM_CONFIG": str(path)}).max_streams == 3
    # the client commands' token may sit in the same shell: it is not a server setting
    environ = {"CONVSTREAM_CONFIG": str(path), "CONVSTREAM_TOKEN": "abc"}
    assert load_settings(environ=environ).max_streams == 3
    # nor is scripts/run.sh's dashboard port, which the README tells people to set
    environ["CONVSTREAM_DASHBOARD_PORT"] = "8081"
    assert load_settings(environ=environ).max_streams == 3


def test_parse_size() -> None:
    assert parse_size("384x640") == (384, 640)
    with pytest.raises(ValueError, match="HxW"):
        parse_size("640")


def test_config_errors_never_print_camera_passwords(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    cameras = "".join(
        f'[[cameras]]\nid = "b"\nsource = "rtsp://admin:S3cret@10.0.0.{i}/live"\n' for i in (1, 2)
    )
    path.write_text(cameras)  # a whole-table error (an id twice) must not print the table
    with pytest.raises(ConfigError, match="camera id 'b' is listed twice") as info:
        load_settings(path, environ={})
    assert "S3cret" not in str(info.value) and "10.0.0.1" not in str(info.value)
    # ids that read alike are two tiles nobody can tell apart (a published stream's name
    # that reads as a camera's was refused; two cameras' were not)
    path.write_text(cameras.replace('id = "b"', 'id = "dock-3"', 1).replace('"b"', '"Dock_3"'))
    with pytest.raises(ConfigError, match="camera ids 'dock-3' and 'Dock_3' read alike") as info:
        load_settings(path, environ={})
    assert "S3cret" not in str(info.value)
    path.write_text('port = "rtsp://admin:S3cret@10.0.0.3/x"\n')  # a single value: redacted
    with pytest.raises(ConfigError, match="port: Input should be a valid integer") as info:
        load_settings(path, environ={})
    assert "S3cret" not in str(info.value) and "admin:***@" in str(info.value)
    # a source pasted as the id: refused for its form, and shown with the password hidden
    path.write_text('[[cameras]]\nid = "rtsp://admin:S3cret@10.0.0.7/stream"\nsource = "x.mp4"\n')
    with pytest.raises(ConfigError, match=r"cameras\[0\]\.id: a camera id is") as info:
        load_settings(path, environ={})
    assert "S3cret" not in str(info.value)
    assert "got 'rtsp://admin:***@10.0.0.7/stream'" in str(info.value)
    long = "rtsp://admin:" + "S3cret" * 20 + "@10.0.0.7/stream"  # hidden before it is cut
    path.write_text(f'[[cameras]]\nid = "{long}"\nsource = "x.mp4"\n')
    with pytest.raises(ConfigError, match="a camera id is") as info:
        load_settings(path, environ={})
    assert "S3cret" not in str(info.value)


def test_host_port_brackets_ipv6() -> None:
    from convstream.v1 import host_port

    assert host_port("127.0.0.1", 50051) == "127.0.0.1:50051"
    assert host_port("::", 50051) == "[::]:50051"
    assert host_port("[::1]", 1) == "[::1]:1"


@pytest.mark.parametrize(
    ("host", "url"),
    [
        ("[::1]", "http://[::1]:8080/"),  # was http://[[::1]]:8080/
        ("::1", "http://[::1]:8080/"),
        ("::", "http://[::1]:8080/"),  # every interface: reached here on loopback
        ("0.0.0.0", "http://127.0.0.1:8080/"),
        ("localhost", "http://localhost:8080/"),
    ],
)
def test_the_dashboards_address_is_one_a_browser_here_can_open(host: str, url: str) -> None:
    from convstream.dashboard import Dashboard, DashboardSettings

    assert Dashboard(DashboardSettings(host=host, port=8080)).url == url


def test_a_config_the_server_refuses_is_said_as_its_log_lines_would_be(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """With log_format json, a shipper parsed every line of the log but the one that said why
    the server did not start ("convstream serve: ..."): it is a JSON line too, the format
    read as the settings would (the flag, the environment, the file), since they failed."""
    for name in ("CONVSTREAM_LOG_FORMAT", "CONVSTREAM_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    path = tmp_path / "c.toml"
    path.write_text('log_format = "json"\nport = "abc"\n')
    assert main(["serve", "--config", str(path)]) == 2
    said = json.loads(capsys.readouterr().err)
    assert said["level"] == "CRITICAL" and said["logger"] == "convstream serve"
    assert "port" in said["message"]
    path.write_text('port = "abc"\n')
    assert main(["serve", "--config", str(path)]) == 2
    assert capsys.readouterr().err.startswith("convstream serve: ")
    assert main(["serve", "--config", str(path), "--log-format", "json"]) == 2
    assert json.loads(capsys.readouterr().err)["level"] == "CRITICAL"
    # a file saved by Notepad, with a byte-order mark: read alike, so a JSON line too
    path.write_text('\ufefflog_format = "json"\nport = "abc"\n', encoding="utf-8")
    assert main(["serve", "--config", str(path)]) == 2
    assert json.loads(capsys.readouterr().err)["level"] == "CRITICAL"
