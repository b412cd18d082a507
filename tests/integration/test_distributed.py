"""Beyond one process: the accelerate FSDP config, FSDP2 sharding of an FS model over gloo on CPU.

What these tests establish (details in docs/scaling.md):

* ``docs/accelerate_fsdp2.yaml`` is a valid accelerate config that ``accelerate launch`` turns into
  the FSDP2 environment (parsed here with accelerate's own launcher code; no process is started).
* On a CPU, ``accelerate launch`` with that config trains an FS model, but *as DDP over gloo*:
  accelerate switches to FSDP only for accelerator device types (``MULTI_GPU``, ``MULTI_XPU`` ...),
  never for ``MULTI_CPU``, so the model is not sharded. The slow test pins that down.
* FSDP2 itself (``torch.distributed.fsdp.fully_shard``) does shard an FS model over gloo on CPU and
  gives the unsharded model's loss and gradients; ``FSModel.save_pretrained`` of a sharded model,
  called on every process, gathers the shards and process 0 writes the whole head and adapter.
* DDP is the one-process run: two processes with half the batch each (with or without gradient
  accumulation, with or without a length-balanced loss) log the same loss and make the same update
  as one process with the whole batch.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import write_conll_dir

REPO = Path(__file__).resolve().parents[2]
FSDP_YAML = REPO / "docs" / "accelerate_fsdp2.yaml"
TESTS = Path(__file__).resolve().parents[1]  # tests/, where conftest is


def _env() -> dict[str, str]:
    src = str(REPO / "src")
    path = os.environ.get("PYTHONPATH")
    return dict(
        os.environ,
        TOKENIZERS_PARALLELISM="false",
        OMP_NUM_THREADS="1",
        PYTHONPATH=src + (os.pathsep + path if path else ""),
    )


def test_accelerate_fsdp_config_parses_into_the_fsdp2_environment():
    """accelerate reads the documented config as FSDP2 with one shard unit per decoder layer."""
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils import DistributedType, prepare_multi_gpu_env

    cfg = load_config_from_file(str(FSDP_YAML))
    assert cfg.distributed_type == DistributedType.FSDP
    assert cfg.fsdp_config["fsdp_version"] == 2
    assert cfg.fsdp_config["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"

    parser = launch_command_parser()
    args = parser.parse_args(["--config_file", str(FSDP_YAML), "--num_processes", "2", "-m", "fsllm.cli", "train"])
    args, _, _ = _validate_launch_command(args)
    assert args.use_fsdp and not args.cpu and args.num_processes == 2
    env = prepare_multi_gpu_env(args)
    assert env["ACCELERATE_USE_FSDP"] == "true"
    assert env["FSDP_VERSION"] == "2"
    assert env["FSDP_TRANSFORMER_CLS_TO_WRAP"] == "LlamaDecoderLayer"
    assert env["FSDP_STATE_DICT_TYPE"] == "FULL_STATE_DICT"
    assert env["ACCELERATE_MIXED_PRECISION"] == "no"  # precision comes from fsllm's --precision


_PROBE = '''
import json, os, sys
from transformers import TrainerCallback
from fsllm.training import train

seen = {"rank": int(os.environ["RANK"])}


class Probe(TrainerCallback):
    """What the Trainer's accelerator made of the launch: distributed type and sharding."""

    def on_train_begin(self, args, state, control, model=None, **kw):
        from accelerate.state import AcceleratorState
        from torch.distributed.tensor import DTensor

        layer = next(m for n, m in model.named_modules() if n.endswith("layers.0"))
        seen.update(
            distributed_type=str(AcceleratorState().distributed_type),
            fsdp_env=os.environ.get("ACCELERATE_USE_FSDP"),
            sharded_params=sum(isinstance(p, DTensor) for p in model.parameters()),
            layer_class=type(layer).__name__,
        )


result = train(data=sys.argv[1], model=sys.argv[2], output_dir=sys.argv[3], epochs=2, batch_size=2, callbacks=[Probe()])
seen["wrote_report"] = bool(result.metrics)  # process 0 alone evaluates and writes the run's files
# one file per process: two processes printing to one pipe can interleave their lines
with open(os.path.join(os.environ["PROBE_DIR"], f"rank{seen['rank']}.json"), "w") as f:
    json.dump(seen, f)
