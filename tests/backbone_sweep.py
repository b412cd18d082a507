"""Every causal-LM family transformers registers, built tiny and wrapped by fsllm: exact, refused or not buildable.

For each model type of ``MODEL_FOR_CAUSAL_LM_MAPPING_NAMES`` (the families ``AutoModelForCausalLM`` loads)
``check_family`` builds a tiny config from the family's own defaults (``tiny_config``: hidden size, layers,
heads, vocabulary, intermediate sizes and experts shrunk generically), runs the plain backbone
(``AutoModel``, what ``fsllm.backbones.load_backbone`` loads), wraps it as fsllm does
(``FSForTokenClassification.from_backbone`` with the default ``FSConfig``: bidirectional attention, LoRA)
and records one outcome:

* ``exact``: FS's causal mode gives the plain backbone's hidden states (atol 1e-5, rtol 1e-4), a change of the
  last token moves the first position's hidden state (attention is released),
  a sentence alone equals it padded in a batch (atol and rtol 1e-5), and a training step gives finite LoRA
  gradients;
* ``refused``: fsllm raised its one-line ``FSLLMError`` at wrap time or in the first forward (the reason is that
  line);
* ``cannot build``: the tiny config or the plain model fails before fsllm is involved (or it is not a
  decoder: no ``AutoModel`` class, an encoder-decoder);
* ``fails``: anything else (an fsllm bug, or a family that is not exact): the sweep exists to keep
  this empty.

``python tests/backbone_sweep.py`` runs the sweep (each family in a worker process with a time bound, one
thread) and prints the changes against ``tests/backbone_sweep_expected.json``; ``--update`` rewrites that
file and ``docs/backbones.md`` from the run. ``tests/test_backbone_sweep.py`` runs it as a slow test and a
few representatives in the default suite.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import select
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
EXPECTED = HERE / "backbone_sweep_expected.json"
DOC = HERE.parent / "docs" / "backbones.md"
TIME_LIMIT_S = 90.0  # per family, in the worker; a family past it is recorded as "cannot build: timed out"

VOCAB = 128
HIDDEN = 64
HEADS = 4
HEAD_DIM = HIDDEN // HEADS

#: sizes set wherever the family's config has the attribute (shrinking it generically)
SIZES: dict[str, object] = {
    "vocab_size": VOCAB,
    "hidden_size": HIDDEN,
    "num_hidden_layers": 2,
    "num_attention_heads": HEADS,
    "num_key_value_heads": 2,
    "head_dim": HEAD_DIM,
    "intermediate_size": 64,
    "ffn_hidden_size": 64,
    "moe_intermediate_size": 32,
    "shared_expert_intermediate_size": 32,
    "expert_intermediate_size": 32,
    "mlp_hidden_size": 64,
    "max_position_embeddings": 512,
    "num_experts": 4,
    "num_local_experts": 4,
    "n_routed_experts": 4,
    "moe_num_experts": 4,
    "num_experts_per_tok": 2,
    "moe_topk": 2,
    "moe_k": 2,
    "top_k": 2,
    "n_shared_experts": 1,
    "num_shared_experts": 1,
    "n_group": 1,
    "topk_group": 1,
    "first_k_dense_replace": 1,
    "kv_lora_rank": 16,
    "q_lora_rank": 16,
    "qk_rope_head_dim": 8,
    "qk_nope_head_dim": 8,
    "v_head_dim": 16,
    "pad_token_id": 0,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "sliding_window": 5,
    "attention_chunk_size": 4,
    "rotary_dim": 8,
    "word_embed_proj_dim": HIDDEN,
}
#: sub-configs shrunk the same way (a multimodal model's vision and audio towers, a text config)
SUBCONFIG_SIZES = dict(SIZES, image_size=32, patch_size=8, num_channels=3)

SEQ = 8


def _set_sizes(config, sizes: dict) -> None:
    for key, value in sizes.items():
        try:
            current = getattr(config, key)
        except Exception:  # noqa: BLE001 - absent, or a per-layer attribute (Gemma 4) read globally
            continue
        if current is None and key not in ("head_dim", "num_key_value_heads", "num_experts_per_tok"):
            continue  # an optional feature the family leaves off (q_lora_rank, sliding_window): keep it off
        try:
            setattr(config, key, value)
        except Exception:  # noqa: BLE001 - a read-only or validated attribute: keep the default
            pass


def _layer_types(config) -> None:
    """Keep one layer of each distinct layer type (a hybrid keeps its attention and its other layers)."""
    types = getattr(config, "layer_types", None)
    if not isinstance(types, (list, tuple)) or not types:
        return
    distinct = list(dict.fromkeys(types))
    if len(distinct) == 1:
        distinct = distinct * 2
    try:
        config.layer_types = distinct
        config.num_hidden_layers = len(distinct)
    except Exception:  # noqa: BLE001 - derived from another attribute (a read-only property): keep the default
        pass


def tiny_config(model_type: str):
    """A tiny config of ``model_type`` from its defaults, sizes shrunk generically (``SIZES``), sub-configs too."""
    from transformers import AutoConfig, PretrainedConfig

    config = AutoConfig.for_model(model_type)
    _set_sizes(config, SIZES)
    if getattr(config, "qk_rope_head_dim", None):  # multi-head latent attention: the rotary part is the head_dim
        config.head_dim = config.qk_rope_head_dim
        if hasattr(config, "num_key_value_heads"):  # one key per query head (DeepSeek's configs say so)
            config.num_key_value_heads = config.num_attention_heads
        if hasattr(config, "qk_head_dim"):
            config.qk_head_dim = config.qk_nope_head_dim + config.qk_rope_head_dim
    _layer_types(config)
    for sub in list(vars(config).values()):
        if isinstance(sub, PretrainedConfig):
            _set_sizes(sub, SUBCONFIG_SIZES)
            _layer_types(sub)
    # derived lists sized to the layer count (per-layer patterns some families keep)
    n = vars(config).get("num_hidden_layers")
    for key, value in list(vars(config).items()):
        if isinstance(value, list) and n and len(value) > n and key not in ("layer_types", "architectures"):
            if all(isinstance(v, (int, float, bool, str)) for v in value) and key.endswith(("_layers", "_types", "_pattern", "per_layer")):
                setattr(config, key, value[:n])
    return config


def _one_line(e: BaseException) -> str:
    text = (str(e).strip().splitlines() or [""])[0]
    text = re.sub(r"0x[0-9a-f]+", "0x..", text)
    text = f"{type(e).__name__}: {text}" if not text.startswith(type(e).__name__) else text
    return text[:480]


def check_family(model_type: str) -> dict:
    """The outcome of one family: ``{"status": "exact" | "refused" | "cannot build" | "fails", "reason": str}``."""
    import torch
    from transformers import AutoModel
    from transformers.models.auto.modeling_auto import MODEL_MAPPING_NAMES

    from fsllm import FSForTokenClassification
    from fsllm.backbones import text_model_of
    from fsllm.errors import FSLLMError

    if model_type not in MODEL_MAPPING_NAMES:
        return {"status": "cannot build", "reason": "no AutoModel class (only a causal-LM head class)"}
    try:
        config = tiny_config(model_type)
    except Exception as e:  # noqa: BLE001
        return {"status": "cannot build", "reason": f"tiny config: {_one_line(e)}"}
    if getattr(config, "is_encoder_decoder", False):
        return {"status": "cannot build", "reason": "an encoder-decoder"}
    vocab = getattr(config, "vocab_size", None) or getattr(getattr(config, "text_config", None), "vocab_size", VOCAB)
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(3, min(vocab, VOCAB), (2, SEQ), generator=gen)
    torch.manual_seed(0)
    backbone = None
    errors = []
    for impl in ("sdpa", "eager"):
        try:
            backbone = AutoModel.from_config(config, attn_implementation=impl, dtype=torch.float32).eval()
            with torch.no_grad():
                backbone(input_ids=x[:1])
            break
        except Exception as e:  # noqa: BLE001
            errors.append(_one_line(e))
            backbone = None
    if backbone is None:
        return {"status": "cannot build", "reason": f"plain model: {errors[-1]}"}
    with torch.no_grad():  # the plain backbone's hidden states: FS attention's causal mode must give them back
        plain = text_model_of(backbone)(input_ids=x).last_hidden_state
    try:
        model = FSForTokenClassification.from_backbone(backbone, num_labels=2)
    except FSLLMError as e:
        return {"status": "refused", "reason": _one_line(e).removeprefix("FSLLMError: ")}
    except Exception as e:  # noqa: BLE001
        return {"status": "fails", "reason": f"wrap: {_one_line(e)}"}
    try:
        return _exactness(model, x, plain)
    except FSLLMError as e:
        return {"status": "refused", "reason": _one_line(e).removeprefix("FSLLMError: ")}
    except Exception as e:  # noqa: BLE001
        return {"status": "fails", "reason": f"forward: {_one_line(e)}"}


def _exactness(model, x, plain) -> dict:
    import torch

    model.eval()
    with torch.no_grad():
        model.set_attention(mode="causal")
        causal = model.encode(x)
        model.set_attention(mode="bidirectional")
    if not torch.allclose(causal, plain, atol=1e-5, rtol=1e-4):
        diff = float((causal - plain).abs().max())
        return {"status": "fails", "reason": f"causal mode differs from the plain backbone by {diff:.1e}"}
    with torch.no_grad():
        changed = x[:1].clone()
        changed[0, -1] = 3 if changed[0, -1] != 3 else 4
        h = model.encode(torch.cat([x[:1], changed]))
        moved = float((h[0, 0] - h[1, 0]).abs().max())
        n = SEQ - 3
        alone = model.encode(x[:1, :n])[0]
        mask = torch.ones_like(x)
        mask[0, n:] = 0
        padded = model.encode(x, mask)[0, :n]
        diff = float((alone - padded).abs().max())
    if not moved > 0:
        return {"status": "fails", "reason": "not released: the last token does not move the first position"}
    if not torch.allclose(alone, padded, atol=1e-5, rtol=1e-5):
        return {"status": "fails", "reason": f"not padding-exact: alone vs padded differ by {diff:.1e}"}
    model.train()
    labels = torch.zeros_like(x)
    model(input_ids=x, attention_mask=torch.ones_like(x), labels=labels).loss.backward()
    # a LoRA module outside the forward's path (an encoder's pooler) gets no gradient: only the used ones count
    grads = [p.grad for n, p in model.named_parameters() if p.requires_grad and "lora_B" in n and p.grad is not None]
    if not grads or any(not torch.isfinite(g).all() for g in grads):
        return {"status": "fails", "reason": "training step: LoRA gradients missing or not finite"}
    return {"status": "exact", "reason": ""}


# ------------------------------------------------------------------ the sweep, a worker process per run


def model_types() -> list[str]:
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    return sorted(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES)


def _worker() -> None:
    """Read model types from stdin, answer one JSON line each (the parent bounds the time and restarts on a crash)."""
    import warnings

    import torch

    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    import logging

    logging.disable(logging.WARNING)
    for line in sys.stdin:
        model_type = line.strip()
        if not model_type:
            continue
        outcome = check_family(model_type)
        sys.stdout.write(json.dumps({"model_type": model_type, **outcome}) + "\n")
        sys.stdout.flush()


def _start_worker() -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false",
               PYTHONPATH=os.pathsep.join([*filter(None, [os.environ.get("PYTHONPATH")]), str(HERE.parent / "src")]))
    return subprocess.Popen([sys.executable, __file__, "--worker"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, env=env)


def sweep(types: list[str] | None = None, time_limit_s: float = TIME_LIMIT_S, progress=None) -> dict[str, dict]:
    """Outcomes of ``types`` (default: every causal-LM model type), one worker process, restarted after a crash."""
    types = list(types or model_types())
    out: dict[str, dict] = {}
    worker = _start_worker()
    try:
        for model_type in types:
            worker.stdin.write(model_type + "\n")
            worker.stdin.flush()
            deadline = time.monotonic() + time_limit_s
            line = ""
            while time.monotonic() < deadline:
                ready, _, _ = select.select([worker.stdout], [], [], max(0.0, deadline - time.monotonic()))
                if ready:
                    line = worker.stdout.readline()
                    break
            if line:
                result = json.loads(line)
                result.pop("model_type")
            else:
                crashed = worker.poll() is not None
                worker.kill()
                worker.wait()
                result = {"status": "cannot build",
                          "reason": "the process crashed" if crashed else f"timed out after {time_limit_s:.0f} s"}
                worker = _start_worker()
            out[model_type] = result
            if progress:
                progress(model_type, result)
    finally:
        worker.kill()
        worker.wait()
    return out


def load_expected() -> dict[str, dict]:
    return json.loads(EXPECTED.read_text())


def differences(got: dict[str, dict], expected: dict[str, dict]) -> list[str]:
    """One line per family whose outcome differs from ``expected`` (new families and removed ones included)."""
    lines = []
    for model_type in sorted(set(got) | set(expected)):
        if model_type not in expected:
            lines.append(f"{model_type}: new family, {got[model_type]['status']} {got[model_type]['reason']}".rstrip())
        elif model_type not in got:
            lines.append(f"{model_type}: no longer registered (expected {expected[model_type]['status']})")
        elif got[model_type] != expected[model_type]:
            e, g = expected[model_type], got[model_type]
            lines.append(f"{model_type}: expected {e['status']} {e['reason']!r}, got {g['status']} {g['reason']!r}")
    return lines


def render_doc(outcomes: dict[str, dict]) -> str:
    """``docs/backbones.md`` from the outcomes (the table the sweep produces)."""
    import transformers

    counts = {s: sum(o["status"] == s for o in outcomes.values()) for s in ("exact", "refused", "cannot build", "fails")}
    rows = "\n".join(
        f"| `{t}` | {o['status']} | {o['reason'].replace('|', '/')} |" for t, o in sorted(outcomes.items())
    )
    return (DOC_HEAD.format(version=transformers.__version__, total=len(outcomes), **{k.replace(" ", "_"): v for k, v in counts.items()})
            + rows + "\n")


DOC_HEAD = """# Backbones: which decoder families fsllm wraps

