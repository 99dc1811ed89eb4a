"""Chat prompts the adapters render, with message content that can never become a control token.

A chat template writes control tokens (`<|im_start|>`, BOS, ...) around each message, and
tokenising the rendered text with special-token parsing on would also turn any control-token
*text* inside a message into the real token, letting a user forge a system or assistant turn.
`chat_prompt_ids` tokenises the template's own control tokens as such and message content as plain
text; `neutralize_special_tokens` breaks such text for servers that take text only.
"""

from __future__ import annotations

import contextlib
import functools
import re
import threading
import uuid
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from stars_guard.messages import ChatMessage
from stars_guard.tools import (
    TOOL_CALL_CLOSE,
    TOOL_CALL_OPEN,
    OutputConstraint,
    parse_call,
    plain_turns,
    prompt_instruction,
    template_tools,
    tool_call_spans,
    with_instruction,
)

BREAK = "\u200b"  # ZERO WIDTH SPACE: inserted into control-token text so no tokenizer can parse it
# Control-token syntaxes of common chat formats, for servers that render the template themselves
# (then the model's own list is unknown here): ChatML/Llama 3/Phi `<|...|>`, DeepSeek `<｜...｜>`,
# SentencePiece `<s>`/`</s>`, Gemma's turn markers, Mistral's bracketed controls.
_COMMON_CONTROL_TOKENS = re.compile(
    r"<\|[^\s<>|]{1,64}\|>|<｜[^\s<>｜]{1,64}｜>|</?s>|<(?:bos|eos|pad|unk|start_of_turn|end_of_turn)>"
    r"|\[/?(?:INST|SYSTEM_PROMPT|AVAILABLE_TOOLS|TOOL_CALLS|TOOL_RESULTS)\]"
    r"|\[(?:CLS|SEP|PAD|MASK|UNK)\]"  # BERT-style encoders (reward models behind TEI)
)


MessageLike = ChatMessage | Mapping[str, Any]


def as_turns(messages: Sequence[MessageLike]) -> list[dict[str, Any]]:
    """Role/content dicts from `ChatMessage`s or dicts (copies, so rendering never touches the caller's)."""
    return [message.as_dict() if isinstance(message, ChatMessage) else dict(message) for message in messages]


def transcript(turns: Sequence[Mapping[str, Any]], add_generation_prompt: bool = True) -> str:
    """The plain `role: content` prompt used where a tokenizer has no chat template."""
    text = "\n".join(f"{turn['role']}: {turn['content']}" for turn in turns)
    return text + "\nassistant:" if add_generation_prompt else text


def render_chat(
    tokenizer: Any,
    messages: Sequence[MessageLike],
    *,
    constraint: OutputConstraint | None = None,
    add_generation_prompt: bool = True,
    neutralize: bool = False,
) -> str:
    """The prompt text, from the model's own chat template (or `transcript` without one).

    Tool turns and the constraint's tools are rendered as `template_input` says. `neutralize=True`
    is for text sent to a server that tokenises it with special-token parsing on (TGI, a
    text-only completions server, vLLM /classify): control-token text inside message content is
    broken first (see `neutralize_special_tokens`), so only the template's own control tokens
    remain. For local tokenisation use `chat_prompt_ids`, which needs no such change.
    """
    strings = special_token_strings(tokenizer)
    turns, tools = template_input(
        messages, constraint, knows_tools=lambda: hf_template_knows_tools(tokenizer), special_token_strings=strings
    )
    if neutralize:
        turns = neutralize_turns(turns, strings)
    return hf_render(tokenizer, turns, tools, add_generation_prompt)


def hf_render(
    tokenizer: Any, turns: list[dict[str, Any]], tools: list[dict[str, Any]] | None, add_generation_prompt: bool
) -> str:
    """Turns rendered by a Hugging Face tokenizer's chat template, or `transcript` without one."""
    if getattr(tokenizer, "chat_template", None):
        extra = {"tools": tools} if tools else {}
        return str(
            tokenizer.apply_chat_template(turns, add_generation_prompt=add_generation_prompt, tokenize=False, **extra)
        )
    return transcript(turns, add_generation_prompt)


# Tools in the chat template ----------------------------------------------------------------------


