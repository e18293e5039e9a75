"""The shipped damage model in onnxruntime: load it, pick providers, validate input, run.

This is the only place that creates an onnxruntime session. Callers say which provider they
want ("auto", "cpu" or "cuda"); the factory decides what can run here and reports what it
really got, so nobody else branches on hardware.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import io
import logging
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import onnxruntime as ort
from onnxruntime.capi import build_and_package_info as build_info

from convstream.model.checks import FEATURE_NAMES as FEATURE_NAMES
from convstream.model.checks import INPUT_NAME as INPUT_NAME
from convstream.model.checks import OUTPUT_NAMES as OUTPUT_NAMES
from convstream.model.checks import (
    Declared,
    check_shapes,
    fixed_size,
    input_dims,
    read_metadata,
    stride_of,
)
from convstream.model.checks import ModelFileError as ModelFileError
from convstream.model.checks import StageInfo as StageInfo

logger = logging.getLogger(__name__)

MODEL_PATH = Path(__file__).with_name("damage.onnx")
"""The shipped float32 model, inside the installed package."""

MAX_SHAPED_SESSIONS = 8
"""Input sizes that get a session of their own under fixed_batch; later sizes share one."""
PROBE_SIZE = (64, 96)
"""(height, width) of the run at load that checks the outputs (where the input is not fixed)."""

ProviderChoice = Literal["auto", "cpu", "cuda"]
CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"


class ModelInputError(ValueError):
    """Pixels handed to the model are not what it takes (uint8 BGR, shape (N, H, W, 3))."""


def select_providers(choice: ProviderChoice, available: Sequence[str]) -> list[str]:
    """Execution providers to ask onnxruntime for, best first.

    Args:
        choice: "cpu" always gives the CPU provider; "cuda" and "auto" give CUDA first when
            onnxruntime offers it (onnxruntime-gpu installed), with CPU behind it for the
            operators CUDA lacks.
        available: what ``onnxruntime.get_available_providers()`` reports.

    Returns:
        Provider names for ``InferenceSession(providers=...)``.
    """
    if choice not in ("auto", "cpu", "cuda"):
        raise ValueError(f"provider must be 'auto', 'cpu' or 'cuda', got {choice!r}")
    if wants_cuda(choice, available):
        return [CUDA, CPU]
    if choice != "cpu" and gpu_wheel_overwritten():
        # Installing the gpu extra installs both wheels, and whichever came last owns
        # the onnxruntime module: here the CPU one, so CUDA is missing though asked for.
        logger.warning(
            "onnxruntime-gpu is installed, but the CPU onnxruntime wheel has overwritten the "
            "module they share (onnxruntime offers only %s); to use the GPU run: pip uninstall "
            "-y onnxruntime onnxruntime-gpu && pip install 'onnxruntime-gpu[cuda,cudnn]'; "
            "running on CPU",
            ", ".join(available),
        )
    elif choice == "cuda":
        logger.warning(
            "CUDA execution provider requested but onnxruntime offers only %s (on a host with "
            "an NVIDIA driver, install the gpu extra as docs/production.md, 'GPU', says); "
            "running on CPU",
            ", ".join(available),
        )
    return [CPU]


def gpu_wheel_overwritten() -> bool:
    """onnxruntime-gpu is installed, yet the onnxruntime module is the CPU wheel's."""
    try:
        importlib.metadata.version("onnxruntime-gpu")
    except importlib.metadata.PackageNotFoundError:
        return False
    # each wheel writes its own name into the module it installs
    return getattr(build_info, "package_name", "") != "onnxruntime-gpu"


def wants_cuda(choice: ProviderChoice, available: Sequence[str] | None = None) -> bool:
    """Whether ``select_providers`` puts CUDA first (available: onnxruntime's list by default)."""
    offered = ort.get_available_providers() if available is None else available
    return choice != "cpu" and CUDA in offered


