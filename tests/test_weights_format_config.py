"""The weights format as a deployment choice: deploy.weights / weights_group in YAML, the
--weights-format / --weights-group flags of every CLI, and their one-line errors (exit status 2)."""
from __future__ import annotations

import random
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from ada_mk.cli.bench import main as bench_main
from ada_mk.cli.gen import main as gen_main
from ada_mk.cli.gen import output_dir_name
from ada_mk.cli.run import main as run_main
from ada_mk.cli.tune import main as tune_main
from ada_mk.config import DEFAULT_GROUPS, WEIGHT_FORMATS, ConfigError, DeployConfig, deploy_for, load_config
from ada_mk.config import resolve_weights, weights_suffix
from ada_mk.config.gpus import lookup_gpu
from ada_mk.search import plan as plan_mod

ROOT = Path(__file__).resolve().parents[1]
LLAMA = ROOT / "configs" / "llama3-8b.yaml"
SMOL = ROOT / "configs" / "smollm2-135m.yaml"


def with_deploy(tmp_path: Path, **deploy) -> Path:
    d = yaml.safe_load(LLAMA.read_text())
    d["deploy"] = deploy
    p = tmp_path / "cfg.yaml"
    p.write_text(yaml.safe_dump(d))
    return p


def test_formats_have_one_home() -> None:
    assert plan_mod.WEIGHT_FORMATS is WEIGHT_FORMATS == ("bf16", "fp8", "int8", "int4")
    assert DEFAULT_GROUPS == {"bf16": 0, "fp8": 0, "int8": 32, "int4": 128}


def test_defaults_and_yaml(tmp_path: Path) -> None:
    _, d = load_config(LLAMA)
    assert (d.weights, d.weights_group) == ("bf16", 0)
    group = 32 * random.randint(1, 8)
    _, d = load_config(with_deploy(tmp_path, weights="fp8", weights_group=group))
    assert (d.weights, d.weights_group) == ("fp8", group)
    _, d = load_config(with_deploy(tmp_path, weights="int8"))
    assert (d.weights, d.weights_group) == ("int8", 32)
    _, d = load_config(with_deploy(tmp_path, weights="fp8"))
    assert (d.weights, d.weights_group) == ("fp8", 0)


def test_flags_override_the_file(tmp_path: Path) -> None:
    cfg = with_deploy(tmp_path, weights="int8", weights_group=128)
    _, d = load_config(cfg)
    assert (d.weights, d.weights_group) == ("int8", 128)
    _, d = load_config(cfg, weights="fp8")  # a format flag: that format's default group
    assert (d.weights, d.weights_group) == ("fp8", 0)
    _, d = load_config(cfg, weights_group=64)  # a group flag: the file's format
    assert (d.weights, d.weights_group) == ("int8", 64)
    _, d = load_config(cfg, weights="bf16")
    assert (d.weights, d.weights_group) == ("bf16", 0)


@pytest.mark.parametrize("deploy,needle", [
    ({"weights": "fp4"}, "deploy.weights = 'fp4': unknown weights format; expected one of bf16, fp8, int8, int4"),
    ({"weights": 8}, "deploy.weights = 8: unknown weights format"),
    ({"weights": "fp8", "weights_group": 48}, "deploy.weights_group = 48: must be 0 (one scale per row) or a positive"),
    ({"weights": "fp8", "weights_group": -32}, "deploy.weights_group = -32"),
    ({"weights": "fp8", "weights_group": "128"}, "deploy.weights_group = '128'"),
    ({"weights": "fp8", "weights_group": True}, "deploy.weights_group = True"),
    ({"weights_group": 32}, "deploy.weights_group = 32: bf16 weights have no scales"),
    ({"weights": "int8", "weights_group": 0}, "deploy.weights_group = 0: int8 weights need a scale group"),
    ({"weigths": "fp8"}, "deploy.weigths"),
])
def test_yaml_errors_are_one_line(tmp_path: Path, deploy: dict, needle: str) -> None:
    with pytest.raises(ConfigError) as e:
        load_config(with_deploy(tmp_path, **deploy))
    msg = str(e.value)
    assert "\n" not in msg and str(tmp_path) in msg and needle in msg, msg


