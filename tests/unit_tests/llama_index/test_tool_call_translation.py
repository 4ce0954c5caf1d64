"""Tool calling for the chat template: history rendered as text, calls started and cleaned."""

from __future__ import annotations

from llama_index.core.base.llms.types import ChatMessage, MessageRole, ToolCallBlock
from llama_index.core.tools import FunctionTool

from lorauter_integrations.tool_calls import plan_tool_use

from lorauter_integrations.calls import _with_system
from lorauter_integrations.llama_index.llms import _declared_arguments, _to_engine_message


def multiply(a: int, b: int) -> int:
    """Multiply two integers."""
    return a * b


def now() -> str:
    """The current time."""
    return "noon"


TOOLS = [FunctionTool.from_defaults(f).metadata.to_openai_tool() for f in (multiply, now)]


def test_tool_traffic_in_the_history_is_rendered_as_text_for_the_chat_template():
    call = ChatMessage(
        role=MessageRole.ASSISTANT,
        blocks=[ToolCallBlock(tool_call_id="c1", tool_name="multiply", tool_kwargs={"a": 6, "b": 7})],
    )
    result = ChatMessage(role=MessageRole.TOOL, content="42", additional_kwargs={"tool_call_id": "c1", "name": "multiply"})
    rendered_call = _to_engine_message(call)
    assert rendered_call["role"] == "assistant"
    assert '"name": "multiply"' in rendered_call["content"] and "<tool_call>" in rendered_call["content"]
    assert _to_engine_message(result) == {
        "role": "tool", "content": '<tool_response name="multiply">\n42\n</tool_response>'
    }


def test_tool_descriptions_join_the_existing_system_message():
    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]
    out = _with_system(chat, "TOOLS")
    assert out == [{"role": "system", "content": "Be brief.\n\nTOOLS"}, {"role": "user", "content": "hi"}]
    assert _with_system(chat[1:], "TOOLS")[0] == {"role": "system", "content": "TOOLS"}


def test_a_required_call_is_started_for_the_model_up_to_its_first_argument():
    forced = plan_tool_use(TOOLS, "multiply")
    assert forced.forced == "multiply" and forced.stop == ["</tool_call>"]
    assert forced.prefill == '<tool_call>\n{"name": "multiply", "arguments": {"a": '
    assert plan_tool_use(TOOLS[1:], "required").prefill.endswith('"name": "now", "arguments": {}}')
    assert plan_tool_use(TOOLS, "required").prefill == '<tool_call>\n{"name": "'
    auto = plan_tool_use(TOOLS, "auto")
    assert auto.forced is None and auto.prefill == "" and auto.stop == [] and "multiply" in auto.prompt
    assert plan_tool_use(TOOLS, "none") is None and plan_tool_use([], "auto") is None


def test_schema_words_copied_into_the_arguments_are_dropped():
    call = {"id": "c1", "name": "multiply", "args": {"a": 6, "b": 7, "type": "object", "required": ["a"]}}
    assert _declared_arguments(TOOLS, call) == {"a": 6, "b": 7}
