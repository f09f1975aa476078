"""Train the bundled model: a character-level, Llama-shaped transformer on tinyshakespeare, with the
engine's own `CausalLM` (dense mode), written as a Hugging Face `LlamaForCausalLM` folder.

    .venv/bin/python scripts/train_tiny_shakespeare.py            # the bundled model (~20 min on 2 idle cores)
    .venv/bin/python scripts/train_tiny_shakespeare.py --steps 30 --out /tmp/ts   # a quick dry run
"""

from __future__ import annotations

import os

# Other processes often share these 2 cores; spinning OpenMP workers then burn the CPU they wait
# for (measured: 3x the CPU time per step). Passive waiting must be set before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import shlex  # noqa: E402
import time  # noqa: E402
from dataclasses import asdict, dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from lab.engine.chat import SPEAKER_LINES_TEMPLATE  # noqa: E402
from lab.engine.model import CausalLM, ModelConfig  # noqa: E402
from lab.engine.tokenizer import build_char_tokenizer  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT / "data" / "corpus" / "tinyshakespeare.txt"
OUT = ROOT / "data" / "models" / "tiny-shakespeare"


@dataclass(slots=True)
class TrainConfig:
    seed: int = 1337
    context: int = 256
    hidden: int = 192
    layers: int = 6
    heads: int = 6
    intermediate: int = 512
    batch: int = 16
    steps: int = 2000
    lr: float = 2e-3
    min_lr: float = 1e-4
    warmup: int = 100
    weight_decay: float = 0.1
    dropout: float = 0.1  # on the embeddings and each residual branch, training only
    grad_clip: float = 1.0
    eval_every: int = 100
    eval_windows: int = 16  # quick progress estimate; the final number uses the whole held-out 10%
    threads: int = 2
    bf16_autocast: bool = True  # bfloat16 matmuls, float32 weights: ~25% less CPU time per step here


def hf_config(c: TrainConfig, vocab_size: int) -> dict:
    # No bos/eos token: the corpus has no document boundaries to learn one from, and every
    # character, newline included, is text. Generation stops on max_tokens or stop strings.
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": vocab_size,
        "hidden_size": c.hidden,
        "intermediate_size": c.intermediate,
        "num_hidden_layers": c.layers,
        "num_attention_heads": c.heads,
        "num_key_value_heads": c.heads,
        "head_dim": c.hidden // c.heads,
        "max_position_embeddings": c.context,
        "hidden_act": "silu",
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "attention_bias": False,
        "mlp_bias": False,
        "tie_word_embeddings": False,
        "initializer_range": 0.02,
        "bos_token_id": None,
        "eos_token_id": None,
        "pad_token_id": None,
        "use_cache": True,
        "dtype": "bfloat16",
    }


def init_weights(model: CausalLM, c: TrainConfig) -> None:
    # GPT-2 style: N(0, 0.02), residual output projections scaled down by sqrt(2 * layers)
    for name, p in model.named_parameters():
        if p.dim() == 2:
            std = 0.02 / math.sqrt(2 * c.layers) if name.endswith(("o_proj.weight", "down_proj.weight")) else 0.02
            torch.nn.init.normal_(p, 0.0, std)


def lr_at(step: int, c: TrainConfig) -> float:
    if step < c.warmup:
        return c.lr * (step + 1) / c.warmup
    progress = (step - c.warmup) / max(1, c.steps - c.warmup)
    return c.min_lr + 0.5 * (c.lr - c.min_lr) * (1 + math.cos(math.pi * progress))


@torch.no_grad()
def windowed_loss(model: CausalLM, ids: torch.Tensor, context: int, starts: list[int], batch: int = 16) -> float:
    """Mean next-character loss (nats) over windows of `context` + 1 characters at `starts`."""
    was_training, total, count = model.training, 0.0, 0
    model.eval()  # no dropout while scoring
    for i in range(0, len(starts), batch):
        rows = torch.stack([ids[s : s + context + 1] for s in starts[i : i + batch]])
        logits = model.compute_logits(model(rows[:, :-1])).float()
        total += F.cross_entropy(logits.flatten(0, 1), rows[:, 1:].flatten(), reduction="sum").item()
        count += rows[:, 1:].numel()
    model.train(was_training)
    return total / count


