"""`tool_calls`: rendering tool specs for a template without tool support, and robust parsing."""

from __future__ import annotations

import json

import pytest

from lorauter_integrations.tool_calls import (
    normalize_tool_spec,
    parse_tool_calls,
    render_tool_call,
    render_tool_result,
    render_tools_prompt,
)

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
ADD = {"name": "add", "description": "Add two integers.", "parameters": {
    "type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}}}
NAMES = ["get_weather", "add"]


def test_normalize_accepts_openai_and_bare_specs():
    assert normalize_tool_spec(WEATHER)["name"] == "get_weather"
    assert normalize_tool_spec(ADD)["parameters"]["properties"]["a"] == {"type": "integer"}
    assert normalize_tool_spec({"name": "noargs"})["parameters"] == {"type": "object", "properties": {}}


def test_normalize_rejects_a_spec_without_name():
    with pytest.raises(ValueError, match="name"):
        normalize_tool_spec({"description": "nameless"})


def test_tools_prompt_lists_every_tool_and_the_call_format():
    prompt = render_tools_prompt([WEATHER, ADD])
    assert '"name": "get_weather"' in prompt and '"name": "add"' in prompt
    assert '<tool_call>{"name": "get_weather", "arguments": {"city": "..."}}</tool_call>' in prompt
    assert '<tool_call>{"name": "add", "arguments": {"a": 0, "b": 0}}</tool_call>' in prompt
    assert "only when it helps" in prompt


def test_tools_prompt_states_forced_choices():
    assert "must call one of these tools: get_weather, add" in render_tools_prompt([WEATHER, ADD], "any")
    assert "must call the tool 'add'" in render_tools_prompt([WEATHER, ADD], "add")
    assert render_tools_prompt([WEATHER], "none") == ""


def test_tools_prompt_rejects_a_choice_that_is_not_a_tool():
    with pytest.raises(ValueError, match="not one of the tools"):
        render_tools_prompt([WEATHER], "send_email")


def test_a_rendered_call_parses_back_to_the_same_call():
    text = render_tool_call("add", {"a": 1, "b": 2})
    parsed = parse_tool_calls(text, NAMES)
    assert [(c["name"], c["args"]) for c in parsed.tool_calls] == [("add", {"a": 1, "b": 2})]
    assert parsed.content == ""


def test_tool_result_is_wrapped_with_the_tool_name():
    assert render_tool_result("21 C", "get_weather") == '<tool_response name="get_weather">\n21 C\n</tool_response>'


@pytest.mark.parametrize(
    "text",
    [
        '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>',
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}',  # closing tag missing
        '```json\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n```',
        'Sure! {"name": "get_weather", "arguments": {"city": "Paris"}}',
        '{"name": "get_weather", "arguments": "{\\"city\\": \\"Paris\\"}"}',  # arguments as a string
        '{"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}',
        "{'name': 'get_weather', 'arguments': {'city': 'Paris'}}",  # python literal
        '{"name": "Get_Weather", "parameters": {"city": "Paris"}}',  # other key, other case
        '{"name": "get_weather", "arguments": {"city": "Paris"',  # cut off by max_tokens
        '[{"name": "get_weather", "arguments": {"city": "Paris"}}]',
        '{"tool_calls": [{"name": "get_weather", "arguments": {"city": "Paris"}}]}',
    ],
)
def test_calls_in_the_formats_small_models_write_are_recovered(text):
    parsed = parse_tool_calls(text, NAMES)
    assert [(c["name"], c["args"]) for c in parsed.tool_calls] == [("get_weather", {"city": "Paris"})]
    assert parsed.invalid_tool_calls == []
    assert parsed.tool_calls[0]["id"].startswith("call_")


def test_several_calls_are_returned_in_order():
    text = (
        '<tool_call>{"name": "add", "arguments": {"a": 1, "b": 2}}</tool_call>\n'
        '<tool_call>{"name": "get_weather", "arguments": {"city": "Oslo"}}</tool_call>'
    )
    parsed = parse_tool_calls(text, NAMES)
    assert [c["name"] for c in parsed.tool_calls] == ["add", "get_weather"]
    assert len({c["id"] for c in parsed.tool_calls}) == 2


def test_text_around_a_call_stays_in_content():
    parsed = parse_tool_calls('Let me check. <tool_call>{"name": "add", "arguments": {}}</tool_call> Done.', NAMES)
    assert parsed.content == "Let me check.  Done."
    assert parsed.tool_calls[0]["args"] == {}


def test_plain_answers_have_no_calls():
    parsed = parse_tool_calls("The capital of France is Paris.", NAMES)
    assert parsed.tool_calls == [] and parsed.invalid_tool_calls == []
    assert parsed.content == "The capital of France is Paris."


def test_json_data_in_an_answer_is_not_mistaken_for_a_call():
    text = 'The record is {"name": "Bob", "age": 3}.'
    assert parse_tool_calls(text, NAMES).tool_calls == []
    assert parse_tool_calls(text).tool_calls == []
    assert parse_tool_calls(text).content == text


def test_an_unknown_tool_is_reported_as_invalid():
    parsed = parse_tool_calls('{"name": "send_email", "arguments": {"to": "x"}}', NAMES)
    assert parsed.tool_calls == []
    assert parsed.invalid_tool_calls[0]["name"] == "send_email"
    assert "unknown tool" in parsed.invalid_tool_calls[0]["error"]


def test_unreadable_arguments_are_reported_as_invalid():
    parsed = parse_tool_calls('{"name": "add", "arguments": "a=1, b=2"}', NAMES)
    assert parsed.tool_calls == []
    assert parsed.invalid_tool_calls[0]["args"] == "a=1, b=2"


def test_an_announced_but_unreadable_call_is_reported_not_dropped():
    parsed = parse_tool_calls("<tool_call>add(1, 2)</tool_call>", NAMES)
    assert parsed.tool_calls == []
    assert parsed.invalid_tool_calls[0]["args"] == "add(1, 2)"


def test_a_forced_tool_takes_bare_arguments_and_misspelled_names():
    bare = parse_tool_calls('{"name": "Erick", "age": 27}', ["Person"], default_tool="Person")
    assert bare.tool_calls[0]["name"] == "Person"
    assert bare.tool_calls[0]["args"] == {"name": "Erick", "age": 27}
    misspelled = parse_tool_calls('{"name": "persn", "arguments": {"age": 3}}', ["Person"], default_tool="Person")
    assert (misspelled.tool_calls[0]["name"], misspelled.tool_calls[0]["args"]) == ("Person", {"age": 3})


@pytest.mark.parametrize(
    "garbage",
    ["", "   ", "{", "}}}]]", "<tool_call>", "<tool_call></tool_call>", "```json\n```", '{"name": ',
     "[" * 5000, '{"a": ' * 300, "\x00\x01\ufffd", "<tool_call>{'name': 'add', 'arguments': {1: set()}}"],
)
def test_garbage_never_raises(garbage):
    parsed = parse_tool_calls(garbage, NAMES)
    assert parsed.tool_calls == [] or all(isinstance(c["args"], dict) for c in parsed.tool_calls)
    assert isinstance(parsed.content, str)


def test_results_are_plain_json_serialisable_dicts():
    parsed = parse_tool_calls('<tool_call>{"name": "add", "arguments": {"a": 1}}</tool_call>', NAMES)
    json.dumps(parsed.model_dump())


@pytest.mark.parametrize(
    "text",
    ['{"name": "Erick", "age": 27}', 'Here you go:\n```json\n{"name": "Erick", "age": 27}\n```',
     "{'name': 'Erick', 'age': 27}", 'Answer: {"name": "Erick", "age": 27} hope it helps', '{"name": "Erick", "age": 27'],
)
def test_parse_json_reads_the_object_small_models_write(text):
    from lorauter_integrations.tool_calls import parse_json

    assert parse_json(text) == {"name": "Erick", "age": 27}


def test_parse_json_says_when_there_is_no_json():
    from lorauter_integrations.tool_calls import parse_json

    with pytest.raises(ValueError):
        parse_json("no json here")


def test_a_call_prefix_completed_by_the_model_parses_as_the_call():
    from lorauter_integrations.tool_calls import render_call_prefix

    prefix = render_call_prefix(ADD)
    assert prefix == '<tool_call>\n{"name": "add", "arguments": {"a": '
    assert render_call_prefix(WEATHER).endswith('"arguments": {"city": "')
    parsed = parse_tool_calls(prefix + '1, "b": 2}}', NAMES, default_tool="add")
    assert parsed.tool_calls[0]["args"] == {"a": 1, "b": 2}
    complete = render_call_prefix({"name": "now"})
    assert complete.endswith('"arguments": {}}')
    assert parse_tool_calls(complete + '\n"properties": {}}', ["now"], default_tool="now").tool_calls[0]["args"] == {}
    assert render_call_prefix() == '<tool_call>\n{"name": "'


def test_a_json_prefix_starts_at_the_first_property():
    from lorauter_integrations.tool_calls import render_json_prefix

    assert render_json_prefix({"properties": {"age": {"type": "integer"}, "name": {}}}) == '{"age": '
    assert render_json_prefix({"properties": {"name": {"type": "string"}}}) == '{"name": "'
    assert render_json_prefix(None) == "{"


def test_an_unreadable_call_keeps_the_tool_name_it_announced():
    parsed = parse_tool_calls('<tool_call>{"name": "add", "arguments": {"a": \x01}', NAMES)
    assert parsed.invalid_tool_calls[0]["name"] == "add"
    forced = parse_tool_calls("<tool_call>garbage", NAMES, default_tool="get_weather")
    assert forced.invalid_tool_calls[0]["name"] == "get_weather"


def test_json_template_shows_the_shape_of_a_schema():
    from lorauter_integrations.tool_calls import render_json_template

    schema = {"properties": {"setup": {"type": "string"}, "n": {"anyOf": [{"type": "integer"}, {"type": "null"}]},
                             "mood": {"enum": ["happy", "sad"]}}}
    assert render_json_template(schema) == '{"setup": "...", "n": 0, "mood": "happy"}'
