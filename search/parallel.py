"""Parallel evaluation on Ray: a pool of actors that each hold the model and data once.

:class:`RayEvaluatorPool` implements the :class:`~amc.evaluation.evaluator.Evaluator` contract. Only policies (a
few hundred bytes) go out and :class:`~amc.evaluation.evaluator.EvalResult` objects come back. An actor that dies
is replaced, and the policies it had not answered are evaluated again, so a batch always returns one
result per policy, in order.

Ray is started locally (quietly, in its own temp dir, shut down by :meth:`close`) only when no
``address`` is given; with ``address="auto"`` or ``"host:port"`` the pool joins that cluster, leaves
it running, and lets the cluster's resources decide where actors go.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from amc.context import ContextConfig
from amc.lm_context import LMContextConfig
from amc.graph.discover import LayerGraph
from amc.errors import AmcError, ConfigError
from amc.evaluation.evaluator import EvalResult
from amc.pruning.policy import Policy

log = logging.getLogger(__name__)
# No usage reporting, no token prompt for a local instance, every worker's log lines kept.
QUIET_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled", "RAY_DEDUP_LOGS": "0"}


MAX_CONSECUTIVE_FAILURES = 3
START_TIMEOUT_S = 600


class WorkerError(AmcError):
    """Evaluation workers cannot be started or keep dying."""


def check_gpus_per_worker(gpus: float, device: str) -> float:
    """``gpus`` when it is a share Ray can give (0 < g <= 1, or a whole number) and the device is a GPU.

    Raises:
        ConfigError: A negative or unusable share, or a share with ``--device cpu``.
    """
    if isinstance(gpus, bool) or not isinstance(gpus, (int, float)) or math.isnan(gpus) or gpus < 0:
        raise ConfigError(f"--gpus-per-worker must be a number >= 0, got {gpus!r}")
    if gpus > 1 and gpus != int(gpus):
        raise ConfigError(f"--gpus-per-worker {gpus:g}: a share above 1 must be a whole number of GPUs (Ray's rule)")
    if gpus and not device.startswith("cuda"):
        raise ConfigError(f"--gpus-per-worker {gpus:g} needs --device cuda: on --device {device} the workers use no GPU")
    return float(gpus)


def default_gpus_per_worker(device: str, workers: int, available: float) -> float:
    """An equal share of the ``available`` GPUs for each of ``workers`` (at most one each); 0 on the CPU."""
    if not device.startswith("cuda"):
        return 0.0
    if available <= 0:
        raise ConfigError(f"--device {device} with Ray workers: the Ray instance has no GPU; use --device cpu or add "
                          "GPU nodes")
    return min(1.0, math.floor(10000 * available / workers) / 10000)  # Ray counts GPU shares in 1/10000


def _cause(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[-1] if text else ''}"[:500]


def check_address(address: str, *, timeout: float = 5.0) -> None:
    """Fails fast (within ``timeout``) with a clear error when a ``host:port`` Ray address is unreachable."""
    if address in ("auto", "local") or address.startswith("ray://"):
        return
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise ConfigError(f"--ray-address must be 'auto' or host:port, got {address!r}")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            pass
    except OSError as exc:
        raise ConfigError(
            f"cannot reach a Ray cluster at --ray-address {address!r} ({exc.strerror or exc}); start one with "
            "'ray start --head' and pass the address it prints, or drop --ray-address to run locally"
        ) from None


def init_ray(*, address: str | None, num_cpus: int | None, num_gpus: int | None = None) -> str | None:
    """Connects to (``address``) or starts a local Ray instance (with ``num_gpus`` GPUs; None: Ray counts them).

    Returns the temp dir of the instance this call started (None when it joined or found one running).
    """
    import ray

    if ray.is_initialized():
        return None
    if address is not None:
        check_address(address)
        try:
            with _quiet_ray_environment():
                ray.init(address=address, include_dashboard=False, log_to_driver=False, configure_logging=False,
                         logging_level=logging.WARNING)
        except ConnectionError as exc:
            raise ConfigError(f"cannot join a Ray cluster at --ray-address {address!r}: {exc}; start one with "
                              "'ray start --head' or drop --ray-address") from None
        return None
    temp_dir = tempfile.mkdtemp(prefix="amc-ray-")
    # Local workers import this project by module name: let them find it from any working directory.
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)
    with _quiet_ray_environment():
        ray.init(num_cpus=num_cpus, num_gpus=num_gpus, include_dashboard=False, log_to_driver=False,
                 configure_logging=False, logging_level=logging.WARNING, _temp_dir=temp_dir,
                 runtime_env={"env_vars": {"PYTHONPATH": path}})
    return temp_dir


@contextmanager
def _quiet_ray_environment() -> Iterator[None]:
    """:data:`QUIET_ENV` (where the user has not set them) in this process's environment while Ray starts.

    Ray reads these settings only from the environment of the process calling ``ray.init``, and the
    processes it starts (GCS, raylet and through it the workers) inherit them from there; there is no
    argument for them. They are removed again afterwards, so the driver's own environment is left as it was.
    """
    added = {key: value for key, value in QUIET_ENV.items() if key not in os.environ}
    os.environ.update(added)
    try:
        yield
    finally:
        for key in added:
            os.environ.pop(key, None)


def _actor_class():
    import ray

    @ray.remote(num_cpus=1, max_restarts=0)
    class EvaluatorActor:
        """Builds the evaluation context once; then only evaluates policies."""

        def __init__(self, config: ContextConfig | LMContextConfig, threads: int, state_dict: dict | None,
                     graph: LayerGraph | None = None) -> None:
            import dataclasses

            import torch

            from amc.context import build_context
            from amc.lm_context import LMContextConfig, build_lm_context

            torch.set_num_threads(threads)
            if config.device.startswith("cuda") and ray.get_gpu_ids():
                # Ray shows this actor only the GPU it was given (CUDA_VISIBLE_DEVICES): that one is cuda:0 here.
                config = dataclasses.replace(config, device="cuda")
            if isinstance(config, LMContextConfig):  # a language model: its token data from the driver's cache
                self.context = build_lm_context(config, progress=False, state_dict=state_dict)
            else:
                self.context = build_context(config, progress=False, state_dict=state_dict, graph=graph)
            # Warm-up (allocator, kernels) before the first real policy, so it is not slower than the rest.
            self.context.evaluator.evaluate([1.0] * len(self.context.graph))

        def evaluate(self, policy: Policy) -> EvalResult:
            return self.context.evaluator.evaluate(policy)

        def apply(self, task, item):
            """``task(context, item)`` in this worker, and this worker's pid (what a deploy or ladder rung runs)."""
            return task(self.context, item), os.getpid()

        def pid(self) -> int:
            return os.getpid()

    return EvaluatorActor