def template_input(
    messages: Sequence[MessageLike],
    constraint: OutputConstraint | None,
    *,
    knows_tools: Callable[[], bool],
    special_token_strings: Sequence[str] | None = None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None]:
    """The turns (and tools) to render: natively where the template knows tools, else as text.

    `knows_tools` is asked only when the request has tools or tool turns. Natively, the tools go
    to the template's `tools` and the calls and results stay structured; a JSON-schema
    instruction still joins the system turn. Otherwise `stars_guard.tools.plain_turns` writes it
    all as text. Tool names, descriptions and call arguments are template text, not message
    content, so control-token text in them is broken (`neutralize_special_tokens`; the common
    syntaxes when the list is not known): only message content gets the exact split.
    """
    chat = [message for message in messages if isinstance(message, ChatMessage)]
    has_tool_turns = any(message.role == "tool" or message.tool_calls for message in chat)
    if len(chat) != len(messages) or (not has_tool_turns and constraint is None):
        return as_turns(messages), None  # role/content dicts (rewards, direct calls) render as they are
    tools = template_tools(constraint)
    if (tools or has_tool_turns) and knows_tools():
        native = with_instruction(chat, prompt_instruction(constraint, native_tools=True))
        turns = [_neutralize_calls(message.as_dict(), special_token_strings) for message in native]
        return turns, _neutralize_json(tools, special_token_strings) if tools else None
    return as_turns(plain_turns(chat, constraint)), None


def template_knows_tools(render: Callable[[list[dict[str, Any]], list[dict[str, Any]]], str]) -> bool:
    """Whether a template renders tools, and writes calls and results the way `stars_guard.tools` reads them.

    Renders a probe conversation (a tool, an assistant call of it, its result) with random names:
    the template must describe the tool, write the call as a `<tool_call>` block holding
    `{"name", "arguments"}`, and show the result. Qwen2.5's, Qwen3's and Hermes' templates do;
    one that ignores tools, or writes calls another way (Llama 3.1's JSON, Mistral's
    `[TOOL_CALLS]`), gets the text format instead, which the parser reads.
    """
    nonce = uuid.uuid4().hex[:10]
    name, value, result = f"probe_{nonce}", f"value_{nonce}", f"result_{nonce}"
    tool = {
        "type": "function",
        "function": {
            "name": name,
            "description": "probe",
            "parameters": {"type": "object", "properties": {"q": {"type": "string"}}},
        },
    }
    call = {"type": "function", "id": "call_probe", "function": {"name": name, "arguments": {"q": value}}}
    turns = [
        {"role": "user", "content": "probe"},
        {"role": "assistant", "content": "", "tool_calls": [call]},
        {"role": "tool", "content": result, "tool_call_id": "call_probe"},
    ]
    try:
        text = render(turns, [tool])
    except Exception:  # a template that cannot take these turns at all
        return False
    spans = tool_call_spans(text)
    calls = [
        parse_call(text[start:end].removeprefix(TOOL_CALL_OPEN).removesuffix(TOOL_CALL_CLOSE), [name])
        for start, end in spans
    ]
    outside = "".join(text[a:b] for a, b in _gaps(spans, len(text)))
    written = any(parsed.name == name and parsed.arguments == {"q": value} for parsed in calls)
    return written and name in outside and result in outside


_KNOWS_TOOLS: weakref.WeakKeyDictionary[Any, tuple[str, bool]] = weakref.WeakKeyDictionary()


def hf_template_knows_tools(tokenizer: Any) -> bool:
    """`template_knows_tools` for a Hugging Face tokenizer (cached per tokenizer and template)."""
    template = getattr(tokenizer, "chat_template", None)
    if not isinstance(template, str) or "tool" not in template:
        return False
    with _CACHE_LOCK, contextlib.suppress(TypeError):
        cached = _KNOWS_TOOLS.get(tokenizer)
        if cached is not None and cached[0] == template:
            return cached[1]
    knows = template_knows_tools(lambda turns, tools: hf_render(tokenizer, turns, tools, True))
    with _CACHE_LOCK, contextlib.suppress(TypeError):
        _KNOWS_TOOLS[tokenizer] = (template, knows)
    return knows


def _gaps(spans: Sequence[tuple[int, int]], length: int) -> list[tuple[int, int]]:
    """The stretches of a text of `length` characters between `spans`."""
    gaps, cursor = [], 0
    for start, end in spans:
        gaps.append((cursor, start))
        cursor = end
    gaps.append((cursor, length))
    return gaps


