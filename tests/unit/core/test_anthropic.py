"""An Anthropic Messages conversation translates to the chat vLLM builds from it, so it renders, and
routes, exactly like the same conversation sent as OpenAI chat; its usage counts like OpenAI's."""

from __future__ import annotations

from fleetgate.core.anthropic import openai_messages, openai_tools
from fleetgate.core.request import InferenceRequest
from fleetgate.core.usage import Usage

TOOL = {"name": "weather", "description": "Weather by city", "input_schema": {"type": "object", "properties": {}}}
ANTHROPIC = {
    "system": [{"type": "text", "text": "Be brief. "}, {"type": "text", "text": "Use tools."}],
    "messages": [
        {"role": "user", "content": "Weather in Oslo?"},
        {"role": "assistant", "content": [{"type": "text", "text": "Checking."},
                                          {"type": "tool_use", "id": "t1", "name": "weather", "input": {"city": "Oslo"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "rain"},
                                     {"type": "text", "text": "Umbrella?"}]},
    ],
}
OPENAI = [
    {"role": "system", "content": "Be brief. Use tools."},
    {"role": "user", "content": "Weather in Oslo?"},
    {"role": "assistant", "content": "Checking.", "tool_calls": [
        {"id": "t1", "type": "function", "function": {"name": "weather", "arguments": '{"city": "Oslo"}'}}]},
    {"role": "tool", "tool_call_id": "t1", "content": "rain"},
    {"role": "user", "content": "Umbrella?"},
]
OPENAI_TOOLS = [{"type": "function", "function": {"name": "weather", "description": "Weather by city",
                                                  "parameters": {"type": "object", "properties": {}}}}]


def test_the_translation_is_vllms() -> None:
    assert openai_messages(ANTHROPIC) == OPENAI
    assert openai_tools([TOOL]) == OPENAI_TOOLS
    assert openai_tools(None) is None


def test_both_forms_get_the_same_routing_text_and_keys() -> None:
    def request(api: str, messages: list, tools: list) -> InferenceRequest:
        return InferenceRequest(request_id="r", api=api, model="m", body={}, stream=False,  # type: ignore[arg-type]
                                messages=tuple(messages), tools=tuple(tools))

    anthropic = request("messages", openai_messages(ANTHROPIC), openai_tools([TOOL]) or [])
    chat = request("chat", OPENAI, OPENAI_TOOLS)
    assert anthropic.routing_text == chat.routing_text
    assert anthropic.prefix_hashes == chat.prefix_hashes and anthropic.last_user_span == chat.last_user_span


def test_anthropic_usage_counts_every_input_token_as_prompt() -> None:
    usage = Usage.from_anthropic({"input_tokens": 10, "output_tokens": 5, "cache_read_input_tokens": 30,
                                  "cache_creation_input_tokens": 2})
    assert usage == Usage(prompt_tokens=42, completion_tokens=5, cached_tokens=30)
    assert Usage.from_anthropic({"input_tokens": 7, "output_tokens": 1}) == Usage(7, 1, 0)  # vLLM without --enable-prompt-tokens-details
    assert Usage.from_anthropic({"input_tokens": "7"}) is None and Usage.from_anthropic(None) is None
    assert Usage.from_anthropic(Usage(40, 5, 30).to_anthropic()) == Usage(40, 5, 30)
