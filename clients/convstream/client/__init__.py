"""The convstream Python client: damage scores, heatmaps and feature maps for your frames.

    from convstream.client import Client, ResultOptions, Video

    with Client("127.0.0.1:50051") as client:
        result = client.analyze("box.jpg")                  # one frame
        print(result.score, result.damaged, result.heatmap.shape)

        with Video("conveyor.avi") as video:                 # many frames, one stream
            for result in client.stream(video.frames(), resume=True):
                print(result.frame_id, result.score)

        print([(camera.id, camera.state) for camera in client.cameras()])
        for result in client.watch("dock-3", max_fps=2):     # a camera the server pulls
            print(result.frame_id, result.score, result.frame_age_ms)

``AsyncClient`` offers the same calls for asyncio. Every error of the server, the connection
or a source is a ``ConvstreamError`` (see ``convstream.client.errors`` for the tree), and so
is a call on a client already closed (``ClientClosed``). Bytes
that are not an image the server decodes are judged by the server: ``InvalidFrame``, raised
by ``analyze`` and in the ``error`` of that frame's Result on a stream (which goes on); so is
a frame too small or too large to send. A file that cannot be read or is no image, a folder
given as a video, or a video given as an image is a ``SourceError``, also a Result's
``error`` on a stream. A bad argument is a ``ValueError`` or ``TypeError``: an option out of
range, pixels that are not uint8 BGR or gray, an object that is no frame at all.

The client logs through the ``convstream.client`` logger (a warning when a stream or a watch
resumes after a break, and when a watch is taken of a camera that is stalled or reconnecting:
no result comes until it is back). gRPC's own C library writes lines of its own to stderr
(a failed TLS handshake, once per try); ``GRPC_VERBOSITY=ERROR`` in the environment before
grpc is first imported quiets them, as the ``convstream`` commands do.
"""

from convstream.client._client import AsyncClient, Client
from convstream.client.episodes import DamageAlert, alerts, alerts_async
from convstream.client.errors import (
    Cancelled,
    ClientClosed,
    ConvstreamError,
    DeadlineExceeded,
    InvalidFrame,
    NotFound,
    Overloaded,
    PermissionDenied,
    ProtocolError,
    Rejected,
    ServerError,
    ServerUnavailable,
    SourceError,
    Unauthenticated,
    Unsupported,
)
from convstream.client.featureview import draw_feature_maps, save_feature_maps
from convstream.client.frames import Frame, FrameLike, Video, image_files, read_image, read_images
from convstream.client.options import (
    TLS,
    Encoding,
    Freshness,
    Limits,
    ResultOptions,
    Retry,
    Timeout,
    Upload,
)
from convstream.client.overlay import draw_overlay, heatmap_on_frame, save_overlay
from convstream.client.results import (
    CameraInfo,
    CameraState,
    Geometry,
    ModelInfo,
    Region,
    Result,
    Size,
    Stage,
    Timings,
)
from convstream.client.tensors import to_numpy

__all__ = [
    "TLS",
    "AsyncClient",
    "CameraInfo",
    "CameraState",
    "Cancelled",
    "Client",
    "ClientClosed",
    "ConvstreamError",
    "DamageAlert",
    "DeadlineExceeded",
    "Encoding",
    "Frame",
    "FrameLike",
    "Freshness",
    "Geometry",
    "InvalidFrame",
    "Limits",
    "ModelInfo",
    "NotFound",
    "Overloaded",
    "PermissionDenied",
    "ProtocolError",
    "Region",
    "Rejected",
    "Result",
    "ResultOptions",
    "Retry",
    "ServerError",
    "ServerUnavailable",
    "Size",
    "SourceError",
    "Stage",
    "Timeout",
    "Timings",
    "Unauthenticated",
    "Unsupported",
    "Upload",
    "Video",
    "alerts",
    "alerts_async",
    "draw_feature_maps",
    "draw_overlay",
    "heatmap_on_frame",
    "image_files",
    "read_image",
    "read_images",
    "save_feature_maps",
    "save_overlay",
    "to_numpy",
]
