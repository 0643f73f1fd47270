"""PolicyPlanner: rule selection, pools, SLOs, cache and affinity settings, explain, unknown models."""

from __future__ import annotations

import pytest

from fleetgate.cache.embed import AsyncBatchingEmbedder, HashingEmbedder
from fleetgate.core.errors import ModelNotFoundError
from fleetgate.core.plan import plan_summary
from fleetgate.core.request import InferenceRequest
from fleetgate.policies.load import check_text
from fleetgate.policies.planner import CompiledPolicy, PolicyPlanner

POLICY = """\
version: 1
pools:
  - {name: small, model: llama, gpu: l4, count: 1, base_port: 9101}
  - {name: mid, model: llama, gpu: a100, count: 1, base_port: 9201}
  - {name: big, model: llama, gpu: h100, count: 1, base_port: 9301}
  - {name: coder, model: code-llama, gpu: a100, count: 1, base_port: 9401}
categories:
  - name: code
    keywords: [python]
    key_blocks: 4
    cache: {enabled: false}
  - name: health
    exemplars: [how much sleep does an adult need, benefits of eating vegetables]
    cache: {enabled: true, threshold: 0.8}
  - name: general
    cache: {enabled: true}
rules:
  - name: code-model
    pools: [coder]
  - name: agents
    match: {agentic: true}
    pools: [big, mid]
    router: {name: dualmap, params: {use_session_key: true}}
    ttft_slo_ms: 2000
    tpot_slo_ms: 50
    priority: 2
    key_blocks: 16
  - name: long
    match: {context_class: [medium, long, very-long]}
    pools: [small, big]
    cache: "off"
  - name: code
    match: {category: code}
    pools: [mid]
    cache: health
  - name: chat
    match: {api: chat, multi_turn: false}
    pools: [small, mid]
    ttft_slo_ms: 1000
defaults:
  pools: []
  ttft_slo_ms: 3000
  router: least-loaded
"""


def compiled(text: str = POLICY, embedder=None) -> CompiledPolicy:
    loaded, findings = check_text(text)
    assert loaded is not None, [str(f) for f in findings]
    return CompiledPolicy.build(loaded, embedder)


def chat(text: str = "hi", *, model="llama", tools=None, turns=1, max_tokens=None, session_id=None) -> InferenceRequest:
    messages = []
    for _ in range(turns - 1):
        messages += [{"role": "user", "content": "earlier"}, {"role": "assistant", "content": "ok"}]
    messages.append({"role": "user", "content": text})
    return InferenceRequest(
        request_id="r", api="chat", model=model, body={}, stream=True, messages=tuple(messages),
        tools=tuple(tools) if tools else None, max_tokens=max_tokens, session_id=session_id,
    )


def completion(prompt: str, model="llama") -> InferenceRequest:
    return InferenceRequest(request_id="r", api="completions", model=model, body={}, stream=False, prompt=prompt)


TOOLS = [{"type": "function", "function": {"name": "f"}}]


@pytest.mark.parametrize(
    ("request_", "rule", "pools", "router", "ttft_slo_s", "priority", "cache", "key_blocks"),
    [
        (chat("hello"), "chat", ("small", "mid"), "least-loaded", 1.0, 0, "general", 2),
        (chat("hello", model="code-llama"), "code-model", ("coder",), "least-loaded", 3.0, 0, "general", 2),
        (chat("hello", tools=TOOLS), "agents", ("big", "mid"), "dualmap", 2.0, 2, "general", 16),
        (completion("x" * 4 * 3000), "long", ("small", "big"), "least-loaded", 3.0, 0, None, 2),
        (chat("python please"), "code", ("mid",), "least-loaded", 3.0, 0, "health", 4),
        (chat("hello", turns=3), "defaults", ("small", "mid", "big"), "least-loaded", 3.0, 0, "general", 2),
        (completion("hello"), "defaults", ("small", "mid", "big"), "least-loaded", 3.0, 0, "general", 2),
    ],
)
async def test_first_matching_rule_decides_the_plan(request_, rule, pools, router, ttft_slo_s, priority, cache, key_blocks):
    plan = await PolicyPlanner(compiled()).plan(request_)
    assert (plan.rule, plan.pools, plan.router, plan.ttft_slo_s, plan.priority, plan.cache_policy, plan.key_blocks) == (
        rule, pools, router, pytest.approx(ttft_slo_s), priority, cache, key_blocks,
    )
    assert plan.profile.model == request_.model


async def test_pools_that_cannot_hold_the_prompt_are_dropped_unless_none_can():
    planner = PolicyPlanner(compiled())
    plan = await planner.plan(completion("x" * 4 * 10_000))  # 10k tokens: over the L4's 8192
    assert (plan.rule, plan.pools) == ("long", ("big",))
    plan = await planner.plan(completion("x" * 4 * 40_000))  # fits nowhere: the backend says so
    assert plan.pools == ("small", "big")


