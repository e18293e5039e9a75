"""The inference engine: one onnxruntime session behind worker threads, batching for free.

Frames from every stream wait in one queue per input size. A free worker takes the size whose
oldest frame has waited longest, and runs its share of that size's waiting frames (up to
max_batch) in one call: the waiting frames divided among the idle workers, so no worker batches
frames another idle worker could run beside it. Batches form only from frames that arrived
while the workers were busy, so a lone stream never waits for company: there is no batching
delay to tune.

Several workers may share the session (onnxruntime's run is thread-safe): on a CPU, two runs
side by side on one thread each can beat one run spread over two threads, which spends part
of its time synchronising them. onnxruntime releases the GIL while it runs, so the event loop
and the decoding threads keep going beside it.

That choice costs a lone frame its speed: alone on an idle machine, a frame on one thread
leaves the other cores idle (benchmarks/bench_latency.py measures both). So an engine may
also hold a wide model, a second session of the same network with a thread per core, and run
a frame on it when the frame is all there is: every worker idle, nothing else waiting, and no
decoding or encoding under way. The other workers then wait for that run (the cores are its),
and as soon as two frames wait at once, or a frame waits beside other work, the workers go
back to one frame each, so the wide path only ever serves frames that would otherwise leave
cores idle.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np

from convstream.model import DamageModel
from convstream.server.errors import DeadlineExpired, Draining, ModelFailed, Overloaded

logger = logging.getLogger(__name__)

ALWAYS = ("heatmap", "score")
FAILURE_LOG_S = 60.0  # a model that keeps failing is logged at most this often


def no_probabilities(out: dict[str, np.ndarray]) -> str | None:
    """What is wrong with one frame's score and heatmap, or None: each must hold
    probabilities in [0, 1], as the model's were when it loaded (on black frames), for the
    threshold to mean anything. A model that overflows, or gives logits, on some frames only
    is caught here, frame by frame (a few microseconds for a heatmap of 48x80 cells)."""
    score = float(out["score"])
    if not -1e-3 <= score <= 1.001:  # NaN too
        return f"a score of {score:.4g}"
    heat = out["heatmap"]
    low, high = float(heat.min()), float(heat.max())  # NaN if any cell is
    if not (low >= -1e-3 and high <= 1.001):
        return f"a heatmap from {low:.4g} to {high:.4g}"
    return None


def said(exc: Exception) -> str:
    """The first line of an exception's message (onnxruntime's run a few hundred characters
    of it), or its type's name when it has none."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]


@dataclass
class _Job:
    pixels: np.ndarray
    outputs: frozenset[str]
    future: Future[Inference]
    deadline: float | None = None  # time.perf_counter() past which the frame is not run
    enqueued: float = field(default_factory=time.perf_counter)


def runs_wide(*, queued: int, idle: int, workers: int, busy_elsewhere: bool = False) -> bool:
    """Whether the next frame runs on the wide model: it is the only frame waiting, every
    worker is idle and nothing else is being decoded or encoded, so nothing else could use the
    cores it takes (a run spread over the cores stalls at its barriers whenever another thread
    holds one of them)."""
    return workers > 1 and queued == 1 and idle == workers and not busy_elsewhere


@dataclass(frozen=True)
class Inference:
    """One frame's outputs: name -> float32 array without the batch axis."""

    arrays: dict[str, np.ndarray]
    queue_ms: float
    inference_ms: float
    batch_size: int
    threads: int  # onnxruntime threads of the run (0: onnxruntime chose)
    # whose threshold and strides read it: the engine's model as it ran (a wide run's too,
    # the same network), not the one a reload put in its place since
    model: DamageModel


