"""The on-demand embedder: no model until the first embedding, its size read from the model's files."""

from __future__ import annotations

import json
import threading
from pathlib import Path

from fleetgate.cache.embed import HashingEmbedder, OnDemandEmbedder, model_dimension


def test_the_model_is_loaded_by_the_first_embedding_and_only_once() -> None:
    loads = []

    def load() -> HashingEmbedder:
        loads.append(1)
        return HashingEmbedder(dim=32)

    embedder = OnDemandEmbedder(load, dim=32)
    assert embedder.dim == 32 and not embedder.loaded and loads == []  # the size needs no model
    threads = [threading.Thread(target=embedder.embed, args=(["same text"],)) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert embedder.loaded and loads == [1]


def test_an_unknown_size_is_learnt_by_loading_the_model() -> None:
    embedder = OnDemandEmbedder(lambda: HashingEmbedder(dim=48))
    assert embedder.dim == 48 and embedder.loaded


def test_the_shipped_model_size_comes_from_its_files() -> None:
    assert model_dimension() == 384  # all-MiniLM-L6-v2, without importing torch


def test_a_model_with_a_dense_layer_has_no_size_from_its_files(tmp_path: Path) -> None:
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
               {"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"}]
    (tmp_path / "modules.json").write_text(json.dumps(modules))
    (tmp_path / "1_Pooling").mkdir()
    (tmp_path / "1_Pooling" / "config.json").write_text(json.dumps({"word_embedding_dimension": 384}))
    assert model_dimension(tmp_path) is None  # the dense layer may change it: load the model to know
    assert model_dimension(tmp_path / "missing") is None
