"""The tools stage of the pipeline: tools, tool_choice and response_format -> what the template shows
and the grammar the engine enforces."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

from core.errors import APIError, clip, invalid
from core.protocol import ChatCompletionRequest, JSONObjectFormat, JSONSchemaFormat, NamedToolChoice, ToolMessage
from core.settings import ToolSettings
from engines.base import Constraint
from tools import grammar as grammars
from tools.calls import ToolCallParser
from tools.checker import Deadline, GrammarChecker
from tools.schema import EMPTY_OBJECT, NAME, SchemaLimits, check_grammar, check_schema, check_size


@dataclass(slots=True)
class ToolPlan:
    template_tools: list[dict[str, Any]] | None = None  # what the chat template is given
    constraint: Constraint | None = None
    schemas: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> arguments schema
    markers: tuple[str, str] | None = None  # when set, tool calls between these are parsed from the output
    bare_calls: bool = False  # a reply that is one JSON object {"name", "arguments"} is a call
    close_token: int | None = None  # the call close marker's id, when it is one token: where a reply may end

    def parser(self) -> ToolCallParser | None:
        if self.markers is None:
            return None
        return ToolCallParser(self.markers[0], self.markers[1], self.schemas, bare=self.bare_calls)


def _tool_markers(renderer: Any) -> grammars.CallMarkers | None:
    markers = renderer.family.tool_call
    if markers is None:
        return None
    return grammars.CallMarkers(markers[0], markers[1], _single_token(renderer.tokenizer, markers[0]),
                                _single_token(renderer.tokenizer, markers[1]))


def _single_token(tokenizer: Any, text: str) -> int | None:
    """The id of `text` when the vocabulary holds it as one token (get_vocab() would copy 150k entries)."""
    token_id = tokenizer.convert_tokens_to_ids(text)
    if token_id is None or tokenizer.convert_ids_to_tokens(token_id) != text:
        return None
    return int(token_id)


def plan_tools(req: ChatCompletionRequest, settings: ToolSettings, renderer: Any, checker: GrammarChecker,
               cancelled: threading.Event | None = None, *, model_hides_tools: bool = False) -> ToolPlan:
    """Blocking (run it off the event loop); `cancelled` set by the caller stops the schema checks.

    `model_hides_tools`: the model answers tool results better without the tools in its prompt
    (ModelInfo.hides_tools_after_results), used when the setting tools_after_tool_results is "model".
    """
    tools = req.tools or []
    choice = req.tool_choice
    if len(tools) > settings.max_tools:
        raise invalid(f"'tools' has {len(tools)} entries; the limit is {settings.max_tools}", "tools",
                      "too_many_tools")
    if not tools and choice not in (None, "none", "auto"):
        raise invalid("'tool_choice' requires 'tools'", "tool_choice")
    schemas = _tool_schemas(req)
    response_schema = _response_schema(req)
    deadline = _check_schemas(schemas, response_schema, settings, checker, cancelled)
    if isinstance(choice, NamedToolChoice) and choice.function.name not in schemas:
        raise invalid(f"'tool_choice' names the function {clip(choice.function.name)!r}, which is not among the tools",
                      "tool_choice.function.name", "unknown_tool")
    plan = ToolPlan(schemas=schemas)
    offered = bool(tools) and choice != "none"
    markers = _tool_markers(renderer) if offered else None
    if offered:
        if markers is None:
            raise APIError(400, f"The model's family ({renderer.family.name}) has no tool-call format, so it "
                           "cannot be given tools", param="tools", code="tools_not_supported")
        plan.template_tools = [{"type": "function", "function": {
            "name": t.function.name, "description": t.function.description or "",
            "parameters": schemas[t.function.name]}} for t in tools]
        plan.markers = (markers.open, markers.close)
        plan.close_token = markers.close_token
    _constrain(plan, req, settings, response_schema, markers if offered else None,
               model_hides_tools=model_hides_tools)
    if plan.constraint is not None:
        check_grammar(plan.constraint.grammar, "tools" if offered else "response_format", checker, deadline)
    return plan


def _tool_schemas(req: ChatCompletionRequest) -> dict[str, dict[str, Any]]:
    """name -> arguments schema, with each name checked and unique."""
    schemas: dict[str, dict[str, Any]] = {}
    for i, tool in enumerate(req.tools or []):
        name = tool.function.name
        if not NAME.fullmatch(name):
            raise invalid(f"'tools[{i}].function.name' must match ^[a-zA-Z0-9_-]{{1,64}}$, got {clip(name)!r}",
                          f"tools[{i}].function.name", "invalid_tool_name")
        if name in schemas:
            raise invalid(f"'tools[{i}].function.name': the name {name!r} is used by more than one tool",
                          f"tools[{i}].function.name", "duplicate_tool_name")
        schemas[name] = tool.function.parameters if tool.function.parameters is not None else EMPTY_OBJECT
    return schemas


def _check_schemas(schemas: dict[str, dict[str, Any]], response_schema: dict[str, Any] | None, settings: ToolSettings,
                   checker: GrammarChecker, cancelled: threading.Event | None) -> Deadline:
    """Size, then each schema, within one time budget for the whole request; returns its deadline."""
    limits = SchemaLimits(settings.max_schema_bytes, settings.max_schema_depth, settings.max_optional_properties)
    all_schemas: list[tuple[str, Any]] = [(f"tools[{i}].function.parameters", params)
                                          for i, params in enumerate(schemas.values())]
    if response_schema is not None:
        all_schemas.append(("response_format.json_schema.schema", response_schema))
    check_size(all_schemas, limits)
    deadline = checker.deadline(cancelled)
    for param, schema in all_schemas:
        check_schema(schema, param, object_root=param.startswith("tools"), checker=checker, deadline=deadline)
    return deadline


def _constrain(plan: ToolPlan, req: ChatCompletionRequest, settings: ToolSettings,
               response_schema: dict[str, Any] | None, markers: grammars.CallMarkers | None, *,
               model_hides_tools: bool) -> None:
    """The grammar for the reply; `markers` is None when no tools are offered."""
    choice = req.tool_choice
    parallel = req.parallel_tool_calls is not False
    allowed = list(plan.schemas.items())
    if isinstance(choice, NamedToolChoice):
        allowed = [(choice.function.name, plan.schemas[choice.function.name])]
    if markers is not None and (choice == "required" or isinstance(choice, NamedToolChoice)):
        # the whole reply is tool calls (response_format shapes content, and there is none)
        plan.constraint = grammars.constraint(grammars.tool_calls_grammar(allowed, markers, parallel=parallel))
    elif response_schema is not None:  # JSON content, or (tools offered) calls instead
        plan.constraint = grammars.constraint(grammars.json_or_calls_grammar(
            response_schema, allowed if markers is not None else None, markers, parallel=parallel))
    elif markers is not None and markers.open_token is not None:
        # auto: the model may answer in text; any call it makes is constrained.
        # A reply to tool results calls only with the markers (docs/tools.md#answering-a-tool-result).
        bare = settings.bare_calls_after_tool_results or not _answers_tool_results(req)
        plan.constraint = grammars.constraint(grammars.auto_grammar(allowed, markers, parallel=parallel,
                                                                    bare=bare))
        plan.bare_calls = bare
        hide = settings.tools_after_tool_results == "hide" or (
            settings.tools_after_tool_results == "model" and model_hides_tools)
        if hide and _answers_tool_results(req):
            # The grammar still takes calls (with the markers), but the prompt shows the result, not the
            # tools: the default model then answers from it (docs/tools.md#answering-a-tool-result).
            plan.template_tools = None
    elif req.tools and choice == "none" and _answers_tool_results(req) and not settings.bare_calls_after_tool_results:
        plan.constraint = grammars.constraint(grammars.answer_grammar())


def _answers_tool_results(req: ChatCompletionRequest) -> bool:
    return bool(req.messages) and isinstance(req.messages[-1], ToolMessage)


def _response_schema(req: ChatCompletionRequest) -> dict[str, Any] | None:
    fmt = req.response_format
    if isinstance(fmt, JSONObjectFormat):
        return {"type": "object"}
    if isinstance(fmt, JSONSchemaFormat):
        schema = fmt.json_schema.schema
        if schema is None:
            raise invalid("'response_format.json_schema.schema' is required", "response_format.json_schema.schema")
        return schema
    return None