_said: set[tuple[str, str]] = set()
"""(path, sha256) of the files whose missing metadata was logged: once, though the server
loads a file twice (its wide model beside the narrow one)."""

_cuda_libraries_loaded = False
_cuda_libraries_lock = threading.Lock()


def load_cuda_libraries() -> None:
    """Load the CUDA and cuDNN libraries before the first CUDA session, once per process.

    pip's NVIDIA wheels (``onnxruntime-gpu[cuda,cudnn]``) put them in site-packages, where the
    dynamic loader does not look: without this onnxruntime finds them only on the system's
    library path, and otherwise falls back to the CPU. ``onnxruntime.preload_dlls`` loads them
    from site-packages, then from the loader's usual places; what it prints is logged here.
    """
    global _cuda_libraries_loaded
    preload = getattr(ort, "preload_dlls", None)  # onnxruntime-gpu 1.21 and later
    said = io.StringIO()
    with _cuda_libraries_lock:
        if _cuda_libraries_loaded or preload is None:
            return
        _cuda_libraries_loaded = True
        # Once, before the first CUDA session (at start-up): stdout is the process's own for
        # that moment, so what onnxruntime prints can be logged.
        with contextlib.redirect_stdout(said):
            try:
                preload()
            except Exception as exc:  # a bad install must not stop the CPU fallback
                print(exc)
    for line in said.getvalue().splitlines():
        if line.strip():
            logger.warning("loading CUDA libraries: %s", line.strip())


def check_pixels(pixels: np.ndarray) -> None:
    """Raise ModelInputError unless pixels is uint8 BGR of shape (N, H, W, 3) with N, H, W > 0."""
    if not isinstance(pixels, np.ndarray):
        raise ModelInputError(f"pixels must be a numpy array, got {type(pixels).__name__}")
    if pixels.dtype != np.uint8:
        raise ModelInputError(f"pixels must be uint8 BGR, got dtype {pixels.dtype}")
    if pixels.ndim != 4 or pixels.shape[3] != 3:
        # (H, W, C) or (H, W) is one image; then C, or none, says what its pixels are
        one = pixels.ndim == 2 or (pixels.ndim == 3 and pixels.shape[2] in (1, 3, 4))
        channels = 1 if pixels.ndim == 2 else pixels.shape[-1] if pixels.ndim >= 3 else 0
        hints = {
            1: "gray: cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)",
            4: "BGRA: cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)",
        }
        hint = [hints[channels]] if channels in hints and (one or pixels.ndim == 4) else []
        if one:
            hint.append("one image: image[None] makes a batch of it")
        elif pixels.ndim == 3:  # (N, H, W): gray frames
            hint.append("gray frames: np.repeat(pixels[..., None], 3, axis=3)")
        said = f" ({'; then '.join(hint)})" if hint else ""
        raise ModelInputError(
            f"pixels must have shape (N, H, W, 3) with 3 BGR channels, got {pixels.shape}{said}"
        )
    if min(pixels.shape[:3]) == 0:
        raise ModelInputError(f"pixels must have N, H and W > 0, got shape {pixels.shape}")


# Where the sizes a model is asked to run come from, and how to ask for others, as a size it
# does not take is reported: the server's settings, unless the caller says otherwise.
SIZES_FROM_SETTINGS = (
    "the server runs {} (input_sizes and the cameras' input_size)",
    "set input_sizes",
)


