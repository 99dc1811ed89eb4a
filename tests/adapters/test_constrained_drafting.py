"""Drafting under an `OutputConstraint` on the real SmolLM2 (transformers and llama.cpp in process).

What must hold whatever the model would rather write: a JSON-schema answer parses and validates,
a required tool call is a valid call of a bound tool, an `auto` answer may be plain text but any
`<tool_call>` in it is a valid call; and the grammar costs nothing in exactness (every committed
token continues the accepted prefix, every sampled token is forwarded once).
"""

from __future__ import annotations

import json
import sys
import zlib
from collections.abc import Mapping
from typing import Any

import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stars_guard import STARSConfig, STARSEngine
from stars_guard.events import STARSResult
from stars_guard.messages import normalize_messages
from stars_guard.protocols import (
    Backend,
    BackendWrapper,
    Candidate,
    DraftRequest,
    Generation,
    GenerationWrapper,
    OpenRequest,
    constraint_support,
)
from stars_guard.tools import (
    TOOL_CALL_OPEN,
    OutputConstraint,
    ToolSpec,
    render_tool_call,
    split_answer,
    tool_constraint,
)
from tests.doubles.rewards import ScriptedReward

WEATHER = ToolSpec(
    "get_weather",
    "Current weather in a city.",
    {
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 24}, "days": {"type": "integer", "minimum": 1}},
        "required": ["city"],
    },
)
CLOCK = ToolSpec("get_time", "The current time (takes no arguments).")  # the default, empty parameters
PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 20},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "likes": {"type": "array", "items": {"enum": ["tea", "coffee", "cake"]}, "maxItems": 2},
    },
    "required": ["name", "age"],
}
RECIPE = {
    "type": "object",
    "properties": {"dish": {"enum": ["soup", "salad"]}, "minutes": {"type": "number", "minimum": 1, "maximum": 90}},
    "required": ["dish", "minutes"],
}


def crc_reward() -> ScriptedReward:
    """Deterministic, spread over [0, 1): at a threshold of 0.6 some candidates pass, some segments fall back."""
    return ScriptedReward(lambda text: zlib.crc32(text.encode("utf-8")) % 1000 / 1000, name="crc")


def config(**fields: Any) -> STARSConfig:
    """Short segments (a JSON value spans several) judged against a fixed threshold; no veto."""
    base: dict[str, Any] = {
        "threshold_mode": "absolute",
        "reward_threshold": 0.6,
        "alpha": 1.0,
        "segment_size": 8,
        "candidates_per_round": 2,
        "max_attempts": 2,
        "max_new_tokens": 160,
        "segment_budget": "flat",
        "safety_floor": None,
        "seed": 0,
    }
    return STARSConfig(**(base | fields))


class Recorded(GenerationWrapper):
    """Keeps every drafted and committed candidate, to check the generation's ids and accounting."""

    def __init__(self, inner: Generation) -> None:
        super().__init__(inner)
        self.drafted: list[Candidate] = []
        self.committed: list[Candidate] = []

    def draft(self, num_candidates: int, max_tokens: int, entropy_cut: float | None = None) -> list[Candidate]:
        candidates = super().draft(num_candidates, max_tokens, entropy_cut)
        self.drafted.extend(candidates)
        return candidates

    def commit(self, candidate: Candidate) -> None:
        super().commit(candidate)
        self.committed.append(candidate)


class Recording(BackendWrapper):
    """Records the generations it opens, and the constraint the engine opened each one under."""

    def __init__(self, inner: Backend) -> None:
        super().__init__(inner)
        self.opened: list[Recorded] = []
        self.constraints: list[OutputConstraint | None] = []

    def open(self, request: OpenRequest) -> Generation:
        generation = Recorded(self.inner.open(request))
        self.opened.append(generation)
        self.constraints.append(request.constraint)
        return generation


def run(backend: Backend, constraint: OutputConstraint, messages: list[dict[str, str]], **fields: Any) -> Any:
    """(result, the recorded generation) of one STARS answer drafted under `constraint`."""
    recording = Recording(backend)
    result = STARSEngine(recording, crc_reward(), config(**fields)).run(messages, constraint=constraint)
    (generation,) = recording.opened
    assert recording.constraints == [constraint]  # the engine passed it on: the backend enforces it
    return result, generation


def json_messages(schema: Mapping[str, Any], ask: str) -> list[dict[str, str]]:
    """The request alone: the backend adds the schema's instruction from the constraint."""
    return [{"role": "user", "content": ask}]


def tool_messages(constraint: OutputConstraint, ask: str) -> list[dict[str, str]]:
    """The request alone: the backend describes the tools from the constraint."""
    return [{"role": "user", "content": ask}]


