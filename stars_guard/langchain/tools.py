"""Tools and structured output for `STARSChatModel`: LangChain's tool forms to `ToolSpec`s, and the
runnables `with_structured_output` returns.

What the model writes and how a grammar holds it to a schema live in `stars_guard.tools` and the
backends; this module only translates LangChain's shapes (pydantic models, TypedDicts, functions,
`BaseTool`s, OpenAI tool dicts, JSON schemas) into them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from operator import itemgetter
from typing import Any, Literal

from langchain_core.output_parsers import JsonOutputKeyToolsParser, JsonOutputParser, PydanticToolsParser
from langchain_core.output_parsers.pydantic import PydanticOutputParser
from langchain_core.runnables import Runnable, RunnableMap, RunnablePassthrough
from langchain_core.tools import BaseTool
from langchain_core.utils.function_calling import convert_to_json_schema, convert_to_openai_tool
from langchain_core.utils.pydantic import is_basemodel_subclass

from stars_guard.tools import ToolSpec

logger = logging.getLogger(__name__)

StructuredOutputMethod = Literal["json_schema", "function_calling", "json_mode"]
ToolLike = Mapping[str, Any] | type | Callable[..., Any] | BaseTool


def openai_tools(tools: Sequence[ToolLike]) -> list[dict[str, Any]]:
    """Every tool in OpenAI's function form (what `bind` carries and the model's kwargs take)."""
    return [convert_to_openai_tool(tool) for tool in tools]


def tool_specs(tools: Sequence[Mapping[str, Any]]) -> list[ToolSpec]:
    """OpenAI function-form tools as `ToolSpec`s, refusing what the model could not call by name."""
    specs: list[ToolSpec] = []
    for position, tool in enumerate(tools):
        function = tool.get("function") if tool.get("type") == "function" else None
        if not isinstance(function, Mapping) or not isinstance(function.get("name"), str):
            raise ValueError(f"tool {position} is not an OpenAI function tool: {{'type': 'function', 'function': ...}}")
        parameters = function.get("parameters") or {"type": "object", "properties": {}}
        specs.append(ToolSpec(function["name"], function.get("description", "") or "", parameters))
    # A name bound twice (a pydantic model and its JSON schema) is one tool: the first is kept,
    # since a call names its tool and could not say which of two it meant.
    unique: dict[str, ToolSpec] = {}
    for spec in specs:
        if unique.setdefault(spec.name, spec) is not spec and unique[spec.name].parameters != spec.parameters:
            logger.warning("tool %r is bound twice with different arguments; the first one is kept", spec.name)
    return list(unique.values())


def tool_choice_name(tool_choice: Any, names: Sequence[str]) -> str | None:
    """LangChain's and OpenAI's tool_choice forms as 'auto', 'any', 'none' or a tool name (None: unset).

    `True` forces the only bound tool; an OpenAI dict `{"type": "function", "function": {"name": ...}}`
    names one.
    """
    if tool_choice is None or tool_choice is False:
        return None
    if tool_choice is True:
        if len(names) != 1:
            raise ValueError("tool_choice=True needs exactly one bound tool; name one or pass 'any'")
        return names[0]
    if isinstance(tool_choice, Mapping):
        function = tool_choice.get("function")
        name = function.get("name") if isinstance(function, Mapping) else None
        if not isinstance(name, str):
            raise ValueError(f"tool_choice {dict(tool_choice)!r} names no function")
        tool_choice = name
    if not isinstance(tool_choice, str):
        raise ValueError(f"tool_choice must be 'auto', 'any', 'required', 'none' or a tool name, got {tool_choice!r}")
    if tool_choice in ("auto", "any", "required", "none"):
        return "any" if tool_choice == "required" else tool_choice
    if tool_choice not in names:
        raise ValueError(f"tool_choice={tool_choice!r} names no bound tool; bound tools: {', '.join(names)}")
    return tool_choice


def json_schema_of(schema: Any) -> dict[str, Any]:
    """A JSON schema for any structured-output schema form (pydantic, TypedDict, OpenAI tool, JSON schema)."""
    if isinstance(schema, Mapping) and schema.get("type") == "function" and "function" in schema:
        function = schema["function"]
        return {"title": function.get("name"), **(function.get("parameters") or {"type": "object"})}
    return convert_to_json_schema(schema)


def structured_output(
    model: Any,
    schema: Any,
    method: StructuredOutputMethod,
    include_raw: bool,
) -> Runnable:
    """The runnable `STARSChatModel.with_structured_output` returns (the model bound, then a parser)."""
    is_pydantic = isinstance(schema, type) and is_basemodel_subclass(schema)
    trace = {"kwargs": {"method": method}, "schema": schema}
    if method == "function_calling":
        if schema is None:
            raise ValueError("method='function_calling' needs a schema")
        name = convert_to_openai_tool(schema)["function"]["name"]
        bound = model.bind_tools(
            [schema], tool_choice=name, parallel_tool_calls=False, ls_structured_output_format=trace
        )
        parser: Runnable = (
            PydanticToolsParser(tools=[schema], first_tool_only=True)
            if is_pydantic
            else JsonOutputKeyToolsParser(key_name=name, first_tool_only=True)
        )
    elif method in ("json_schema", "json_mode"):
        if method == "json_schema" and schema is None:
            raise ValueError("method='json_schema' needs a schema; method='json_mode' takes none")
        # JSON mode with a schema is held to that schema too: the grammar can, so it does.
        target = {"type": "object"} if schema is None else json_schema_of(schema)
        bound = model.bind(response_format=target, ls_structured_output_format=trace)
        parser = PydanticOutputParser(pydantic_object=schema) if is_pydantic else JsonOutputParser()
    else:
        raise ValueError(f"method must be 'json_schema', 'function_calling' or 'json_mode', got {method!r}")
    if not include_raw:
        return bound | parser
    parsed = RunnablePassthrough.assign(parsed=itemgetter("raw") | parser, parsing_error=lambda _: None)
    unparsed = RunnablePassthrough.assign(parsed=lambda _: None)
    return RunnableMap(raw=bound) | parsed.with_fallbacks([unparsed], exception_key="parsing_error")
