"""floe-hermes reads calls whose strings hold raw control characters as valid JSON (issue 11).

xgrammar lets a raw tab or U+0001 into a length-bounded string (`maxLength`); these feed the
parser such output directly, so they hold without a model that happens to write one.
"""

from __future__ import annotations

import json

import pytest

from floe.server.engine.tool_parsers import CompactHermesToolParser, escape_control_characters

REQUEST = {"model": "m", "messages": [{"role": "user", "content": "Time?"}], "tool_choice": "required",
           "tools": [{"type": "function", "function": {"name": "get_time", "parameters": {
               "type": "object", "properties": {"tz": {"type": "string", "maxLength": 6}}}}}]}
# Raw control characters inside strings (a tab, U+0001, U+001F, a newline) and JSON whitespace
# between tokens, which must stay as it is.
ARGUMENTS = '{"tz":\t"a\tb\x01",\n"x\\"y": "\\\\\x1f", "n": "\n"}'
VALUE = {"tz": "a\tb\x01", 'x"y': "\\\x1f", "n": "\n"}
CALL = '<tool_call>\n{"name": "get_time", "arguments": ' + ARGUMENTS + '}\n</tool_call>'


@pytest.fixture(scope="module")
def parser_and_request(tiny_dir):
    from transformers import AutoTokenizer
    from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest

    tokenizer = AutoTokenizer.from_pretrained(tiny_dir)
    return lambda: CompactHermesToolParser(tokenizer), ChatCompletionRequest(**REQUEST)


def test_control_characters_in_strings_are_escaped_and_whitespace_between_tokens_is_not():
    escaped = escape_control_characters(ARGUMENTS)
    assert json.loads(escaped) == VALUE
    assert escaped == '{"tz":\t"a\\tb\\u0001",\n"x\\"y": "\\\\\\u001f", "n": "\\n"}'
    # streamed text grows a character at a time: each prefix's escape is the whole one's prefix
    assert all(escaped.startswith(escape_control_characters(ARGUMENTS[:i])) for i in range(len(ARGUMENTS)))


@pytest.mark.parametrize("size", [1, 2, 3, 7, len(CALL)])
def test_streamed_arguments_assemble_to_valid_json_across_delta_boundaries(parser_and_request, size):
    new_parser, request = parser_and_request
    parser = new_parser()
    text, names, arguments = "", [], ""
    for delta in [CALL[i:i + size] for i in range(0, len(CALL), size)]:
        previous, text = text, text + delta
        message = parser.extract_tool_calls_streaming(previous, text, delta, [], [], [], request)
        for call in message.tool_calls if message else []:
            names += [call.function.name] if call.function.name else []
            arguments += call.function.arguments or ""
    assert names == ["get_time"]
    assert json.loads(arguments) == VALUE  # and not the call's own closing brace
    assert parser.get_remaining_unstreamed_args() == ""


def test_the_whole_answer_keeps_its_call_and_the_text_before_it(parser_and_request):
    new_parser, request = parser_and_request
    result = new_parser().extract_tool_calls('Sure:\t"ok"\n' + CALL, request)
    assert result.tools_called and result.content == 'Sure:\t"ok"\n'
    assert [json.loads(c.function.arguments) for c in result.tool_calls] == [VALUE]
