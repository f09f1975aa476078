"""Load a model from a Hugging Face-format folder (config.json + *.safetensors + tokenizer), or the
bundled tiny-shakespeare model when no folder is given.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from safetensors import safe_open

from lab.engine.model import ModelConfig, build_model
from lab.engine.tokenizer import Tokenizer, read_json_object

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def data_dir() -> Path:
    """`data/` of a source checkout, or `lab/_data` inside an installed wheel."""
    here = Path(__file__).resolve().parents[1]
    return here / "_data" if (here / "_data").exists() else here.parent / "data"


def bundled_model_dir() -> Path:
    return data_dir() / "models" / "tiny-shakespeare"


def resolve_device(device: str | torch.device) -> torch.device:
    if isinstance(device, torch.device):
        device = str(device)
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    # checked here: torch.device("tpu") would raise a RuntimeError listing every backend torch knows
    if not isinstance(device, str) or not re.fullmatch(r"cpu|cuda(:\d+)?", device):
        raise ValueError(f"device: {device!r} is not supported; allowed: 'auto', 'cpu', 'cuda', 'cuda:N'")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device: {device!r} requested but CUDA is not available; allowed here: 'auto', 'cpu'")
    return torch.device(device)


def resolve_dtype(dtype: str | torch.dtype, device: torch.device, saved: str | None = None) -> torch.dtype:
    """`auto`: float32 on a CPU; on a GPU the checkpoint's own half precision (`saved`), and bfloat16
    for a float32 checkpoint (float16 where the GPU has no bfloat16), as vLLM chooses."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        if device.type == "cuda":
            bf16 = torch.cuda.is_bf16_supported()
            if saved == "float16" or not bf16:
                return torch.float16
            return torch.bfloat16
        return torch.float32
    if dtype not in DTYPES:
        raise ValueError(f"dtype: unknown value {dtype!r}; allowed: 'auto', {', '.join(map(repr, DTYPES))}")
    return DTYPES[dtype]


def read_config(folder: Path) -> ModelConfig:
    path = folder / "config.json"
    if not path.exists():
        raise FileNotFoundError(f"model: {folder} has no config.json; expected a Hugging Face-format folder")
    cfg = read_json_object(path)
    # stop on the end-of-sequence ids of generation_config.json where it names them, else config.json's,
    # as transformers and vLLM read them: instruct models list their end-of-turn token there (Llama 3's
    # <|eot_id|>, Qwen's <|im_end|>)
    eos = _ids(read_json_object(folder / "generation_config.json").get("eos_token_id")) or _ids(cfg.get("eos_token_id"))
    cfg["eos_token_id"] = list(dict.fromkeys(eos)) or None
    try:
        return ModelConfig.from_hf(cfg)
    except KeyError as e:  # a traceback ending in KeyError('num_attention_heads') said neither where nor what
        raise ValueError(f"model: {path} has no {e.args[0]!r}, which this architecture needs") from None


# transformers' GenerationConfig defaults: a value equal to one is no recommendation of the model's
# authors (vLLM keeps only the values that differ, `to_diff_dict`)
HF_SAMPLING_DEFAULTS = {"temperature": 1.0, "top_p": 1.0, "top_k": 50, "repetition_penalty": 1.0, "min_p": None}


def read_sampling_defaults(folder: str | Path | None) -> dict:
    """The sampling settings a model folder's generation_config.json recommends (temperature, top_p,
    top_k, repetition_penalty, min_p), which vLLM applies to every request that leaves them out (its
    `--generation-config auto`)."""
    gen = read_json_object(Path(folder if folder is not None else bundled_model_dir()) / "generation_config.json")
    return {k: gen[k] for k, default in HF_SAMPLING_DEFAULTS.items() if gen.get(k) is not None and gen[k] != default}


def _ids(value) -> list[int]:
    return [] if value is None else list(value) if isinstance(value, list) else [value]


def checkpoint_dtype(folder: str | Path | None) -> str | None:
    """The dtype a checkpoint was saved in (config.json `dtype`, or `torch_dtype` before transformers 5)."""
    cfg = read_json_object(Path(folder if folder is not None else bundled_model_dir()) / "config.json")
    value = cfg.get("dtype") or cfg.get("torch_dtype")
    return value if isinstance(value, str) else None


