"""Embedders: deterministic hashing vectors and the async batching front."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from fleetgate.cache.embed import AsyncBatchingEmbedder, HashingEmbedder


class CountingEmbedder(HashingEmbedder):
    def __init__(self) -> None:
        super().__init__(dim=64)
        self.calls: list[int] = []

    def embed(self, texts: list[str]) -> np.ndarray:
        self.calls.append(len(texts))
        return super().embed(texts)


def test_hashing_embedder_is_deterministic_and_normalised() -> None:
    emb = HashingEmbedder(dim=128)
    a = emb.embed(["How do I reset my password?", "how do i reset my password"])
    assert a.shape == (2, 128) and a.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, rtol=1e-5)
    assert float(a[0] @ a[1]) == pytest.approx(1.0, abs=1e-5)  # case and punctuation do not matter
    b = HashingEmbedder(dim=128).embed(["How do I reset my password?"])
    np.testing.assert_array_equal(a[0], b[0])


@pytest.mark.parametrize(
    ("text_a", "text_b", "lo", "hi"),
    [
        ("reset my password please", "please reset my password", 0.5, 0.99),
        ("reset my password please", "what is the capital of France", -0.3, 0.3),
    ],
)
def test_hashing_embedder_similarity_follows_word_overlap(text_a: str, text_b: str, lo: float, hi: float) -> None:
    v = HashingEmbedder().embed([text_a, text_b])
    assert lo <= float(v[0] @ v[1]) <= hi


async def test_concurrent_embed_one_calls_share_one_batch() -> None:
    inner = CountingEmbedder()
    batching = AsyncBatchingEmbedder(inner, window_s=0.05, max_batch=64)
    texts = [f"question number {i}" for i in range(10)]
    vectors = await asyncio.gather(*(batching.embed_one(t) for t in texts))
    assert inner.calls == [10]
    np.testing.assert_allclose(np.stack(vectors), HashingEmbedder(dim=64).embed(texts), rtol=1e-6)


async def test_max_batch_splits_and_flushes_without_waiting_for_the_window() -> None:
    inner = CountingEmbedder()
    batching = AsyncBatchingEmbedder(inner, window_s=30.0, max_batch=4)  # a window that would time the test out
    await asyncio.wait_for(asyncio.gather(*(batching.embed_one(str(i)) for i in range(8))), timeout=5)
    assert inner.calls == [4, 4]


async def test_model_failure_reaches_every_waiter() -> None:
    class Broken(HashingEmbedder):
        def embed(self, texts: list[str]) -> np.ndarray:
            raise RuntimeError("model crashed")

    batching = AsyncBatchingEmbedder(Broken(), window_s=0.001)
    results = await asyncio.gather(batching.embed_one("a"), batching.embed_one("b"), return_exceptions=True)
    assert all(isinstance(r, RuntimeError) for r in results)


async def test_recent_texts_are_remembered_not_recomputed() -> None:
    inner = CountingEmbedder()
    batching = AsyncBatchingEmbedder(inner, window_s=0.001, memo_size=2)
    first = await batching.embed_one("what is a router")
    again = await batching.embed_one("what is a router")  # topic, then cache: one model call
    np.testing.assert_array_equal(first, again)
    assert inner.calls == [1]
    await batching.embed_one("b")
    await batching.embed_one("c")  # pushes the first text out of a memo of two
    await batching.embed_one("what is a router")
    assert inner.calls == [1, 1, 1, 1]
