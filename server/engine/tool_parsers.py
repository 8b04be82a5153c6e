"""floe's vLLM tool-parser plugin: `--tool-parser-plugin floe.server.engine.tool_parsers`.

`floe-hermes` is vLLM's `hermes` parser (the built-in chat template's `<tool_call>` format)
with one change to the structural tag it constrains calls with: xgrammar's JSON grammar lets
any run of whitespace sit between JSON tokens, and a weak model (the built-in random-weight one,
or a small real one) can keep choosing whitespace until `max_tokens`, so the call never closes
and comes back as raw markup. Here every whitespace run inside the arguments is at most
`MAX_WHITESPACE` characters, which is what compact JSON (`{"a": 1}`) needs; values themselves
stay as long as the tool's schema allows (bound them there: `enum`, `maxLength`, `maximum`).

Loaded by module name, so `vllm serve` with the same flags (`vllm_cli_args`) gets it too.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel
from vllm.tool_parsers.abstract_tool_parser import ToolParserManager
from vllm.tool_parsers.hermes_tool_parser import Hermes2ProToolParser
from xgrammar.structural_tag import JSONSchemaFormat

MAX_WHITESPACE = 1  # xgrammar's smallest cap: 0 is refused


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


@ToolParserManager.register_module("floe-hermes")
class CompactHermesToolParser(Hermes2ProToolParser):
    """vLLM's hermes parser; its structural tags allow compact whitespace only."""

    def get_structural_tag(self, request, **kwargs):
        tag = super().get_structural_tag(request, **kwargs)
        if tag is not None:
            cap_whitespace(tag.format)
        return tag
