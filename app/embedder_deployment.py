"""The embedding model as its own Ray Serve deployment, shared by the gateway replicas.

On Ray Serve one model copy per node serves every gateway replica (`max_replicas_per_node=1`),
instead of torch and MiniLM in each replica. `@serve.batch` gathers the replicas' concurrent
calls into one model batch. The replica side, `RemoteEmbedder`, is an ordinary synchronous
`Embedder`: the replica's `AsyncBatchingEmbedder` calls it from a worker thread, as it would call
a local model. The bare gateway keeps the model in process (app/compose.py).
"""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
from ray import serve
from ray.serve.handle import DeploymentHandle

from fleetgate.cache.embed import DEFAULT_BATCH_WINDOW_S, DEFAULT_MAX_BATCH, OnDemandEmbedder

DEPLOYMENT_NAME = "fleetgate-embedder"


class EmbedderDeployment:
    """One model copy (loaded by the first call that needs it); batches calls from every replica."""

    def __init__(self, model_path: str | None) -> None:
        # One torch thread, as in the gateway (app/compose.py): about 10x faster on busy CPUs. Batches run
        # one at a time: a Hugging Face fast tokenizer must not be called from two threads at once.
        self._model = OnDemandEmbedder.sentence_transformer(model_path, max_threads=1)

    async def dim(self) -> int:
        return await asyncio.to_thread(lambda: self._model.dim)

    @serve.batch(max_batch_size=DEFAULT_MAX_BATCH, batch_wait_timeout_s=DEFAULT_BATCH_WINDOW_S)
    async def embed(self, requests: list[list[str]]) -> list[np.ndarray]:
        """Each request is one replica's batch of texts; all of them go through the model at once."""
        texts = [text for batch in requests for text in batch]
        vectors = await asyncio.to_thread(self._model.embed, texts)
        answers, start = [], 0
        for batch in requests:
            answers.append(vectors[start:start + len(batch)])
            start += len(batch)
        return answers

    def loaded(self) -> bool:
        """Whether the model is in memory (for tests and the benchmark)."""
        return self._model.loaded


def embedder_deployment(model_path: str | None, *, replicas: int) -> Any:
    """The bound embedder deployment: `replicas` copies, at most one per node."""
    deployment = serve.deployment(EmbedderDeployment, name=DEPLOYMENT_NAME, num_replicas=replicas,
                                  max_replicas_per_node=1, ray_actor_options={"num_cpus": 0})
    return deployment.bind(model_path)


class RemoteEmbedder:
    """fleetgate.cache.embed.Embedder over the shared deployment. Blocking: call it from a worker
    thread, never from the replica's event loop (the gateway's AsyncBatchingEmbedder does). Each call
    is made on the replica's loop: in Serve's throughput-optimized mode a handle's router runs there,
    and a handle's blocking `.result()` is refused."""

    def __init__(self, handle: DeploymentHandle, loop: asyncio.AbstractEventLoop) -> None:
        self._handle = handle
        self._loop = loop
        self._dim: int | None = None

    def _call(self, method: str, *args: Any) -> Any:
        async def call() -> Any:
            return await getattr(self._handle, method).remote(*args)

        return asyncio.run_coroutine_threadsafe(call(), self._loop).result()

    @property
    def dim(self) -> int:
        if self._dim is None:
            self._dim = int(self._call("dim"))
        return self._dim

    def embed(self, texts: list[str]) -> np.ndarray:
        return np.asarray(self._call("embed", texts), dtype=np.float32).reshape(len(texts), self.dim)