'''


@pytest.mark.slow
def test_accelerate_launch_with_the_fsdp_config_trains_on_cpu_as_ddp(tmp_path, tiny_model_dir):
    """Two CPU processes under ``accelerate launch --config_file docs/accelerate_fsdp2.yaml``: the run
    trains, process 0 writes one run folder whose model loads and predicts, and the processes run
    as DDP over gloo (accelerate does not apply FSDP on CPU; see the module docstring). ~40 s."""
    data = write_conll_dir(tmp_path)
    run = tmp_path / "run"
    script = tmp_path / "probe.py"
    script.write_text(_PROBE)
    probe_dir = tmp_path / "probes"
    probe_dir.mkdir()
    proc = subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(FSDP_YAML), "--num_processes", "2",
         str(script), str(data), str(tiny_model_dir), str(run)],
        capture_output=True, text=True, env=dict(_env(), PROBE_DIR=str(probe_dir)), timeout=600, cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    probes = sorted((json.loads(f.read_text()) for f in probe_dir.iterdir()), key=lambda p: p["rank"])
    assert [p["rank"] for p in probes] == [0, 1]
    assert [p["wrote_report"] for p in probes] == [True, False]
    for p in probes:
        assert p["fsdp_env"] == "true"  # the launcher did ask for FSDP ...
        # ... but on CPU the accelerator is MULTI_CPU (DDP over gloo): nothing is sharded
        assert p["distributed_type"] == "DistributedType.MULTI_CPU"
        assert p["sharded_params"] == 0 and p["layer_class"] == "LlamaDecoderLayer"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["train"]["steps"] == 6  # 9 sentences, 2 per process and step, 2 processes, 2 epochs
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ner", "probe.py", "probes", "run"]  # one run folder

    from fsllm import Predictor

    predictor = Predictor.from_pretrained(run)
    out = predictor.predict(words=[["John", "visited", "Paris", "."]])
    assert len(out) == 1 and len(out[0]["tags"]) == 4


_SHARD = '''
import json, sys
import torch
import torch.distributed as dist
from torch.distributed.fsdp import fully_shard

sys.path.insert(0, sys.argv[1])
from conftest import word_llama
from fsllm import FSForTokenClassification

dist.init_process_group("gloo")
rank = dist.get_rank()


def model():
    torch.manual_seed(0)
    return FSForTokenClassification.from_backbone(word_llama()[1], num_labels=3).train()


def step(m, ids, labels):
    torch.manual_seed(1)  # the same LoRA dropout masks in both models
    out = m(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels)
    out.loss.backward()
    return out.loss.detach()


g = torch.Generator().manual_seed(rank)  # each process its own batch, as under DDP
ids = torch.randint(4, 40, (2, 9), generator=g)
labels = torch.randint(0, 3, (2, 9), generator=g)

sharded = model()
for layer in sharded._base_model().layers:
    fully_shard(layer)
fully_shard(sharded)
loss = step(sharded, ids, labels)

# reference: the unsharded model on this process's batch; FSDP averages the gradients over processes
plain = model()
ref_loss = step(plain, ids, labels)
ref = {n: p.grad.clone() for n, p in plain.named_parameters() if p.requires_grad}
for g_ in ref.values():
    dist.all_reduce(g_)
    g_ /= dist.get_world_size()
from torch.distributed.tensor import DTensor
got = {n: p.grad.full_tensor() if isinstance(p.grad, DTensor) else p.grad
       for n, p in sharded.named_parameters() if p.requires_grad}
layer_cls = type(sharded._base_model().layers[0]).__name__
result = {
    "rank": rank,
    "layer_class": layer_cls,
    "sharded_params": sum(isinstance(p, DTensor) for p in sharded.parameters()),
    "loss_diff": abs(loss.item() - ref_loss.item()),
    "same_names": sorted(got) == sorted(ref),
    "grad_max_diff": max((got[n] - ref[n]).abs().max().item() for n in ref),
}
try:
    sharded.save_pretrained(sys.argv[2], is_main_process=rank == 0)  # every process: it gathers the shards
    result["save"] = "ok"
except Exception as e:
    result["save"] = f"{type(e).__name__}: {e}"
