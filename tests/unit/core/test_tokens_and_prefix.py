"""The stand-in tokenizer, chained block hashes and canonical rendering shared by every area."""

import pytest

from fleetgate.core.prefix import prefix_hashes, render_chat
from fleetgate.core.tokens import count_tokens, kv_block_hashes
from fleetgate.pools.profiles import PROFILES, get_profile


@pytest.mark.parametrize(("text", "tokens"), [("", 0), ("abc", 1), ("abcd", 1), ("abcde", 2), ("x" * 4000, 1000)])
def test_count_tokens_is_four_chars_per_token(text, tokens):
    assert count_tokens(text) == tokens


def test_kv_hashes_share_exactly_the_common_prefix_blocks():
    a = kv_block_hashes("s" * 640 + "a" * 64)
    b = kv_block_hashes("s" * 640 + "b" * 64)
    assert a[:10] == b[:10] and a[10] != b[10]


def test_kv_hashes_ignore_a_trailing_partial_block():
    assert len(kv_block_hashes("x" * 64 * 3 + "y" * 63)) == 3


def test_kv_hashes_are_chained_not_positional():
    # the same block text after a different prefix must not hash the same
    assert kv_block_hashes("a" * 64 + "c" * 64)[1] != kv_block_hashes("b" * 64 + "c" * 64)[1]


def test_prefix_hashes_key_short_prompts_and_keep_block_prefixes():
    assert len(prefix_hashes("hi")) == 1
    assert prefix_hashes("") == ()
    assert prefix_hashes("a" * 512 + "tail")[:2] == prefix_hashes("a" * 512 + "other")[:2]
    assert prefix_hashes("a" * 512 + "tail")[2] != prefix_hashes("a" * 512 + "other")[2]


def test_render_chat_is_order_and_role_sensitive():
    m1 = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    m2 = [{"role": "user", "content": "be brief"}, {"role": "user", "content": "hi"}]
    assert render_chat(m1) != render_chat(m2)
    assert render_chat(m1) == render_chat([dict(m) for m in m1])
    parts = [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]
    assert render_chat(parts) == render_chat([{"role": "user", "content": "hi"}])
    assert render_chat(m1, tools=[{"type": "function"}]).startswith("<|tools|>")


@pytest.mark.parametrize("name", sorted(PROFILES))
def test_profiles_step_time_grows_with_batch_and_context(name):
    p = get_profile(name)
    assert p.step_time_s(0, 1, 1000) < p.step_time_s(0, 8, 1000) < p.step_time_s(0, 8, 64000)
    assert p.prefill_time_s(8000) > p.prefill_time_s(1000) > 0
    assert p.kv_cache_blocks > 1000


def test_faster_gpus_are_faster():
    assert get_profile("h100").prefill_time_s(4000) < get_profile("a100").prefill_time_s(4000) < get_profile("l4").prefill_time_s(4000)


def test_unknown_profile_names_the_known_ones():
    with pytest.raises(ValueError, match="h100"):
        get_profile("tpu")
