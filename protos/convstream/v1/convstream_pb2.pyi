import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class PixelFormat(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PIXEL_FORMAT_UNSPECIFIED: _ClassVar[PixelFormat]
    PIXEL_FORMAT_BGR8: _ClassVar[PixelFormat]
    PIXEL_FORMAT_RGB8: _ClassVar[PixelFormat]
    PIXEL_FORMAT_GRAY8: _ClassVar[PixelFormat]

class TensorEncoding(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TENSOR_ENCODING_UNSPECIFIED: _ClassVar[TensorEncoding]
    TENSOR_ENCODING_FLOAT32: _ClassVar[TensorEncoding]
    TENSOR_ENCODING_FLOAT16: _ClassVar[TensorEncoding]
    TENSOR_ENCODING_UINT8: _ClassVar[TensorEncoding]

class Freshness(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FRESHNESS_UNSPECIFIED: _ClassVar[Freshness]
    FRESHNESS_LATEST_ONLY: _ClassVar[Freshness]
    FRESHNESS_BOUNDED_QUEUE: _ClassVar[Freshness]
    FRESHNESS_LOSSLESS: _ClassVar[Freshness]

class CameraState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CAMERA_STATE_UNSPECIFIED: _ClassVar[CameraState]
    CAMERA_STATE_CONNECTING: _ClassVar[CameraState]
    CAMERA_STATE_RUNNING: _ClassVar[CameraState]
    CAMERA_STATE_STALLED: _ClassVar[CameraState]
    CAMERA_STATE_RECONNECTING: _ClassVar[CameraState]
    CAMERA_STATE_FAILED: _ClassVar[CameraState]
    CAMERA_STATE_STOPPED: _ClassVar[CameraState]
PIXEL_FORMAT_UNSPECIFIED: PixelFormat
PIXEL_FORMAT_BGR8: PixelFormat
PIXEL_FORMAT_RGB8: PixelFormat
PIXEL_FORMAT_GRAY8: PixelFormat
TENSOR_ENCODING_UNSPECIFIED: TensorEncoding
TENSOR_ENCODING_FLOAT32: TensorEncoding
TENSOR_ENCODING_FLOAT16: TensorEncoding
TENSOR_ENCODING_UINT8: TensorEncoding
FRESHNESS_UNSPECIFIED: Freshness
FRESHNESS_LATEST_ONLY: Freshness
FRESHNESS_BOUNDED_QUEUE: Freshness
FRESHNESS_LOSSLESS: Freshness
CAMERA_STATE_UNSPECIFIED: CameraState
CAMERA_STATE_CONNECTING: CameraState
CAMERA_STATE_RUNNING: CameraState
CAMERA_STATE_STALLED: CameraState
CAMERA_STATE_RECONNECTING: CameraState
CAMERA_STATE_FAILED: CameraState
CAMERA_STATE_STOPPED: CameraState

class RawImage(_message.Message):
    __slots__ = ("width", "height", "format", "data")
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    width: int
    height: int
    format: PixelFormat
    data: bytes
    def __init__(self, width: _Optional[int] = ..., height: _Optional[int] = ..., format: _Optional[_Union[PixelFormat, str]] = ..., data: _Optional[bytes] = ...) -> None: ...

class ResultOptions(_message.Message):
    __slots__ = ("feature_maps", "encoding", "include_heatmap", "include_frame", "freshness", "queue_size", "publish")
    FEATURE_MAPS_FIELD_NUMBER: _ClassVar[int]
    ENCODING_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_HEATMAP_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_FRAME_FIELD_NUMBER: _ClassVar[int]
    FRESHNESS_FIELD_NUMBER: _ClassVar[int]
    QUEUE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PUBLISH_FIELD_NUMBER: _ClassVar[int]
    feature_maps: _containers.RepeatedScalarFieldContainer[str]
    encoding: TensorEncoding
    include_heatmap: bool
    include_frame: bool
    freshness: Freshness
    queue_size: int
    publish: bool
    def __init__(self, feature_maps: _Optional[_Iterable[str]] = ..., encoding: _Optional[_Union[TensorEncoding, str]] = ..., include_heatmap: bool = ..., include_frame: bool = ..., freshness: _Optional[_Union[Freshness, str]] = ..., queue_size: _Optional[int] = ..., publish: bool = ...) -> None: ...

class FrameRequest(_message.Message):
    __slots__ = ("frame_id", "source", "capture_time", "encoded", "raw", "options")
    FRAME_ID_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    CAPTURE_TIME_FIELD_NUMBER: _ClassVar[int]
    ENCODED_FIELD_NUMBER: _ClassVar[int]
    RAW_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    frame_id: int
    source: str
    capture_time: _timestamp_pb2.Timestamp
    encoded: bytes
    raw: RawImage
    options: ResultOptions
    def __init__(self, frame_id: _Optional[int] = ..., source: _Optional[str] = ..., capture_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., encoded: _Optional[bytes] = ..., raw: _Optional[_Union[RawImage, _Mapping]] = ..., options: _Optional[_Union[ResultOptions, _Mapping]] = ...) -> None: ...

class Tensor(_message.Message):
    __slots__ = ("name", "shape", "encoding", "data", "scale", "zero_point", "stride")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    ENCODING_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    SCALE_FIELD_NUMBER: _ClassVar[int]
    ZERO_POINT_FIELD_NUMBER: _ClassVar[int]
    STRIDE_FIELD_NUMBER: _ClassVar[int]
    name: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    encoding: TensorEncoding
    data: bytes
    scale: float
    zero_point: int
    stride: int
    def __init__(self, name: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ..., encoding: _Optional[_Union[TensorEncoding, str]] = ..., data: _Optional[bytes] = ..., scale: _Optional[float] = ..., zero_point: _Optional[int] = ..., stride: _Optional[int] = ...) -> None: ...

class Geometry(_message.Message):
    __slots__ = ("frame_width", "frame_height", "input_width", "input_height", "scale", "pad_left", "pad_top", "exif_orientation")
    FRAME_WIDTH_FIELD_NUMBER: _ClassVar[int]
    FRAME_HEIGHT_FIELD_NUMBER: _ClassVar[int]
    INPUT_WIDTH_FIELD_NUMBER: _ClassVar[int]
    INPUT_HEIGHT_FIELD_NUMBER: _ClassVar[int]
    SCALE_FIELD_NUMBER: _ClassVar[int]
    PAD_LEFT_FIELD_NUMBER: _ClassVar[int]
    PAD_TOP_FIELD_NUMBER: _ClassVar[int]
    EXIF_ORIENTATION_FIELD_NUMBER: _ClassVar[int]
    frame_width: int
    frame_height: int
    input_width: int
    input_height: int
    scale: float
    pad_left: int
    pad_top: int
    exif_orientation: int
    def __init__(self, frame_width: _Optional[int] = ..., frame_height: _Optional[int] = ..., input_width: _Optional[int] = ..., input_height: _Optional[int] = ..., scale: _Optional[float] = ..., pad_left: _Optional[int] = ..., pad_top: _Optional[int] = ..., exif_orientation: _Optional[int] = ...) -> None: ...

class Timings(_message.Message):
    __slots__ = ("queue_ms", "decode_ms", "inference_ms", "encode_ms", "total_ms", "batch_size", "inference_threads")
    QUEUE_MS_FIELD_NUMBER: _ClassVar[int]
    DECODE_MS_FIELD_NUMBER: _ClassVar[int]
    INFERENCE_MS_FIELD_NUMBER: _ClassVar[int]
    ENCODE_MS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_MS_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    INFERENCE_THREADS_FIELD_NUMBER: _ClassVar[int]
    queue_ms: float
    decode_ms: float
    inference_ms: float
    encode_ms: float
    total_ms: float
    batch_size: int
    inference_threads: int
    def __init__(self, queue_ms: _Optional[float] = ..., decode_ms: _Optional[float] = ..., inference_ms: _Optional[float] = ..., encode_ms: _Optional[float] = ..., total_ms: _Optional[float] = ..., batch_size: _Optional[int] = ..., inference_threads: _Optional[int] = ...) -> None: ...

class FrameStatus(_message.Message):
    __slots__ = ("code", "message")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    code: int
    message: str
    def __init__(self, code: _Optional[int] = ..., message: _Optional[str] = ...) -> None: ...

class FrameResult(_message.Message):
    __slots__ = ("frame_id", "source", "status", "score", "damaged", "heatmap", "feature_maps", "timings", "frame_age_ms", "frames_dropped", "sequence", "geometry", "frame_jpeg", "capture_time", "dropped_frame_ids", "peak", "brightness", "contrast", "blank", "threshold", "published", "freshness", "queue_size", "regions", "camera_state")
    FRAME_ID_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    DAMAGED_FIELD_NUMBER: _ClassVar[int]
    HEATMAP_FIELD_NUMBER: _ClassVar[int]
    FEATURE_MAPS_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    FRAME_AGE_MS_FIELD_NUMBER: _ClassVar[int]
    FRAMES_DROPPED_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    GEOMETRY_FIELD_NUMBER: _ClassVar[int]
    FRAME_JPEG_FIELD_NUMBER: _ClassVar[int]
    CAPTURE_TIME_FIELD_NUMBER: _ClassVar[int]
    DROPPED_FRAME_IDS_FIELD_NUMBER: _ClassVar[int]
    PEAK_FIELD_NUMBER: _ClassVar[int]
    BRIGHTNESS_FIELD_NUMBER: _ClassVar[int]
    CONTRAST_FIELD_NUMBER: _ClassVar[int]
    BLANK_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    PUBLISHED_FIELD_NUMBER: _ClassVar[int]
    FRESHNESS_FIELD_NUMBER: _ClassVar[int]
    QUEUE_SIZE_FIELD_NUMBER: _ClassVar[int]
    REGIONS_FIELD_NUMBER: _ClassVar[int]
    CAMERA_STATE_FIELD_NUMBER: _ClassVar[int]
    frame_id: int
    source: str
    status: FrameStatus
    score: float
    damaged: bool
    heatmap: Tensor
    feature_maps: _containers.RepeatedCompositeFieldContainer[Tensor]
    timings: Timings
    frame_age_ms: float
    frames_dropped: int
    sequence: int
    geometry: Geometry
    frame_jpeg: bytes
    capture_time: _timestamp_pb2.Timestamp
    dropped_frame_ids: _containers.RepeatedScalarFieldContainer[int]
    peak: Peak
    brightness: float
    contrast: float
    blank: bool
    threshold: float
    published: bool
    freshness: Freshness
    queue_size: int
    regions: _containers.RepeatedCompositeFieldContainer[Region]
    camera_state: CameraState
    def __init__(self, frame_id: _Optional[int] = ..., source: _Optional[str] = ..., status: _Optional[_Union[FrameStatus, _Mapping]] = ..., score: _Optional[float] = ..., damaged: bool = ..., heatmap: _Optional[_Union[Tensor, _Mapping]] = ..., feature_maps: _Optional[_Iterable[_Union[Tensor, _Mapping]]] = ..., timings: _Optional[_Union[Timings, _Mapping]] = ..., frame_age_ms: _Optional[float] = ..., frames_dropped: _Optional[int] = ..., sequence: _Optional[int] = ..., geometry: _Optional[_Union[Geometry, _Mapping]] = ..., frame_jpeg: _Optional[bytes] = ..., capture_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., dropped_frame_ids: _Optional[_Iterable[int]] = ..., peak: _Optional[_Union[Peak, _Mapping]] = ..., brightness: _Optional[float] = ..., contrast: _Optional[float] = ..., blank: bool = ..., threshold: _Optional[float] = ..., published: bool = ..., freshness: _Optional[_Union[Freshness, str]] = ..., queue_size: _Optional[int] = ..., regions: _Optional[_Iterable[_Union[Region, _Mapping]]] = ..., camera_state: _Optional[_Union[CameraState, str]] = ...) -> None: ...

class Region(_message.Message):
    __slots__ = ("x", "y", "width", "height", "value", "cells")
    X_FIELD_NUMBER: _ClassVar[int]
    Y_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    CELLS_FIELD_NUMBER: _ClassVar[int]
    x: int
    y: int
    width: int
    height: int
    value: float
    cells: int
    def __init__(self, x: _Optional[int] = ..., y: _Optional[int] = ..., width: _Optional[int] = ..., height: _Optional[int] = ..., value: _Optional[float] = ..., cells: _Optional[int] = ...) -> None: ...

class Peak(_message.Message):
    __slots__ = ("row", "col", "x", "y", "value")
    ROW_FIELD_NUMBER: _ClassVar[int]
    COL_FIELD_NUMBER: _ClassVar[int]
    X_FIELD_NUMBER: _ClassVar[int]
    Y_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    row: int
    col: int
    x: float
    y: float
    value: float
    def __init__(self, row: _Optional[int] = ..., col: _Optional[int] = ..., x: _Optional[float] = ..., y: _Optional[float] = ..., value: _Optional[float] = ...) -> None: ...

class GetModelInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Stage(_message.Message):
    __slots__ = ("name", "channels", "stride")
    NAME_FIELD_NUMBER: _ClassVar[int]
    CHANNELS_FIELD_NUMBER: _ClassVar[int]
    STRIDE_FIELD_NUMBER: _ClassVar[int]
    name: str
    channels: int
    stride: int
    def __init__(self, name: _Optional[str] = ..., channels: _Optional[int] = ..., stride: _Optional[int] = ...) -> None: ...

class InputSize(_message.Message):
    __slots__ = ("width", "height")
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    width: int
    height: int
    def __init__(self, width: _Optional[int] = ..., height: _Optional[int] = ...) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("name", "sha256", "execution_provider", "requested_provider", "available_providers", "threshold", "heatmap_stride", "stages", "input_sizes", "onnxruntime_version", "server_version", "max_message_bytes", "max_frame_pixels", "max_frame_side", "stream_queue_size", "max_stream_queue_size", "stream_idle_timeout_s", "max_streams", "max_analyze_calls", "max_watchers", "watcher_queue_size", "threshold_source", "max_queued_frames", "max_held_bytes", "max_watcher_bytes", "min_frame_side", "max_small_request_bytes")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    EXECUTION_PROVIDER_FIELD_NUMBER: _ClassVar[int]
    REQUESTED_PROVIDER_FIELD_NUMBER: _ClassVar[int]
    AVAILABLE_PROVIDERS_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    HEATMAP_STRIDE_FIELD_NUMBER: _ClassVar[int]
    STAGES_FIELD_NUMBER: _ClassVar[int]
    INPUT_SIZES_FIELD_NUMBER: _ClassVar[int]
    ONNXRUNTIME_VERSION_FIELD_NUMBER: _ClassVar[int]
    SERVER_VERSION_FIELD_NUMBER: _ClassVar[int]
    MAX_MESSAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_FRAME_PIXELS_FIELD_NUMBER: _ClassVar[int]
    MAX_FRAME_SIDE_FIELD_NUMBER: _ClassVar[int]
    STREAM_QUEUE_SIZE_FIELD_NUMBER: _ClassVar[int]
    MAX_STREAM_QUEUE_SIZE_FIELD_NUMBER: _ClassVar[int]
    STREAM_IDLE_TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    MAX_STREAMS_FIELD_NUMBER: _ClassVar[int]
    MAX_ANALYZE_CALLS_FIELD_NUMBER: _ClassVar[int]
    MAX_WATCHERS_FIELD_NUMBER: _ClassVar[int]
    WATCHER_QUEUE_SIZE_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_SOURCE_FIELD_NUMBER: _ClassVar[int]
    MAX_QUEUED_FRAMES_FIELD_NUMBER: _ClassVar[int]
    MAX_HELD_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_WATCHER_BYTES_FIELD_NUMBER: _ClassVar[int]
    MIN_FRAME_SIDE_FIELD_NUMBER: _ClassVar[int]
    MAX_SMALL_REQUEST_BYTES_FIELD_NUMBER: _ClassVar[int]
    name: str
    sha256: str
    execution_provider: str
    requested_provider: str
    available_providers: _containers.RepeatedScalarFieldContainer[str]
    threshold: float
    heatmap_stride: int
    stages: _containers.RepeatedCompositeFieldContainer[Stage]
    input_sizes: _containers.RepeatedCompositeFieldContainer[InputSize]
    onnxruntime_version: str
    server_version: str
    max_message_bytes: int
    max_frame_pixels: int
    max_frame_side: int
    stream_queue_size: int
    max_stream_queue_size: int
    stream_idle_timeout_s: float
    max_streams: int
    max_analyze_calls: int
    max_watchers: int
    watcher_queue_size: int
    threshold_source: str
    max_queued_frames: int
    max_held_bytes: int
    max_watcher_bytes: int
    min_frame_side: int
    max_small_request_bytes: int
    def __init__(self, name: _Optional[str] = ..., sha256: _Optional[str] = ..., execution_provider: _Optional[str] = ..., requested_provider: _Optional[str] = ..., available_providers: _Optional[_Iterable[str]] = ..., threshold: _Optional[float] = ..., heatmap_stride: _Optional[int] = ..., stages: _Optional[_Iterable[_Union[Stage, _Mapping]]] = ..., input_sizes: _Optional[_Iterable[_Union[InputSize, _Mapping]]] = ..., onnxruntime_version: _Optional[str] = ..., server_version: _Optional[str] = ..., max_message_bytes: _Optional[int] = ..., max_frame_pixels: _Optional[int] = ..., max_frame_side: _Optional[int] = ..., stream_queue_size: _Optional[int] = ..., max_stream_queue_size: _Optional[int] = ..., stream_idle_timeout_s: _Optional[float] = ..., max_streams: _Optional[int] = ..., max_analyze_calls: _Optional[int] = ..., max_watchers: _Optional[int] = ..., watcher_queue_size: _Optional[int] = ..., threshold_source: _Optional[str] = ..., max_queued_frames: _Optional[int] = ..., max_held_bytes: _Optional[int] = ..., max_watcher_bytes: _Optional[int] = ..., min_frame_side: _Optional[int] = ..., max_small_request_bytes: _Optional[int] = ...) -> None: ...

class ListCamerasRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class CameraStatus(_message.Message):
    __slots__ = ("id", "state", "state_since", "source_kind", "last_error", "fps_in", "fps_out", "fps_cap", "frames_read", "frames_analysed", "frames_dropped", "reconnects", "watchers", "frame_width", "frame_height", "last_score", "last_frame_time", "latency_ms", "frames_skipped", "last_error_time", "frames_invalid", "last_blank")
    ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    STATE_SINCE_FIELD_NUMBER: _ClassVar[int]
    SOURCE_KIND_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_FIELD_NUMBER: _ClassVar[int]
    FPS_IN_FIELD_NUMBER: _ClassVar[int]
    FPS_OUT_FIELD_NUMBER: _ClassVar[int]
    FPS_CAP_FIELD_NUMBER: _ClassVar[int]
    FRAMES_READ_FIELD_NUMBER: _ClassVar[int]
    FRAMES_ANALYSED_FIELD_NUMBER: _ClassVar[int]
    FRAMES_DROPPED_FIELD_NUMBER: _ClassVar[int]
    RECONNECTS_FIELD_NUMBER: _ClassVar[int]
    WATCHERS_FIELD_NUMBER: _ClassVar[int]
    FRAME_WIDTH_FIELD_NUMBER: _ClassVar[int]
    FRAME_HEIGHT_FIELD_NUMBER: _ClassVar[int]
    LAST_SCORE_FIELD_NUMBER: _ClassVar[int]
    LAST_FRAME_TIME_FIELD_NUMBER: _ClassVar[int]
    LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    FRAMES_SKIPPED_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_TIME_FIELD_NUMBER: _ClassVar[int]
    FRAMES_INVALID_FIELD_NUMBER: _ClassVar[int]
    LAST_BLANK_FIELD_NUMBER: _ClassVar[int]
    id: str
    state: CameraState
    state_since: _timestamp_pb2.Timestamp
    source_kind: str
    last_error: str
    fps_in: float
    fps_out: float
    fps_cap: float
    frames_read: int
    frames_analysed: int
    frames_dropped: int
    reconnects: int
    watchers: int
    frame_width: int
    frame_height: int
    last_score: float
    last_frame_time: _timestamp_pb2.Timestamp
    latency_ms: float
    frames_skipped: int
    last_error_time: _timestamp_pb2.Timestamp
    frames_invalid: int
    last_blank: bool
    def __init__(self, id: _Optional[str] = ..., state: _Optional[_Union[CameraState, str]] = ..., state_since: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., source_kind: _Optional[str] = ..., last_error: _Optional[str] = ..., fps_in: _Optional[float] = ..., fps_out: _Optional[float] = ..., fps_cap: _Optional[float] = ..., frames_read: _Optional[int] = ..., frames_analysed: _Optional[int] = ..., frames_dropped: _Optional[int] = ..., reconnects: _Optional[int] = ..., watchers: _Optional[int] = ..., frame_width: _Optional[int] = ..., frame_height: _Optional[int] = ..., last_score: _Optional[float] = ..., last_frame_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., latency_ms: _Optional[float] = ..., frames_skipped: _Optional[int] = ..., last_error_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., frames_invalid: _Optional[int] = ..., last_blank: bool = ...) -> None: ...

class ListCamerasResponse(_message.Message):
    __slots__ = ("cameras",)
    CAMERAS_FIELD_NUMBER: _ClassVar[int]
    cameras: _containers.RepeatedCompositeFieldContainer[CameraStatus]
    def __init__(self, cameras: _Optional[_Iterable[_Union[CameraStatus, _Mapping]]] = ...) -> None: ...

class WatchCameraRequest(_message.Message):
    __slots__ = ("camera_id", "options", "max_fps", "queue_size")
    CAMERA_ID_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    MAX_FPS_FIELD_NUMBER: _ClassVar[int]
    QUEUE_SIZE_FIELD_NUMBER: _ClassVar[int]
    camera_id: str
    options: ResultOptions
    max_fps: float
    queue_size: int
    def __init__(self, camera_id: _Optional[str] = ..., options: _Optional[_Union[ResultOptions, _Mapping]] = ..., max_fps: _Optional[float] = ..., queue_size: _Optional[int] = ...) -> None: ...
