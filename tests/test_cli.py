"""``fsllm train`` options come from the TrainConfig / FSConfig fields; --config repeats a run; bad options are
refused before anything is written."""

from __future__ import annotations

import dataclasses
import json

import pytest

from fsllm.cli import (
    FS_DEST,
    MAIN_JOB_RECIPE,
    build_parser,
    load_recipe,
    main,
    recipe_names,
    train_command,
    train_config_from_args,
)
from fsllm.config import FSConfig, TrainConfig
from fsllm.errors import FSLLMError

ROWS = [("a fine film", "positive"), ("dull and long", "negative"), ("great acting", "positive"),
        ("a waste of time", "negative")]


def write_csv_dir(root):
    d = root / "data"
    d.mkdir()
    for split, rows in (("train", ROWS * 2), ("dev", ROWS[:2]), ("test", ROWS[2:])):
        (d / f"{split}.csv").write_text("text,label\n" + "".join(f"{t},{y}\n" for t, y in rows))
    return d


def parse(*argv: str):
    return build_parser().parse_args(["train", *argv])


@pytest.mark.parametrize("cls,prefix", [(TrainConfig, ""), (FSConfig, FS_DEST)])
def test_every_field_has_help_and_an_option(cls, prefix):
    help_text = build_parser()._subparsers._group_actions[0].choices["train"].format_help()
    for f in dataclasses.fields(cls):
        assert f.metadata.get("help"), f"{cls.__name__}.{f.name} has no help"
        if f.name == "fs":  # nested: its own fields are the FSConfig case
            continue
        flag = "--" + f.name.replace("_", "-")
        assert flag in help_text, flag
        default = f.default
        value = {bool: None, int: "3", float: "0.5"}.get(type(default), None)
        if isinstance(default, bool):
            a = parse(flag if not default else "--no-" + f.name.replace("_", "-"))
            assert getattr(a, prefix + f.name) is (not default)
        elif "choices" in f.metadata:
            a = parse(flag, f.metadata["choices"][-1])
            assert getattr(a, prefix + f.name) == f.metadata["choices"][-1]
        elif value is not None:
            assert getattr(parse(flag, value), prefix + f.name) == type(default)(value)


def test_without_data_the_main_job_and_flags_on_top():
    job = load_recipe(MAIN_JOB_RECIPE)
    fs = job.pop("fs")
    cfg = train_config_from_args(parse())
    assert {k: getattr(cfg, k) for k in job} == job and {k: getattr(cfg.fs, k) for k in fs} == fs
    assert (cfg.fs.lora_r, cfg.fs.use_rslora) == (16, True)  # what the screen's dev chose at this budget
    cfg = train_config_from_args(parse("--epochs", "1", "--attention", "causal", "--lora-r", "8"))
    assert cfg.epochs == 1 and cfg.train_subset == job["train_subset"] and cfg.fs.attention == "causal"
    assert (cfg.fs.lora_r, cfg.fs.use_rslora) == (8, True)  # a flag on top of the recipe's fs, the rest kept
    assert train_config_from_args(parse("--data", "rt-polarity")) == TrainConfig(data="rt-polarity")


def test_a_packaged_recipe_with_flags_on_top(capsys):
    assert set(recipe_names()) >= {"main_job", "ner_documents"}
    for name in recipe_names():  # every packaged recipe is a valid configuration (an unknown field would raise)
        cfg = train_config_from_args(parse("--recipe", name))
        fields = load_recipe(name + ".json")
        fs = fields.pop("fs", {})
        assert {k: getattr(cfg, k) for k in fields} == fields and {k: getattr(cfg.fs, k) for k in fs} == fs
    assert train_config_from_args(parse("--recipe", "main_job")) == train_config_from_args(parse())
    cfg = train_config_from_args(parse("--recipe", "ner_documents", "--data", "mine/", "--word-scores", "mean"))
    assert (cfg.data, cfg.document_context, cfg.fs.lora_r, cfg.fs.ner_decoding, cfg.fs.word_scores) == (
        "mine/", 64, 16, "viterbi", "mean")
    for argv, error in ((["--recipe", "no_such"], "invalid choice: 'no_such'"),
                        (["--recipe", "main_job", "--config", "c.json"], "not allowed with argument")):
        capsys.readouterr()
        with pytest.raises(SystemExit) as e:
            parse(*argv)
        assert e.value.code == 2 and error in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "ner_documents: NER on text that comes in documents" in help_text  # each recipe's _about


