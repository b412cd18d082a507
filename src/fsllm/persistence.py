"""An FS model's folder: saving (the small kind and the merged one), loading, merging LoRA, the Hub.

Kept apart from ``fsllm.modeling`` so that the model reads top to bottom as the method (config ->
backbone with released attention -> pooling -> head -> loss); ``FSModel`` takes these methods from
:class:`FolderMixin`. A folder comes in two kinds:

* the small one (``save_pretrained(dir)``, the default): ``config.json``, the LoRA adapter
  as a PEFT folder under ``adapter/`` and the head in ``fsllm_head.safetensors``; the backbone
  is referenced (``config.backbone``), not copied. The adapter sits in a subfolder so that
  transformers' own adapter detection (a top-level ``adapter_config.json``) does not load the
  plain backbone with a random head in place of the FS model;
* the merged one (``save_pretrained(dir, merged=True)``): LoRA merged into the backbone and
  every weight in ``model.safetensors``, loaded by the stock ``PreTrainedModel`` code path.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from peft import PeftModel, set_peft_model_state_dict
from peft.utils import load_peft_weights
from safetensors.torch import load_file, save_file
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from . import attention as fs_attention
from .backbones import BUILTIN_MODELS, dequantized_merge, is_quantized, load_backbone
from .config import FSLLM_FORMAT, FSLLMConfig, torch_dtype
from .errors import ConfigError, ModelFolderError
from .filenames import ADAPTER_DIR, CONFIG_NAME, HEAD_NAME, LEGACY_CONFIG_NAME, MODEL_CARD_NAME

if TYPE_CHECKING:
    from .modeling import FSModel

#: the model class of each task (``FSLLMConfig.task``), filled in by ``fsllm.modeling``
MODEL_CLASSES: dict[str, type] = {}


def portable_backbone_ref(ref: str) -> str:
    """A backbone reference that resolves from any working directory.

    Built-in names and hub ids are kept; a local folder becomes its absolute path (a relative
    path stored as given fails to load from another directory).
    """
    if ref in BUILTIN_MODELS:
        return ref
    if os.path.isdir(ref):
        return str(Path(ref).resolve())
    return ref


class FolderMixin:
    """Saving, loading and merging of ``FSModel`` (see the module docstring)."""

    def _is_sharded(self) -> bool:
        """Are some parameters FSDP2 shards (``DTensor``)? Then saving is a collective."""
        from torch.distributed.tensor import DTensor

        return any(isinstance(p, DTensor) for p in self.parameters())

    def _small_folder_state(self, state_dict: dict[str, torch.Tensor] | None) -> tuple[dict, dict]:
        """The head (and lambda) tensors and the backbone's LoRA tensors of the small folder, full.

        From ``state_dict`` when given (the ``Trainer`` under FSDP passes the full one it gathered),
        else from the model. FSDP2 shards (``DTensor``) are gathered with ``full_tensor``, a
        collective: every process must call this, and does so in the same (sorted) key order.
        """
        from torch.distributed.tensor import DTensor

        full = state_dict if state_dict is not None else self.state_dict()
        backbone_trainable = {f"backbone.{n}" for n, p in self.backbone.named_parameters() if p.requires_grad}

        def gathered(keys: list[str]) -> dict[str, torch.Tensor]:
            out = {}
            for k in sorted(keys):
                v = full[k]
                out[k] = (v.full_tensor() if isinstance(v, DTensor) else v).detach().contiguous()
            return out

        head = gathered([k for k in full if k.startswith("head.") or k == "fs_lambda_raw"])
        adapter = gathered([k for k in full if k.startswith("backbone.") and ("lora_" in k or k in backbone_trainable)])
        return head, {k[len("backbone."):]: v for k, v in adapter.items()}

    def merged_copy(self) -> FSModel:
        """A copy with LoRA merged into the backbone weights (``config.merged`` set); ``self`` is untouched.

        A 4-bit backbone is dequantised on the way (``backbones.dequantized_merge``): the merged
        folder is a plain fp32 model of the weights the quantised one computed with.
        """
        model = copy.deepcopy(self)
        if is_quantized(model.backbone):
            base = dequantized_merge(model.backbone)
            model.backbone = base.get_base_model() if isinstance(base, PeftModel) else base
            model.backbone.hf_quantizer = None
            model.backbone.is_quantized = False
            for cfg in (model.backbone.config, model.config.decoder_config):
                if hasattr(cfg, "quantization_config"):
                    del cfg.quantization_config
            model.config.backbone_quantization = None
        elif isinstance(model.backbone, PeftModel):
            model.backbone = model.backbone.merge_and_unload()
        model.config.merged = True
        return model

    def save_pretrained(
        self,
        save_directory: str | os.PathLike,
        *args: Any,
        tokenizer: PreTrainedTokenizerBase | None = None,
        merged: bool = False,
        is_main_process: bool = True,
        model_card: str | None = None,
        **kwargs: Any,
    ) -> None:
        """Write a model folder: the small kind (default) or, with ``merged=True``, the standalone one.

        The small kind is ``config.json``, the PEFT adapter under ``adapter/`` and the head in
        ``fsllm_head.safetensors``, with the backbone referenced by ``config.backbone``. The merged
        kind merges LoRA into a copy of the backbone and saves every weight through the stock
        ``PreTrainedModel.save_pretrained``. Both get the tokenizer (when given) and a model card
        (``README.md``: ``model_card`` or a generated one), so the folder is ready for the Hub.
        Other arguments of the stock signature (``safe_serialization``, ...) are accepted and, for
        the small kind, ignored: it saves only what training changes, taken from ``state_dict``
        when one is given. A model sharded with FSDP2 gathers its trainable tensors first: then
        every process must call this (``is_main_process`` says which one writes).
        """
        if not (merged or self.config.merged):  # gathers the shards of an FSDP2 model: every process joins
            head_state, adapter_state = self._small_folder_state(kwargs.pop("state_dict", None))
        elif self._is_sharded():
            raise ConfigError("a merged folder of an FSDP-sharded model is not supported: save the small folder "
                             "(merged=False), then load it and save it merged on one process")
        if not is_main_process:
            return
        out = Path(save_directory)
        out.mkdir(parents=True, exist_ok=True)
        if tokenizer is not None and self.task == "token" and self.config.whitespace_token_ids is None:
            # a folder written before the field existed gains it when saved again with its tokenizer
            from .tokenization import whitespace_token_ids

            self.config.whitespace_token_ids = whitespace_token_ids(tokenizer)
        if tokenizer is not None and self.task == "token" and self.config.word_starts is None:
            from .decoding import word_start_table  # what pipeline() takes for words, for pipeline_logits

            self.config.word_starts = word_start_table(tokenizer)
        if merged or self.config.merged:
            copy_ = self.merged_copy() if not self.config.merged else self
            kwargs.pop("state_dict", None)
            PreTrainedModel.save_pretrained(copy_, out, *args, **kwargs)
        else:
            save_file(head_state, str(out / HEAD_NAME))
            if isinstance(self.backbone, PeftModel):
                self.backbone.save_pretrained(str(out / ADAPTER_DIR), state_dict=adapter_state)
            self.config.architectures = [type(self).__name__]
            self.config.save_pretrained(out)
        if tokenizer is not None:
            tokenizer.save_pretrained(out)
        from .model_card import model_card_text

        card = out / MODEL_CARD_NAME
        if model_card is not None or not card.is_file():
            card.write_text(model_card if model_card is not None else model_card_text(self.config))

    def push_to_hub(
        self,
        repo_id: str,
        *,
        tokenizer: PreTrainedTokenizerBase | None = None,
        merged: bool = False,
        model_card: str | None = None,
        commit_message: str | None = None,
        commit_description: str | None = None,
        private: bool | None = None,
        token: bool | str | None = None,
        revision: str | None = None,
        create_pr: bool = False,
        **_: Any,
    ) -> Any:
        """Upload the folder ``save_pretrained`` writes (tokenizer, model card and all) to the Hub.

        The stock ``push_to_hub`` would replace fsllm's model card with an empty template and
        could not pass the tokenizer or ``merged``. The upload is ``huggingface_hub``'s public
        ``HfApi.create_repo`` + ``HfApi.upload_folder`` (one commit of the whole folder), through
        transformers' shared ``HfApi`` so the Hub sees the same library tag as for any model.
        """
        import tempfile

        from transformers.utils.hub import hf_api

        api = hf_api()
        repo_id = api.create_repo(repo_id, private=private, token=token, exist_ok=True).repo_id
        with tempfile.TemporaryDirectory() as tmp:
            self.save_pretrained(tmp, tokenizer=tokenizer, merged=merged, model_card=model_card)
            return api.upload_folder(
                repo_id=repo_id,
                folder_path=tmp,
                commit_message=commit_message or "Upload fsllm model",
                commit_description=commit_description,
                token=token,
                revision=revision,
                create_pr=create_pr,
            )

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike,
        *model_args: Any,
        config: FSLLMConfig | None = None,
        backbone: str | PreTrainedModel | None = None,
        **kwargs: Any,
    ) -> FSModel:
        """Load a folder written by ``save_pretrained`` (either kind), locally or from the Hub.

        ``backbone`` overrides the saved reference of a small folder (e.g. when the backbone
        moved). A small folder trained on a 4-bit backbone loads it in 4 bits again (``quantize=None``
        loads it in full precision instead). Other keyword arguments are those of
        ``PreTrainedModel.from_pretrained`` (``attn_implementation``, ``dtype``, ``revision``, ``cache_dir``, ...).
        """
        folder = _local_folder(pretrained_model_name_or_path, kwargs)
        if not isinstance(config, FSLLMConfig):
            config = load_config(folder)
        model_cls = MODEL_CLASSES.get(config.task)
        if model_cls is None:
            raise ModelFolderError(f"{folder}: unknown task {config.task!r}")
        if cls.task and model_cls is not cls:  # FSModel itself (task "") loads either
            raise ModelFolderError(f"{folder}: holds a {model_cls.__name__}, not a {cls.__name__}")
        kwargs.setdefault("attn_implementation", config.backbone_attn_implementation)
        for hub_only in ("revision", "cache_dir", "token", "local_files_only", "force_download", "subfolder"):
            kwargs.pop(hub_only, None)
        quantize = kwargs.pop("quantize", config.backbone_quantization)
        if config.merged:
            if config.backbone_dtype and kwargs.get("dtype") in (None, "auto") and kwargs.get("torch_dtype") in (None, "auto"):
                # the backbone's weights in the dtype they trained in (the head stays fp32: _keep_in_fp32_modules_strict)
                kwargs.pop("torch_dtype", None)
                kwargs["dtype"] = torch_dtype(config.backbone_dtype)
            return super(FolderMixin, model_cls).from_pretrained(folder, *model_args, config=config, **kwargs)
        # small folder: the backbone from its reference, then the adapter and head
        impl = kwargs.pop("attn_implementation")
        dtype = kwargs.pop("dtype", None) or kwargs.pop("torch_dtype", None)
        if dtype in (None, "auto"):  # the dtype the backbone trained in (a folder from before the field: fp32)
            dtype = torch_dtype(config.backbone_dtype)
        elif isinstance(dtype, str):
            dtype = getattr(torch, dtype)
        if backbone is None or isinstance(backbone, str):
            ref = backbone or config.backbone
            if not ref:
                raise ModelFolderError(f"{folder}: the config names no backbone; pass backbone=...")
            bb = load_backbone(ref, attn_implementation=fs_attention.base_implementation_name(impl), dtype=dtype,
                               quantize=quantize)
        else:
            bb = backbone
        model = model_cls(copy.deepcopy(config), backbone=bb)
        model.load_trained_weights(folder)
        return model.eval()

    def load_trained_weights(self, folder: str | os.PathLike) -> None:
        """Load what training changes (LoRA adapter, head, learnable lambdas) from a small folder.

        Used by ``from_pretrained`` and by the trainer to resume a run or restore its best checkpoint.
        An adapter with keys the model lacks, or lacking keys the model has, is a broken folder.
        """
        folder = Path(folder)
        if self.config.merged:  # a fully fine-tuned model's checkpoints hold every weight
            self._load_merged_weights(folder)
            return
        if isinstance(self.backbone, PeftModel):
            try:
                weights = load_peft_weights(str(folder / ADAPTER_DIR), device="cpu")
            except Exception as e:  # noqa: BLE001 - any failure here means a broken folder
                raise ModelFolderError(f"{folder}: cannot read the LoRA adapter: {e}".splitlines()[0]) from e
            result = set_peft_model_state_dict(self.backbone, weights)
            if getattr(result, "unexpected_keys", None):
                raise ModelFolderError(f"{folder}: adapter has unexpected keys {result.unexpected_keys[:3]}")
            missing = [k for k in getattr(result, "missing_keys", []) if "lora_" in k]
            if missing:
                raise ModelFolderError(f"{folder}: adapter lacks {len(missing)} LoRA weights, e.g. {missing[:2]}")
        path = folder / HEAD_NAME
        try:
            state = load_file(str(path))
        except Exception as e:  # noqa: BLE001
            raise ModelFolderError(f"{path}: cannot read the head weights: {e}".splitlines()[0]) from e
        # learnable lambdas are trained weights: a folder and a model that disagree on them are not one model
        has_lambdas = hasattr(self, "fs_lambda_raw")
        if has_lambdas and "fs_lambda_raw" not in state:
            raise ModelFolderError(f"{path}: lacks the learned decay lambdas (fs_lambda_raw) that a model with "
                                   "learnable_lambda=True trains; the folder is incomplete or from another model")
        if "fs_lambda_raw" in state and not has_lambdas:
            raise ModelFolderError(f"{path}: holds learned decay lambdas (fs_lambda_raw) but the model has none "
                                   "(its config is not attention='decay' with learnable_lambda=True)")
        if has_lambdas:
            with torch.no_grad():
                self.fs_lambda_raw.copy_(state.pop("fs_lambda_raw"))
        head = {k[len("head.") :]: v for k, v in state.items()}
        try:
            self.head.load_state_dict(head)
        except RuntimeError as e:
            raise ModelFolderError(f"{path}: head does not match the config: {e}".splitlines()[0]) from e

    def _load_merged_weights(self, folder: Path) -> None:
        """Every weight from a merged folder (``model.safetensors`` or its shards) into this model."""
        index = folder / "model.safetensors.index.json"
        path = index if index.is_file() else folder / "model.safetensors"
        state: dict[str, torch.Tensor] = {}
        try:
            files = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.is_file() else [path.name]
            for name in files:
                state.update(load_file(str(folder / name)))
        except Exception as e:  # noqa: BLE001 - any failure here means a broken folder
            raise ModelFolderError(f"{path}: cannot read the model weights: {e}".splitlines()[0]) from e
        result = self.load_state_dict(state, strict=False)
        if result.missing_keys or result.unexpected_keys:
            raise ModelFolderError(f"{path}: weights do not match the model (missing {result.missing_keys[:2]}, "
                                   f"unexpected {result.unexpected_keys[:2]})")


def _local_folder(name_or_path: str | os.PathLike, kwargs: dict[str, Any]) -> Path:
    """A local folder for a model path or a Hub id (downloaded into the HF cache, or found there offline)."""
    path = Path(name_or_path)
    if path.is_dir():
        return path
    if path.exists() or str(name_or_path).count("/") > 1 or str(name_or_path).startswith((".", "/", "~")):
        raise ModelFolderError(f"{name_or_path}: no such model folder")
    from huggingface_hub import snapshot_download

    try:
        return Path(
            snapshot_download(
                str(name_or_path),
                revision=kwargs.get("revision"),
                cache_dir=kwargs.get("cache_dir"),
                token=kwargs.get("token"),
                local_files_only=bool(kwargs.get("local_files_only", False)),
            )
        )
    except Exception as e:  # noqa: BLE001 - offline, unknown repo, no permission: one line either way
        raise ModelFolderError(f"{name_or_path}: no such model folder, and not on the Hub: {e}".splitlines()[0]) from e


def load_config(folder: str | os.PathLike) -> FSLLMConfig:
    """Read and check a model folder's ``config.json``; a clear ``ModelFolderError`` if it is not an fsllm model."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ModelFolderError(f"{folder}: no such model folder")
    path = folder / CONFIG_NAME
    if not path.is_file():
        if (folder / LEGACY_CONFIG_NAME).is_file():
            raise ModelFolderError(
                f"{folder}: saved by fsllm 0.1 ({LEGACY_CONFIG_NAME}); this version reads config.json folders: "
                "retrain, or load it with fsllm 0.1 and save it again"
            )
        raise ModelFolderError(f"{folder}: not an fsllm model folder (no {CONFIG_NAME})")
    try:
        raw = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelFolderError(f"{path}: corrupt ({e})") from e
    if raw.get("model_type") != FSLLMConfig.model_type:
        raise ModelFolderError(f"{folder}: not an fsllm model folder (config.json is a {raw.get('model_type')!r} model)")
    if raw.get("fsllm_format", 0) > FSLLM_FORMAT:
        raise ModelFolderError(f"{path}: written by a newer fsllm (format {raw['fsllm_format']}); upgrade fsllm")
    try:
        return FSLLMConfig.from_pretrained(str(folder))
    except (ValueError, TypeError, KeyError) as e:
        raise ModelFolderError(f"{path}: {e}".splitlines()[0]) from e


def learned_lambdas(folder: str | os.PathLike) -> list[float] | None:
    """The learned per-layer decay rates saved in a model folder (small or merged), read without
    loading the backbone; ``None`` unless the model was trained with ``learnable_lambda``.

    A reader of results (e.g. a table of what each run learned) needs these numbers only; loading
    the model for ``fs_lambdas`` would load the whole backbone for them.
    """
    folder = Path(folder)
    for name in (HEAD_NAME, "model.safetensors"):
        if (folder / name).is_file():
            raw = load_file(str(folder / name)).get("fs_lambda_raw")
            return None if raw is None else [float(x) for x in F.softplus(raw.float())]
    return None
