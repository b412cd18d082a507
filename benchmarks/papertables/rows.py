"""What the paper tables are: the data set of each table, its rows and the paper's numbers for them.

The registry is data, with no code that runs anything, so the planner, the runner and the report
all read one definition of a row (its kind, its FS and training overrides, how many seeds it runs),
and adding a row to a table is one line here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

TABLE_DATA = {
    "ner": "conll2003",
    "rt-polarity": "rt-polarity",
    "rt-5": "rt-5",
    "bbc-news": "bbc-news",
    "tweets-3": "tweets-3",
    "ablation": "rt-polarity",
    "rt-score": "rt-score",
}
TABLES = list(TABLE_DATA)
DEFAULT_SIZES = {t: [1000, 4000] for t in TABLES} | {"ablation": [1000], "rt-score": [1000]}
#: the headline test metric of a table's report
TABLE_METRIC = {"ner": "f1", "rt-score": "spearman"}


@dataclass(frozen=True)
class Row:
    """One row of a table: a method and its settings (hashable, so a :class:`~.planner.Cell` can hold it)."""

    name: str
    kind: str  # "fs" | "hf-native" | "zero-shot" | "instruction-tuned" | "encoder"
    fs: tuple = ()  # FSConfig overrides as (key, value) pairs
    train: tuple = ()  # TrainConfig overrides (key, value) pairs, e.g. the precision
    encoder: str | None = None  # "minilm" | "mpnet"
    adapt: tuple = ()  # FS rows: AdaptConfig overrides as (key, value) pairs; non-empty: fsllm adapt runs first
    lora: tuple = ()  # hf-native rows: baselines.load_hf_native's LoRA options as (key, value) pairs
    # hf-native and encoder rows: NER sentences read with this many sub-tokens of document context a side (FS
    # rows set TrainConfig.document_context through ``train``)
    document_context: int = 0
    multi_seed: bool = False  # all --seeds; otherwise the first seed only
    primary: bool = False  # FS or causal: first in the run order
    note: str = ""

    @property
    def fs_overrides(self) -> dict:
        """The row's ``FSConfig`` overrides as keyword arguments (``label_words``, held as pairs to stay
        hashable, as the dict ``FSConfig`` takes)."""
        return {k: dict(v) if k == "label_words" else v for k, v in self.fs}

    @property
    def train_overrides(self) -> dict:
        """The row's ``TrainConfig`` overrides as keyword arguments."""
        return dict(self.train)


def _fs(name: str, multi: bool = False, primary: bool = False, note: str = "", train: dict | None = None,
        adapt: dict | None = None, **kw: Any) -> Row:
    """An FS row: ``kw`` are its ``FSConfig`` overrides, ``train`` its ``TrainConfig`` ones, ``adapt`` the
    ``AdaptConfig`` ones of an ``fsllm adapt`` stage run before training."""
    return Row(name, "fs", tuple(kw.items()), tuple((train or {}).items()), multi_seed=multi, primary=primary,
               note=note, adapt=tuple((adapt or {}).items()))


FS_BIDIR = _fs("fs-bidirectional", multi=True, primary=True, note="FSConfig default: bidirectional, mean pooling, SwiGLU head")
DECAYS = [_fs(f"fs-decay-{x}", attention="decay", decay_lambda=x, note=f"weighted mask exp(-{x} d)") for x in (0.1, 0.5, 1.0)]
LEARNABLE = _fs("fs-learnable-lambda", attention="decay", decay_lambda=0.5, learnable_lambda=True,
                note="decay, one learnable lambda per layer, init 0.5")
# fsllm's defaults with bf16 autocast: paired by seed with fs-bidirectional, it shows whether bf16
# keeps dev and test F1 within the seed noise of fp32 (the condition for making it the CPU default)
BF16 = _fs("fs-bf16", multi=True, train={"precision": "bf16"}, note="fs-bidirectional under bf16 autocast")
LAST_HALF = _fs("fs-last-half", fs_layers="last:15", note="bidirectional in the last 15 of 30 layers only")
ZERO = Row("zero-shot", "zero-shot", note="'w/o LS': prompted causal LM, no training")
IT = Row("instruction-tuned", "instruction-tuned", note="LoRA on the causal LM, generates the answer")
MINILM = Row("minilm", "encoder", encoder="minilm", multi_seed=True, note="all-MiniLM-L6-v2 (22.7M), full fine-tuning")
MPNET = Row("mpnet", "encoder", encoder="mpnet", multi_seed=True, note="all-mpnet-base-v2 (109M), full fine-tuning")
HF_NATIVE = Row("hf-native", "hf-native", multi_seed=True, primary=True,
                note="AutoModelFor*Classification, config.is_causal=False, PEFT LoRA (same r/alpha/targets), linear score head")