def add_dropout(model: CausalLM, p: float) -> None:
    """Dropout as forward hooks, so the one model definition (which serves without dropout) stays
    as it is: without it this small model overfits the 1M training characters within a few epochs."""

    def hook(module, args, output):
        return F.dropout(output, p, training=module.training)

    for module in [model.model.embed_tokens] + [m for layer in model.model.layers for m in (layer.self_attn, layer.mlp)]:
        module.register_forward_hook(hook)


def full_val_starts(n: int, context: int) -> list[int]:
    """Windows tiling the held-out text, the last one flush with its end (so overlapping the one before)."""
    starts = list(range(0, n - context - 1, context))
    return starts + [n - context - 1] if starts[-1] != n - context - 1 else starts


def parse_bool(text: str) -> bool:
    """`--bf16-autocast false`: a typo ("flase") is an error, not a silent False."""
    if text.lower() in ("1", "true", "yes"):
        return True
    if text.lower() in ("0", "false", "no"):
        return False
    raise argparse.ArgumentTypeError(f"must be true or false (or 1/0, yes/no), got {text!r}")


def train_chars(n: int) -> int:
    """nanoGPT's split: the first 90% of the characters train, the last 10% validate."""
    return int(0.9 * n)


def config_error(c: TrainConfig, n_val: int) -> str | None:
    """The first setting this script cannot train with, as `--flag: must be ..., got ...`; checked
    before any work, where it used to surface as a ZeroDivisionError or a torch error mid-run."""
    counts = ("hidden", "layers", "heads", "intermediate", "batch", "steps", "eval_every", "eval_windows", "threads")
    rules = {
        # each scored window takes context + 1 characters of the held-out text
        "context": (1 <= c.context < n_val - 1, f"an integer >= 1 and < {n_val - 1} (the held-out characters)"),
    } | {f: (getattr(c, f) >= 1, "an integer >= 1") for f in counts} | {
        "seed": (0 <= c.seed <= 2**63 - 1, "an integer >= 0 and <= 2**63 - 1"),
        "warmup": (c.warmup >= 0, "an integer >= 0"),
        "lr": (0 < c.lr < math.inf, "a finite number > 0"),
        "min_lr": (0 <= c.min_lr <= c.lr, f"a number >= 0 and <= --lr ({c.lr:g})"),
        "weight_decay": (0 <= c.weight_decay < math.inf, "a finite number >= 0"),
        "dropout": (0 <= c.dropout < 1, "a number >= 0 and < 1"),
        "grad_clip": (0 < c.grad_clip < math.inf, "a finite number > 0"),
    }
    for field, (ok, allowed) in rules.items():
        if not ok:  # NaN fails every comparison, so it lands here too
            return f"--{field.replace('_', '-')}: must be {allowed}, got {getattr(c, field)}"
    # head_dim is hidden // heads: a remainder would be dropped silently, and RoPE rotates pairs
    if c.hidden % c.heads or (c.hidden // c.heads) % 2:
        return f"--heads: must split --hidden ({c.hidden}) into heads of an even size, got {c.heads}"
    return None


# settings that change how long a run takes or what it prints, not the model it learns
RUN_ONLY = ("eval_every", "eval_windows", "threads")


def parse_args(argv: list[str] | None = None) -> tuple[TrainConfig, Path]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for f, v in asdict(TrainConfig()).items():
        ap.add_argument(f"--{f.replace('_', '-')}", type=parse_bool if isinstance(v, bool) else type(v), default=v)
    ap.add_argument("--out", type=Path, default=OUT,
                    help="folder to write (default: the bundled model's, for its own recipe only)")
    args = ap.parse_args(argv)
    c = TrainConfig(**{f: getattr(args, f) for f in asdict(TrainConfig())})
    n = len(CORPUS.read_text(encoding="utf-8"))  # characters, one token each
    if error := config_error(c, n - train_chars(n)):
        ap.error(error)
    changed = [f for f in asdict(c) if f not in RUN_ONLY and getattr(c, f) != getattr(TrainConfig(), f)]
    if changed and args.out.resolve() == OUT.resolve():
        # a dry run that forgot its --out replaced the shipped weights its card and tests describe
        ap.error(f"--out: the bundled model's folder takes only its own recipe, and --{changed[0].replace('_', '-')} "
                 f"differs from it; give --out DIR for this run")
    return c, args.out


def main(argv: list[str] | None = None) -> None:
    c, out = parse_args(argv)
    torch.manual_seed(c.seed)
    torch.set_num_threads(c.threads)

    text = CORPUS.read_text(encoding="utf-8")
    chars = sorted(set(text))
    tok = build_char_tokenizer(chars)
    data = torch.tensor(tok.encode(text).ids, dtype=torch.long)
    assert tok.decode(data.tolist()) == text, "the character tokenizer must round-trip the corpus"
    n_train = train_chars(len(data))
    train, val = data[:n_train], data[n_train:]

    cfg = hf_config(c, len(chars))
    model = CausalLM(ModelConfig.from_hf(cfg))
    init_weights(model, c)
    if c.dropout > 0:
        add_dropout(model, c.dropout)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"{n_params:,} parameters; {len(train):,} train / {len(val):,} val characters; {c}", flush=True)

    decay = [p for p in model.parameters() if p.dim() == 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": c.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=c.lr, betas=(0.9, 0.99))
    gen = torch.Generator().manual_seed(c.seed)
    probe = torch.randint(0, len(val) - c.context - 1, (c.eval_windows,), generator=gen).tolist()
    t0, cpu0 = time.perf_counter(), time.process_time()
    model.train()
    for step in range(c.steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, c)
        starts = torch.randint(0, len(train) - c.context - 1, (c.batch,), generator=gen)
        rows = torch.stack([train[s : s + c.context + 1] for s in starts.tolist()])
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=c.bf16_autocast):
            logits = model.compute_logits(model(rows[:, :-1]))
        loss = F.cross_entropy(logits.float().flatten(0, 1), rows[:, 1:].flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), c.grad_clip)
        opt.step()
        if step % 10 == 0 or step == c.steps - 1:
            msg = f"step {step:5d}/{c.steps}  loss {loss.item():.4f}  lr {lr_at(step, c):.2e}"
            if step % c.eval_every == 0 or step == c.steps - 1:
                msg += f"  val~ {windowed_loss(model, val, c.context, probe):.4f}"
            print(f"{msg}  elapsed {time.perf_counter() - t0:7.1f}s", flush=True)
    train_s, cpu_s = time.perf_counter() - t0, time.process_time() - cpu0

    # what ships is bfloat16 (half the bytes); measure the loss of exactly those weights
    model = model.to(torch.bfloat16).float().eval()
    val_loss = windowed_loss(model, val, c.context, full_val_starts(len(val), c.context))
    print(f"validation loss (all {len(val):,} held-out characters): {val_loss:.4f} nats/char", flush=True)
    write_folder(out, model, tok, cfg, c, n_params, val_loss, (train_s, cpu_s), len(train), len(val))
    print(f"wrote {out} in {time.perf_counter() - t0:.0f}s total", flush=True)