fsllm wraps a decoder through transformers' attention registries, not by family, so any decoder whose
attention layers go through transformers' attention interface gets FS (released) attention. This table
is what the sweep of every causal-LM model type registered in transformers {version} gives
({total} model types): **{exact} exact**, **{refused} refused** with a one-line reason, **{cannot_build}
not buildable** as a plain tiny model (not a decoder, or transformers itself fails on a generic tiny
config), **{fails} failing**.

* **exact**: a tiny random model of the family (2 layers or one layer of each layer type, hidden size 64,
  small MoE) wrapped with the default `FSConfig` (bidirectional, LoRA): a change of the last token moves
  the first position (attention is released), a sentence alone equals it padded in a batch (atol and rtol
  1e-5), causal mode equals the plain backbone (atol 1e-5, rtol 1e-4), and a
  training step gives finite LoRA gradients.
* **refused**: `FSForSequenceClassification.from_backbone` / `FSForTokenClassification.from_backbone`
  (or, for attention that never consults the FS state, the first forward) raise `FSLLMError` with the
  line shown; it says what to use instead.
* **cannot build**: the plain backbone (`AutoModel.from_config`) of a generic tiny config does not run,
  or the type is not a decoder-only model. This says nothing about a real checkpoint of the family.

Regenerate (and see what changed) with

    PYTHONPATH=src python tests/backbone_sweep.py --update