# Where hf-native leads FS, what closes the gap: these NER rows run every seed, to be paired with it
# (the decay row's seed 0 scored 76.7 against 70.8 for bidirectional; hf-native's head is linear)
DECAY_01_SEEDS = _fs("fs-decay-0.1", multi=True, attention="decay", decay_lambda=0.1, note="weighted mask exp(-0.1 d)")
LINEAR = _fs("fs-linear", multi=True, head="linear", note="fs-bidirectional with hf-native's kind of head: RMSNorm -> linear")

R16 = _fs("fs-r16-rslora", multi=True, lora_r=16, use_rslora=True, note="LoRA rank 16 with rsLoRA scaling")
# The accuracy levers (docs/levers.md), each alone, screened at NER 1,000 against fs-bidirectional at the
# same rate and paired by seed (fs-decay-0.1 above is one of them); constrained decoding and mean sub-token
# scores read the same trained models (benchmarks/ner_decoding.py), so they need no row
LEVERS = [
    _fs("fs-repeat2-causal", multi=True, attention="causal", repeat=2,
        note="sequence repetition: the text twice under the causal mask, labels from the second copy"),
    _fs("fs-repeat2", multi=True, repeat=2, note="sequence repetition with the bidirectional mask"),
    _fs("fs-lambda-schedule", multi=True, attention="decay", decay_lambda=0.0, train={"lambda_schedule": "linear"},
        note="decay lambda annealed linearly from 10 (near causal) to 0 (bidirectional) over training"),
    _fs("fs-lambda-schedule-0.3", multi=True, attention="decay", decay_lambda=0.0,
        train={"lambda_schedule": "linear", "lambda_schedule_fraction": 0.3},
        note="decay lambda annealed linearly from 10 to 0 over the first 30% of the steps, then bidirectional"),
    _fs("fs-dora", multi=True, use_dora=True, note="DoRA at fsllm's LoRA rank 8"),
    R16,
    _fs("fs-adapt", multi=True, adapt={"steps": 100},
        note="fsllm adapt first (LLM2Vec's MNTP, 100 steps on the cell's training texts), then fs-bidirectional"),
    # every weight trained: the recipe of the 210M decoder that ties MLM encoders on CoNLL-2003 (10% warm-up,
    # its own rate, chosen on dev by a grid: the LoRA rows' 1e-3 would wreck the backbone), the new head at 1e-3
    _fs("fs-full", multi=True, full_finetune=True, train={"head_learning_rate": 1e-3, "warmup_ratio": 0.1},
        note="full fine-tuning (no LoRA), 10% warm-up, the head at 1e-3, the backbone's rate chosen on dev"),
    # FLERT's document context (64 sub-tokens a side, within max_length): read, never labelled; and a quarter of
    # it, since the context's tokens are the cost (an average sentence read in about 54 sub-tokens, not 128)
    *[_fs(f"fs-doc{n}", multi=True, train={"document_context": n},
          note=f"each sentence read with up to {n} sub-tokens of its document on each side (--document-context {n})")
      for n in (64, 16)],
    # the control for the capacity lever: rsLoRA at rank 16 doubles the update's scale (alpha / sqrt(16) = 8 against
    # the default's alpha / 8 = 4), and with Adam a LoRA update grows with scale x rate, so at one rate fs-r16-rslora
    # also trains as if at twice the default's rate; this row has that scale at the default's rank
    _fs("fs-alpha64", multi=True, lora_alpha=64,
        note="the default's rank 8 with lora_alpha 64: fs-r16-rslora's update scale (8), not its rank"),
    # the next capacity lever: LoRA+ (B learns faster than A), at the authors' recommended ratio, 2^4
    _fs("fs-loraplus", multi=True, train={"loraplus_lr_ratio": 16.0},
        note="LoRA+: the default's LoRA B matrices at 16x the rate (--loraplus-lr-ratio 16)"),
]
# The screen's two largest single gains together, and the commodity path given the same capacity (rank 16,
# rsLoRA: every option that is not FS's own; repetition is FS's own, so hf-native does not get it). The
# sentence tables carry rank 16 and its hf-native match too, to confirm the NER screen's lever there, and the
# pair, FS's own lever where rank 16 alone ties the commodity path (rt-polarity).
COMBINED = _fs("fs-r16-rslora-repeat2-causal", multi=True, attention="causal", repeat=2, lora_r=16, use_rslora=True,
               note="fs-r16-rslora and fs-repeat2-causal together")