def write_folder(out: Path, model, tok, cfg, c: TrainConfig, n_params, val_loss, times, n_train, n_val) -> None:
    train_s, cpu_s = times
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    tensors = {k: v.detach().to(torch.bfloat16).contiguous() for k, v in model.state_dict().items()}
    save_file(tensors, out / "model.safetensors", metadata={"format": "pt"})
    tok.save(str(out / "tokenizer.json"))
    tok_cfg = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": c.context,
        "clean_up_tokenization_spaces": False,  # every space is a character of the text
        "chat_template": SPEAKER_LINES_TEMPLATE,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(tok_cfg, indent=2) + "\n")
    machine = f"{platform.machine()} CPU, {c.threads} torch threads, torch {torch.__version__}"
    record = {"val_loss": round(val_loss, 4), "val_chars": n_val, "train_chars": n_train, "parameters": n_params,
              "train_seconds": round(train_s, 1), "train_cpu_seconds": round(cpu_s, 1), "machine": machine,
              "command": reproduce_command(c, out), "train_config": asdict(c)}
    (out / "training.json").write_text(json.dumps(record, indent=2) + "\n")
    (out / "README.md").write_text(render_card(record, cfg))


def reproduce_command(c: TrainConfig, out: Path) -> str:
    """The command that trains this folder again: the settings that differ from the defaults, and
    --out unless it is the bundled model's folder (without it, a rerun would overwrite that one)."""
    flags = [f"--{k.replace('_', '-')} {v}" for k, v in asdict(c).items() if v != getattr(TrainConfig(), k)]
    if out.resolve() != OUT.resolve():
        flags.append(f"--out {shlex.quote(str(out))}")
    return " ".join(["python scripts/train_tiny_shakespeare.py", *flags])