@pytest.mark.parametrize("kw,needle", [
    ({"weights": "nf4"}, "--weights-format = 'nf4'"),
    ({"weights": "fp8", "weights_group": 40}, "--weights-group = 40"),
    ({"weights_group": 64}, "--weights-group = 64: bf16 weights have no scales"),
    ({"weights": "int8", "weights_group": 0}, "--weights-group = 0: int8 weights need a scale group"),
])
def test_flag_errors_name_the_flag(kw: dict, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        load_config(LLAMA, **kw)
    with pytest.raises(ConfigError, match=needle.split(" =")[0]):
        resolve_weights(kw.get("weights"), kw.get("weights_group"))
    model, _ = load_config(LLAMA)
    with pytest.raises(ConfigError, match=needle.split(" =")[0]):
        deploy_for(model, "H100", None, None, weights=kw.get("weights"), weights_group=kw.get("weights_group"))


def test_deploy_config_refuses_bad_pairs() -> None:
    gpu = lookup_gpu("H100")
    with pytest.raises(ConfigError, match="deploy.weights_group"):
        DeployConfig(gpu=gpu, weights="int8", weights_group=0)
    with pytest.raises(ConfigError, match="deploy.weights"):
        DeployConfig(gpu=gpu, weights="fp16")
    assert DeployConfig(gpu=gpu, weights="int8", weights_group=96).weights_group == 96


def test_names() -> None:
    assert weights_suffix("bf16", 0) == ""
    assert weights_suffix("fp8", 0) == "_fp8"
    assert weights_suffix("fp8", 128) == "_fp8g128"
    assert weights_suffix("int8", 32) == "_int8"
    assert weights_suffix("int8", 64) == "_int8g64"
    gpu = lookup_gpu("L20")
    assert output_dir_name(DeployConfig(gpu=gpu, batch=4)) == "L20-bs4"
    assert output_dir_name(DeployConfig(gpu=gpu, batch=4, weights="fp8", weights_group=128)) == "L20-bs4-fp8g128"


def _invoke(main, args: list[str]):
    try:
        runner = CliRunner(mix_stderr=False)  # click < 8.2
    except TypeError:
        runner = CliRunner()
    return runner.invoke(main, args, catch_exceptions=True)


def _assert_one_line(result, prog: str, *needles: str) -> None:
    assert result.exit_code == 2, (result.exit_code, result.stderr, result.exception)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{prog}: error: "), result.stderr
    assert "Traceback" not in result.stderr
    for n in needles:
        assert n in lines[0], lines[0]


BAD_FLAGS = [
    (["--weights-format", "fp9"], "--weights-format = 'fp9'"),
    (["--weights-format", "int8", "--weights-group", "0"], "int8 weights need a scale group"),
    (["--weights-format", "fp8", "--weights-group", "33"], "--weights-group = 33"),
    (["--weights-group", "32"], "bf16 weights have no scales"),
    (["--weights-format", "fp8", "--weights-group", "x"], "--weights-group"),
    (["--weights-format", "int4", "--weights-group", "96"], "int4 weights take a scale group of 32, 64, 128"),
]


@pytest.mark.parametrize("flags,needle", BAD_FLAGS)
def test_cli_flag_errors(tmp_path: Path, flags: list[str], needle: str) -> None:
    _assert_one_line(_invoke(gen_main, ["--config", str(SMOL), "--no-build", "--out", str(tmp_path), *flags]),
                     "adamk-gen", needle)
    _assert_one_line(_invoke(tune_main, ["--config", str(SMOL), "--build-only", "--out-dir", str(tmp_path), *flags]),
                     "adamk-tune", needle)
    _assert_one_line(_invoke(run_main, ["--weights", str(tmp_path / "none.gguf"), "--prompt", "x",
                                        "--config", str(SMOL), *flags]), "adamk-run", needle)
    _assert_one_line(_invoke(bench_main, ["--config", "smollm2-135m", "--build-only", *flags]),
                     "adamk-bench", needle)
    assert not any(tmp_path.iterdir())


def test_gen_dump_ir_shows_the_format() -> None:
    r = _invoke(gen_main, ["--config", str(SMOL), "--weights-format", "int8", "--weights-group", "64", "--dump-ir"])
    assert r.exit_code == 0, r.stderr
    head = r.stdout.splitlines()[0]
    assert "int8 linear weights" in head and "per 64 columns" in head


def test_gen_writes_an_8bit_kernel(tmp_path: Path) -> None:
    import json

    r = _invoke(gen_main, ["--config", str(SMOL), "--gpu", "L20", "--batch", "2", "--weights-format", "fp8",
                           "--no-build", "--out", str(tmp_path)])
    assert r.exit_code == 0, r.stderr
    target = tmp_path / "smollm2-135m" / "L20-bs2-fp8"
    doc = json.loads((target / "plan.json").read_text())["plan"]
    assert (doc["weights"], doc["weights_group"]) == ("fp8", 0)
    assert all(t["weights"] == "fp8" and t["group"] == 0 and t["tiled"] for t in doc["tilings"].values())
    assert (target / "adamk_smollm2_135m_l20_bs2_fp8.cu").exists()
    ir = json.loads((target / "ir.json").read_text())
    dtypes = {t["name"]: t["dtype"] for t in ir["tensors"]}
    assert dtypes["model.embed_tokens.weight"] == "bf16" and dtypes["lm_head.weight"] == "fp8"
    assert dtypes["model.layers.0.mlp.down_proj.weight"] == "fp8"
    assert dtypes["model.layers.0.input_layernorm.weight"] == "bf16"