def _neutralize_json(value: Any, special_token_strings: Sequence[str] | None) -> Any:
    """`value` with every string in it (keys included) neutralised as `neutralize_turns` does content."""
    if isinstance(value, str):
        return _neutralized(value, special_token_strings)
    if isinstance(value, Mapping):
        return {
            _neutralize_json(key, special_token_strings): _neutralize_json(item, special_token_strings)
            for key, item in value.items()
        }
    if isinstance(value, list | tuple):
        return [_neutralize_json(item, special_token_strings) for item in value]
    return value


def _neutralize_calls(turn: dict[str, Any], special_token_strings: Sequence[str] | None) -> dict[str, Any]:
    if "tool_calls" in turn:
        turn["tool_calls"] = _neutralize_json(turn["tool_calls"], special_token_strings)
    if "tool_call_id" in turn:
        turn["tool_call_id"] = _neutralize_json(turn["tool_call_id"], special_token_strings)
    return turn


# Control tokens in message content -----------------------------------------------------------------


@dataclass(frozen=True)
class ControlToken:
    """A token that special-token parsing turns text into (lstrip/rstrip: it swallows whitespace there)."""

    text: str
    id: int
    lstrip: bool = False
    rstrip: bool = False


@dataclass(frozen=True)
class PromptLayout:
    """Rendered prompt text and where message content lies in it (half-open character spans)."""

    text: str
    spans: tuple[tuple[int, int], ...]


def neutralize_special_tokens(text: str, special_token_strings: Sequence[str]) -> str:
    """`text` with every occurrence of a special-token string broken by a U+200B after its first character.

    For text a server will tokenise with special-token parsing on: the broken string can no longer
    match the token, so it reaches the model as ordinary text. Only those occurrences change (one
    invisible character each); all other characters are kept. A one-character special token
    cannot be broken this way and is left as it is.
    """
    strings = sorted({s for s in special_token_strings if len(s) > 1}, key=len, reverse=True)
    for _ in range(len(strings) + 1):  # breaking one string never forms another; the loop is a guard
        found = [s for s in strings if s in text]
        if not found:
            break
        for string in found:
            text = text.replace(string, string[0] + BREAK + string[1:])
    return text


def looks_like_control_token(text: str) -> bool:
    """Whether `text` holds a string in a common control-token syntax (see `neutralize_common_control_tokens`).

    For servers whose special tokens are not known here: where this is False, tokenising with
    special parsing on cannot turn the text into a control token of any common chat format.
    """
    return _COMMON_CONTROL_TOKENS.search(text) is not None


def neutralize_common_control_tokens(text: str) -> str:
    """`text` with control-token-like strings of common chat formats broken (U+200B after the first character).

    For a server that renders the chat template itself, where the model's own special tokens are
    not known here: covers `<|...|>`, `<｜...｜>`, `<s>`, `</s>`, `<bos>`, `<eos>`, Gemma's
    `<start_of_turn>`/`<end_of_turn>` and Mistral's `[INST]`-style controls. A local tokenizer
    (`tokenizer=`) makes this exact instead.
    """
    return _COMMON_CONTROL_TOKENS.sub(lambda match: match[0][0] + BREAK + match[0][1:], text)


def neutralize_text(text: str, tokenizer: Any = None) -> str:
    """`text` neutralised with the tokenizer's special-token strings, or the common syntaxes without one.

    For accepted answer text a server re-tokenises (text continuation): a model that was talked
    into writing control-token text must not open a new turn either.
    """
    if tokenizer is None:
        return neutralize_common_control_tokens(text)
    return neutralize_special_tokens(text, special_token_strings(tokenizer))


def neutralize_turns(
    turns: Sequence[Mapping[str, Any]], special_token_strings: Sequence[str] | None = None
) -> list[dict[str, Any]]:
    """Copies of `turns` whose string contents are neutralised (with the common syntaxes when no list is given)."""
    out = []
    for turn in turns:
        turn = dict(turn)
        content = turn.get("content")
        if isinstance(content, str):
            turn["content"] = _neutralized(content, special_token_strings)
        out.append(turn)
    return out


