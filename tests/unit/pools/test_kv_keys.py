"""Precise-mode keys from a pool's tokenizer.json, and the fleet-file fields that turn precise mode on."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fleetgate.core.request import InferenceRequest
from fleetgate.pools.config import dump_fleet, fleet_from_pools, parse_fleet
from fleetgate.pools.kv_keys import TokenizerKeys, chain_keys, kv_hashes, pack_token_ids

TEMPLATE = ("{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>\n{% endfor %}"
            "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")
WORDS = ["<s>", "</s>", "<|user|>", "<|assistant|>", "<|end|>", "hello", "world", "again"]


def write_tokenizer(folder: Path, template_in_config: bool) -> Path:
    from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers, processors

    tokenizer = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS + ["[UNK]"])}, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.add_special_tokens([AddedToken(w, special=True) for w in WORDS[:5]])
    tokenizer.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 0)])
    tokenizer.save(str(folder / "tokenizer.json"))
    config = {"bos_token": {"content": "<s>"}, "eos_token": "</s>"}
    if template_in_config:
        config["chat_template"] = TEMPLATE
    else:
        (folder / "chat_template.jinja").write_text(TEMPLATE)
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return folder / "tokenizer.json"


@pytest.mark.parametrize("template_in_config", [True, False])
def test_chat_prompts_render_with_the_template_and_tokenize_without_added_specials(
        tmp_path: Path, template_in_config: bool) -> None:
    keys = TokenizerKeys(write_tokenizer(tmp_path, template_in_config))
    messages = ({"role": "user", "content": "hello world hello world"},)
    request = InferenceRequest("r", "chat", "m", {}, False, messages=messages)
    assert keys.render(messages) == "<s><|user|>\nhello world hello world<|end|>\n<|assistant|>\n"
    ids = keys.token_ids(request)
    assert ids == [0, 2, 5, 6, 5, 6, 4, 3]  # the template's <s> once: no second one added
    assert kv_hashes(keys, request, 4) == chain_keys(pack_token_ids(ids), 4) and len(kv_hashes(keys, request, 4)) == 2
    completion = InferenceRequest("r", "completions", "m", {}, False, prompt="hello again")
    assert keys.token_ids(completion) == [0, 5, 7]  # a completions prompt gets the tokenizer's specials


def test_fleet_file_precise_mode_fields_round_trip() -> None:
    config = parse_fleet("""
pools:
  - {name: emu, model: m, count: 2, base_port: 8101, kv_events_base_port: 5601}
  - name: real
    model: m
    tokenizer: models/tiny/tokenizer.json
    instances:
      - {url: http://10.0.0.7:8000, kv_events: "tcp://10.0.0.7:5557"}
      - {url: http://10.0.0.8:8000}
""")
    pools = config.to_pools()
    assert [e.kv_events for e in pools["emu"].endpoints] == ["tcp://127.0.0.1:5601", "tcp://127.0.0.1:5602"]
    assert [e.kv_events for e in pools["real"].endpoints] == ["tcp://10.0.0.7:5557", None]
    assert pools["real"].tokenizer == "models/tiny/tokenizer.json"
    assert parse_fleet(dump_fleet(fleet_from_pools(pools))).to_pools() == pools


@pytest.mark.parametrize("pool", [
    "{name: p, model: m, instances: [{url: 'http://a:1', kv_events: 'http://a:2'}]}",  # not a ZMQ address
    "{name: p, model: m, kv_events_base_port: 5600, instances: [{url: 'http://a:1'}]}",  # base port without count
])
def test_bad_precise_mode_fields_are_refused(pool: str) -> None:
    with pytest.raises(ValueError):
        parse_fleet(f"pools:\n  - {pool}\n")
