"""floe's vLLM tool-parser plugin: `--tool-parser-plugin floe.server.engine.tool_parsers`.

`floe-hermes` is vLLM's `hermes` parser (the built-in chat template's `<tool_call>` format)
with one change to the structural tag it constrains calls with: xgrammar's JSON grammar lets
any run of whitespace sit between JSON tokens, and a weak model (the built-in random-weight one,
or a small real one) can keep choosing whitespace until `max_tokens`, so the call never closes
and comes back as raw markup. Here every whitespace run inside the arguments is at most
`MAX_WHITESPACE` characters, which is what compact JSON (`{"a": 1}`) needs; values themselves
stay as long as the tool's schema allows (bound them there: `enum`, `maxLength`, `maximum`).

And one to how it reads calls: xgrammar (0.2.8, mlc-ai/xgrammar#800) writes a string with
`minLength`/`maxLength` as a run of any character but a quote, a backslash, CR and LF, so a raw
control character (a tab, U+0001) can sit in it, which JSON forbids. vLLM's hermes parser would
stream such arguments as generated (and, its completeness check failing, with the call's closing
brace), and drop the whole call unstreamed (`json.loads` refuses it). Here each call is read
with those characters escaped: the same value, as valid JSON.

Loaded by module name, so `vllm serve` with the same flags (`vllm_cli_args`) gets it too.
"""

from __future__ import annotations

import json
import re
from typing import Any

from pydantic import BaseModel
from vllm.tool_parsers.abstract_tool_parser import ToolParserManager
from vllm.tool_parsers.hermes_tool_parser import Hermes2ProToolParser
from xgrammar.structural_tag import JSONSchemaFormat

MAX_WHITESPACE = 1  # xgrammar's smallest cap: 0 is refused
# A JSON string, its closing quote possibly not generated yet.
JSON_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"?', re.DOTALL)
CONTROL_CHARACTER = re.compile(r"[\x00-\x1f]")


def cap_whitespace(node: Any, limit: int = MAX_WHITESPACE) -> None:
    """Cap whitespace runs in every JSON-schema part of a structural-tag format, in place."""
    if isinstance(node, JSONSchemaFormat):
        if node.max_whitespace_cnt is None or node.max_whitespace_cnt > limit:
            node.max_whitespace_cnt = limit
    elif isinstance(node, BaseModel):
        for name in type(node).model_fields:
            cap_whitespace(getattr(node, name), limit)
    elif isinstance(node, (list, tuple)):
        for item in node:
            cap_whitespace(item, limit)


def escape_control_characters(json_text: str) -> str:
    """`json_text` with every raw U+0000..U+001F inside a string written as its JSON escape.

    Whitespace between tokens is left as it is. A prefix's result is a prefix of the whole
    text's result, so what was streamed from partial text stays valid as the text grows.
    """
    def escape(string: re.Match[str]) -> str:
        return CONTROL_CHARACTER.sub(lambda char: json.dumps(char[0])[1:-1], string[0])

    return JSON_STRING.sub(escape, json_text)


@ToolParserManager.register_module("floe-hermes")
class CompactHermesToolParser(Hermes2ProToolParser):
    """vLLM's hermes parser; its structural tags allow compact whitespace only, and it reads
    calls with the control characters in their strings escaped."""

    def get_structural_tag(self, request, **kwargs):
        tag = super().get_structural_tag(request, **kwargs)
        if tag is not None:
            cap_whitespace(tag.format)
        return tag

    def extract_tool_calls(self, model_output: str, request):
        return super().extract_tool_calls(self.escaped_calls(model_output), request)

    def extract_tool_calls_streaming(self, previous_text: str, current_text: str, *args, **kwargs):
        # hermes re-parses the whole `current_text` on every delta and streams the growth of
        # each call's arguments: escaped, that growth is valid JSON and the call ends on time
        # (its completeness check is a strict `json.loads`).
        return super().extract_tool_calls_streaming(previous_text, self.escaped_calls(current_text),
                                                    *args, **kwargs)

    def escaped_calls(self, text: str) -> str:
        """`text` with the JSON in each `<tool_call>` escaped; the text around the calls as it is."""
        parts: list[str] = []
        pos = 0
        while (start := text.find(self.tool_call_start_token, pos)) != -1:
            body = start + len(self.tool_call_start_token)
            end = text.find(self.tool_call_end_token, body)
            end = len(text) if end == -1 else end
            parts += [text[pos:body], escape_control_characters(text[body:end])]
            pos = end
        return "".join(parts) + text[pos:]