def _neutralized(text: str, special_token_strings: Sequence[str] | None) -> str:
    """`text` with the given special-token strings broken, or the common syntaxes when none are given."""
    if special_token_strings is None:
        return neutralize_common_control_tokens(text)
    return neutralize_special_tokens(text, special_token_strings)


_CONTROLS: weakref.WeakKeyDictionary[Any, tuple[int, dict[str, ControlToken]]] = weakref.WeakKeyDictionary()
_SPLITTERS: weakref.WeakKeyDictionary[Any, tuple[int, Any]] = weakref.WeakKeyDictionary()
_CACHE_LOCK = threading.Lock()


def control_tokens(tokenizer: Any) -> dict[str, ControlToken]:
    """The special tokens special-token parsing would make of text, by their text (cached per tokenizer)."""
    size = len(tokenizer) if hasattr(tokenizer, "__len__") else -1
    cached = None
    with _CACHE_LOCK, contextlib.suppress(TypeError):
        cached = _CONTROLS.get(tokenizer)
    if cached is not None and cached[0] == size:
        return cached[1]
    backend = getattr(tokenizer, "backend_tokenizer", None)
    decoder: Mapping[int, Any] = {}
    if backend is not None and hasattr(backend, "get_added_tokens_decoder"):
        decoder = backend.get_added_tokens_decoder()
    elif hasattr(tokenizer, "added_tokens_decoder"):
        decoder = tokenizer.added_tokens_decoder
    controls: dict[str, ControlToken] = {}
    for token_id, added in decoder.items():
        text = str(getattr(added, "content", added))
        if text and getattr(added, "special", True):
            controls[text] = ControlToken(
                text, int(token_id), bool(getattr(added, "lstrip", False)), bool(getattr(added, "rstrip", False))
            )
    for text in getattr(tokenizer, "all_special_tokens", ()) or ():  # specials a slow tokenizer keeps elsewhere
        if text and text not in controls:
            token_id = tokenizer.convert_tokens_to_ids(text)
            if isinstance(token_id, int) and token_id != getattr(tokenizer, "unk_token_id", None):
                controls[text] = ControlToken(text, token_id)
    with _CACHE_LOCK, contextlib.suppress(TypeError):  # TypeError: an object weakref cannot hold
        _CONTROLS[tokenizer] = (size, controls)
    return controls


def special_token_strings(tokenizer: Any) -> tuple[str, ...]:
    """The texts of the tokenizer's special (control) tokens, longest first."""
    return tuple(sorted(control_tokens(tokenizer), key=len, reverse=True))


def may_forge(contents: Sequence[str], special_token_strings: Sequence[str]) -> bool:
    """Whether some content holds, or starts or ends with part of, a special-token string.

    False means the rendered prompt cannot contain a control token that overlaps message content,
    so tokenising it with special-token parsing on is already safe (and gives the usual ids).
    """
    strings = tuple(string for string in special_token_strings if string)
    if not strings:
        return False
    whole, heads, tails, longest = _forgery_index(strings)
    for content in contents:
        if not content:
            continue
        if whole.search(content):
            return True
        for size in range(1, min(longest, len(content) + 1)):
            if content[-size:] in heads or content[:size] in tails:
                return True
    return False


@functools.lru_cache(maxsize=16)
def _forgery_index(strings: tuple[str, ...]) -> tuple[re.Pattern[str], frozenset[str], frozenset[str], int]:
    """For `may_forge`: one pattern for the whole strings, and their proper prefixes and suffixes."""
    whole = re.compile("|".join(re.escape(s) for s in sorted(strings, key=len, reverse=True)))
    heads = frozenset(s[:cut] for s in strings for cut in range(1, len(s)))
    tails = frozenset(s[cut:] for s in strings for cut in range(1, len(s)))
    return whole, heads, tails, max(len(s) for s in strings)


