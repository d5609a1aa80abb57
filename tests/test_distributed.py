"""Distributed pieces that need no second process: rank shares, launcher arguments, config-time preset checks,
resume with another process count, and the one-line message for a collective that lost a peer."""

import json

import pytest

from sftlab.config import load_config
from sftlab.errors import SftlabError
from sftlab.train.distributed import launch_arguments, rank_share

BASE = {"model": {"path": "m"}, "data": {"train": "t.jsonl"}}


@pytest.mark.parametrize("size, processes", [(8, 2), (7, 2), (5, 3), (3, 4), (1, 2)])
def test_rank_shares_cover_the_global_micro_batch_once_in_order(size, processes):
    indices = list(range(100, 100 + size))
    shares = [rank_share(indices, rank, processes) for rank in range(processes)]
    carried = [part for part, carries in shares if carries]
    assert [i for part in carried for i in part] == indices  # disjoint, complete, in the single-process order
    assert max(map(len, carried)) - min(map(len, carried)) <= 1
    for part, carries in shares:
        if not carries:  # an idle rank still runs one row (weight 0) so the gradient all-reduce matches
            assert part == indices[:1]
    assert sum(not carries for _, carries in shares) == max(0, processes - size)


def test_one_process_takes_everything():
    assert rank_share([3, 1, 2], 0, 1) == ([3, 1, 2], True)


def test_launch_arguments_single_and_multi_node():
    single = launch_arguments(["-m", "sftlab", "train", "run.yaml"], 2)
    assert single[:2] == ["--nproc-per-node", "2"] and "--standalone" in single
    assert single[-4:] == ["--module", "sftlab", "train", "run.yaml"]
    multi = launch_arguments(["script.py", "x"], 4, nnodes=2, node_rank=1, rdzv_endpoint="node0:29400")
    assert "--standalone" not in multi
    for flag, value in (("--nnodes", "2"), ("--node-rank", "1"), ("--rdzv-endpoint", "node0:29400"),
                        ("--rdzv-backend", "c10d")):
        assert multi[multi.index(flag) + 1] == value
    assert multi[-2:] == ["script.py", "x"]
    with pytest.raises(SftlabError, match="--rdzv-endpoint"):
        launch_arguments(["script.py"], 2, nnodes=2)


def test_torchrun_parses_the_launch_arguments():
    from torch.distributed.run import parse_args

    args = parse_args(launch_arguments(["-m", "sftlab", "train", "run.yaml", "--resume"], 3, nnodes=2, node_rank=1,
                                       rdzv_endpoint="h:1"))
    assert (args.nproc_per_node, args.nnodes, args.node_rank, args.rdzv_endpoint) == ("3", "2", 1, "h:1")
    assert args.module and args.training_script == "sftlab" and args.training_script_args[-1] == "--resume"
    assert args.max_restarts == 0


@pytest.mark.parametrize("preset", ["zero2", "zero3"])
def test_deepspeed_presets_fail_at_config_time_without_cuda(preset):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(SftlabError, match=rf"train.distributed={preset} \(DeepSpeed ZeRO\) needs CUDA GPUs; this "
                                          r"machine has none. On CPU use train.distributed=ddp"):
        load_config(None, [f"train.distributed={preset}"], base=BASE)


def test_fsdp_loads_without_cuda_and_refuses_qlora():
    from types import SimpleNamespace

    from sftlab.config.checks import check_distributed

    cfg = load_config(None, ["train.distributed=fsdp", "train.save_every_n_steps=2"], base=BASE)
    assert cfg.train.distributed == "fsdp"
    qlora = SimpleNamespace(kind="lora", lora=SimpleNamespace(quantize_4bit=True))
    with pytest.raises(ValueError, match=r"train.distributed=fsdp cannot shard 4-bit \(QLoRA\) weights; use ddp"):
        check_distributed(SimpleNamespace(train=cfg.train, strategy=qlora))
    with pytest.raises(SftlabError, match=r"train.distributed=fsdp cannot shard 4-bit \(QLoRA\) weights; use ddp"):
        load_config(None, ["train.distributed=fsdp", "strategy.kind=lora", "strategy.lora.quantize_4bit=true"],
                    base=BASE)  # QLoRA runs on this CPU (bitsandbytes' CPU backend); fsdp still refuses it
    check_distributed(SimpleNamespace(train=cfg.train, strategy=SimpleNamespace(kind="lora", lora=SimpleNamespace(
        quantize_4bit=False))))


def test_ddp_preset_and_timeout_load():
    cfg = load_config(None, ["train.distributed=ddp", "train.dist_timeout_s=30"], base=BASE)
    assert (cfg.train.distributed, cfg.train.dist_timeout_s) == ("ddp", 30)
    with pytest.raises(SftlabError, match="train.distributed"):
        load_config(None, ["train.distributed=zero1"], base=BASE)