dist.barrier()
if rank == 0 and result["save"] == "ok":
    # what was written is the whole (unsharded) head and adapter: the same init as ``plain``, which
    # took no optimizer step either
    import os
    from peft import get_peft_model_state_dict
    from safetensors.torch import load_file
    from fsllm.modeling import ADAPTER_DIR, HEAD_NAME
    head = load_file(os.path.join(sys.argv[2], HEAD_NAME))
    want = {k: v for k, v in plain.state_dict().items() if k.startswith("head.") or k == "fs_lambda_raw"}
    result["head_same"] = sorted(head) == sorted(want) and all(torch.equal(head[k], want[k]) for k in want)
    adapter = load_file(os.path.join(sys.argv[2], ADAPTER_DIR, "adapter_model.safetensors"))
    want = get_peft_model_state_dict(plain.backbone)
    result["adapter_same"] = sorted(adapter) == sorted(want) and all(torch.equal(adapter[k], want[k]) for k in want)
    result["adapter_tensors"] = len(adapter)
with open(f"{sys.argv[3]}/rank{rank}.json", "w") as f:  # a file per process: printed lines can interleave
    json.dump(result, f)
dist.destroy_process_group()
'''


@pytest.fixture(scope="module")
def fsdp2_run(tmp_path_factory) -> list[dict]:
    """One ``torchrun`` of two gloo processes sharding a tiny FS model with FSDP2 (~15 s)."""
    tmp = tmp_path_factory.mktemp("fsdp2")
    script = tmp / "shard.py"
    script.write_text(textwrap.dedent(_SHARD))
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         str(script), str(TESTS), str(tmp / "saved"), str(tmp)],
        capture_output=True, text=True, env=_env(), timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = [json.loads((tmp / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert sorted(r["rank"] for r in out) == [0, 1]
    return out


def test_fsdp2_shards_an_fs_model_over_gloo_with_the_same_loss_and_gradients(fsdp2_run):
    """FSDP2 on CPU: the decoder layers become FSDP units, and one step gives the unsharded model's
    loss and the process-averaged gradients (what DDP would give)."""
    for r in fsdp2_run:
        assert r["layer_class"] == "FSDPLlamaDecoderLayer"
        assert r["sharded_params"] > 0
        assert r["same_names"]
        assert r["loss_diff"] < 1e-6
        assert r["grad_max_diff"] < 1e-6


def test_save_pretrained_of_an_fsdp2_sharded_model_writes_the_whole_trainable_state(fsdp2_run):
    """Every process calls ``save_pretrained``; the shards are gathered and process 0 writes the
    full head and LoRA tensors (the local shards alone would have half the rows, or fail to save)."""
    for r in fsdp2_run:
        assert r["save"] == "ok", r["save"]
    rank0 = next(r for r in fsdp2_run if r["rank"] == 0)
    assert rank0["head_same"] and rank0["adapter_same"] and rank0["adapter_tensors"] > 0


_SLOW_REPORTS = '''
import os, sys, time
from fsllm.cli import main
from fsllm.run import RunFolder

if os.environ["RANK"] == "0":  # process 0 writes each report 2 s late: a process that does not wait for it fails
    _write = RunFolder.write_metrics
    RunFolder.write_metrics = lambda self, metrics: (time.sleep(2), _write(self, metrics))[1]