`tests/test_backbone_sweep.py` runs the whole sweep as a slow test (`pytest -m slow`) and fails, naming the
family, when an outcome changes or a transformers release adds a family; one representative of each
class below runs in the default suite.

## What fsllm does for the harder families

* **Mixture-of-experts with experts stored as parameters** (GLM-4.5/4.6 `glm4_moe`, DeepSeek-V2/V3,
  Hunyuan MoE, ...): the default LoRA targets are the Linear (and GPT-2 `Conv1D`) projections of
  attention and dense MLPs; expert weights and routers are left alone. Name the expert weights in
  `lora_target_modules` to adapt them too (`--lora-targets q_proj,v_proj,gate_up_proj,down_proj`): PEFT
  wraps expert parameters in `ParamWrapper`, which requires `lora_dropout=0`; fsllm says so in one line
  instead of PEFT's error.
* **GPT-2-style `Conv1D` projections** (`gpt2`, `gpt-sw3`): targeted like Linear layers (PEFT adapts them).
* **Decoder layers that drop keyword arguments** (`stablelm`, `nemotron`): the FS attention state reaches
  attention through a context variable set for the duration of one forward (and of its gradient
  checkpointing recomputation), not through the family's keyword arguments.
* **Multimodal checkpoints whose text model is a decoder** (`gemma3`, i.e. every Gemma 3 from 4B up;
  `llama4`): `load_backbone` and `from_backbone` take the language model out of the wrapper
  (`fsllm.backbones.text_model_of`); the checkpoint's tokenizer loads as usual.