def assert_exact(result: STARSResult, generation: Recorded, eos_forwarded: bool) -> None:
    """Committed ids continue the prompt exactly; every sampled token was forwarded once (EOS too, on transformers)."""
    committed = [token for candidate in generation.committed for token in candidate.token_ids]
    assert generation.inner.token_ids == generation.inner.prompt_ids + committed
    eos_skipped = 0 if eos_forwarded else sum(c.finish_reason == "eos" for c in generation.drafted)
    sampled = sum(candidate.num_tokens for candidate in generation.drafted)
    assert sampled == result.stats.tokens_sampled
    assert result.stats.llm_forward_tokens == result.stats.prompt_tokens + sampled - eos_skipped


def assert_valid_json(result: STARSResult, schema: Mapping[str, Any]) -> Any:
    assert result.finish_reason == "stop", (result.finish_reason, result.text)
    value = json.loads(result.text)
    jsonschema.validate(value, schema)
    return value


def assert_valid_calls(text: str, tools: tuple[ToolSpec, ...]) -> list[Any]:
    """Every closed call in `text` names a bound tool and carries arguments valid for it."""
    by_name = {tool.name: tool for tool in tools}
    _, calls, _ = split_answer(text, list(by_name))
    for call in calls:
        assert call.error is None, (call, text)
        assert call.name in by_name
        jsonschema.validate(call.arguments, dict(by_name[call.name].parameters))
    return calls


# JSON schema -------------------------------------------------------------------------------------

_WORDS = ["red", "green", "blue", "small", "large"]


@st.composite
def small_schemas(draw: st.DrawFn) -> dict[str, Any]:
    """Objects of one to three bounded properties (so any valid answer fits the token budget)."""
    names = draw(
        st.lists(
            st.sampled_from(["name", "city", "count", "price", "active", "color", "tags"]),
            min_size=1,
            max_size=3,
            unique=True,
        )
    )
    properties: dict[str, Any] = {}
    for name in names:
        kind = draw(st.sampled_from(["string", "integer", "number", "boolean", "enum", "array"]))
        if kind == "string":
            properties[name] = {"type": "string", "maxLength": 12}
        elif kind == "integer":
            properties[name] = {"type": "integer", "minimum": 0, "maximum": 999}
        elif kind == "number":
            properties[name] = {"type": "number", "minimum": 0, "maximum": 100}
        elif kind == "boolean":
            properties[name] = {"type": "boolean"}
        elif kind == "enum":
            properties[name] = {"enum": draw(st.lists(st.sampled_from(_WORDS), min_size=2, max_size=3, unique=True))}
        else:
            item = draw(
                st.sampled_from(
                    [
                        {"type": "string", "maxLength": 8},
                        {"type": "integer", "minimum": 0, "maximum": 9},
                        {"type": "boolean"},
                    ]
                )
            )
            properties[name] = {"type": "array", "items": item, "maxItems": 2}
    required = sorted(draw(st.lists(st.sampled_from(names), unique=True)))
    return {"type": "object", "properties": properties, "required": required, "additionalProperties": False}


