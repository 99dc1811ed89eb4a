"""Output constraints on the HTTP backends, held by the servers' own structured-output parameters.

A server's grammar starts at a request's first token, so llama-server (`json_schema`, a GBNF
`grammar`) and vLLM (`structured_outputs`) hold a constraint over whole answers only. The request
bodies are checked on small recording servers here (a wrong parameter name fails in milliseconds);
what each real server does with them is checked on the session's llama-server and vLLM
(`tests/engines.py`), through the engine, with the real SmolLM2.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from types import MappingProxyType
from typing import Any

import jsonschema
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from stars_guard import STARSConfig, STARSEngine
from stars_guard.adapters import _text
from stars_guard.adapters._grammar import call_begin
from stars_guard.adapters._http import Timeouts
from stars_guard.adapters.llamaserver_backend import LlamaServerBackend, _calls_grammar, _rename_rule
from stars_guard.adapters.openai_backend import OpenAICompletionsBackend
from stars_guard.errors import ConfigError
from stars_guard.events import STARSResult
from stars_guard.messages import normalize_messages
from stars_guard.models import default_lm_dir
from stars_guard.protocols import Backend, BackendWrapper, Candidate, Generation, GenerationWrapper, OpenRequest
from stars_guard.tools import OutputConstraint, ToolSpec, split_answer
from tests.doubles.rewards import KeywordReward
from tests.loopback import ThreadedServer

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 16},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
    },
    "required": ["name", "age"],
    "additionalProperties": False,
}
WEATHER = ToolSpec(
    "get_weather",
    "Current weather in a city.",
    {
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 20}},
        "required": ["city"],
        "additionalProperties": False,
    },
)
CLOCK = ToolSpec("get_time", "The current time (takes no arguments).")
JSON_ANSWER = OutputConstraint("json_schema", schema=PERSON)
FORCED_CALL = OutputConstraint("tool_calls", tools=(WEATHER,), required=True, parallel_tool_calls=False)
AUTO_CALLS = OutputConstraint("tool_calls", tools=(WEATHER, CLOCK))
PROMPT = normalize_messages("Hello.")


def config() -> STARSConfig:
    """K=2 whole answers judged against a fixed threshold (KeywordReward passes all but "BAD"); no veto."""
    return STARSConfig(
        threshold_mode="absolute",
        reward_threshold=0.5,
        alpha=1.0,
        segment_size=8,
        candidates_per_round=2,
        max_attempts=2,
        max_new_tokens=64,
        segment_budget="flat",
        safety_floor=None,
        seed=0,
    )


# Recording servers: the request bodies, without a model -----------------------------------------


class Recorder:
    """The bodies a fake server received; its answers are fixed (the body is what is checked)."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []

    def last(self) -> dict[str, Any]:
        return self.bodies[-1]


def fake_vllm(recorder: Recorder, owned_by: str) -> Starlette:
    """vLLM's completions surface as far as the backend probes it; `owned_by` names the server."""

    async def models(_: Request) -> Response:
        return JSONResponse({"object": "list", "data": [{"id": "tiny", "owned_by": owned_by, "max_model_len": 2048}]})

    async def tokenize(_: Request) -> Response:
        return JSONResponse({"count": 3, "max_model_len": 2048, "tokens": [1, 2, 3]})

    async def completions(request: Request) -> Response:
        body = json.loads(await request.body())
        recorder.bodies.append(body)
        short = int(body.get("max_tokens", 16)) < 4
        choice = {"text": "{}", "token_ids": [7, 8], "finish_reason": "length" if short else "stop"}
        choices = [{"index": index, **choice} for index in range(int(body.get("n", 1)))]
        usage = {"prompt_tokens": 3, "completion_tokens": 2, "prompt_tokens_details": {"cached_tokens": 0}}
        return JSONResponse({"choices": choices, "usage": usage})

    return Starlette(
        routes=[
            Route("/v1/models", models, methods=["GET"]),
            Route("/tokenize", tokenize, methods=["POST"]),
            Route("/v1/completions", completions, methods=["POST"]),
        ]
    )


# A grammar as llama.cpp's converter writes it, with what a careless rename would break: a rule
# named `root-0`, "root" inside a string literal, a repetition count and a character class.
CALL_GBNF = "\n".join(
    [
        'root ::= "{" space "\\"name\\": \\"get_weather\\"," space root-0 space "}"',
        'root-0 ::= "\\"arguments\\"" space ":" space "{" space "\\"root\\"" space ":" space city space "}"',
        'city ::= "\\"" [^"\\\\\\x7F\\x00-\\x1F]{0,20} "\\""',
        'space ::= | " " | "\\n"{1,2} [ \\t]{0,20}',
        "",
    ]
)


