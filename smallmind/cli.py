"""The ``smallmind`` command: generate, chat, bench, profile, inspect, perplexity."""
from __future__ import annotations

import argparse
import json
import sys
from typing import Sequence


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", "-m", help="GGUF or llama2.c .bin file (default: the embedded model)")
    p.add_argument("--tokenizer", help="tokenizer file for llama2.c models (tokenizer.bin)")
    p.add_argument("--threads", "-t", type=int, default=None, help="threads (default: fastest for the model)")
    p.add_argument("--ctx", type=int, default=None, help="context length (default: the model's)")


def _add_sampling_args(p: argparse.ArgumentParser, n_default: int = 200) -> None:
    p.add_argument("-n", "--max-new-tokens", type=int, default=n_default)
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--min-p", type=float, default=None)
    p.add_argument("--repetition-penalty", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--stop", action="append", default=None, help="stop string (repeatable)")


def _sampling(args) -> dict:
    return dict(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                top_p=args.top_p, min_p=args.min_p, repetition_penalty=args.repetition_penalty,
                seed=args.seed, stop=args.stop)


def _engine(args):
    from .engine import Engine
    if args.model:
        return Engine.load(args.model, tokenizer=args.tokenizer, n_threads=args.threads, n_ctx=args.ctx)
    return Engine.default(n_threads=args.threads or 1)


def _timings_line(t) -> str:
    return (f"[prompt {t.prompt_tokens} tok in {t.prompt_ms:.1f} ms ({t.prompt_tokens_per_s:,.0f} tok/s); "
            f"decode {t.decode_tokens} tok in {t.decode_ms:.1f} ms ({t.decode_tokens_per_s:,.0f} tok/s); "
            f"first token {t.ttft_ms:.1f} ms]")


def cmd_generate(args) -> int:
    engine = _engine(args)
    prompt = args.prompt if args.prompt is not None else ""
    sampling = _sampling(args)
    if engine.config.learned_positions:
        # Learned absolute positions cannot slide: stop where the context ends.
        session = engine.session()
        used = len(engine.tokenizer.encode(prompt)) if engine.tokenizer is not None else 0
        room = max(engine.n_ctx - used, 0)
        if sampling["max_new_tokens"] > room:
            print(f"smallmind: the context holds {engine.n_ctx} tokens: generating {room}, "
                  f"not {sampling['max_new_tokens']}", file=sys.stderr)
            sampling["max_new_tokens"] = room
    else:
        # Rotary models slide their window past the context, keeping BOS.
        keep = 1 if engine.tokenizer is not None and engine.tokenizer.add_bos else 0
        session = engine.session(overflow="shift", n_keep=keep)
    out = sys.stdout
    out.write(prompt)
    out.flush()
    chunks = session.generate(prompt, stream=True, **sampling)
    for chunk in chunks:
        out.write(chunk.text)
        out.flush()
    out.write("\n")
    print(_timings_line(chunks.result.timings), file=sys.stderr)
    return 0


def cmd_chat(args) -> int:
    from .chat import ChatREPL
    return ChatREPL(_engine(args), system=args.system, sampling=_sampling(args)).run()


def cmd_bench(args) -> int:
    from ._bench import run_seed_workload, format_table
    result = run_seed_workload(quick=args.quick, model=args.model)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(format_table(result))
    return 0


def cmd_profile(args) -> int:
    from .profiler import profile
    engine = _engine(args)
    prompt = args.prompt if args.prompt is not None else "ROMEO:"
    with profile() as prof:
        engine.generate(prompt, **_sampling(args))
    print(prof.table(by=args.by))
    if args.trace:
        prof.to_chrome_trace(args.trace)
        print(f"Chrome trace written to {args.trace} (open in ui.perfetto.dev)", file=sys.stderr)
    return 0


def cmd_inspect(args) -> int:
    from .formats.inspect import describe
    from .formats.loader import load_model
    print(describe(load_model(args.path, tokenizer=args.tokenizer)))
    return 0


def cmd_perplexity(args) -> int:
    from .evaluate import perplexity
    engine = _engine(args)
    with open(args.file, encoding="utf-8") as f:
        text = f.read()
    result = perplexity(engine, text, n_ctx=args.ctx, progress=not args.quiet)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"{args.file}: {result['bits_per_byte']:.4f} bits/byte, perplexity "
              f"{result['perplexity']:.3f} per token over {result['tokens']:,} tokens "
              f"({result['bytes']:,} bytes)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="smallmind", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("generate", help="stream generated text to stdout (timings to stderr)")
    p.add_argument("prompt", nargs="?", default=None)
    _add_model_args(p)
    _add_sampling_args(p)
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("chat", help="interactive chat that keeps the KV cache across turns")
    _add_model_args(p)
    _add_sampling_args(p, n_default=512)
    p.add_argument("--system", default=None, help="system prompt")
    p.set_defaults(func=cmd_chat)

    p = sub.add_parser("bench", help="run the seed workload benchmark")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--model", default=None, help="run the workload on this model file instead")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("profile", help="generate once and print where the time went")
    p.add_argument("prompt", nargs="?", default=None)
    _add_model_args(p)
    _add_sampling_args(p, n_default=64)
    p.add_argument("--by", choices=("op", "layer", "op_layer"), default="op")
    p.add_argument("--trace", help="also write a Chrome trace JSON file (Perfetto)")
    p.set_defaults(func=cmd_profile)

    p = sub.add_parser("inspect", help="describe a model file")
    p.add_argument("path")
    p.add_argument("--tokenizer", default=None)
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("perplexity", help="bits per byte / perplexity of a model over a text file")
    p.add_argument("file")
    _add_model_args(p)
    p.add_argument("--json", action="store_true")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_perplexity)

    from .serve.cli import add_serve_command  # the serve package registers its own options
    add_serve_command(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from .errors import SmallMindError
    try:
        return args.func(args)
    except (BrokenPipeError, KeyboardInterrupt):
        return 130
    except (SmallMindError, OSError) as exc:  # bad model/input, or a file that cannot be read
        print(f"smallmind: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