def test_a_preset_accelerate_did_not_set_up_or_unsupported_checkpoints_fail_at_start():
    from types import SimpleNamespace

    from accelerate.utils import DistributedType

    from sftlab.train.distributed import check_processes, fsdp

    def cfg(**train):
        return SimpleNamespace(train=SimpleNamespace(**{"distributed": "fsdp", "save_every_n_steps": None, **train}))

    on_cpu = SimpleNamespace(num_processes=2, distributed_type=DistributedType.MULTI_CPU)
    deepspeed = SimpleNamespace(num_processes=2, distributed_type=DistributedType.DEEPSPEED)
    check_processes(cfg(save_every_n_steps=5), on_cpu)  # fsdp: sftlab shards CPU (gloo) processes itself
    assert fsdp(cfg(), on_cpu) and not fsdp(cfg(), SimpleNamespace(num_processes=1))
    with pytest.raises(SftlabError, match="train.distributed=fsdp: accelerate set up DEEPSPEED"):
        check_processes(cfg(), deepspeed)
    with pytest.raises(SftlabError, match="train.distributed=zero3: accelerate set up MULTI_CPU instead"):
        check_processes(cfg(distributed="zero3"), on_cpu)
    check_processes(cfg(distributed="zero2"), deepspeed)
    with pytest.raises(SftlabError, match="train.save_every_n_steps: train.distributed=zero2 cannot write resumable"):
        check_processes(cfg(distributed="zero2", save_every_n_steps=5), deepspeed)
    check_processes(cfg(distributed="ddp", save_every_n_steps=5), on_cpu)


def test_fsdp_refuses_a_model_without_decoder_layers_to_shard():
    from types import SimpleNamespace

    import torch

    from sftlab.train.distributed import shard_objective

    objective = torch.nn.Module()
    objective.model = torch.nn.Sequential(torch.nn.Linear(2, 2))  # names no _no_split_modules
    with pytest.raises(SftlabError, match=r"train.distributed=fsdp: Sequential names no decoder layers to shard"):
        shard_objective(objective, SimpleNamespace(device=torch.device("cpu"), num_processes=2))


def test_resume_with_another_process_count_is_refused(tmp_path):
    from test_train_loop import tiny_run, train

    raw = tiny_run(tmp_path, train={"max_steps": 2, "save_every_n_steps": 1})
    train(raw)
    sidecar = tmp_path / "run" / "checkpoints" / "step-2" / "sftlab_state.json"
    state = json.loads(sidecar.read_text())
    assert state["processes"] == 1
    state["processes"] = 2  # as written by `sftlab train --nproc 2`
    sidecar.write_text(json.dumps(state))
    with pytest.raises(SftlabError, match=r"written by 2 process\(es\) and this run has 1; resume with --nproc 2"):
        train(raw, resume=True)


def test_only_collective_failures_get_the_lost_contact_message(monkeypatch):
    from sftlab.train.distributed import lost_contact_message

    assert lost_contact_message(RuntimeError("Timed out waiting 15000ms"), 10) is None  # a single process
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    assert lost_contact_message(ValueError("timed out"), 10) is None
    assert lost_contact_message(RuntimeError("shape mismatch"), 10) is None
    assert lost_contact_message(RuntimeError("[gloo] Timed out waiting 15000ms for recv operation"), 15) == (
        "rank 1: another training process stopped answering or died (train.dist_timeout_s=15): "
        "[gloo] Timed out waiting 15000ms for recv operation")


def test_train_cli_shows_the_launch_options(capsys):
    from sftlab.cli import main

    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = capsys.readouterr().out
    for option in ("--nproc", "--nnodes", "--node-rank", "--rdzv-endpoint"):
        assert option in text


def test_deepspeed_presets_build_accelerate_plugins():
    from types import SimpleNamespace

    from sftlab.train.distributed import _deepspeed_plugin

    train = SimpleNamespace(distributed="zero3", batch_size=2, precision="bf16", max_grad_norm=None)
    zero3 = _deepspeed_plugin(SimpleNamespace(train=train))
    assert zero3.zero_stage == 3 and zero3.zero3_save_16bit_model
    assert zero3.deepspeed_config["train_micro_batch_size_per_gpu"] == 2
    assert zero3.deepspeed_config["gradient_clipping"] == 0.0  # max_grad_norm null: no clipping
    train.distributed, train.max_grad_norm = "zero2", 1.0
    assert _deepspeed_plugin(SimpleNamespace(train=train)).zero_stage == 2


def test_checkpoints_from_before_the_distributed_settings_still_resume():
    from sftlab.train.setup import check_resume_config

    cfg = load_config(None, ["train.dist_timeout_s=99"], base=BASE)
    saved = cfg.model_dump(mode="json")
    for key in ("distributed", "dist_timeout_s"):
        del saved["train"][key]
    for key in ("streaming", "shuffle_buffer"):
        del saved["data"][key]
    check_resume_config(saved, cfg)  # absent keys count as their defaults; the timeout may change on resume
    with pytest.raises(SftlabError, match=r"data.streaming \(False -> True\)"):
        check_resume_config(saved, cfg.model_copy(update={"data": cfg.data.model_copy(update={"streaming": True})}))


def test_data_is_prepared_inside_main_process_first_and_later_ranks_read_the_cache(tmp_path):
    import contextlib

    from sftlab.models.load import load_tokenizer
    from sftlab.train.setup import _prepare
    from test_train_loop import tiny_run

    cfg = load_config(None, [], base=tiny_run(tmp_path))
    tokenizer = load_tokenizer(cfg.model)
    calls = []

    class Rank:
        def __init__(self, index):
            self.index = index

        @contextlib.contextmanager
        def main_process_first(self):  # accelerate: rank 0 runs the block, then the others
            calls.append(("enter", self.index))
            yield
            calls.append(("exit", self.index))

    first = _prepare(cfg, tokenizer, None, Rank(0))
    second = _prepare(cfg, tokenizer, None, Rank(1))
    assert calls == [("enter", 0), ("exit", 0), ("enter", 1), ("exit", 1)]
    assert (first.stats["train"]["cache_hit"], second.stats["train"]["cache_hit"]) == (False, True)
    assert second.train["input_ids"] == first.train["input_ids"]