# FS's own lever with a gain on both its screened seeds (the scheduled release, +1.3 ± 0.6 over the default), with
# rank 16: at rank 16 and one input the released mask ties `is_causal = False`, and a mask that moves from causal to
# bidirectional during training is one the commodity path cannot express
R16_SCHEDULE = _fs("fs-r16-rslora-lambda-schedule-0.3", multi=True, lora_r=16, use_rslora=True, attention="decay",
                   decay_lambda=0.0, train={"lambda_schedule": "linear", "lambda_schedule_fraction": 0.3},
                   note="fs-r16-rslora and fs-lambda-schedule-0.3 together")
HF_NATIVE_R16 = Row("hf-native-r16-rslora", "hf-native", lora=(("lora_r", 16), ("use_rslora", True)), multi_seed=True,
                    note="hf-native with fs-r16-rslora's capacity: PEFT LoRA rank 16 with rsLoRA")
# Sentences: at rank 16 and one selection, hf-native (last token, linear head) led FS (mean pooling, SwiGLU) on
# rt-polarity. FS's other readings, screened on dev at the rate both rank-16 rows chose there (5e-4), paired by
# seed with fs-r16-rslora (last is hf-native's pooling; max led a one-seed rank-8 ablation on test)
R16_POOLINGS = [
    _fs(f"fs-r16-rslora-{p}", multi=True, lora_r=16, use_rslora=True, pooling=p,
        note=f"fs-r16-rslora with {p} pooling (screened at fs-r16-rslora's chosen rate, no grid of its own)")
    for p in ("max", "last")
]
# Document context is not FS's own: should fs-doc64 pass the screen, its confirmation gives every row the same
# 64 sub-tokens a side (MPNet's word pieces by the same rule, within the same max_length)
DOC64 = [
    _fs("fs-r16-rslora-doc64", multi=True, lora_r=16, use_rslora=True, train={"document_context": 64},
        note="fs-r16-rslora with document context (--document-context 64)"),
    Row("hf-native-r16-rslora-doc64", "hf-native", lora=(("lora_r", 16), ("use_rslora", True)), document_context=64,
        multi_seed=True, note="hf-native-r16-rslora with the same document context"),
    Row("mpnet-doc64", "encoder", encoder="mpnet", document_context=64, multi_seed=True,
        note="MPNet with the same document context, within the FS rows' max_length"),
]

# The instruction-tuned row (the LM writes the label word) led every FS row on rt-polarity at 1,000: the label words
# carry a prior FS's new head must learn. FS given that prior: a prompt appended inside the forward and a head whose
# rows start as the label words' output embeddings (the untrained model is the LM's zero-shot reading), under FS's
# released mask, and under the scheduled release (causal-like first, where the prior holds, bidirectional at the end)
VERBALIZER = {"pooling": "last", "head": "verbalizer", "prompt": "\nSentiment:"}


def verbalizer_rows(**words: str) -> list[Row]:
    """The verbalizer rows of a table; ``words``: label -> word where a label's name is not its word."""
    v = {**VERBALIZER, **({"label_words": tuple(words.items())} if words else {})}
    return [
        _fs("fs-verbalizer", multi=True, **v,
            note="fs-bidirectional reading '\\nSentiment:' after the text, last token, a verbalizer head (label words' rows)"),
        _fs("fs-verbalizer-lambda-schedule-0.3", multi=True, **v, attention="decay", decay_lambda=0.0,
            train={"lambda_schedule": "linear", "lambda_schedule_fraction": 0.3},
            note="fs-verbalizer with the mask released over the first 30% of the steps (decay lambda 10 -> 0)"),
        # its 'w/o FS' ablation: the prior read under the mask it was pre-trained with (on rt-polarity 75.2 % zero-shot
        # on dev against 61.8 % under the released mask)
        _fs("fs-verbalizer-causal", multi=True, **v, attention="causal",
            note="fs-verbalizer under the backbone's causal mask"),
    ]


# rt-5's names "very negative" and "very positive" begin with the same token: words chosen on dev, the zero-shot
# reading of the 500 dev sentences under the causal mask (benchmarks/results/verbalizer_prior_rt-5.json: these
# 36.0 %, LM-BFF's SST-5 words terrible/bad/okay/good/great 29.2 %, the majority class 24.6 %)
VERBALIZER_ROWS = {"rt-polarity": verbalizer_rows(), "tweets-3": verbalizer_rows(),
                   "rt-5": verbalizer_rows(**{"very negative": "terrible", "very positive": "great"})}