@settings(max_examples=6, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(schema=small_schemas(), seed=st.integers(0, 2**16))
def test_json_schema_answers_validate_on_transformers(backend, schema, seed):
    result, generation = run(
        backend, OutputConstraint("json_schema", schema=schema), json_messages(schema, "Fill in an example."), seed=seed
    )
    assert_valid_json(result, schema)
    assert_exact(result, generation, eos_forwarded=True)


def test_every_segment_falling_back_still_gives_a_valid_answer(backend):
    """Nothing passes: each segment commits the retained best candidate (often from an earlier round)."""
    result, generation = run(
        backend,
        OutputConstraint("json_schema", schema=PERSON),
        json_messages(PERSON, "Describe a person."),
        reward_threshold=2.0,
        max_attempts=4,
        seed=3,
    )
    assert_valid_json(result, PERSON)
    assert result.stats.segments_accepted == 0 and result.stats.segments_fallback >= 2
    assert_exact(result, generation, eos_forwarded=True)


def test_entropy_segments_keep_the_grammar(backend):
    result, generation = run(
        backend,
        OutputConstraint("json_schema", schema=RECIPE),
        json_messages(RECIPE, "A quick dish."),
        segmentation="entropy",
        entropy_threshold=1.0,
        segment_size=12,
        seed=5,
    )
    assert_valid_json(result, RECIPE)
    assert any(c.num_tokens < 12 and c.finish_reason == "length" for c in generation.drafted)  # some cut early
    assert_exact(result, generation, eos_forwarded=True)


@pytest.mark.parametrize(("schema", "seed"), [(PERSON, 1), (RECIPE, 2)])
def test_json_schema_answers_validate_on_llama_cpp(llamacpp_backend, schema, seed):
    result, generation = run(
        llamacpp_backend,
        OutputConstraint("json_schema", schema=schema),
        json_messages(schema, "Fill in an example."),
        seed=seed,
    )
    assert_valid_json(result, schema)
    assert_exact(result, generation, eos_forwarded=False)


# Tool calls --------------------------------------------------------------------------------------


def test_without_xgrammar_a_constrained_open_says_how_to_install_it(monkeypatch):
    from stars_guard.adapters import _grammar
    from stars_guard.errors import ConfigError

    monkeypatch.setitem(sys.modules, "xgrammar", None)  # `import xgrammar` raises ImportError
    with pytest.raises(ConfigError, match="pip install xgrammar"):
        _grammar.LazyGrammars(lambda: _grammar.ConstraintGrammars(None)).matcher(OutputConstraint("json_schema", {}))
    assert _grammar.LazyGrammars(lambda: _grammar.ConstraintGrammars(None)).matcher(None) is None


def test_both_local_backends_constrain_every_segment(backend, llamacpp_backend):
    constraint = OutputConstraint("json_schema", schema=PERSON)
    assert constraint_support(backend, constraint) == "segments"
    assert constraint_support(llamacpp_backend, constraint) == "segments"


@pytest.mark.parametrize("tool", [WEATHER, CLOCK], ids=["with-arguments", "no-arguments"])
def test_a_forced_tool_choice_yields_exactly_that_call(backend, tool):
    constraint = tool_constraint([WEATHER, CLOCK], tool.name)
    result, generation = run(
        backend, constraint, tool_messages(constraint, "What is the weather in Paris, and the time?"), seed=4
    )
    assert result.finish_reason == "stop"
    plain, _, dropped = split_answer(result.text, constraint.tool_names)
    assert not plain.strip() and dropped == 0
    (call,) = assert_valid_calls(result.text, (tool,))
    assert call.name == tool.name
    if tool is CLOCK:
        assert call.arguments == {}
    assert_exact(result, generation, eos_forwarded=True)


def test_required_with_two_tools_calls_only_bound_tools(backend):
    constraint = tool_constraint([WEATHER, CLOCK], "required")
    result, _ = run(
        backend,
        constraint,
        tool_messages(constraint, "What time is it in Rome, and is it raining?"),
        seed=8,
        max_new_tokens=48,
    )
    plain, calls, _ = split_answer(result.text, constraint.tool_names)
    # Only calls: at the token budget an unclosed last call is dropped, or the start of its tag held back.
    assert TOOL_CALL_OPEN.startswith(plain.strip()), result.text
    assert calls and len(assert_valid_calls(result.text, constraint.tools)) == len(calls)


def test_a_forced_call_on_llama_cpp(llamacpp_backend):
    constraint = tool_constraint([WEATHER, CLOCK], WEATHER.name)
    result, generation = run(llamacpp_backend, constraint, tool_messages(constraint, "Weather in Oslo?"), seed=6)
    (call,) = assert_valid_calls(result.text, (WEATHER,))
    assert call.name == WEATHER.name
    assert_exact(result, generation, eos_forwarded=False)


def test_auto_allows_a_plain_text_answer(backend):
    constraint = tool_constraint([WEATHER], "auto")
    result, _ = run(
        backend, constraint, tool_messages(constraint, "Say hello to my friend Anna."), seed=1, max_new_tokens=48
    )
    plain, calls, dropped = split_answer(result.text, constraint.tool_names)
    assert plain.strip() and not calls and dropped == 0, result.text


def test_auto_answers_with_a_call_have_it_valid(backend):
    """After one example call in the history the model calls the tool itself; the grammar makes the call valid."""
    constraint = tool_constraint([WEATHER], "auto")
    example = {"role": "assistant", "content": render_tool_call(WEATHER.name, {"city": "Rome"})}
    messages = tool_messages(constraint, "Weather in Rome?")
    messages += [example, {"role": "user", "content": "Weather in Paris?"}]
    result, generation = run(backend, constraint, messages, seed=2, max_new_tokens=64)
    calls = assert_valid_calls(result.text, constraint.tools)
    assert calls, result.text
    assert_exact(result, generation, eos_forwarded=True)


# Lockstep batches --------------------------------------------------------------------------------


def test_draft_batch_mixes_a_constrained_and_an_unconstrained_generation(backend):
    messages = normalize_messages(json_messages(PERSON, "Describe a person."))
    constrained = OpenRequest(messages, 96, 0.8, 0.95, 7, constraint=OutputConstraint("json_schema", schema=PERSON))
    free = OpenRequest(messages, 96, 0.0, 1.0, 7)  # greedy: the same tokens alone and in the batch
    together = backend.open_batch([constrained, free])
    alone = backend.open(free)
    answer = ""
    try:
        for _ in range(12):
            batched = backend.draft_batch([DraftRequest(together[0], 3, 8), DraftRequest(together[1], 1, 8)])
            (solo,) = alone.draft(1, 8)
            assert batched[1][0].token_ids == solo.token_ids  # the unconstrained rows are not masked
            going = [c for c in batched[0] if c.finish_reason == "length"]
            if not going:
                answer += batched[0][0].text
                break
            together[0].commit(going[0])
            answer += going[0].text
            if batched[1][0].finish_reason == "length":
                together[1].commit(batched[1][0])
                alone.commit(solo)
        jsonschema.validate(json.loads(answer), PERSON)
        for generation in together:
            assert generation.llm_forward_tokens >= generation.prompt_tokens
    finally:
        for generation in (*together, alone):
            generation.close()
