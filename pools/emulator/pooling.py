"""The emulator's non-generating endpoints, with vLLM's shapes: `/v1/embeddings` (an embedding model,
vLLM's pooling runner), `/tokenize` and `/detokenize` (any model).

Embeddings are deterministic unit vectors drawn from a hash of the text (EMBEDDING_DIM wide), so
equal inputs embed equally on every instance; `encoding_format: base64` packs float32 little-endian,
as vLLM (and the openai client, which asks for it by default) do. Token ids are the stand-in
tokenizer's (server.py `_prompt_token_ids`): four ASCII characters each, so detokenize gives the text back.
"""

from __future__ import annotations

import base64
import math
import struct
import time
import uuid
from typing import Any

import xxhash
from pydantic import BaseModel, ConfigDict, Field

EMBEDDING_DIM = 32


class EmbeddingRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str | None = None
    input: str | list[str] | list[int] | list[list[int]]
    encoding_format: str = Field(default="float", pattern="^(float|base64)$")
    dimensions: int | None = None


class TokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str | None = None
    prompt: str | None = None
    messages: list[dict[str, Any]] | None = None
    add_special_tokens: bool = True


class DetokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str | None = None
    tokens: list[int]


def embedding_inputs(body: EmbeddingRequest) -> list[str]:
    """Each input as the text the engine reads (token ids: four characters each, as completions)."""
    given = body.input
    if isinstance(given, str):
        return [given]
    if given and all(isinstance(i, int) for i in given):
        return ["".join(f"{int(t) & 0xFFFF:04x}" for t in given)]  # type: ignore[union-attr]
    return [i if isinstance(i, str) else "".join(f"{int(t) & 0xFFFF:04x}" for t in i) for i in given]


def embedding(text: str) -> list[float]:
    seed = text.encode("utf-8", "surrogatepass")
    raw = [xxhash.xxh3_64_intdigest(seed, seed=i) / 2**63 - 1.0 for i in range(EMBEDDING_DIM)]
    norm = math.sqrt(sum(v * v for v in raw)) or 1.0
    return [v / norm for v in raw]


def embeddings_body(model: str, texts: list[str], encoding: str, prompt_tokens: int) -> dict[str, Any]:
    def encoded(vector: list[float]) -> list[float] | str:
        return vector if encoding == "float" else base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()

    return {"id": f"embd-{uuid.uuid4().hex}", "object": "list", "created": int(time.time()), "model": model,
            "data": [{"index": i, "object": "embedding", "embedding": encoded(embedding(t))} for i, t in enumerate(texts)],
            "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens, "completion_tokens": 0,
                      "prompt_tokens_details": None}}


def detokenized(tokens: list[int]) -> str:
    """The text of stand-in token ids: ASCII tokens exactly, others (hashed) as U+FFFD."""
    out = []
    for token in tokens:
        data = (token & 0xFFFFFFFF).to_bytes(4, "little").rstrip(b"\0")
        out.append(data.decode("ascii") if data.isascii() else "\ufffd")
    return "".join(out)