class DamageModel:
    """The damage network in an onnxruntime session.

    Args:
        path: an .onnx file; the shipped model by default.
        provider: "auto", "cpu" or "cuda" (see ``select_providers``).
        intra_op_threads: threads onnxruntime uses inside one run; 0 lets it choose.
        spin: let idle onnxruntime threads spin-wait. Spinning shaves latency off back-to-back
            runs but burns a core while idle, which starves decoding on a small CPU.
        fixed_batch: 0 runs each batch as it comes. N > 0 keeps every input shape the
            session sees fixed: each run is padded to N frames (a larger batch runs in chunks
            of N) and each input size gets a session of its own (up to MAX_SHAPED_SESSIONS).
            onnxruntime's CUDA convolutions choose their cuDNN kernels again whenever their
            input shape changes, which on an H200 took about 100 ms against about 2 ms for the
            run itself (benchmarks/bench_gpu.py); padding a lone frame to 8 costs the GPU
            about 1.2 ms (0.5 ms for 1 frame, 1.7 for 8).
            It applies on any provider (on a CPU it only costs time); the server asks for it
            on CUDA alone.
    """

    def __init__(
        self,
        path: Path | str | None = None,
        *,
        provider: ProviderChoice = "auto",
        intra_op_threads: int = 0,
        spin: bool = False,
        fixed_batch: int = 0,
    ) -> None:
        if fixed_batch < 0:
            raise ValueError(f"fixed_batch must be >= 0, got {fixed_batch}")
        self.path = Path(path) if path is not None else MODEL_PATH
        self.intra_op_threads = intra_op_threads
        self.fixed_batch = fixed_batch
        try:
            data = self.path.read_bytes()
        except OSError as exc:
            where = ""
            if not self.path.is_absolute():  # from the working folder, not a config's own
                where = f" (looked for at {Path.cwd() / self.path}: a relative path is taken "
                where += "from the folder the server starts in)"
            raise ModelFileError(f"{self.path}: {exc.strerror}{where}") from exc
        self.sha256 = hashlib.sha256(data).hexdigest()
        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_op_threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # onnxruntime's errors only, on stderr: a float16 model printed dozens of coloured
        # "Shape mismatch attempting to re-use buffer" warnings at each start, which are
        # about its memory planning, not about the model or its results
        options.log_severity_level = 3
        # Weights an exporter kept in a file of their own (torch's external_data) are looked
        # for beside the model, not in the working directory: the model is loaded as bytes.
        options.add_session_config_entry(
            "session.model_external_initializers_file_folder_path", str(self.path.parent.resolve())
        )
        spin_flag = "1" if spin else "0"
        options.add_session_config_entry("session.intra_op.allow_spinning", spin_flag)
        options.add_session_config_entry("session.inter_op.allow_spinning", spin_flag)
        self.requested_provider: ProviderChoice = provider
        wanted = select_providers(provider, ort.get_available_providers())
        if wanted[0] == CUDA:
            load_cuda_libraries()
        try:
            self.session = ort.InferenceSession(data, options, providers=wanted)
            # With fixed_batch, more sessions of the same bytes, made on first use of a size.
            self._new_session = lambda: ort.InferenceSession(data, options, providers=wanted)
        except Exception as exc:  # onnxruntime's own classes: InvalidProtobuf, Fail, ...
            hint = ""
            if "external data" in str(exc).lower():
                hint = (
                    " (its weights are kept in a file of their own, read from beside the "
                    f"model, in {self.path.parent.resolve()}: copy that file there too, or "
                    "export with external_data=False for one file)"
                )
            raise ModelFileError(
                f"{self.path} is not an ONNX model onnxruntime loads: {exc}{hint}"
            ) from exc
        inputs = [f"{i.name} {i.type}" for i in self.session.get_inputs()]
        outputs = sorted(o.name for o in self.session.get_outputs())
        if inputs != [f"{INPUT_NAME} tensor(uint8)"] or not set(outputs) >= set(OUTPUT_NAMES):
            missing = [name for name in OUTPUT_NAMES if name not in outputs]
            lacks = f" (no {', '.join(missing)})" if missing else ""
            floats = any("float" in i.type for i in self.session.get_inputs())
            raise ModelFileError(
                f"{self.path} is not a convstream damage model: expected one uint8 input "
                f"{INPUT_NAME!r} and outputs {', '.join(OUTPUT_NAMES)}; it has inputs "
                f"{', '.join(inputs)} and outputs {', '.join(outputs)}{lacks}"
                + (
                    "; the server hands a model frames as decoded, uint8 BGR of shape (N, H, "
                    "W, 3): put the scaling, the mean and std and the change to channels first "
                    "inside the graph (MODEL_CARD.md, 'A model file of your own')"
                    if floats
                    else ""
                )
            )
        got = self.session.get_providers()
        self.provider = got[0]
        # CPU threads of a run, as results report them: none on CUDA, where the GPU runs it
        self.run_threads = intra_op_threads if self.provider == CPU else 0
        if wanted[0] != self.provider:
            # onnxruntime falls back quietly when the CUDA libraries fail to load.
            logger.error(
                "execution provider %s could not be loaded (missing CUDA/cuDNN libraries?); "
                "onnxruntime is running on %s",
                wanted[0],
                self.provider,
            )
        self.input_dims = input_dims(self.path, self.session.get_inputs()[0].shape)
        meta: Mapping[str, str] = self.session.get_modelmeta().custom_metadata_map
        self.metadata = dict(meta)
        threshold, stride, stages = read_metadata(self.path, self.metadata)
        say = (str(self.path), self.sha256) not in _said
        _said.add((str(self.path), self.sha256))
        if threshold is None and say:
            logger.warning(
                "%s has no threshold in its metadata: 0.5 is used unless the server's "
                "threshold setting gives one (best chosen on your own footage)",
                self.path,
            )
        self.own_threshold = 0.5 if threshold is None else threshold  # the file's, as it says
        self.threshold = self.own_threshold  # a server's may replace it
        self.threshold_in_file = threshold is not None  # else 0.5, a default, not the model's
        # One small run (about a millisecond on a CPU) checks the outputs' shapes against the
        # metadata, and measures the strides and channels where the metadata does not say.
        n, height, width = (d or p for d, p in zip(self.input_dims, (1, *PROBE_SIZE), strict=True))
        shapes = self._shapes(n, height, width, loading=True)
        self.heatmap_stride = stride or stride_of(self.path, "heatmap", shapes, height, width)
        stride_from = "in its metadata" if stride else "measured when loaded"
        stages_from = "its metadata's" if stages else "measured when loaded:"
        if stages is None:
            strides = [stride_of(self.path, name, shapes, height, width) for name in FEATURE_NAMES]
            stages = tuple(
                StageInfo(name, int(shapes[name][1]), s)
                for name, s in zip(FEATURE_NAMES, strides, strict=True)
            )
            (logger.info if say else logger.debug)(
                "%s has no stages in its metadata; its outputs say %s",
                self.path,
                ", ".join(f"{s.name} {s.channels} channels at stride {s.stride}" for s in stages),
            )
        self.stages = stages
        # the shapes expected from now on, and where they come from, as an error will say
        self._declared = Declared(self.heatmap_stride, stages, stride_from, stages_from)
        check_shapes(self.path, self._declared, shapes, n, height, width)
        self._shaped: dict[tuple[int, int], ort.InferenceSession] = {}
        self._shaped_lock = threading.Lock()
        self._spare: ort.InferenceSession | None = None  # for sizes past MAX_SHAPED_SESSIONS
        self._pads = threading.local()  # each worker thread's padded batches, by size

    @property
    def threshold(self) -> float:
        """A score at or over it is damaged. Kept as the nearest float32, as results carry
        both on the wire and clients compare them (a score equal to a threshold of 0.9 read
        as damaged by a client and not by the server, which compared the float64 0.9)."""
        return self._threshold

    @threshold.setter
    def threshold(self, value: float) -> None:
        self._threshold = float(np.float32(value))

    def run(
        self, pixels: np.ndarray, outputs: Sequence[str] | None = None
    ) -> dict[str, np.ndarray]:
        """Run the network on a batch.

        Args:
            pixels: uint8 BGR, shape (N, H, W, 3).
            outputs: output names to compute (default: all of ``OUTPUT_NAMES``); onnxruntime
                still runs every layer, but only these are copied out.

        Returns:
            name -> float32 array: stageK (N, C, ceil(H/s), ceil(W/s)), heatmap
            (N, 1, ceil(H/8), ceil(W/8)) in [0, 1], score (N,) in [0, 1].
        """
        check_pixels(pixels)
        names = list(OUTPUT_NAMES if outputs is None else outputs)
        unknown = [n for n in names if n not in OUTPUT_NAMES]
        if unknown:
            raise ModelInputError(
                f"unknown output {unknown[0]!r}; the model has {', '.join(OUTPUT_NAMES)}"
            )
        if not names:
            raise ModelInputError(
                f"outputs is empty; name at least one of {', '.join(OUTPUT_NAMES)}"
            )
        batch, height, width = self.input_dims
        if height not in (None, pixels.shape[1]) or width not in (None, pixels.shape[2]):
            raise ModelInputError(
                f"this model's input is fixed at {fixed_size(self.input_dims)}, got "
                f"{pixels.shape[1]}x{pixels.shape[2]}"
            )
        if batch not in (None, self.fixed_batch or len(pixels)):
            raise ModelInputError(
                f"this model takes batches of exactly {batch} frames, got "
                f"{self.fixed_batch or len(pixels)}"
            )
        if not self.fixed_batch:
            arrays = self.session.run(names, {INPUT_NAME: pixels})
            return dict(zip(names, arrays, strict=True))
        session = self._session_for(pixels.shape[1], pixels.shape[2])
        size = self.fixed_batch
        parts: list[list[np.ndarray]] = []
        for start in range(0, len(pixels), size):
            chunk = pixels[start : start + size]
            frames = len(chunk)
            if frames < size:
                padded = self._padding(size, chunk.shape[1], chunk.shape[2])
                padded[:frames] = chunk  # the rest holds earlier frames, whose outputs go
                chunk = padded
            arrays = session.run(names, {INPUT_NAME: chunk})
            # A padded run's outputs are copied down to the real frames, so a result does not
            # hold the padding's maps alive.
            parts.append([a[:frames].copy() if frames < size else a for a in arrays])
        if len(parts) == 1:
            return dict(zip(names, parts[0], strict=True))
        return {name: np.concatenate([p[i] for p in parts]) for i, name in enumerate(names)}

    def _padding(self, size: int, height: int, width: int) -> np.ndarray:
        """This thread's batch buffer for the size, allocated once rather than on every run."""
        buffers: dict[tuple[int, int, int], np.ndarray] = self._pads.__dict__.setdefault(
            "buffers", {}
        )
        key = (size, height, width)
        if key not in buffers:
            buffers[key] = np.zeros((size, height, width, 3), np.uint8)
        return buffers[key]

    def _session_for(self, height: int, width: int) -> ort.InferenceSession:
        """The session that runs this input size: the first size takes the model's own, the
        next ones (up to MAX_SHAPED_SESSIONS) one each, made outside the lock so that runs at
        other sizes go on meanwhile; sizes past that share one spare session."""
        key = (height, width)
        with self._shaped_lock:
            session = self._shaped.get(key)
            if session is not None:
                return session
            if not self._shaped:
                self._shaped[key] = self.session
                return self.session
            spare = len(self._shaped) >= MAX_SHAPED_SESSIONS
            if spare and self._spare is not None:
                return self._spare
        made = self._new_session()
        with self._shaped_lock:
            if not spare:
                return self._shaped.setdefault(key, made)
            if self._spare is None:
                self._spare = made
                logger.warning(
                    "more than %d input sizes: sizes after %s share one session, which "
                    "chooses its kernels again whenever the size changes",
                    MAX_SHAPED_SESSIONS,
                    ", ".join(f"{h}x{w}" for h, w in self._shaped),
                )
            return self._spare

    def check_sizes(
        self,
        sizes: Sequence[tuple[int, int]],
        *,
        sizes_from: tuple[str, str] = SIZES_FROM_SETTINGS,
    ) -> None:
        """ModelFileError naming the (height, width) sizes its input does not take (a height
        or width fixed at another), without running anything (warm_up's first check; the
        supervisor of several processes asks it of a reload's new sizes)."""
        _, fixed_height, fixed_width = self.input_dims
        misfits = [
            f"{h}x{w}"
            for h, w in sizes
            if fixed_height not in (None, h) or fixed_width not in (None, w)
        ]
        if misfits:
            fixed = fixed_size(self.input_dims)
            hint = f"to {fixed}" if fixed_height and fixed_width else "to sizes it takes"
            asked, remedy = sizes_from
            raise ModelFileError(
                f"{self.path}: its input is fixed at {fixed}; {asked.format(', '.join(misfits))}"
                f": export with dynamic height and width, or {remedy} {hint}"
            )

    def warm_up(
        self,
        sizes: Sequence[tuple[int, int]],
        max_batch: int = 1,
        *,
        sizes_from: tuple[str, str] = SIZES_FROM_SETTINGS,
    ) -> None:
        """Run once at each (height, width): front-load one-time allocation and kernel choice,
        and check that the model takes each size and gives outputs of the shapes it declares.

        The server calls it at start with every size it will run (its input_sizes and the
        cameras' input_size) and the most frames it puts in one run (max_batch), and
        ``serve --check-config`` does too: a model whose batch axis is fixed must take them.
        sizes_from: where the sizes come from ("{}" for them) and how to ask for others, as
        a size the model does not take is reported (the server's settings by default).

        Raises:
            ModelFileError: the model cannot run a size, or gives outputs of other shapes;
                sizes its input does not take are named before anything runs.
        """
        self.check_sizes(sizes, sizes_from=sizes_from)
        batch = self.input_dims[0]
        if self.fixed_batch:  # every run padded to fixed_batch frames
            fits = batch in (None, self.fixed_batch)
            runs = f"{self.fixed_batch} (max_batch, to which fixed_shapes pads every batch)"
        else:  # runs of 1 to max_batch frames
            fits = batch is None or batch == max_batch == 1
            runs = "1" if max_batch <= 1 else f"1 to {max_batch} (max_batch)"
        if not fits:
            also = ", or set max_batch = 1" if batch == 1 and not self.fixed_batch else ""
            raise ModelFileError(
                f"{self.path}: its input takes batches of exactly {batch} frames; the server "
                f"runs batches of {runs}: export with a dynamic batch axis{also}"
            )
        for height, width in sizes:
            check_shapes(
                self.path, self._declared, self._shapes(1, height, width), 1, height, width
            )

    def _shapes(
        self, n: int, height: int, width: int, *, loading: bool = False
    ) -> dict[str, tuple[int, ...]]:
        """Each output's shape for n black frames of height x width. Loading, on the model's
        own session, which leaves the sessions fixed_batch keeps for the real sizes alone."""
        pixels = np.zeros((n, height, width, 3), np.uint8)
        try:
            if loading:
                arrays = self.session.run(list(OUTPUT_NAMES), {INPUT_NAME: pixels})
                out = dict(zip(OUTPUT_NAMES, arrays, strict=True))
            else:
                out = self.run(pixels)
        except Exception as exc:  # onnxruntime's own classes: Fail, InvalidArgument, ...
            raise ModelFileError(
                f"{self.path}: running it on {n} frame(s) of {height}x{width} failed: {exc}"
            ) from exc
        for name in ("score", "heatmap"):  # compared with a threshold in [0, 1]
            values = out[name].astype(np.float32)
            if values.size and not (
                np.isfinite(values).all() and values.min() >= -1e-3 and values.max() <= 1.001
            ):
                raise ModelFileError(
                    f"{self.path}: its {name} for {n} black frame(s) of {height}x{width} runs "
                    f"from {values.min():.4g} to {values.max():.4g}; expected probabilities "
                    "in [0, 1] (a sigmoid's output, not logits), which the threshold compares"
                )
        return {name: tuple(array.shape) for name, array in out.items()}
