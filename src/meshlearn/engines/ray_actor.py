"""Workers as Ray actors: Ray places one actor per worker on any machine of its cluster
(with ``engine.device = 'cuda'``, on a GPU, or a share of one, that Ray reserves for it).

Ray is an optional extra (``pip install 'meshlearn[ray]'``): it is imported on first use, so
the base install never needs it. The actor runs the same ``worker.serve`` as a worker process.
"""

from __future__ import annotations

import math

from meshlearn.config import ConfigError

__all__ = ["RayHandle", "import_ray", "gpus_per_actor"]


class RayHandle:
    """A worker as a Ray actor, placed by Ray on any machine of the cluster."""

    def __init__(self, address: str, k: int, credentials=None, num_gpus: float = 0.0):
        import ray

        self.ray = ray
        self.actor = _worker_class().options(num_cpus=1, num_gpus=num_gpus, name=None).remote()
        secret = None if credentials is None else credentials.to_text()
        self.ref = self.actor.serve.remote(address, k, secret)

    def exit_code(self) -> int | None:
        ready, _ = self.ray.wait([self.ref], timeout=0)
        if not ready:
            return None
        try:
            return int(self.ray.get(ready[0]))
        except Exception:  # the actor died (killed, out of memory, node lost)
            return -9

    def kill(self) -> None:
        self.ray.kill(self.actor, no_restart=True)

    def finish(self, timeout: float) -> None:
        ready, _ = self.ray.wait([self.ref], timeout=timeout)
        if not ready:
            self.kill()


def gpus_per_actor(ray, workers: int) -> float:
    """The share of a GPU each of ``workers`` actors asks Ray for (``engine.device = 'cuda'``):
    a whole one where the cluster has enough, else an equal share, so that they all fit."""
    gpus = int(ray.cluster_resources().get("GPU", 0))
    if gpus == 0:
        raise ConfigError("engine.device = 'cuda', but the Ray cluster has no GPU (ray.cluster_resources()): "
                          "start Ray on machines with GPUs (ray start --num-gpus), or set engine.device = 'cpu'")
    return 1.0 / math.ceil(workers / gpus)


_RAY_WORKER = None


def import_ray():
    try:
        import ray
    except ImportError:
        raise ConfigError("engine.name = 'ray' needs Ray: pip install 'meshlearn[ray]' "
                          "(or use engine.name = 'processes')") from None
    return ray


def _worker_class():
    """The actor class, defined on first use so the base install never imports Ray."""
    global _RAY_WORKER
    if _RAY_WORKER is None:
        ray = import_ray()

        @ray.remote
        class RayWorker:
            def serve(self, control: str, index: int, credentials: str | None = None) -> int:
                from meshlearn.engines.security import Credentials
                from meshlearn.engines.worker import serve

                return serve(control, index, host=ray.util.get_node_ip_address(),
                             credentials=Credentials.from_text(credentials) if credentials else None)

        _RAY_WORKER = RayWorker
    return _RAY_WORKER