def layout_chat(
    render: Callable[[list[dict[str, Any]]], str], turns: Sequence[Mapping[str, Any]]
) -> PromptLayout | None:
    """The rendered prompt with the spans of message content, or None if the template does not copy content.

    Each content is rendered as a unique placeholder, then put back; that is only trusted when the
    result equals the real rendering (a template that trims content is handled by trying the
    trimmed content too). A template that rewrites content in other ways gets None.
    """
    nonce = uuid.uuid4().hex  # content cannot contain it by chance
    contents: dict[str, str] = {}
    marked = []
    for index, turn in enumerate(turns):
        turn = dict(turn)
        if isinstance(turn.get("content"), str):
            key = f"\ue000{nonce}:{index}\ue001"
            contents[key], turn["content"] = turn["content"], key
        marked.append(turn)
    real = render([dict(turn) for turn in turns])
    if not contents:
        return PromptLayout(real, ())
    skeleton = render(marked)
    pattern = re.compile("|".join(re.escape(key) for key in contents))
    for trim in (False, True):
        pieces: list[str] = []
        spans: list[tuple[int, int]] = []
        length, cursor = 0, 0
        for match in pattern.finditer(skeleton):
            pieces.append(skeleton[cursor : match.start()])
            length += match.start() - cursor
            content = contents[match[0]].strip() if trim else contents[match[0]]
            pieces.append(content)
            spans.append((length, length + len(content)))
            length += len(content)
            cursor = match.end()
        pieces.append(skeleton[cursor:])
        if "".join(pieces) == real:
            return PromptLayout(real, tuple(spans))
    return None


def touches_content(layout: PromptLayout, special_token_strings: Sequence[str]) -> bool:
    """Whether any occurrence of a special-token string in the prompt overlaps message content.

    When none does, tokenising the whole prompt with special-token parsing on is safe.
    """
    text = layout.text
    for string in special_token_strings:
        start = text.find(string)
        while start >= 0:
            end = start + len(string)
            if any(span_start < end and start < span_end for span_start, span_end in layout.spans):
                return True
            start = text.find(string, start + 1)
    return False


def split_controls(layout: PromptLayout, controls: Mapping[str, ControlToken]) -> list[str | ControlToken]:
    """The prompt as text pieces and control tokens, where only the template's own text makes control tokens.

    Mirrors a tokenizer's special-token split (leftmost-longest match, lstrip/rstrip whitespace
    dropped) but matches only within the template's text, never overlapping message content; the
    text pieces between control tokens keep content and template text together, so tokenising them
    without special-token parsing merges exactly as usual.
    """
    text = layout.text
    matches: list[tuple[int, int, ControlToken]] = []
    if controls:
        pattern = re.compile("|".join(re.escape(s) for s in sorted(controls, key=len, reverse=True)))
        start = 0
        for span_start, span_end in [*layout.spans, (len(text), len(text))]:
            for match in pattern.finditer(text, start, max(start, span_start)):
                matches.append((match.start(), match.end(), controls[match[0]]))
            start = max(start, span_end)
    parts: list[str | ControlToken] = []
    cursor = 0
    for start, end, control in matches:
        if start < cursor:  # inside whitespace an earlier control swallowed
            continue
        piece = text[cursor:start]
        if control.lstrip:
            piece = piece.rstrip()
        if piece:
            parts.append(piece)
        parts.append(control)
        cursor = end
        if control.rstrip:
            while cursor < len(text) and text[cursor].isspace():
                cursor += 1
    if cursor < len(text):
        parts.append(text[cursor:])
    return parts


def encode_split(parts: Sequence[str | ControlToken], encode_text: Callable[[str], Sequence[int]]) -> list[int]:
    """Token ids of `split_controls` parts: control tokens as themselves, text with special parsing off."""
    ids: list[int] = []
    for part in parts:
        if isinstance(part, ControlToken):
            ids.append(part.id)
        else:
            ids.extend(int(token) for token in encode_text(part))
    return ids


def plain_text_ids(tokenizer: Any, text: str, *, add_special_tokens: bool = False) -> list[int]:
    """Token ids of `text` with special-token parsing off: control-token text stays text.

    Uses a private copy of a fast tokenizer's backend with `encode_special_tokens` set, so the
    shared tokenizer's state is never toggled (other threads tokenise with it concurrently).
    Without a fast backend the special-token strings are neutralised instead (U+200B, see
    `neutralize_special_tokens`).
    """
    splitter = _splitter(tokenizer)
    if splitter is None:
        safe = neutralize_special_tokens(text, special_token_strings(tokenizer))
        return list(tokenizer(safe, add_special_tokens=add_special_tokens)["input_ids"])
    return list(splitter.encode(text, add_special_tokens=add_special_tokens).ids)