async def test_unknown_model_is_a_404_gateway_error():
    with pytest.raises(ModelNotFoundError) as caught:
        await PolicyPlanner(compiled()).plan(chat(model="gpt-9"))
    assert caught.value.status == 404 and caught.value.param == "model" and "llama" in caught.value.message


async def test_without_a_fleet_every_model_is_accepted():
    planner = PolicyPlanner(compiled("version: 1\nrules:\n  - {name: all, pools: [p1]}\n"))
    plan = await planner.plan(chat(model="anything"))
    assert (plan.rule, plan.pools) == ("all", ("p1",))


async def test_tpot_and_router_params_of_the_rule():
    planner = PolicyPlanner(compiled())
    plan = await planner.plan(chat(tools=TOOLS))
    assert plan.tpot_slo_s == pytest.approx(0.05)
    assert plan.router_params == (("use_session_key", True),)
    assert (await planner.plan(chat())).router_params == ()


async def test_list_router_params_become_hashable_tuples():
    text = POLICY.replace("params: {use_session_key: true}", "params: {seeds: [1, 2]}")
    plan = await PolicyPlanner(compiled(text)).plan(chat(tools=TOOLS))
    assert plan.router_params == (("seeds", (1, 2)),)
    hash(plan.router_params)


async def test_named_pools_are_ranked_unnamed_ones_are_not():
    planner = PolicyPlanner(compiled())
    assert (await planner.plan(chat())).pools_ranked is True
    assert (await planner.plan(chat(turns=3))).pools_ranked is False  # defaults: every pool of the model


async def test_exemplar_topics_embed_off_the_event_loop_with_the_batching_embedder():
    embedder = HashingEmbedder()
    batching = AsyncBatchingEmbedder(embedder, window_s=0.0)
    planner = PolicyPlanner(compiled(embedder=embedder), batching)
    assert planner.compiled.classifier.topics is not None and planner.compiled.classifier.topics.uses_embeddings
    plan = await planner.plan(chat("how much sleep does a teenager need"))
    assert (plan.profile.category, plan.profile.category_source, plan.cache_policy) == ("health", "exemplar", "health")
    assert batching.batches == 1
    await planner.plan(chat("python"))  # a keyword hit needs no embedding
    assert batching.batches == 1


async def test_exemplar_topics_without_a_batching_embedder_run_in_a_thread():
    planner = PolicyPlanner(compiled(embedder=HashingEmbedder()))
    plan = await planner.plan(chat("benefits of eating vegetables daily"))
    assert plan.profile.category == "health"


async def test_explain_says_which_rules_were_skipped_and_why():
    explanation = await PolicyPlanner(compiled()).explain(chat("hello", turns=3, session_id="s"))
    assert explanation["rule"] == "defaults" and explanation["rule_index"] is None
    reasons = {s["rule"]: s["reason"] for s in explanation["skipped_rules"]}
    assert reasons == {
        "code-model": "its pools do not serve model 'llama'",
        "agents": "agentic is False, not True",
        "long": "context_class is 'short', not one of ['long', 'medium', 'very-long']",
        "code": "category is 'general', not one of ['code']",
        "chat": "multi_turn is True, not False",
    }
    assert explanation["profile"]["turns"] == 3 and explanation["profile"]["session_id"] == "s"
    assert explanation["pools"] == ["small", "mid", "big"]
    assert explanation["ttft_slo_ms"] == pytest.approx(3000)


async def test_explain_lists_the_matching_conditions_and_dropped_pools():
    explanation = await PolicyPlanner(compiled()).explain(completion("x" * 4 * 10_000))
    assert explanation["rule"] == "long"
    assert explanation["matched_because"] == ["context_class=['long', 'medium', 'very-long']"]
    assert explanation["dropped_pools"] == [{"pool": "small", "reason": "holds 8192 tokens < prompt 10000"}]


async def test_debug_header_summarises_the_plan_without_prompt_text():
    plan = await PolicyPlanner(compiled()).plan(chat("secret words", tools=TOOLS))
    header = plan_summary(plan)
    assert "rule=agents" in header and "pools=big,mid" in header and "agentic=true" in header
    assert "secret" not in header


async def test_swap_changes_the_plan_from_the_next_request():
    planner = PolicyPlanner(compiled())
    assert (await planner.plan(chat())).rule == "chat"
    planner.swap(compiled(POLICY.replace("name: chat\n", "name: chat-v2\n")))
    assert (await planner.plan(chat())).rule == "chat-v2"


async def test_swap_listeners_get_the_new_cache_policies():
    planner = PolicyPlanner(compiled())
    seen = []
    planner.on_swap(lambda new: seen.append(dict(new.cache_policies)))
    planner.swap(compiled(POLICY.replace("cache: {enabled: true, threshold: 0.8}", "cache: {enabled: true, threshold: 0.9}")))
    assert seen[0]["health"].threshold == 0.9 and set(seen[0]) == {"code", "health", "general"}