def fake_llama_server(recorder: Recorder) -> Starlette:
    """llama-server's `/props`, `/apply-template`, `/tokenize` and `/completion`, with fixed answers."""

    async def props(_: Request) -> Response:
        settings = {"n_ctx": 2048}
        return JSONResponse({"total_slots": 4, "default_generation_settings": settings, "model_path": "tiny.gguf"})

    async def apply_template(_: Request) -> Response:
        return JSONResponse({"prompt": "user: Hello.\nassistant:"})

    async def tokenize(_: Request) -> Response:
        return JSONResponse({"tokens": [1, 2, 3]})

    async def completion(request: Request) -> Response:
        body = json.loads(await request.body())
        recorder.bodies.append(body)
        if body.get("n_predict") == 0:  # a schema's grammar, read back
            return JSONResponse({"content": "", "tokens": [], "generation_settings": {"grammar": CALL_GBNF}})
        stop = "limit" if int(body["n_predict"]) < 4 else "eos"
        item = {"content": "{}", "tokens": [7, 8], "stop_type": stop, "timings": {"prompt_n": 3, "predicted_n": 2}}
        count = int(body.get("n_cmpl", 1))
        return JSONResponse([{"index": index, **item} for index in range(count)] if count > 1 else item)

    return Starlette(
        routes=[
            Route("/props", props, methods=["GET"]),
            Route("/apply-template", apply_template, methods=["POST"]),
            Route("/tokenize", tokenize, methods=["POST"]),
            Route("/completion", completion, methods=["POST"]),
        ]
    )


@pytest.fixture(scope="module")
def vllm_like() -> Iterator[tuple[str, Recorder]]:
    recorder = Recorder()
    with ThreadedServer(fake_vllm(recorder, owned_by="vllm")) as server:
        yield server.url, recorder


@pytest.fixture(scope="module")
def llama_like() -> Iterator[tuple[str, Recorder]]:
    recorder = Recorder()
    with ThreadedServer(fake_llama_server(recorder)) as server:
        yield server.url, recorder


def test_vllm_gets_structured_outputs_json_for_a_schema_and_nothing_when_unconstrained(
    vllm_like: tuple[str, Recorder],
) -> None:
    url, recorder = vllm_like
    backend = OpenAICompletionsBackend(url)
    try:
        assert backend.capabilities.constraint_support(JSON_ANSWER) == "whole"
        frozen = OutputConstraint("json_schema", schema=MappingProxyType({**PERSON, "required": ("name", "age")}))
        start = len(recorder.bodies)
        generation = backend.open(OpenRequest(PROMPT, 64, 0.8, 0.95, 1, constraint=frozen))
        probes = recorder.bodies[start:]
        assert probes and all("structured_outputs" not in body for body in probes)  # the probes go free
        candidates = generation.draft(2, 64)
        body = recorder.last()
        assert body["structured_outputs"] == {"json": PERSON, "disable_any_whitespace": True}
        assert body["n"] == 2 and body["prompt"] == [1, 2, 3] and body["return_token_ids"] is True
        assert [c.token_ids for c in candidates] == [(7, 8), (7, 8)] and candidates[0].finish_reason == "eos"
        generation.close()
        free = backend.open(OpenRequest(PROMPT, 64, 0.8, 0.95, 1))
        free.draft(2, 8)
        assert "structured_outputs" not in recorder.last()
        free.close()
    finally:
        backend.close()


def test_vllm_gets_a_structural_tag_that_accepts_exactly_the_call_format(vllm_like: tuple[str, Recorder]) -> None:
    url, recorder = vllm_like
    backend = OpenAICompletionsBackend(url)
    try:
        assert backend.capabilities.constraint_support(FORCED_CALL) == "whole"
        generation = backend.open(OpenRequest(PROMPT, 64, 0.8, 0.95, 1, constraint=FORCED_CALL))
        generation.draft(1, 64)
        structured = recorder.last()["structured_outputs"]
        assert set(structured) == {"structural_tag"}
        tag = json.loads(structured["structural_tag"])
        layout = tag["format"]
        assert tag["type"] == "structural_tag" and layout["type"] == "tags_with_separator"
        assert layout["stop_after_first"] is True and layout["at_least_one"] is True
        assert [t["begin"] for t in layout["tags"]] == [call_begin("get_weather")]
        assert layout["tags"][0]["content"]["json_schema"] == dict(WEATHER.parameters)
        generation.close()
    finally:
        backend.close()
    # The same text on the xgrammar vLLM compiles it with, where the dev install has one.
    xgr = pytest.importorskip("xgrammar")
    from xgrammar.testing import _is_grammar_accept_string as accepts

    grammar = xgr.Grammar.from_structural_tag(structured["structural_tag"])
    call = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
    assert accepts(grammar, call)
    assert not accepts(grammar, call + "\n" + call)  # one call when calls are not parallel
    assert not accepts(grammar, call.replace('"Paris"', "3"))  # arguments follow the tool's schema
    assert not accepts(grammar, "Sure! " + call)  # nothing but calls