class RayEvaluatorPool:
    """An :class:`~amc.evaluation.evaluator.Evaluator` whose evaluations run on a pool of Ray actors.

    Args:
        config: How each actor builds its context (model, checkpoint, data, evaluator). The base model
            should already be in the cache (or given as a checkpoint) so actors do not each train it.
        workers: Number of actors.
        threads_per_worker: Torch threads of each actor (and the CPUs it reserves).
        gpus_per_worker: GPUs each actor reserves (fractions share a GPU: 0.5 puts two actors on one);
            the actor evaluates on the GPU Ray gives it. 0 with a ``cuda`` device: every actor uses
            ``config.device`` without reserving it.
        address: Ray cluster to join (``"auto"`` or ``host:port``); None starts a local instance.
        key: Cache key of a policy (its :meth:`~amc.graph.records.LayerGraph.candidate_key`); repeated keys are
            not re-evaluated.
        state_dict: Base-model weights shipped to every actor (instead of each loading or training it).
        graph: Their layer graph (the driver's ``context.graph``), shipped with them: the actors do not
            discover it again, which saves each its probe and ``torch._dynamo``'s imports (~1.5 s).
    """

    streams_results = True  # evaluate_many calls on_result as each result arrives (a StreamingEvaluator)

    def __init__(self, config: ContextConfig | LMContextConfig, *, workers: int = 2, threads_per_worker: int = 1,
                 gpus_per_worker: float = 0.0, address: str | None = None,
                 key: Callable[[Policy], Any] | None = None, state_dict: dict | None = None,
                 graph: LayerGraph | None = None) -> None:
        if workers < 1:
            raise ConfigError(f"--workers must be a positive integer, got {workers!r}")
        if threads_per_worker < 1:
            raise ConfigError(f"--threads-per-worker must be a positive integer, got {threads_per_worker!r}")
        check_gpus_per_worker(gpus_per_worker, config.device)
        import ray

        self._ray = ray
        self.config = config
        self.threads = threads_per_worker
        self.gpus = gpus_per_worker
        gpus_needed = workers * gpus_per_worker
        if address is None and not ray.is_initialized() and gpus_needed:
            import torch

            local = torch.cuda.device_count()
            if gpus_needed > local + 1e-9:
                raise ConfigError(f"--workers {workers} x --gpus-per-worker {gpus_per_worker:g} needs {gpus_needed:g} "
                                  f"GPUs but this machine has {local}; use fewer workers or a smaller share")
        self._temp_dir = init_ray(address=address, num_cpus=None if address else workers * threads_per_worker)
        self.started_ray = self._temp_dir is not None
        if not self.started_ray:  # joined a cluster or a running instance: its free CPUs must fit the pool
            free = ray.available_resources()
            cpus, gpus = free.get("CPU", 0), free.get("GPU", 0)
            if workers * threads_per_worker > cpus:
                raise ConfigError(
                    f"--workers {workers} x --threads-per-worker {threads_per_worker} needs "
                    f"{workers * threads_per_worker} CPUs but the Ray instance {address or 'in this process'!r} "
                    f"has {cpus:g} free; use fewer workers or add nodes"
                )
            if gpus_needed > gpus + 1e-9:
                raise ConfigError(
                    f"--workers {workers} x --gpus-per-worker {gpus_per_worker:g} needs {gpus_needed:g} GPUs but "
                    f"the Ray instance {address or 'in this process'!r} has {gpus:g} free; use fewer workers, a "
                    "smaller share or add GPU nodes"
                )
        self._cls = _actor_class().options(num_cpus=threads_per_worker, num_gpus=gpus_per_worker)
        # The base weights go to the object store once; every actor (on any node) reads them from there.
        self._state = ray.put(state_dict) if state_dict is not None else None
        self._graph = ray.put(graph) if graph is not None else None
        self.actors = [self._new_actor() for _ in range(workers)]
        self.restarts = 0
        self._failures = [0] * workers  # consecutive deaths per slot without a finished evaluation
        self._key = key
        self._cache: dict[Any, EvalResult] = {}
        try:  # wait until every actor has built its context
            ray.get([a.pid.remote() for a in self.actors], timeout=START_TIMEOUT_S)
        except ray.exceptions.GetTimeoutError:
            self.close()
            raise WorkerError(f"evaluation workers did not start within {START_TIMEOUT_S} s (not enough free "
                              "CPUs, or a slow node); check 'ray status'") from None
        except ray.exceptions.RayError as exc:
            self.close()
            raise WorkerError(f"evaluation workers failed to start: {_cause(exc)}") from None
        log.info("Ray pool ready: %d workers x %d threads%s%s", workers, threads_per_worker,
                 f" x {gpus_per_worker:g} GPU" if gpus_per_worker else "", f" on {address}" if address else " (local)")

    def _new_actor(self):
        return self._cls.remote(self.config, self.threads, self._state, self._graph)

    @property
    def workers(self) -> int:
        return len(self.actors)

    def evaluate(self, policy: Policy) -> EvalResult:
        return self.evaluate_many([policy])[0]

    def evaluate_many(self, policies: Sequence[Policy], *,
                      on_result: Callable[[int, EvalResult], None] | None = None) -> list[EvalResult]:
        """One result per policy, in order; an actor that dies is replaced and its work redone.

        ``on_result(i, result)`` is called as soon as policy ``i`` is done (cache hits first), so a
        caller can record results of a long batch without waiting for its slowest member.
        """
        ray = self._ray
        results: list[EvalResult | None] = [None] * len(policies)
        todo: list[int] = []
        keys = [self._key(p) if self._key else None for p in policies]
        first_of_key: dict[Any, int] = {}
        for i, k in enumerate(keys):
            if k is not None and k in self._cache:
                hit = self._cache[k]
                results[i] = EvalResult(hit.accuracy, hit.loss, hit.key, 0.0, 0.0, cached=True)
                if on_result is not None:
                    on_result(i, results[i])
            elif k is not None and k in first_of_key:
                continue  # the same candidate twice in one batch: evaluated once, below
            else:
                if k is not None:
                    first_of_key[k] = i
                todo.append(i)
        idle = list(range(len(self.actors)))
        running: dict[Any, tuple[int, int]] = {}  # ref -> (policy index, actor slot)
        while todo or running:
            while todo and idle:
                slot, i = idle.pop(0), todo.pop(0)
                running[self.actors[slot].evaluate.remote(policies[i])] = (i, slot)
            done, _ = ray.wait(list(running), num_returns=1)
            i, slot = running.pop(done[0])
            try:
                results[i] = ray.get(done[0])
                self._failures[slot] = 0
            except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError) as exc:
                self._failures[slot] += 1
                if self._failures[slot] > MAX_CONSECUTIVE_FAILURES:
                    raise WorkerError(f"evaluation worker {slot} died {self._failures[slot]} times in a row without "
                                      f"finishing a policy; last cause: {_cause(exc)}") from None
                log.warning("evaluation worker %d died (%s); replacing it and re-running its policy", slot,
                            _cause(exc))
                self.actors[slot] = self._new_actor()
                self.restarts += 1
                todo.insert(0, i)
            except ray.exceptions.RayTaskError as exc:
                cause = exc.cause if isinstance(getattr(exc, "cause", None), Exception) else None
                raise (cause if cause is not None else exc) from None  # the evaluation's own error, unwrapped
            idle.append(slot)
            if results[i] is not None:
                if keys[i] is not None:
                    self._cache[keys[i]] = results[i]
                if on_result is not None:
                    on_result(i, results[i])
        for i, k in enumerate(keys):  # duplicates within the batch
            if results[i] is None:
                hit = self._cache[k]
                results[i] = EvalResult(hit.accuracy, hit.loss, hit.key, 0.0, 0.0, cached=True)
                if on_result is not None:
                    on_result(i, results[i])
        return results  # type: ignore[return-value]

    def map(self, task: Callable[[Any, Any], Any], items: Sequence[Any], *,
            on_result: Callable[[int, Any, int], None] | None = None) -> set[int]:
        """Runs ``task(context, item)`` for every item on the workers (a ladder's re-scores, the deploy rung's
        fine-tunes), no caching; ``on_result(i, result, pid)`` as each arrives, ``pid`` the worker process that
        ran it. An actor that dies is replaced and its item run again. Returns the pids of the workers that
        ran them.
        """
        ray = self._ray
        todo, idle, pids = list(range(len(items))), list(range(len(self.actors))), set()
        running: dict[Any, tuple[int, int]] = {}
        while todo or running:
            while todo and idle:
                slot, i = idle.pop(0), todo.pop(0)
                running[self.actors[slot].apply.remote(task, items[i])] = (i, slot)
            done, _ = ray.wait(list(running), num_returns=1)
            i, slot = running.pop(done[0])
            try:
                result, pid = ray.get(done[0])
            except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError) as exc:
                self._replace_dead(slot, exc)
                todo.insert(0, i)
                idle.append(slot)
                continue
            except ray.exceptions.RayTaskError as exc:
                cause = exc.cause if isinstance(getattr(exc, "cause", None), Exception) else None
                raise (cause if cause is not None else exc) from None
            self._failures[slot] = 0
            idle.append(slot)
            pids.add(pid)
            if on_result is not None:
                on_result(i, result, pid)
        return pids

    def _replace_dead(self, slot: int, exc: BaseException) -> None:
        self._failures[slot] += 1
        if self._failures[slot] > MAX_CONSECUTIVE_FAILURES:
            raise WorkerError(f"evaluation worker {slot} died {self._failures[slot]} times in a row without "
                              f"finishing its work; last cause: {_cause(exc)}") from None
        log.warning("evaluation worker %d died (%s); replacing it and re-running its work", slot, _cause(exc))
        self.actors[slot] = self._new_actor()
        self.restarts += 1

    def close(self) -> None:
        """Kills the actors; shuts Ray down only if this pool started it."""
        ray = self._ray
        for actor in self.actors:
            try:
                ray.kill(actor)
            except Exception as exc:  # an actor already gone is fine; anything else is logged
                log.debug("could not kill actor: %s", exc)
        self.actors = []
        if self.started_ray and ray.is_initialized():
            ray.shutdown()
            import shutil

            shutil.rmtree(self._temp_dir, ignore_errors=True)

    def __enter__(self) -> RayEvaluatorPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