sys.exit(main(sys.argv[1:]))
'''


def _torchrun_train(tmp_path: Path, model_dir, *options: str,
                    slow_reports: bool = False) -> tuple[subprocess.CompletedProcess, Path]:
    """``fsllm train`` on a small CoNLL set under ``torchrun`` with two processes (gloo on CPU); the run folder.
    ``slow_reports``: process 0 writes each ``metrics.json`` 2 s late (the same CLI, run from a script)."""
    data = write_conll_dir(tmp_path)
    run = tmp_path / "run"
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1")
    entry = ["-m", "fsllm.cli"]
    if slow_reports:
        (tmp_path / "slow_reports.py").write_text(_SLOW_REPORTS)
        entry = [str(tmp_path / "slow_reports.py")]
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         *entry, "train", "--data", str(data), "--model", str(model_dir), "--output", str(run), *options],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc, run


def test_torchrun_two_processes_share_the_data_and_write_one_run(tmp_path, tiny_model_dir):
    """``torchrun`` (gloo on CPU): the batches are split between the processes, process 0 writes the run."""
    proc, run = _torchrun_train(tmp_path, tiny_model_dir, "--epochs", "2", "--batch-size", "2")
    metrics = json.loads((run / "metrics.json").read_text())
    # 9 training sentences, 2 per process and step, 2 processes: 3 steps per epoch (5 in one process)
    assert metrics["train"]["steps"] == 6
    evals = [r for r in map(json.loads, (run / "train_log.jsonl").read_text().splitlines()) if "eval_f1" in r]
    assert [(r["step"], r["epoch"]) for r in evals] == [(3, 1.0), (6, 2.0)]  # logged once, by process 0
    assert proc.stdout.count("test f1:") == 1
    assert (run / "model" / "fsllm_head.safetensors").is_file()


def test_torchrun_grid_processes_read_each_member_s_score_once_process_0_has_written_it(tmp_path, tiny_model_dir):
    """A learning-rate grid under ``torchrun``: after each member every process reads its dev score (to choose the
    next member, or skip a beaten rate's), which process 0 alone writes; without waiting for it the others fail
    (process 0 writes each report late here, so that a missing wait fails every time, not by a race)."""
    proc, run = _torchrun_train(tmp_path, tiny_model_dir, "--max-steps", "1", "--batch-size", "2", "--lr", "1e-3,5e-2",
                                "--grid-seeds", "42,7", slow_reports=True)
    grid = json.loads((run / "grid.json").read_text())
    trained = {(m["lr"], m["seed"]) for m in grid["members"]}
    not_run = {(float(lr), s) for lr, why in (grid.get("cannot_win") or {}).items() for s in why["seeds_not_run"]}
    assert trained | not_run == {(lr, s) for lr in (1e-3, 5e-2) for s in (42, 7)} and not trained & not_run
    assert all((run / m["dir"] / "metrics.json").is_file() for m in grid["members"])
    assert proc.stdout.count("test f1:") == 1


_DDP_STEP = '''
import os, sys
import torch
sys.path.insert(0, sys.argv[1])
from conftest import one_sgd_step

out = {}
for name, task, batch, acc, tpb in (("token", "token", 8, 1, None), ("sequence", "sequence", 8, 1, None),
                                    ("token_accumulated", "token", 4, 2, None), ("token_balanced", "token", 8, 1, 15.0)):
    r = one_sgd_step(task, os.path.join(sys.argv[2], name), batch_size=batch, accumulation=acc, tokens_per_batch=tpb)
    out[name] = {"loss": r["loss"], "weights": r["weights"]}