def test_a_constrained_generation_never_continues_a_committed_segment(
    vllm_like: tuple[str, Recorder], llama_like: tuple[str, Recorder]
) -> None:
    for backend in (OpenAICompletionsBackend(vllm_like[0]), LlamaServerBackend(llama_like[0])):
        try:
            generation = backend.open(OpenRequest(PROMPT, 64, 0.8, 0.95, 1, constraint=JSON_ANSWER))
            (cut,) = generation.draft(1, 2)  # the fakes end a request of < 4 tokens at its budget
            assert cut.finish_reason == "length"
            generation.commit(cut)
            with pytest.raises(RuntimeError, match="whole answers only"):
                generation.draft(1, 8)
        finally:
            backend.close()


def test_other_completions_servers_and_auto_calls_get_none_and_a_forced_call_is_refused() -> None:
    recorder = Recorder()
    with ThreadedServer(fake_vllm(recorder, owned_by="llamacpp")) as server:
        backend = OpenAICompletionsBackend(server.url)
        try:
            assert backend.capabilities.constraint_support(JSON_ANSWER) == "none"  # it would drop the field silently
            assert backend.capabilities.constraint_support(FORCED_CALL) == "none"
            with pytest.raises(ConfigError, match="cannot draft under a forced tool call"):
                STARSEngine(backend, KeywordReward(), config()).run(PROMPT, constraint=FORCED_CALL)
            assert OpenAICompletionsBackend(server.url, structured_outputs=True).capabilities.constraint_support(
                JSON_ANSWER
            ) == ("whole")
        finally:
            backend.close()
    assert not any("structured_outputs" in body for body in recorder.bodies)
    assert OpenAICompletionsBackend("http://127.0.0.1:9", structured_outputs=True).capabilities.constraint_support(
        AUTO_CALLS
    ) == ("none")
    assert LlamaServerBackend("http://127.0.0.1:9").capabilities.constraint_support(AUTO_CALLS) == "none"


def test_llama_server_gets_json_schema_for_a_schema(llama_like: tuple[str, Recorder]) -> None:
    url, recorder = llama_like
    backend = LlamaServerBackend(url)
    try:
        assert backend.capabilities.constraint_support(JSON_ANSWER) == "whole"
        generation = backend.open(OpenRequest(PROMPT, 64, 0.8, 0.95, 1, constraint=JSON_ANSWER))
        candidates = generation.draft(2, 64)
        body = recorder.last()
        assert body["json_schema"] == PERSON and "grammar" not in body
        assert body["n_cmpl"] == 2 and body["prompt"] == [1, 2, 3] and body["return_tokens"] is True
        assert [c.finish_reason for c in candidates] == ["eos", "eos"]
        free = backend.open(OpenRequest(PROMPT, 64, 0.8, 0.95, 1))
        free.draft(1, 8)
        assert "json_schema" not in recorder.last() and "grammar" not in recorder.last()
    finally:
        backend.close()


def test_llama_server_gets_a_grammar_of_call_blocks_around_its_own_json_grammar(
    llama_like: tuple[str, Recorder],
) -> None:
    url, recorder = llama_like
    backend = LlamaServerBackend(url)
    try:
        assert backend.capabilities.constraint_support(FORCED_CALL) == "whole"
        before = len(recorder.bodies)
        for _ in range(2):
            generation = backend.open(OpenRequest(PROMPT, 64, 0.8, 0.95, 1, constraint=FORCED_CALL))
            generation.draft(1, 64)
        conversion, first, second = recorder.bodies[before:]  # the schema's grammar is asked for once
        assert conversion["n_predict"] == 0 and conversion["cache_prompt"] is False
        schema = conversion["json_schema"]
        assert schema["properties"]["name"] == {"const": "get_weather"}
        assert schema["properties"]["arguments"] == dict(WEATHER.parameters)
        assert first["grammar"] == second["grammar"] == _calls_grammar(CALL_GBNF, parallel=False)
        assert "json_schema" not in first
    finally:
        backend.close()
    grammar = first["grammar"]
    block = 'tool-call-block ::= "<tool_call>\\n" tool-call-json "\\n</tool_call>"'
    assert grammar.endswith(f"{block}\nroot ::= tool-call-block\n")
    parallel = _calls_grammar(CALL_GBNF, parallel=True)
    assert parallel.endswith('root ::= tool-call-block ("\\n" tool-call-block)*\n')