def chat_prompt_ids(
    tokenizer: Any,
    messages: Sequence[MessageLike],
    *,
    constraint: OutputConstraint | None = None,
    add_generation_prompt: bool = True,
) -> list[int]:
    """Token ids of the chat-templated prompt in which message content can never become a control token.

    The template's own control tokens (BOS, `<|im_start|>`, ...) are tokens; control-token text in
    message content is tokenised as ordinary text. When no content holds such text the ids are
    exactly the usual `tokenizer(render_chat(...), add_special_tokens=False)` (with a template) or
    `add_special_tokens=True` (the plain transcript without one). Where the exact split cannot be
    made (a template that rewrites content, a tokenizer without a fast backend, a split that would
    not reproduce the text), the contents are neutralised instead (`neutralize_special_tokens`).
    Takes `ChatMessage`s or role/content dicts; tool turns and the constraint's tools are
    rendered as `template_input` says; `add_generation_prompt=False` renders a finished
    conversation (e.g. for a reward model).
    """
    controls = control_tokens(tokenizer)
    turns, tools = template_input(
        messages,
        constraint,
        knows_tools=lambda: hf_template_knows_tools(tokenizer),
        special_token_strings=special_token_strings(tokenizer),
    )
    templated = bool(getattr(tokenizer, "chat_template", None))

    def render(items: list[dict[str, Any]]) -> str:
        return hf_render(tokenizer, items, tools, add_generation_prompt)

    def usual(text: str) -> list[int]:
        return list(tokenizer(text, add_special_tokens=not templated)["input_ids"])

    contents = [turn["content"] for turn in turns if isinstance(turn.get("content"), str)]
    if not may_forge(contents, tuple(controls)):
        return usual(render(turns))
    ids = _split_ids(tokenizer, render, turns, controls, templated)
    if ids is not None:
        return ids
    return usual(render(neutralize_turns(turns, tuple(controls))))


def _split_ids(
    tokenizer: Any,
    render: Callable[[list[dict[str, Any]]], str],
    turns: list[dict[str, Any]],
    controls: Mapping[str, ControlToken],
    templated: bool,
) -> list[int] | None:
    """`chat_prompt_ids`'s exact path, or None where it cannot be trusted."""
    layout = layout_chat(render, turns)
    if layout is None:
        return None
    if not touches_content(layout, tuple(controls)):  # only content's edges looked like part of a token
        return list(tokenizer(layout.text, add_special_tokens=not templated)["input_ids"])
    splitter = _splitter(tokenizer)
    if splitter is None:
        return None
    if templated:
        parts = split_controls(layout, controls)
        ids = encode_split(parts, lambda piece: splitter.encode(piece, add_special_tokens=False).ids)
        expected = sum(isinstance(part, ControlToken) for part in parts)
    else:  # the transcript writes no control tokens; the tokenizer adds its BOS/EOS around it
        ids = list(splitter.encode(layout.text, add_special_tokens=True).ids)
        expected = len(tokenizer(layout.text, add_special_tokens=True)["input_ids"]) - len(
            tokenizer(layout.text, add_special_tokens=False)["input_ids"]
        )
    control_ids = {control.id for control in controls.values()}
    if sum(token in control_ids for token in ids) != expected:
        return None
    usual = tokenizer(layout.text, add_special_tokens=not templated)["input_ids"]
    if tokenizer.decode(ids) != tokenizer.decode(usual):
        return None  # the split would change the text the model sees (e.g. a prefix space)
    return ids


def _splitter(tokenizer: Any) -> Any:
    """A private copy of the fast tokenizer's backend that leaves special-token text as text (None: no backend)."""
    size = len(tokenizer) if hasattr(tokenizer, "__len__") else -1  # tokens added later need a fresh copy
    cached = None
    with _CACHE_LOCK, contextlib.suppress(TypeError):
        cached = _SPLITTERS.get(tokenizer)
    if cached is not None and cached[0] == size:
        return cached[1]
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or not hasattr(backend, "encode_special_tokens"):
        return None
    from tokenizers import Tokenizer

    splitter = Tokenizer.from_str(backend.to_str())
    splitter.encode_special_tokens = True
    splitter.no_truncation()
    splitter.no_padding()
    with _CACHE_LOCK, contextlib.suppress(TypeError):
        _SPLITTERS[tokenizer] = (size, splitter)
    return splitter
