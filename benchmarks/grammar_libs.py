"""Which grammar library suits STARS's constrained drafting: xgrammar, llguidance or outlines-core.

STARS drafts K candidates per round from one accepted prefix, so under a grammar every candidate
needs its own matcher state branched from the prefix's: the cost that matters is the token mask per
decoding step (once per candidate row) and the fork per candidate per round. Measured on the
embedded SmolLM2 tokenizer (49,152 tokens) and a tool-call JSON schema, along a teacher-forced
valid answer (its tokens fed one by one, a mask computed before each):

- compile: grammar from the JSON schema, tokenizer preprocessing included once;
- mask: mean time of one next-token mask (a bitmask or the allowed-token list);
- fork: mean time to branch a matcher state (`fork`, `deep_copy`; outlines-core's state is an int);
- valid path: whether the valid answer's tokens were all allowed (a correctness check).

    python benchmarks/grammar_libs.py --out benchmarks/results

Needs `pip install xgrammar llguidance outlines-core` (not a project dependency yet).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "enum": ["get_weather", "search_web"]},
        "arguments": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "days": {"type": "integer", "minimum": 1, "maximum": 7}},
            "required": ["city", "days"],
            "additionalProperties": False,
        },
    },
    "required": ["name", "arguments"],
    "additionalProperties": False,
}
ANSWER = '{"name": "get_weather", "arguments": {"city": "Lisbon, Portugal", "days": 3}}'


def timed(function: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    value = function()
    return value, time.perf_counter() - start


def measure_xgrammar(tokenizer: Any, tokens: list[int]) -> dict[str, Any]:
    import torch
    import xgrammar

    def compile_grammar() -> Any:
        info = xgrammar.TokenizerInfo.from_huggingface(tokenizer, vocab_size=len(tokenizer))
        return xgrammar.GrammarCompiler(info, max_threads=1).compile_json_schema(
            json.dumps(SCHEMA), any_whitespace=False
        )

    compiled, compile_s = timed(compile_grammar)
    matcher = xgrammar.GrammarMatcher(compiled)
    bitmask = xgrammar.allocate_token_bitmask(1, len(tokenizer))
    masks, valid = [], True
    for token in tokens:
        _, elapsed = timed(lambda: matcher.fill_next_token_bitmask(bitmask))
        masks.append(elapsed)
        allowed = bool((bitmask[0, token // 32] >> (token % 32)) & 1)
        valid = valid and allowed and matcher.accept_token(token)
    forks = [timed(matcher.fork)[1] for _ in range(50)]
    del torch
    return {
        "compile_s": compile_s,
        "mask_ms": 1000 * statistics.mean(masks),
        "fork_ms": 1000 * statistics.mean(forks),
        "valid_path": valid,
    }


def measure_llguidance(tokenizer: Any, tokens: list[int]) -> dict[str, Any]:
    import llguidance
    import llguidance.hf

    def compile_grammar() -> Any:
        lltokenizer = llguidance.hf.from_tokenizer(tokenizer)
        grammar = llguidance.LLMatcher.grammar_from_json_schema(
            json.dumps(SCHEMA), defaults={"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
        )
        return lltokenizer, grammar

    (lltokenizer, grammar), compile_s = timed(compile_grammar)
    matcher = llguidance.LLMatcher(lltokenizer, grammar)
    masks, valid = [], True
    for token in tokens:
        mask, elapsed = timed(matcher.compute_bitmask)
        masks.append(elapsed)
        allowed = bool(mask[token // 8] >> (token % 8) & 1)
        valid = valid and allowed and matcher.consume_token(token)
    forks = [timed(matcher.deep_copy)[1] for _ in range(50)]
    return {
        "compile_s": compile_s,
        "mask_ms": 1000 * statistics.mean(masks),
        "fork_ms": 1000 * statistics.mean(forks),
        "valid_path": valid and not matcher.is_error(),
    }


def measure_outlines_core(tokenizer: Any, tokens: list[int]) -> dict[str, Any]:
    from outlines_core import Index, Vocabulary, json_schema

    def compile_grammar() -> Any:
        # outlines-core wants each token's text: byte-level pieces decoded one by one.
        vocabulary: dict[str, list[int]] = {}
        for token_id in range(len(tokenizer)):
            if token_id == tokenizer.eos_token_id:
                continue
            piece = tokenizer.convert_tokens_to_string([tokenizer.convert_ids_to_tokens(token_id)])
            vocabulary.setdefault(piece, []).append(token_id)
        regex = json_schema.build_regex_from_schema(json.dumps(SCHEMA))
        return Index(regex, Vocabulary(tokenizer.eos_token_id, vocabulary))

    index, compile_s = timed(compile_grammar)
    state = index.get_initial_state()
    masks, valid = [], True
    for token in tokens:
        allowed, elapsed = timed(lambda: index.get_allowed_tokens(state))  # noqa: B023 (state of this step)
        masks.append(elapsed)
        valid = valid and token in set(allowed)
        next_state = index.get_next_state(state, token)
        valid = valid and next_state is not None
        state = next_state if next_state is not None else state
    return {"compile_s": compile_s, "mask_ms": 1000 * statistics.mean(masks), "fork_ms": 0.0, "valid_path": valid}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    from stars_guard.adapters._text import load_tokenizer
    from stars_guard.models import default_lm_dir

    tokenizer = load_tokenizer(default_lm_dir())
    tokens = tokenizer(ANSWER, add_special_tokens=False)["input_ids"]
    results = {}
    for name, measure in (
        ("xgrammar", measure_xgrammar),
        ("llguidance", measure_llguidance),
        ("outlines-core", measure_outlines_core),
    ):
        try:
            results[name] = {
                key: round(value, 4) if isinstance(value, float) else value
                for key, value in measure(tokenizer, tokens).items()
            }
        except Exception as exc:  # one library failing must not hide the others' numbers
            results[name] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
        print(name, results[name], flush=True)
    report = {
        "command": "python benchmarks/grammar_libs.py",
        "machine": f"{platform.machine()}, Python {platform.python_version()}",
        "vocabulary": len(tokenizer),
        "answer_tokens": len(tokens),
        "results": results,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "grammar_libs.json").write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