class Engine:
    """Runs DamageModel on frames submitted from any thread or event loop.

    Args:
        model: the loaded model (its session is used from the worker thread only).
        max_batch: frames per run at most.
        max_queued: frames waiting at most, over all sizes; past it, submit raises Overloaded.
        workers: threads running the model side by side.
        wide_model: the same network in a session spread over every core, for a frame that
            finds every worker idle and nothing else waiting (see runs_wide); None runs every
            frame on `model`.
        busy_elsewhere: whether other CPU work (decoding, encoding) is under way; a frame
            never runs wide beside it.
    """

    def __init__(
        self,
        model: DamageModel,
        *,
        max_batch: int = 8,
        max_queued: int = 256,
        workers: int = 1,
        wide_model: DamageModel | None = None,
        busy_elsewhere: Callable[[], bool] = lambda: False,
    ) -> None:
        if max_batch < 1 or workers < 1:
            raise ValueError(f"max_batch and workers must be >= 1, got {max_batch} and {workers}")
        self.model = model
        self.wide_model = wide_model
        self.busy_elsewhere = busy_elsewhere
        self.max_batch = max_batch
        self.max_queued = max_queued
        self.workers = workers
        self.runs = 0
        self.wide_runs = 0
        # each kind of failure of the model: when it was last logged, and how many since
        self._failures_said: dict[str, tuple[float, int]] = {}
        self.frames = 0
        self._queues: dict[tuple[int, int], deque[_Job]] = {}
        self._queued = 0
        self._idle = workers
        self._wide = False  # a wide run holds the cores: the other workers wait
        self._cond = threading.Condition()
        self._closed = False
        self._threads = [
            threading.Thread(target=self._work, name=f"convstream-engine-{i}", daemon=True)
            for i in range(workers)
        ]
        for thread in self._threads:
            thread.start()

    def submit(
        self, pixels: np.ndarray, outputs: Iterable[str] = (), deadline: float | None = None
    ) -> Future[Inference]:
        """Queue one frame (BGR uint8, shape (H, W, 3)); heatmap and score always come back.

        A frame still waiting at `deadline` (a time.perf_counter() value) is not run: its
        future fails with DeadlineExpired.
        """
        job = _Job(pixels, frozenset(outputs).union(ALWAYS), Future(), deadline)
        with self._cond:
            if self._closed:
                raise Draining("the inference engine has stopped")
            if self._queued >= self.max_queued:
                raise Overloaded(
                    f"inference queue is full ({self.max_queued} frames waiting); retry later"
                )
            self._queues.setdefault(pixels.shape[:2], deque()).append(job)
            self._queued += 1
            self._cond.notify()
        return job.future

    def use(self, model: DamageModel, wide_model: DamageModel | None) -> None:
        """Run the frames taken from now on on these (a reload's new model file); runs
        under way finish on the ones they began with."""
        with self._cond:
            self.model, self.wide_model = model, wide_model

    @property
    def queued(self) -> int:
        """Frames waiting for the worker."""
        return self._queued

    def close(self) -> None:
        """Stop the workers after the runs in progress; waiting frames are cancelled."""
        with self._cond:
            self._closed = True
            for queue in self._queues.values():
                for job in queue:
                    job.future.cancel()
                queue.clear()
            self._queued = 0
            self._cond.notify_all()
        for thread in self._threads:
            thread.join(timeout=10)

    def _take(self) -> tuple[list[_Job], bool] | None:
        """The next jobs for a worker, and whether they run on the wide model."""
        with self._cond:
            while not self._closed and (self._queued == 0 or self._wide):
                self._cond.wait()
            if self._closed:
                return None
            queue = min((q for q in self._queues.values() if q), key=lambda q: q[0].enqueued)
            share = min(self.max_batch, -(-len(queue) // self._idle))
            wide = self.wide_model is not None and runs_wide(
                queued=self._queued,
                idle=self._idle,
                workers=self.workers,
                busy_elsewhere=self.busy_elsewhere(),
            )
            self._wide = wide
            self._idle -= 1
            now = time.perf_counter()
            jobs: list[_Job] = []
            while queue and len(jobs) < share:
                job = queue.popleft()
                self._queued -= 1
                # A frame whose caller gave up (deadline, cancel) is never run.
                if not job.future.set_running_or_notify_cancel():
                    continue
                if job.deadline is not None and now >= job.deadline:
                    waited = (now - job.enqueued) * 1000
                    job.future.set_exception(
                        DeadlineExpired(
                            f"the call's deadline passed after {waited:.0f} ms waiting for "
                            "the model; the frame was not analysed"
                        )
                    )
                    continue
                jobs.append(job)
            return jobs, wide

    def _work(self) -> None:
        while (taken := self._take()) is not None:
            jobs, wide = taken
            try:
                self._run(jobs, wide)
            except Exception as exc:  # whatever failed, its frames fail, never the worker
                self._said_failure("the model's outputs could not be used", exc_info=True)
                for job in jobs:
                    if not job.future.done():
                        job.future.set_exception(
                            ModelFailed(
                                f"the model's outputs for this frame are unusable: {said(exc)}"
                            )
                        )
            finally:
                with self._cond:
                    self._idle += 1
                    if wide:
                        self._wide = False
                        self._cond.notify_all()
            del taken, jobs  # nothing kept while idle: the last frames' pixels and outputs

    def _said_failure(self, message: str, *args: object, exc_info: bool = False) -> None:
        """Log a failure of the model at most once every FAILURE_LOG_S for each kind (its
        message), saying how many of that kind went unsaid since its last line: a model that
        fails on every frame logged 15 tracebacks a second."""
        now = time.monotonic()
        with self._cond:
            said_at, unsaid = self._failures_said.get(message, (-math.inf, 0))
            if now - said_at < FAILURE_LOG_S:
                self._failures_said[message] = (said_at, unsaid + 1)
                logger.debug(message, *args)
                return
            self._failures_said[message] = (now, 0)
        if unsaid:
            since = now - said_at
            message += f" (and {unsaid} more since its last line, %.0f s ago)"
            args = (*args, since)
        logger.error(message, *args, exc_info=exc_info)

    def _run(self, jobs: list[_Job], wide: bool = False) -> None:
        if not jobs:
            return
        judge = self.model
        model = self.wide_model if wide and self.wide_model is not None else judge
        started = time.perf_counter()
        try:
            names = sorted(set().union(*(job.outputs for job in jobs)))
            # One frame goes in as a view: no copy of its pixels.
            batch = jobs[0].pixels[None] if len(jobs) == 1 else np.stack([j.pixels for j in jobs])
            arrays = model.run(batch, names)
        except Exception as exc:  # a failed run fails its frames, never the worker
            self._said_failure(
                "inference failed for a batch of %d at %dx%d",
                len(jobs),
                *jobs[0].pixels.shape[:2],
                exc_info=True,
            )
            for job in jobs:
                job.future.set_exception(
                    ModelFailed(f"the model could not run this frame: {said(exc)}")
                )
            return
        ms = (time.perf_counter() - started) * 1000
        with self._cond:
            self.runs += 1
            self.wide_runs += wide
            self.frames += len(jobs)
        count = len(jobs)
        misshapen = [
            f"{name} of shape {arrays[name].shape}"
            for name in names
            if arrays[name].shape[:1] != (count,) or (name == "score" and arrays[name].ndim != 1)
        ]
        if misshapen:  # the shapes the model gave when it loaded, not now: unusable
            raise ValueError(
                f"the model gave {', '.join(misshapen)} for {count} frame"
                f"{'' if count == 1 else 's'}; expected one score and one map per frame"
            )
        for i, job in enumerate(jobs):
            out = {name: arrays[name][i] for name in job.outputs}
            wrong = no_probabilities(out)
            if wrong is not None:  # NaN scored no damage: a broken model read as "intact"
                self._said_failure(
                    "the model gave %s for a frame of %dx%d", wrong, *jobs[0].pixels.shape[:2]
                )
                job.future.set_exception(
                    ModelFailed(
                        f"the model gave {wrong} for this frame; expected probabilities in "
                        "[0, 1]: this frame has no score (the model file misbehaves on such "
                        "frames; the server's log says more)"
                    )
                )
                continue
            queue_ms = (started - job.enqueued) * 1000
            job.future.set_result(Inference(out, queue_ms, ms, len(jobs), model.run_threads, judge))