torch.save(out, os.path.join(sys.argv[2], f"rank{os.environ['RANK']}.pt"))
'''


def test_ddp_on_two_processes_makes_the_one_process_step(tmp_path):
    """``torchrun`` of two gloo processes, 8 examples each (or 4 twice, accumulated; or 8 with a length-balanced
    loss), against one process with all 16: the same logged loss and the same weights after one SGD step.
    The Trainer multiplies the loss of a model that accepts loss keyword arguments by the number of
    processes; a model that returned its local mean was N times too large on N processes (~50 s on 2 cores)."""
    from conftest import one_sgd_step

    script = tmp_path / "ddp_step.py"
    script.write_text(_DDP_STEP)
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         str(script), str(TESTS), str(tmp_path)],
        capture_output=True, text=True, env=_env(), timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]
    whole = {task: one_sgd_step(task, tmp_path / f"one-{task}", batch_size=16) for task in ("token", "sequence")}
    whole["token_accumulated"] = whole["token"]
    # length-balanced: the average batch holds half the tokens on each of the two processes
    whole["token_balanced"] = one_sgd_step("token", tmp_path / "one-balanced", batch_size=16, tokens_per_batch=30.0)
    for name, ref in whole.items():
        for got in ranks:  # DDP keeps the processes' weights equal
            assert got[name]["loss"] == pytest.approx(ref["loss"], rel=1e-5), name
            for w, v in ref["weights"].items():
                torch.testing.assert_close(got[name]["weights"][w], v, atol=1e-6, rtol=1e-5, msg=f"{name}: {w}")


ADAPT_TEXTS = ["John Smith visited Paris .", "Mary works for Google .", "Paris is in France .",
               "Google hired John .", "Smith works in Paris .", "Mary visited France .",
               "John works for Mary .", "France hired Smith ."]


def test_torchrun_adapt_on_two_processes_is_one_process_with_the_whole_step(tmp_path, tiny_causal_lm_dir):
    """``fsllm adapt`` under ``torchrun`` (two gloo processes, 2 texts each a step) writes one folder and
    trains as one process with 4 texts a step: the same masks (drawn per text), the same loss (the mean over
    the step's masked tokens on both processes together), the same merged weights, over two epochs."""
    texts = tmp_path / "texts.txt"
    texts.write_text("\n".join(ADAPT_TEXTS) + "\n")
    common = ["adapt", "--model", str(tiny_causal_lm_dir), "--text-file", str(texts), "--steps", "4",
              "--logging-steps", "1", "--lr", "1e-2", "--lora-dropout", "0", "--precision", "fp32"]
    env = _env()
    one = subprocess.run([sys.executable, "-m", "fsllm.cli", *common, "--batch-size", "4", "-o", str(tmp_path / "one")],
                         capture_output=True, text=True, env=env, timeout=300)
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "fsllm.cli",
         *common, "--batch-size", "2", "-o", str(tmp_path / "two")],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert two.returncode == 0, two.stderr[-3000:]
    assert two.stdout.count("adapted:") == 1  # process 0 reports
    from fsllm.adaptation import ADAPTATION_FILE

    records = [json.loads((tmp_path / d / ADAPTATION_FILE).read_text()) for d in ("one", "two")]
    assert all(r["complete"] and r["steps"] == 4 for r in records)
    logs = [[json.loads(ln) for ln in (tmp_path / d / "train_log.jsonl").read_text().splitlines()] for d in ("one", "two")]
    losses = [[(r["step"], r["loss"]) for r in log if "loss" in r] for log in logs]
    assert [s for s, _ in losses[1]] == [1, 2, 3, 4]  # logged once, by process 0
    assert [s for s, _ in losses[0]] == [1, 2, 3, 4]
    assert [loss for _, loss in losses[1]] == pytest.approx([loss for _, loss in losses[0]], rel=1e-4)
    from safetensors.torch import load_file

    a, b = (load_file(str(tmp_path / d / "model.safetensors")) for d in ("one", "two"))
    assert set(a) == set(b) and all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)
    base = load_file(str(Path(tiny_causal_lm_dir) / "model.safetensors"))
    assert not torch.equal(a["model.layers.0.self_attn.q_proj.weight"], base["model.layers.0.self_attn.q_proj.weight"])


_SIGNAL_ONE_PROCESS = """
import os, signal, sys
from transformers import TrainerCallback
import fsllm.training as training
from fsllm.cli import main

class SignalRank1(TrainerCallback):  # SIGTERM to process 1 alone, as step 2 begins
    def on_step_begin(self, args, state, control, **kw):
        if os.environ["RANK"] == "1" and state.global_step == 1:
            os.kill(os.getpid(), signal.SIGTERM)

levers = training.lever_callbacks
training.lever_callbacks = lambda cfg: [*levers(cfg), SignalRank1()]
sys.exit(main(sys.argv[1:]))
"""


def test_a_signal_to_one_process_stops_every_process_at_the_same_step(tmp_path, tiny_model_dir):
    """Under ``torchrun`` a SIGTERM that reaches one process stops both at the end of the same step, with
    one checkpoint there, and each says so: a process that went on alone would wait for the stopped one
    in its next gradient reduction until the test's time limit."""
    data = write_conll_dir(tmp_path)
    script = tmp_path / "stop_rank1.py"
    script.write_text(_SIGNAL_ONE_PROCESS)
    run = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script),
         "train", "--data", str(data), "--model", str(tiny_model_dir), "--output", str(run), "--max-steps", "8",
         "--eval-steps", "4", "--batch-size", "2"],
        capture_output=True, text=True, env=_env(), timeout=180,
    )
    assert proc.returncode != 0 and not (run / "metrics.json").exists(), proc.stderr[-3000:]
    assert proc.stderr.count("fsllm: stopped by SIGTERM at step 2") == 2, proc.stderr[-3000:]
    assert sorted(d.name for d in (run / "checkpoints").iterdir()) == ["checkpoint-2"]
    state = json.loads((run / "checkpoints" / "checkpoint-2" / "trainer_state.json").read_text())
    assert state["global_step"] == 2
