"""The ``smallmind`` command: generate, chat, pull, inspect, perplexity, profile, bench.

Misuse is one line on stderr, ``smallmind: error: ...``, with exit status 2 and no
traceback, and it is reported before anything is written to stdout.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NoReturn

from . import __version__
from .errors import SmallMindError

if TYPE_CHECKING:  # pragma: no cover
    from .engine import Engine, Timings
    from .sampling import SamplingParams

DESCRIPTION = ("Fast CPU inference for small transformer language models (GGUF, llama2.c). "
               "Without --model, the small Shakespeare model embedded in the package is used.")


class _UsageError(Exception):
    """Bad input found by the command itself (reported like an argparse error)."""


class _Parser(argparse.ArgumentParser):
    """argparse with errors on one line, ``smallmind: error: ...``, exit status 2."""

    def error(self, message: str) -> NoReturn:
        _fail(f"{message} (see '{self.prog} --help')")


class _HelpFormatter(argparse.HelpFormatter):
    """Shows each option's default, unless the help text already says what unset means."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "%(default)" in text or "default" in text or not action.option_strings:
            return text
        if action.default is None or action.default is False or action.default == argparse.SUPPRESS:
            return text
        return f"{text} (default: %(default)s)"


def _error_line(message: str) -> int:
    """Print ``smallmind: error: message`` on one line; returns the exit status, 2."""
    print(f"smallmind: error: {' '.join(message.split())}", file=sys.stderr)
    return 2


def _fail(message: str) -> NoReturn:
    sys.exit(_error_line(message))