def render_card(record: dict, cfg: dict) -> str:
    """The model card, from training.json's record and config.json alone, so the two cannot disagree."""
    c = TrainConfig(**record["train_config"])
    return CARD.format(n_params=record["parameters"], c=c, val_loss=record["val_loss"], n_val=record["val_chars"],
                       n_train=record["train_chars"], minutes=record["train_seconds"] / 60,
                       cpu_minutes=record["train_cpu_seconds"] / 60, machine=record["machine"],
                       command=record["command"], vocab=cfg["vocab_size"], head_dim=cfg["head_dim"])


CARD = """\
# tiny-shakespeare

A character-level, Llama-shaped language model trained in this repository on tinyshakespeare, so that
`LLM()` has real weights to serve without any download. It is a teaching model: it writes text that
looks like a play, not text that means anything.

| | |
| --- | --- |
| architecture | `LlamaForCausalLM`: {c.layers} layers, hidden {c.hidden}, {c.heads} heads of {head_dim}, SwiGLU {c.intermediate}, RMSNorm, RoPE, untied head |
| parameters | {n_params:,} |
| vocabulary | {vocab} characters (`sorted(set(corpus))`), one token each; `tokenizer.json` is a `tokenizers` WordLevel model with a Fuse decoder |
| context length | {c.context} characters (`max_position_embeddings`) |
| special tokens | none: no bos, no eos (the corpus has no document boundaries); generation ends at `max_tokens` or a stop string |
| weights | bfloat16 safetensors |
| data | `data/corpus/tinyshakespeare.txt` (see `data/corpus/SOURCES.md`); nanoGPT's split: first 90% ({n_train:,} characters) train, last 10% ({n_val:,}) validation |
| validation loss | **{val_loss:.4f} nats/char** on the whole held-out 10% ({c.context}-character windows tiling it, the last one flush with its end, so overlapping the one before; every character but the first scored), with the bfloat16 weights as shipped |
| training | {c.steps} steps of {c.batch} x {c.context} characters, AdamW (betas 0.9/0.99, weight decay {c.weight_decay}), lr {c.lr} with {c.warmup} warmup steps and a cosine decay to {c.min_lr}, gradient clip {c.grad_clip}, dropout {c.dropout} (embeddings and residual branches), seed {c.seed}; bfloat16 autocast for the matmuls: {c.bf16_autocast} (weights and optimizer in float32) |
| training time | {minutes:.1f} minutes wall clock ({cpu_minutes:.1f} CPU-minutes of this process) on {machine}; the wall time counts whatever else ran on the machine meanwhile, the CPU time only this process, so an idle machine of this kind takes at most the wall time |

The model code is the engine's own `lab.engine.model.CausalLM` (dense mode for training), so the served
model and the trained model are one definition; the folder also loads in transformers
(`LlamaForCausalLM.from_pretrained`, `PreTrainedTokenizerFast(tokenizer_file=...)`).

## Chat format

`tokenizer_config.json` holds a `chat_template` that renders each message as a speaker block, as the
plays do: `USER:\\n...\\n\\nASSISTANT:\\n`. Characters outside the vocabulary are rejected with an error
naming them. The vocabulary has no end-of-turn token, so the server ends an assistant's turn where a
speech ends, at its blank line (a stop string beside the request's own; `ignore_eos` turns it off).

## Reproduce

```
{command}
```

(run from the repository root with the project's environment, e.g. `.venv/bin/python`; `training.json`
holds the same numbers in machine-readable form).
"""


if __name__ == "__main__":
    main()
