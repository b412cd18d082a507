"""FSConfig and TrainConfig: validation of their values, before anything runs."""

from __future__ import annotations

import pytest

from fsllm import FSConfig


def test_fs_config_validation():
    with pytest.raises(ValueError, match="attention"):
        FSConfig(attention="sideways")
    with pytest.raises(ValueError, match="fs_layers"):
        FSConfig(fs_layers="middle:3")
    with pytest.raises(ValueError, match="learnable_lambda"):
        FSConfig(learnable_lambda=True)
    assert FSConfig(fs_layers="last:8").resolve_layers(30) == list(range(22, 30))
    assert FSConfig(fs_layers=[-1, 0]).resolve_layers(4) == [0, 3]
    with pytest.raises(ValueError, match="out of range"):
        FSConfig(fs_layers=[7]).resolve_layers(4)
    c = FSConfig(attention="decay", decay_lambda=0.3, learnable_lambda=True, fs_layers=[1, 2])
    assert FSConfig.from_json(c.to_json()) == c


# ------------------------------------------------------------------ validation: one clear line


def test_fs_config_refuses_values_that_break_the_forward():
    from fsllm import ConfigError

    for lam in (float("inf"), float("nan"), -1.0):
        with pytest.raises(ConfigError, match="decay_lambda must be a finite number"):
            FSConfig(attention="decay", decay_lambda=lam)
    for field_name in ("lora_r", "lora_alpha"):
        for value in (0, -8):
            with pytest.raises(ValueError, match=f"{field_name} must be > 0"):
                FSConfig(**{field_name: value})
    with pytest.raises(ValueError, match=r"duplicate layer \[0\]"):
        FSConfig(fs_layers=[0, -2]).resolve_layers(2)
    with pytest.raises(ValueError, match="out of range"):
        FSConfig(fs_layers=[0, 2]).resolve_layers(2)
    assert FSConfig(fs_layers=[-1, 0]).resolve_layers(2) == [0, 1]


def test_train_config_validates_before_anything_runs():
    from fsllm import ConfigError
    from fsllm.training import TrainConfig

    bad = [
        dict(epochs=-1), dict(epochs=0), dict(epochs=float("nan")), dict(batch_size=0), dict(eval_batch_size=-2),
        dict(learning_rate=0), dict(learning_rate=-1e-3), dict(precision="fp8"), dict(max_steps=0),
        dict(max_length=0), dict(train_subset=0), dict(eval_steps=0), dict(warmup_ratio=1.5),
        dict(attn_implementation="flash_attention_9"),
    ]
    for kw in bad:
        with pytest.raises(ConfigError, match=next(iter(kw))):
            TrainConfig(**kw)
    TrainConfig(epochs=-1, max_steps=5)  # max_steps decides: epochs are ignored


def test_precision_auto_is_bf16_only_where_the_hardware_has_bf16_matmuls(monkeypatch, tmp_path):
    import fsllm.config as config
    from fsllm.training import TrainConfig, resolve_config

    monkeypatch.setattr(config, "native_bf16", lambda: "the CPU has AVX512-BF16")
    assert config.resolve_precision("auto") == ("bf16", "the CPU has AVX512-BF16")
    assert config.resolve_precision("fp32") == ("fp32", "as configured")  # an explicit choice is kept
    cfg, _ = resolve_config(TrainConfig(precision="auto", output_dir=str(tmp_path / "a")), False, {})
    assert cfg.precision == "bf16"  # resolved once: config.json records what the run used
    monkeypatch.setattr(config, "native_bf16", lambda: None)
    assert config.resolve_precision("auto") == ("fp32", "no bf16 matmul hardware found")
    cfg, _ = resolve_config(TrainConfig(precision="auto", output_dir=str(tmp_path / "b")), False, {})
    assert cfg.precision == "fp32"


def test_a_training_run_given_bf16_where_it_is_emulated_keeps_it_and_warns(monkeypatch, tmp_path, caplog):
    import fsllm.config as config
    from fsllm.training import TrainConfig, resolve_config

    monkeypatch.setattr(config, "bf16_hardware", lambda: None)
    with caplog.at_level("WARNING", logger="fsllm"):
        cfg, _ = resolve_config(TrainConfig(precision="bf16", backbone_dtype="bf16", output_dir=str(tmp_path / "a")),
                                False, {})
    assert (cfg.precision, cfg.backbone_dtype) == ("bf16", "bf16")  # kept: a run must match its saved config
    assert "precision bf16: no bf16 matmul hardware here" in caplog.text
    assert "backbone_dtype bf16: no bf16 matmul hardware here" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="fsllm"):  # auto and fp32 run in fp32 here: nothing to say
        resolve_config(TrainConfig(precision="auto", output_dir=str(tmp_path / "b")), False, {})
    assert "no bf16 matmul hardware here" not in caplog.text
    monkeypatch.setattr(config, "bf16_hardware", lambda: "the CPU has AVX512-BF16")
    with caplog.at_level("WARNING", logger="fsllm"):
        resolve_config(TrainConfig(precision="bf16", output_dir=str(tmp_path / "c")), False, {})
    assert "no bf16 matmul hardware here" not in caplog.text


def test_native_bf16_reads_the_cpu_flags(monkeypatch, tmp_path):
    import builtins

    import torch

    import fsllm.config as config

    monkeypatch.delenv("FSLLM_NATIVE_BF16")  # set for the whole suite (conftest)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    real_open = builtins.open
    for flags, want in (("fpu avx2 avx512f avx512_bf16", "AVX512-BF16"), ("fpu amx_bf16 amx_tile", "AMX-BF16"),
                        ("fpu avx2 fma", None)):
        info = tmp_path / "cpuinfo"
        info.write_text(f"processor\t: 0\nflags\t\t: {flags}\n")
        monkeypatch.setattr(builtins, "open", lambda p, *a, info=info, **k: real_open(
            info if p == "/proc/cpuinfo" else p, *a, **k))
        got = config.native_bf16()
        assert (got is None) if want is None else (want in got)
    info.write_text("processor\t: 0\nflags\t\t: fpu avx512_bf16\n")
    assert config.native_bf16() is not None
    monkeypatch.setenv("FSLLM_NATIVE_BF16", "0")  # the hardware has it, the environment says fp32
    assert config.native_bf16() is None
    assert config.bf16_hardware() == "the CPU has AVX512-BF16"  # what a bf16 chosen explicitly runs on
    assert config.emulated_bf16("precision bf16") is None
    info.write_text("processor\t: 0\nflags\t\t: fpu avx2 fma\n")
    assert "no bf16 matmul hardware" in config.emulated_bf16("precision bf16")
    assert config.TrainConfig().precision == "auto"  # the default