* **Chunked attention** (Llama 4's `chunked_attention` layers): each layer's chunks are reproduced from the
  config; FS modes release attention inside a chunk, chunks never see each other (as in the backbone).
* **A per-head score mask** the modeling file builds on the padding mask (Doge's dynamic mask): FS adds the
  layer's pattern to it (`sdpa` and `eager`).
* **Full-attention layers whose modules keep the window size** (EXAONE 4): the layer type decides.
* **Hybrid models** (linear attention, state-space, convolution, recurrent or compressed layers:
  `olmo_hybrid`, `nemotron_h`, `lfm3`, `qwen3_next`, `zaya`, `lara_mini`, `inkling_text`, ...): refused, and
  this is a decision, not a gap. Their non-softmax layers are causal by construction (a recurrence or a
  causal convolution has no mask to release), so releasing only the softmax layers would give a model in
  which a token sees the future through some layers only: not the FS model of the paper, and its
  released-vs-causal gain would be measured on another architecture. The refusal says to use a
  pure-attention decoder; the exact families are the rows below.
* **Attention that does not call transformers' attention interface** (ALiBi models such as `bloom`, `mpt`;
  older GPT-style code such as `openai-gpt`, `gpt_neo`, `xglm`): the layers never receive the FS state and
  fsllm refuses after the first forward, naming the layers.
* **Bidirectional encoders** registered as causal LMs (`bert`, `roberta`, ...): refused; they are not
  decoder-only LLMs (fine-tune them with `AutoModelForSequenceClassification`).

## The table

| model type | status | reason |
|---|---|---|
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("types", nargs="*", help="model types to check (default: all)")
    parser.add_argument("--update", action="store_true", help="rewrite the expectation file and docs/backbones.md")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--time-limit", type=float, default=TIME_LIMIT_S)
    args = parser.parse_args(argv)
    if args.worker:
        _worker()
        return 0

    def progress(t, r):
        print(f"{t}: {r['status']} {r['reason']}".rstrip(), flush=True)

    got = sweep(args.types or None, args.time_limit, progress)
    expected = load_expected() if EXPECTED.is_file() else {}
    if args.types:
        expected = {t: o for t, o in expected.items() if t in got}
    changes = differences(got, expected)
    print("\n".join(["changes against the expectation file:", *changes]) if changes else "no change")
    if args.update:
        merged = {**load_expected(), **got} if args.types and EXPECTED.is_file() else got
        EXPECTED.write_text(json.dumps(merged, indent=1, sort_keys=True) + "\n")
        DOC.write_text(render_doc(merged))
    return 1 if changes and not args.update else 0


if __name__ == "__main__":
    sys.exit(main())