TABLE_ROWS: dict[str, list[Row]] = {
    "ner": [
        FS_BIDIR,
        _fs("causal", multi=True, primary=True, attention="causal", note="'w/o FS': the backbone's causal mask"),
        HF_NATIVE, DECAY_01_SEEDS, *DECAYS[1:], LEARNABLE, LAST_HALF, BF16, LINEAR, *LEVERS, COMBINED, R16_SCHEDULE, HF_NATIVE_R16,
        *DOC64, ZERO, IT, MINILM, MPNET,
    ],
    **{
        t: [
            FS_BIDIR,
            _fs("causal-last", multi=True, primary=True, attention="causal", pooling="last",
                note="'w/o FS' as in the paper: causal mask, last-token pooling"),
            _fs("causal-mean", multi=True, primary=True, attention="causal", pooling="mean",
                note="causal mask, mean pooling"),
            HF_NATIVE, DECAYS[1], R16, HF_NATIVE_R16, *R16_POOLINGS, COMBINED, ZERO, IT, MINILM,
            *VERBALIZER_ROWS.get(t, []),  # sentiment: label words
        ]
        for t in ("rt-polarity", "rt-5", "bbc-news", "tweets-3")
    },
    "rt-score": [FS_BIDIR, MINILM],  # regression: the hf-native runner classifies only
    "ablation": [
        _fs("fs-swiglu-mean", multi=True, primary=True, note="= fs-bidirectional of the rt-polarity table"),
        _fs("fs-linear-mean", multi=True, primary=True, head="linear", note="RMSNorm -> linear head"),
        _fs("fs-swiglu-last", multi=True, primary=True, pooling="last", note="last-token pooling"),
        _fs("fs-swiglu-max", multi=True, primary=True, pooling="max", note="max pooling"),
    ],
}
#: a cell of (table, row) with the same settings as a cell of another (table, row): reuse its JSON
ALIASES = {("ablation", "fs-swiglu-mean"): ("rt-polarity", "fs-bidirectional")}

# The paper's numbers (LLaMA-2-7B backbone unless noted; Chen et al. 2026, results tables), for context only: other
# backbone, other (analogous) data sets, other training sizes.
PAPER_DATA = {"ner": "CoNLL-2003", "rt-polarity": "SST-2", "rt-5": "SST-5", "bbc-news": "AGNews", "tweets-3": "Twitter-Fin",
              "ablation": "SST-2"}
_SEQ_PAPER = {
    # row: (paper row, SST-2, AGNews, Twitter-Fin, SST-5)
    "zero-shot": ("LLaMA-2-7B zero-shot", 76.24, 37.06, 23.29, 38.82),
    "instruction-tuned": ("LLaMA-2-7B instruction-tuned", 91.85, 52.19, 69.15, 42.61),
    "minilm": ("BERT-Large", 92.86, 94.45, 88.74, 55.79),
    "causal-last": ("FS w/o FS (causal)", 96.71, 95.51, 91.63, 62.61),
    "fs-bidirectional": ("FS-LLaMA-2-7B", 97.54, 95.73, 91.42, 60.82),
    "fs-swiglu-mean": ("FS-LLaMA-2-7B", 97.54, 95.73, 91.42, 60.82),
}
_SEQ_COL = {"SST-2": 1, "AGNews": 2, "Twitter-Fin": 3, "SST-5": 4}
_NER_PAPER = {
    "fs-bidirectional": ("FS-LLaMA-2-7B", 93.51),
    "causal": ("FS w/o FS (causal)", 74.42),
    "zero-shot": ("FS w/o LS 16.36; LLaMA-2-7B zero-shot", 1.35),
    "minilm": ("RoBERTa-Base", 92.13),
    "mpnet": ("RoBERTa-Base", 92.13),
}


def paper_number(table: str, row: str) -> str:
    """The paper's number for the analogous row and data set, with where it comes from ("—": none)."""
    if table not in PAPER_DATA:  # a table of ours the paper has no counterpart of (rt-score regression)
        return "—"
    ds = PAPER_DATA[table]
    if table == "ner":
        hit = _NER_PAPER.get(row)
        if row == "zero-shot":
            return f"16.36 (FS w/o LS); 1.35 (LLaMA-2-7B zero-shot), {ds}"
        return f"{hit[1]:.2f} ({hit[0]}, {ds})" if hit else "—"
    hit = _SEQ_PAPER.get(row)
    return f"{hit[_SEQ_COL[ds]]:.2f} ({hit[0]}, {ds})" if hit else "—"