def _count(text: str) -> int:
    """argparse type: an integer >= 0."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _positive(text: str) -> int:
    """argparse type: an integer >= 1."""
    value = _count(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", "-m", metavar="FILE",
                   help="GGUF or llama2.c .bin file (default: the embedded Shakespeare model); "
                        "'smallmind pull' fetches one from the Hugging Face Hub")
    p.add_argument("--tokenizer", metavar="FILE",
                   help="tokenizer file for a llama2.c model (default: tokenizer.bin beside it)")
    p.add_argument("--threads", "-t", type=_positive, metavar="N",
                   help="threads (default: what runs this model fastest)")
    p.add_argument("--ctx", type=_positive, metavar="N", help="context length (default: the model's)")


def _add_sampling_args(p: argparse.ArgumentParser) -> None:
    """One option per SamplingParams field, with its help text and default (the one definition)."""
    from .sampling import SamplingParams
    for opt in SamplingParams.options():
        if opt.type is None:  # not a plain value (logit_bias): Python API only
            continue
        flags = [f"--{opt.name.replace('_', '-')}"]
        if opt.name == "max_new_tokens":
            p.add_argument("-n", *flags, type=_count, default=opt.default, metavar="N", help=opt.help)
        elif opt.repeated:
            p.add_argument(*flags, dest=opt.name, action="append", type=opt.type, metavar="TEXT",
                           help=f"{opt.help} (repeatable; default: none)")
        else:
            p.add_argument(*flags, dest=opt.name, type=opt.type, default=opt.default,
                           metavar=opt.name.split("_")[-1].upper(), help=opt.help)


def _sampling(args: argparse.Namespace) -> SamplingParams:
    """The generation parameters, checked now so that misuse is an error before any output."""
    from .errors import SamplingError
    from .sampling import SamplingParams
    values = {o.name: getattr(args, o.name) for o in SamplingParams.options() if hasattr(args, o.name)}
    for name, value in values.items():  # one at a time, so the error names the option
        try:
            SamplingParams(**{name: value})
        except SamplingError as exc:
            raise _UsageError(f"argument --{name.replace('_', '-')}: {exc}") from None
    return SamplingParams(**values)


def _engine(args: argparse.Namespace) -> Engine:
    from .engine import DEFAULT_MODEL, Engine
    if args.tokenizer and not args.model:
        raise _UsageError("--tokenizer needs --model")
    return Engine.load(args.model or DEFAULT_MODEL, tokenizer=args.tokenizer, n_threads=args.threads,
                       n_ctx=args.ctx)


def _timings_line(t: Timings) -> str:
    return (f"[prompt {t.prompt_tokens} tok in {t.prompt_ms:.1f} ms ({t.prompt_tokens_per_s:,.0f} tok/s); "
            f"decode {t.decode_tokens} tok in {t.decode_ms:.1f} ms ({t.decode_tokens_per_s:,.0f} tok/s); "
            f"first token {t.ttft_ms:.1f} ms]")


def cmd_generate(args: argparse.Namespace) -> int:
    sampling = _sampling(args)
    engine = _engine(args)
    prompt = args.prompt
    if engine.tokenizer is None:
        raise _UsageError(f"{engine.source} has no tokenizer: give one with --tokenizer")
    ids = engine.tokenizer.encode(prompt)
    if len(ids) >= engine.n_ctx:
        raise _UsageError(f"the prompt is {len(ids)} tokens, the context is {engine.n_ctx}")
    if engine.config.learned_positions:
        # Learned absolute positions cannot slide: stop where the context ends.
        session = engine.session()
        room = engine.n_ctx - max(len(ids), 1)
        if sampling.max_new_tokens > room:
            print(f"smallmind: the context holds {engine.n_ctx} tokens: generating {room}, "
                  f"not {sampling.max_new_tokens}", file=sys.stderr)
            sampling = dataclasses.replace(sampling, max_new_tokens=room)
    else:
        # Rotary models slide their window past the context, keeping BOS.
        keep = 1 if engine.tokenizer.add_bos else 0
        session = engine.session(overflow="shift", n_keep=keep)
    chunks = session.generate(ids, sampling, stream=True)  # validates before any output
    out = sys.stdout
    out.write(prompt)
    out.flush()
    for chunk in chunks:
        out.write(chunk.text)
        out.flush()
    out.write("\n")
    assert chunks.result is not None  # set once the stream is exhausted
    print(_timings_line(chunks.result.timings), file=sys.stderr)
    return 0


def cmd_chat(args: argparse.Namespace) -> int:
    from ._repl import ChatREPL
    sampling = _sampling(args)
    values = {f.name: getattr(sampling, f.name) for f in dataclasses.fields(sampling)}
    return ChatREPL(_engine(args), system=args.system, sampling=values).run()


def cmd_pull(args: argparse.Namespace) -> int:
    from .hub import download
    print(download(args.repo, args.file, revision=args.revision))
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    if args.kernels:  # which instruction-set path multiplies each weight type
        from ._core._matmul import kernel_paths
        paths = kernel_paths()
        print(json.dumps(paths, indent=2) if args.json else
              f"CPU: {paths['cpu']}, active: {paths['active']} (SMALLMIND_ISA=avx2 forces AVX2)\n"
              f"vpdpbusd for batches and prompts of repacked weights: {paths['vnni'] or 'none'}\n"
              + "\n".join(f"{name:5} {path}" for name, path in paths["types"].items()))
        return 0
    from ._bench import format_table, run_seed_workload
    result = run_seed_workload(quick=args.quick, model=args.model)
    print(json.dumps(result, indent=2) if args.json else format_table(result))
    return 0


def cmd_profile(args: argparse.Namespace) -> int:
    from .profiler import profile
    sampling = _sampling(args)
    engine = _engine(args)
    with profile() as prof:
        engine.generate(args.prompt, sampling)
    print(prof.table(by=args.by))
    if args.trace:
        prof.to_chrome_trace(args.trace)
        print(f"Chrome trace written to {args.trace} (open in ui.perfetto.dev)", file=sys.stderr)
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from .formats.inspect import describe
    from .formats.loader import load_model
    print(describe(load_model(args.path, tokenizer=args.tokenizer)))
    return 0


def cmd_perplexity(args: argparse.Namespace) -> int:
    from .evaluate import perplexity
    try:
        with open(args.file, encoding="utf-8") as f:
            text = f.read()
    except UnicodeDecodeError as exc:
        raise _UsageError(f"{args.file}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    if not text.strip():
        raise _UsageError(f"{args.file}: the file holds no text")
    engine = _engine(args)
    # A progress bar is for a person watching: never written into a redirected file.
    progress = not args.quiet and sys.stderr.isatty()
    try:
        result = perplexity(engine, text, n_ctx=args.ctx, progress=progress)
    except ValueError as exc:
        raise _UsageError(f"{args.file}: {exc}") from None
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"{args.file}: {result['bits_per_byte']:.4f} bits/byte, perplexity "
              f"{result['perplexity']:.3f} per token over {result['tokens']:,} tokens "
              f"({result['bytes']:,} bytes)")
    return 0


def _command(sub, name: str, func, summary: str, description: str) -> argparse.ArgumentParser:
    p = sub.add_parser(name, help=summary, description=description, formatter_class=_HelpFormatter)
    p.set_defaults(func=func)
    return p


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="smallmind", description=DESCRIPTION, formatter_class=_HelpFormatter,
                     epilog="'smallmind COMMAND --help' describes a command.")
    parser.add_argument("--version", action="version", version=f"smallmind {__version__}")
    sub = parser.add_subparsers(dest="command", title="commands", metavar="COMMAND")

    p = _command(sub, "generate", cmd_generate, "continue a prompt",
                 "Continue PROMPT and stream the text to stdout; timings go to stderr.")
    p.add_argument("prompt", nargs="?", default="", help="text to continue (default: empty)")
    _add_model_args(p)
    _add_sampling_args(p)

    p = _command(sub, "chat", cmd_chat, "chat with a model in the terminal",
                 "Chat in the terminal with the model's own chat template, keeping the KV cache "
                 "across turns; the oldest turns are forgotten when the context is full. "
                 "Reads one message per line; Ctrl-D ends the chat.")
    _add_model_args(p)
    _add_sampling_args(p)
    p.add_argument("--system", metavar="TEXT", help="system prompt (default: the template's own, if any)")

    p = _command(sub, "pull", cmd_pull, "download a model file from the Hugging Face Hub",
                 "Download FILE of the model repository REPO into the Hugging Face cache (or find it "
                 "there) and print its path. Needs the hub extra: pip install 'smallmind[hub]'. "
                 "HF_HUB_OFFLINE=1 uses the cache only.")
    p.add_argument("repo", help="repository id, e.g. HuggingFaceTB/SmolLM2-135M-Instruct")
    p.add_argument("file", help="file name in the repository, or a pattern matching one file, "
                                "e.g. '*Q4_1.gguf'")
    p.add_argument("--revision", metavar="REV", help="branch, tag or commit (default: main)")

    p = _command(sub, "inspect", cmd_inspect, "describe a model file",
                 "Print a model file's architecture, hyper-parameters, tensors and tokenizer.")
    p.add_argument("path", help="GGUF or llama2.c .bin file")
    p.add_argument("--tokenizer", metavar="FILE",
                   help="tokenizer file for a llama2.c model (default: tokenizer.bin beside it)")

    p = _command(sub, "perplexity", cmd_perplexity, "score a model on a text file",
                 "Bits per byte and perplexity of the model over a UTF-8 text file, in consecutive "
                 "windows of the context length.")
    p.add_argument("file", help="UTF-8 text file")
    _add_model_args(p)
    p.add_argument("--json", action="store_true", help="print JSON instead of a sentence")
    p.add_argument("--quiet", "-q", action="store_true",
                   help="no progress bar (there is none anyway unless stderr is a terminal)")

    p = _command(sub, "profile", cmd_profile, "show where the time of a generation goes",
                 "Generate once from PROMPT and print the time and memory of each op or layer.")
    p.add_argument("prompt", nargs="?", default="ROMEO:", help="text to continue")
    _add_model_args(p)
    _add_sampling_args(p)
    p.add_argument("--by", choices=("op", "layer", "op_layer"), default="op", help="rows of the table")
    p.add_argument("--trace", metavar="FILE", help="also write a Chrome trace JSON file for ui.perfetto.dev")

    p = _command(sub, "bench", cmd_bench, "run the seed benchmark workload",
                 "Time the seed workload (a 470K-parameter GPT-2, 3 sessions of 10 prompt + 50 "
                 "generated tokens) and print a table.")
    p.add_argument("--quick", action="store_true", help="fewer repeats: a rough figure in seconds")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--model", metavar="FILE", help="run the workload on this model file instead")
    p.add_argument("--kernels", action="store_true",
                   help="print which instruction-set path multiplies each weight type, and exit")

    from .serve.cli import add_serve_command  # the serve package registers its own options
    add_serve_command(sub, formatter_class=_HelpFormatter)
    return parser


def _show_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                  file: Any = None, line: str | None = None) -> None:
    print(f"smallmind: warning: {message}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    shown, warnings.showwarning = warnings.showwarning, _show_warning
    try:
        return args.func(args)
    except KeyboardInterrupt:
        sys.stderr.write("\n")  # the shell's prompt on a line of its own
        return 130
    except BrokenPipeError:  # `smallmind generate ... | head`: stop quietly, as other tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    # Bad input (files, models, values the API refused) is the user's to fix: one line, no
    # traceback. A missing optional dependency says which extra to install.
    except (_UsageError, SmallMindError, OSError, ValueError, ImportError) as exc:
        return _error_line(str(exc) or type(exc).__name__)
    finally:
        warnings.showwarning = shown


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