def load_model(folder: str | Path | None, device: torch.device, dtype: torch.dtype):
    """Returns (model, model_config, tokenizer or None)."""
    folder = Path(folder) if folder is not None else bundled_model_dir()
    if not folder.is_dir():
        hint = (" (the bundled model is missing: data/SOURCES.md says how it was made, "
                "data/models/tiny-shakespeare/README.md is its card)") if folder == bundled_model_dir() else ""
        raise FileNotFoundError(f"model: {folder} is not a folder{hint}")
    config = read_config(folder)
    with torch.device("meta"):
        model = build_model(config)
    model = model.to_empty(device=device)
    if hasattr(model, "tie_weights"):
        model.tie_weights()
    load_weights(model, folder)
    model.to(dtype).eval()
    tokenizer = None
    if (folder / "tokenizer.json").exists():
        tokenizer = Tokenizer.from_folder(folder, config.eos_token_ids)
        # the tokenizer's own eos token stops generation too (vLLM's rule)
        config.eos_token_ids = tuple(dict.fromkeys(config.eos_token_ids + tokenizer.eos_token_ids))
    return model, config, tokenizer


def load_weights(model: torch.nn.Module, folder: Path) -> None:
    files = sorted(folder.glob("*.safetensors"))
    index = folder / "model.safetensors.index.json"
    if index.exists():  # a sharded checkpoint: the files its index names, not strays beside them
        listed = set(read_json_object(index).get("weight_map", {}).values())
        files = [f for f in files if f.name in listed]
    if not files:
        raise FileNotFoundError(f"model: {folder} has no *.safetensors weights")
    params = dict(model.named_parameters())
    rename = getattr(model, "checkpoint_name_map", lambda name: name)
    convert = getattr(model, "convert_checkpoint_tensor", lambda target, tensor: tensor)
    tied = getattr(getattr(model, "config", None), "tie_word_embeddings", False)
    # names first, tensors after: a checkpoint that does not fit fails before gigabytes are read
    plan: dict[Path, list[tuple[str, str]]] = {}  # file -> (checkpoint name, parameter name)
    unexpected, wrong_shape, head = [], [], None
    for f in files:
        with safe_open(f, framework="pt") as st:
            for name in st.keys():
                target = rename(name)
                if tied and target == "lm_head.weight":
                    head = (f, name, st.get_slice(name).get_shape())  # unused unless the embedding is missing
                    continue
                if target is None or _unused_on_purpose(target, tied):
                    continue
                if target not in params:  # dropping it silently would change the model (a bias, a layer)
                    unexpected.append(name)
                    continue
                # copy_ would broadcast a [1] tensor into a [64] one without a word, and fail on other
                # mismatches with an error naming no tensor; a meta tensor checks the shape, reading no data
                shape = convert(target, torch.empty(st.get_slice(name).get_shape(), device="meta")).shape
                if shape != params[target].shape:
                    wrong_shape.append(f"{name} has shape {list(shape)}, expected {list(params[target].shape)}")
                plan.setdefault(f, []).append((name, target))
    embedding = next((n for n, p in params.items() if p is model.lm_head.weight), None) if tied else None
    if head is not None and embedding not in {target for pairs in plan.values() for _, target in pairs}:
        # a tied checkpoint may keep the shared tensor under the head's name only (safetensors'
        # save_model does): it is the embedding, and transformers loads it as such
        f, name, shape = head
        if list(shape) != list(params[embedding].shape):
            wrong_shape.append(f"{name} has shape {list(shape)}, expected {list(params[embedding].shape)}")
        plan.setdefault(f, []).append((name, embedding))
    if wrong_shape:
        raise ValueError(f"model: {folder} has weights that do not fit its config.json: {wrong_shape[:5]}")
    if unexpected:
        unexpected.sort()
        raise ValueError(f"model: {folder} has weights this model does not use: "
                         f"{unexpected[:5]}{f' ... ({len(unexpected)} in all)' if len(unexpected) > 5 else ''}")
    # tied embeddings appear once in named_parameters, under the embedding's name
    absent = set(params) - {target for pairs in plan.values() for _, target in pairs}
    missing = sorted(absent - _zero_if_absent(params))
    if missing:
        raise ValueError(f"model: {folder} lacks weights for {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    with torch.no_grad():
        for name in absent:
            params[name].zero_()
        for f, pairs in plan.items():
            with safe_open(f, framework="pt") as st:
                for name, target in pairs:
                    params[target].copy_(convert(target, st.get_tensor(name)))


def _zero_if_absent(params: dict) -> set[str]:
    """o_proj biases a checkpoint may leave out: Llama-format ("llamafied") Qwen folders set
    attention_bias for their q/k/v biases but store no o_proj bias; transformers then starts it at
    zero, and so do we."""
    return {name for name in params if name.endswith("self_attn.o_proj.bias")}


def _unused_on_purpose(target: str, tied: bool) -> bool:
    """Checkpoint tensors with nothing to load into: a tied head (the embedding holds it) and the
    rotary inverse frequencies old Llama checkpoints saved (we compute them from rope_theta)."""
    return (tied and target == "lm_head.weight") or target.endswith(".rotary_emb.inv_freq")