def test_renaming_a_gbnf_rule_touches_only_that_rule() -> None:
    renamed = _rename_rule(CALL_GBNF, "root", "tool-call-json")
    assert renamed.splitlines()[0].startswith('tool-call-json ::= "{" space')
    assert renamed.count("root-0") == 2  # another rule, defined and used
    assert '"\\"root\\""' in renamed  # the string literal is text, not a reference
    assert renamed.replace("tool-call-json ::=", "root ::=", 1) == CALL_GBNF
    # A name the converter already uses is not taken for the wrapper's rules.
    taken = _calls_grammar(CALL_GBNF.replace("city", "tool-call-json"), parallel=False)
    assert "tool-call-json-1 ::=" in taken and "root ::= tool-call-block" in taken


# The real servers ----------------------------------------------------------------------------------


class Recorded(GenerationWrapper):
    """Keeps every drafted candidate, to check its ids and text."""

    def __init__(self, inner: Generation) -> None:
        super().__init__(inner)
        self.drafted: list[Candidate] = []

    def draft(self, num_candidates: int, max_tokens: int, entropy_cut: float | None = None) -> list[Candidate]:
        candidates = super().draft(num_candidates, max_tokens, entropy_cut)
        self.drafted.extend(candidates)
        return candidates


class Recording(BackendWrapper):
    """Records the generation the engine opens and the constraint it opens it under."""

    def __init__(self, inner: Backend) -> None:
        super().__init__(inner)
        self.opened: list[tuple[Recorded, OutputConstraint | None]] = []

    def open(self, request: OpenRequest) -> Generation:
        generation = Recorded(self.inner.open(request))
        self.opened.append((generation, request.constraint))
        return generation


def run(backend: Backend, constraint: OutputConstraint, messages: list[dict[str, str]]) -> STARSResult:
    """One STARS answer under `constraint`, with the drafts' ids checked against their text."""
    recording = Recording(backend)
    result = STARSEngine(recording, KeywordReward(), config()).run(messages, constraint=constraint)
    ((generation, opened_with),) = recording.opened
    assert opened_with == constraint  # the engine passed it on: the server holds it
    assert generation.llm_calls == 1  # a whole answer per candidate, K of them in one round
    tokenizer = _text.load_tokenizer(default_lm_dir())
    for candidate in generation.drafted:
        assert candidate.finish_reason == "eos", candidate  # the grammar completed, then EOS
        assert tokenizer.decode(list(candidate.token_ids[: candidate.text_tokens])) == candidate.text
    assert result.finish_reason == "stop", (result.finish_reason, result.text)
    return result


def check_json_answer(backend: Backend) -> None:
    messages = [{"role": "user", "content": "Describe Ann, who is 31 years old."}]  # the constraint adds the schema
    result = run(backend, JSON_ANSWER, messages)
    jsonschema.validate(json.loads(result.text), PERSON)


def check_forced_call(backend: Backend) -> None:
    messages = [{"role": "user", "content": "What is the weather like in Paris?"}]  # the constraint adds the tools
    result = run(backend, FORCED_CALL, messages)
    plain, calls, dropped = split_answer(result.text, FORCED_CALL.tool_names)
    assert plain.strip() == "" and dropped == 0, result.text
    (call,) = calls
    assert call.error is None and call.name == "get_weather", call
    jsonschema.validate(call.arguments, dict(WEATHER.parameters))


@pytest.fixture(scope="module")
def real_llama_server(llama_server: Any) -> Iterator[LlamaServerBackend]:
    backend = LlamaServerBackend(llama_server.url)
    yield backend
    backend.close()


@pytest.fixture(scope="module")
def real_vllm(vllm_server: Any) -> Iterator[OpenAICompletionsBackend]:
    # Reads may wait long: vLLM's CPU build shares the machine's 2 cores with the test run.
    backend = OpenAICompletionsBackend(vllm_server.url, tokenizer=default_lm_dir(), timeouts=Timeouts(read_s=180.0))
    yield backend
    backend.close()


def test_llama_server_answers_json_that_validates(real_llama_server: LlamaServerBackend) -> None:
    check_json_answer(real_llama_server)


def test_llama_server_writes_one_valid_forced_call(real_llama_server: LlamaServerBackend) -> None:
    check_forced_call(real_llama_server)


def test_vllm_answers_json_that_validates(real_vllm: OpenAICompletionsBackend) -> None:
    check_json_answer(real_vllm)


def test_vllm_writes_one_valid_forced_call(real_vllm: OpenAICompletionsBackend) -> None:
    check_forced_call(real_vllm)