def test_train_help_describes_the_main_job(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "main job" in out and "conll2003" in out and MAIN_JOB_RECIPE in out
    assert "lora_r=16, use_rslora=True" in out


def test_today_flag_names_still_work():
    cfg = train_config_from_args(parse(
        "--data", "d", "--lr", "1e-3", "--output", "r", "--early-stopping", "2", "--no-test", "--regression",
        "--lora-targets", "q_proj,v_proj", "--fs-layers", "0,-1", "--attention", "decay", "--decay-lambda", "0.5"))
    assert (cfg.learning_rate, cfg.output_dir, cfg.early_stopping_patience, cfg.evaluate_test, cfg.problem_type) == (
        1e-3, "r", 2, False, "regression")
    assert cfg.fs.lora_target_modules == ["q_proj", "v_proj"] and cfg.fs.fs_layers == [0, -1]
    assert (cfg.fs.attention, cfg.fs.decay_lambda) == ("decay", 0.5)
    assert train_config_from_args(parse("--data", "d", "--multi-label")).problem_type == "multi_label_classification"


def test_a_config_file_with_flags_on_top(tmp_path):
    f = tmp_path / "c.json"
    f.write_text(json.dumps({"data": "d", "epochs": 2.0, "fs": {"pooling": "max"}}))
    cfg = train_config_from_args(parse("--config", str(f), "--epochs", "4", "--head", "linear"))
    assert (cfg.data, cfg.epochs, cfg.fs.pooling, cfg.fs.head) == ("d", 4.0, "max", "linear")
    f.write_text(json.dumps({"data": "d", "no_such_option": 1}))
    with pytest.raises(FSLLMError, match="no_such_option") as e:
        train_config_from_args(parse("--config", str(f)))
    assert str(f) in str(e.value)


def test_a_run_is_repeated_from_its_config_json(tmp_path, tiny_model_dir, capsys):
    data = write_csv_dir(tmp_path)
    run, again = tmp_path / "run", tmp_path / "again"
    rc = main(["train", "--data", str(data), "--model", str(tiny_model_dir), "-o", str(run), "--max-steps", "2",
               "--batch-size", "2", "--lr", "5e-3", "--pooling", "last", "--no-test"])
    assert rc == 0, capsys.readouterr().err
    rc = main(["train", "--config", str(run / "config.json"), "--output", str(again)])
    assert rc == 0, capsys.readouterr().err
    first, second = (json.loads((d / "config.json").read_text()) for d in (run, again))
    assert second.pop("output_dir") == str(again) and first.pop("output_dir") == str(run)
    assert first == second
    assert json.loads((again / "metrics.json").read_text())["train"]["steps"] == 2


def test_lr_scheduler_type_is_set_from_the_cli_saved_and_read_back_by_resume(tmp_path, tiny_model_dir, capsys):
    from transformers import TrainerCallback

    from fsllm.errors import ConfigError
    from fsllm.training import train

    with pytest.raises(ConfigError, match="cosine"):
        TrainConfig(lr_scheduler_type="sideways")
    data = write_csv_dir(tmp_path)
    run = tmp_path / "run"
    rc = main(["train", "--data", str(data), "--model", str(tiny_model_dir), "-o", str(run), "--max-steps", "3",
               "--batch-size", "2", "--lr", "5e-3", "--logging-steps", "1", "--lr-scheduler-type", "constant"])
    assert rc == 0, capsys.readouterr().err
    assert json.loads((run / "config.json").read_text())["lr_scheduler_type"] == "constant"
    rates = [r["learning_rate"] for r in map(json.loads, (run / "train_log.jsonl").read_text().splitlines())
             if "learning_rate" in r]
    assert len(rates) >= 3 and set(rates) == {5e-3}  # linear would decay towards 0

    seen = []

    class Spy(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            seen.append((str(args.lr_scheduler_type.value), args.per_device_eval_batch_size))

    # --resume used to drop every other flag without a word: those that would make another run are refused
    saved = (run / "config.json").read_text()
    for flags, named in ((["--lr", "1e-2", "--epochs", "3"], "cannot change epochs, learning_rate"),
                         (["--lora-r", "4"], "cannot change --lora-r"),
                         (["--config", str(run / "config.json")], "cannot change --config"),
                         (["--recipe", "main_job"], "cannot change --recipe")):
        capsys.readouterr()
        assert main(["train", "--resume", "-o", str(run), *flags]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and named in err[0], err
    assert (run / "config.json").read_text() == saved
    with pytest.raises(FSLLMError, match=r"cannot change epochs \(it applies"):  # lr 5e-3 is the saved value
        train(resume=True, output_dir=str(run), epochs=3.0, learning_rate=5e-3)
    # ... and those that change only how it evaluates or saves are applied and saved
    train(resume=True, output_dir=str(run), eval_batch_size=3, callbacks=[Spy()])
    assert seen == [("constant", 3)]
    assert json.loads((run / "config.json").read_text())["eval_batch_size"] == 3


def write_tiny_csv(folder):
    folder.mkdir()
    rows = "text,label\n" + "".join(f"{t},{lab}\n" for t, lab in [("good film", "pos"), ("bad plot", "neg")] * 4)
    for split in ("train", "dev", "test"):
        (folder / f"{split}.csv").write_text(rows)
    return folder


@pytest.mark.parametrize(
    "args,message",
    [
        (["--epochs", "-1"], "epochs must be > 0"),
        (["--batch-size", "0"], "batch_size must be a positive integer"),
        (["--lr", "0"], "learning_rate must be > 0"),
        (["--max-steps", "0"], "max_steps must be > 0"),
        (["--attention", "decay", "--decay-lambda", "inf"], "decay_lambda must be a finite number"),
        (["--lora-r", "0"], "lora_r must be > 0"),
        (["--lora-alpha", "-4"], "lora_alpha must be > 0"),
        (["--fs-layers", "0,-2"], "duplicate layer"),
    ],
)
def test_cli_train_refuses_bad_options_before_writing_anything(tmp_path, tiny_model_dir, capsys, args, message):
    from fsllm.cli import main

    data = write_tiny_csv(tmp_path / "data")
    run = tmp_path / "run"
    default_runs = tmp_path / "cwd"
    default_runs.mkdir()
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(default_runs)  # a run without --output would land in ./runs
        rc = main(["train", "--data", str(data), "--model", str(tiny_model_dir), "--output", str(run), *args])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert len(err) == 1 and err[0].startswith("fsllm: error: ") and message in err[0], err
    assert not run.exists()
    assert not any(default_runs.iterdir())


@pytest.mark.parametrize("cfg", [
    TrainConfig(data="conll2003", epochs=2.5, learning_rate=1.2345678e-3, precision="fp32", train_subset=1000, seed=3,
                evaluate_test=False, group_by_length=False, backbone_dtype="bf16",
                fs=FSConfig(attention="decay", decay_lambda=0.1, fs_layers=[0, -1], lora_target_modules=["q_proj", "v_proj"],
                            repeat=2, use_lora=True, head="linear", ner_decoding="viterbi")),
    TrainConfig(data="rt-polarity", learning_rate=[5e-4, 1e-3], grid_seeds=[42, 0], problem_type="regression",
                fs=FSConfig(fs_layers="last:4", use_lora=False)),
    TrainConfig(),  # every default: still --data, or the command would be the main job's recipe
])
def test_train_command_rebuilds_its_config_through_the_cli(cfg):
    args = train_command(cfg)
    assert args[:3] == ["train", "--data", cfg.data]
    assert train_config_from_args(build_parser().parse_args(args)) == cfg
