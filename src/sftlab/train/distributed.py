"""Several training processes: the accelerator per `train.distributed`, each rank's share of a step, launching.

Data parallel design: `train.batch_size` is the micro-batch of ONE process. An optimizer step visits
`grad_accum` global micro-batches of `batch_size x processes` rows, drawn in exactly the order a single
process with batch `batch_size x processes` would draw them (`sftlab.train.batches`), and each rank takes
its contiguous part of every global micro-batch (`rank_share`). The supervised-token (or example) count is
summed over all ranks before any backward pass, and every rank's summed loss is divided by that global
count and multiplied by the process count (the gradient all-reduce averages over ranks). So N processes x
batch B take the same steps, with the same losses, as 1 process x batch N*B.

The accelerator runs gloo on CPU and NCCL on CUDA; the process group timeout is `train.dist_timeout_s`.
`train.distributed` picks ddp, fsdp or DeepSpeed ZeRO-2/3. fsdp is PyTorch's FSDP2 `fully_shard` applied
here (`shard_objective`, CPU/gloo or CUDA/NCCL; accelerate only runs its FSDP on accelerators): every decoder
layer is one shard group, the training objective the root group. Step checkpoints under fsdp hold the gathered
weights (ordinary safetensors) and the sharded optimizer state written by every rank with
`torch.distributed.checkpoint` (`save_sharded_optimizer`, `load_sharded_optimizer`); a resume needs the same
process count. ZeRO needs CUDA (checked at config time), writes no resumable step checkpoints (refused at start)
and, like fsdp, gathers the final and best model into ordinary safetensors. `launch` starts N workers
through `torch.distributed.run` (torchrun), which stops every worker when one dies.
"""

from __future__ import annotations

import contextlib
import os
from datetime import timedelta

from sftlab.errors import SftlabError


def world_size() -> int:
    """Processes of this run according to the launcher's environment (1 outside torchrun/accelerate launch)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def make_accelerator(cfg):
    """The run's Accelerator: precision, CPU/GPU, process-group timeout and the train.distributed plugin."""
    import torch
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from accelerate.utils import InitProcessGroupKwargs

    AcceleratorState._reset_state()  # a previous in-process run may have used other precision settings
    plugins = {}  # fsdp: a plain multi-process accelerator; shard_objective applies fully_shard itself
    if world_size() > 1 and cfg.train.distributed in ("zero2", "zero3"):
        plugins["deepspeed_plugin"] = _deepspeed_plugin(cfg)
    # fp16 stays "no": its autocast and gradient scaler are sftlab's own (accelerate's does nothing on a CPU)
    return Accelerator(mixed_precision="bf16" if cfg.train.precision == "bf16" else "no",
                       cpu=not torch.cuda.is_available(),
                       kwargs_handlers=[InitProcessGroupKwargs(timeout=timedelta(seconds=cfg.train.dist_timeout_s))],
                       **plugins)


def _deepspeed_plugin(cfg):
    """DeepSpeed ZeRO-2/3 with this run's micro-batch, precision and clipping (CUDA only; see docs/distributed.md)."""
    from accelerate import DeepSpeedPlugin

    stage = 3 if cfg.train.distributed == "zero3" else 2
    config = {"train_micro_batch_size_per_gpu": cfg.train.batch_size, "gradient_accumulation_steps": 1,
              "zero_optimization": {"stage": stage, "stage3_gather_16bit_weights_on_model_save": stage == 3},
              "bf16": {"enabled": cfg.train.precision == "bf16"}, "gradient_clipping": cfg.train.max_grad_norm or 0.0}
    return DeepSpeedPlugin(hf_ds_config=config, zero3_save_16bit_model=stage == 3)


def check_processes(cfg, accelerator) -> None:
    """Fail at start when a multi-process run cannot do what train.distributed asks."""
    from accelerate.utils import DistributedType

    if accelerator.num_processes == 1 or cfg.train.distributed == "ddp":
        return
    if cfg.train.distributed == "fsdp":
        if accelerator.distributed_type not in (DistributedType.MULTI_CPU, DistributedType.MULTI_GPU):
            raise SftlabError(f"train.distributed=fsdp: accelerate set up {accelerator.distributed_type.value}; "
                              "sftlab's FSDP runs on CPU (gloo) or CUDA (NCCL) processes; use train.distributed=ddp here")
        return
    if accelerator.distributed_type != DistributedType.DEEPSPEED:
        raise SftlabError(f"train.distributed={cfg.train.distributed}: accelerate set up "
                          f"{accelerator.distributed_type.value} instead; use train.distributed=ddp here")
    if cfg.train.save_every_n_steps:
        raise SftlabError(f"train.save_every_n_steps: train.distributed={cfg.train.distributed} cannot write resumable "
                          "step checkpoints yet (the sharded optimizer state is not consolidated); unset it or use "
                          "ddp or fsdp")


def fsdp(cfg, accelerator) -> bool:
    """Whether this run shards its model with sftlab's FSDP2 (`train.distributed=fsdp`, several processes)."""
    return accelerator.num_processes > 1 and cfg.train.distributed == "fsdp"


def sharded(cfg, accelerator) -> bool:
    """Whether the weights are sharded over processes (FSDP or ZeRO), so saving gathers them first."""
    return accelerator.num_processes > 1 and cfg.train.distributed != "ddp"


def gathered_state_dict(cfg, accelerator, objective, model) -> dict | None:
    """The full weights of a sharded `model` (inside the prepared `objective`), gathered by every rank's call.

    Keys are those of `model.save_pretrained` (peft: the adapter's own); None when the model is not sharded.
    Under fsdp only the main process receives the tensors (on CPU); the others get an empty dict."""
    if not sharded(cfg, accelerator):
        return None
    if fsdp(cfg, accelerator):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        full = get_model_state_dict(objective, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if not accelerator.is_main_process:
            return {}
    else:
        full = accelerator.get_state_dict(objective)
    state = {key.removeprefix("model."): value for key, value in full.items()}
    if hasattr(model, "peft_config"):
        from peft import get_peft_model_state_dict

        return get_peft_model_state_dict(model, state_dict=state)
    return state


def shard_objective(objective, accelerator):
    """FSDP2 `fully_shard` of every decoder layer (the model's `_no_split_modules`) and of `objective` as the root.

    The model is moved to the accelerator's device first; build the optimizer afterwards (the parameters
    become sharded DTensors). `call_unsharded` runs other code (evaluation, generation) through the root."""
    import torch
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method

    layer_names = set(getattr(objective.model, "_no_split_modules", None) or [])
    layers = [module for module in objective.model.modules() if type(module).__name__ in layer_names]
    if not layers:
        raise SftlabError(f"train.distributed=fsdp: {type(objective.model).__name__} names no decoder layers to "
                          "shard (_no_split_modules); use train.distributed=ddp")
    objective.to(accelerator.device)
    mesh = init_device_mesh(accelerator.device.type, (accelerator.num_processes,))
    for layer in layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(objective, mesh=mesh)
    objective.call_unsharded = _call.__get__(objective, type(objective))
    register_fsdp_forward_method(objective, "call_unsharded")  # FSDP gathers the root's weights around it
    torch.distributed.barrier()
    return objective


def _call(self, function, *args, **kwargs):
    return function(*args, **kwargs)


def call_unsharded(session, function, *args, **kwargs):
    """`function(*args, **kwargs)` with the model usable outside the training objective (evaluation, generation).

    Under fsdp it runs inside the root's forward hooks (every rank must call it the same number of times),
    and the root's weights are sharded again afterwards; otherwise it is a plain call."""
    if not fsdp(session.cfg, session.accelerator):
        return function(*args, **kwargs)
    try:
        return session.objective.call_unsharded(function, *args, **kwargs)
    finally:
        session.objective.reshard()


def clip_grad_norm(session, params, max_norm: float) -> float | None:
    """Clip the gradients of `params` to `max_norm` (over all ranks); the norm before clipping, or None (DeepSpeed)."""
    if not fsdp(session.cfg, session.accelerator):
        from sftlab.train.optim import MasterWeightAdamW

        optimizer = _inner(session.optimizer)
        if isinstance(optimizer, MasterWeightAdamW):  # clips inside its step (every parameter it holds is `params`)
            return optimizer.clip_in_step(max_norm)
        norm = session.accelerator.clip_grad_norm_(params, max_norm)  # None: DeepSpeed clips itself
        return None if norm is None else float(norm)
    import torch
    from torch.distributed.tensor import DTensor

    grads = [p.grad for p in params if p.grad is not None]
    total = torch.nn.utils.get_total_norm(grads, norm_type=2.0)
    if isinstance(total, DTensor):  # each rank holds the norm of its shards: combine them
        total = total.full_tensor()
    torch.nn.utils.clip_grads_with_norm_(params, max_norm, total)
    return float(total)


def save_sharded_optimizer(session, directory) -> None:
    """Every rank writes its optimizer shards to `directory` (torch.distributed.checkpoint; a shared file system)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    state = get_optimizer_state_dict(session.objective, _inner(session.optimizer))
    dcp.save({"optimizer": state}, checkpoint_id=str(directory))


def optimizer_writer(session):
    """Under fsdp, `write(tmp)` for `save_checkpoint`: every rank calls it (the others with None) and writes its
    optimizer shards into the main process's temporary checkpoint directory; None for other runs."""
    if not fsdp(session.cfg, session.accelerator):
        return None
    return lambda tmp: save_sharded_optimizer(session, from_main(session.accelerator, tmp) / "optimizer")


def load_sharded_optimizer(objective, optimizer, directory) -> None:
    """Read the optimizer shards written by `save_sharded_optimizer` into this rank's optimizer (every rank calls)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict, set_optimizer_state_dict

    state = {"optimizer": get_optimizer_state_dict(objective, _inner(optimizer))}
    dcp.load(state, checkpoint_id=str(directory))
    set_optimizer_state_dict(objective, _inner(optimizer), state["optimizer"])


def from_main(accelerator, value):
    """The main process's `value` on every rank (e.g. the temporary directory a checkpoint is written into)."""
    from accelerate.utils import broadcast_object_list

    return broadcast_object_list([value], from_process=0)[0]


def _inner(optimizer):
    """The torch optimizer inside accelerate's wrapper."""
    return getattr(optimizer, "optimizer", optimizer)


def rank_share(indices: list[int], rank: int, processes: int) -> tuple[list[int], bool]:
    """This rank's contiguous part of a global micro-batch, and whether it carries loss.

    Parts differ by at most one row. A rank left with no row (a last micro-batch smaller than the process
    count) gets the batch's first row with `False`: it runs forward and backward at weight 0 so the
    gradient all-reduce of the other ranks is matched.
    """
    if processes == 1:
        return indices, True
    base, extra = divmod(len(indices), processes)
    start = rank * base + min(rank, extra)
    part = indices[start:start + base + (1 if rank < extra else 0)]
    return (part, True) if part else (indices[:1], False)


def reduce_sum(accelerator, values: list[float]) -> list[float]:
    """`values` summed over all processes (float64); returned as they are in a single process."""
    if accelerator.num_processes == 1:
        return values
    import torch

    tensor = torch.tensor(values, dtype=torch.float64, device=accelerator.device)
    return [float(v) for v in accelerator.reduce(tensor, reduction="sum").tolist()]


def gather_objects(accelerator, value) -> list:
    """`value` from every rank, in rank order (a one-item list in a single process)."""
    if accelerator.num_processes == 1:
        return [value]
    from accelerate.utils import gather_object

    return gather_object([value])


def combine_eval_sums(accelerator):
    """A function that sums evaluation totals and joins cls predictions/labels over all processes (None for one)."""
    if accelerator.num_processes == 1:
        return None

    def combine(sums: dict) -> dict:
        total, count = reduce_sum(accelerator, [sums["total"], float(sums["count"])])
        parts = gather_objects(accelerator, (sums["predictions"], sums["labels"]))
        return {"total": total, "count": int(count), "predictions": [p for predicted, _ in parts for p in predicted],
                "labels": [label for _, labels in parts for label in labels]}
    return combine


def no_sync_unless_last(accelerator, model, is_last: bool):
    """Skip the gradient all-reduce for all but the last micro-batch of a step (DDP/FSDP accumulate locally)."""
    if accelerator.num_processes == 1 or is_last:
        return contextlib.nullcontext()
    if hasattr(model, "set_requires_gradient_sync"):  # FSDP2: unsharded gradients add up until the last one
        return _fsdp_no_sync(model)
    return accelerator.no_sync(model)


@contextlib.contextmanager
def _fsdp_no_sync(model):
    model.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        model.set_requires_gradient_sync(True)


def launch_arguments(program: list[str], nproc: int, nnodes: int = 1, node_rank: int = 0,
                     rdzv_endpoint: str | None = None, rdzv_id: str = "sftlab") -> list[str]:
    """torchrun arguments that start `program` (a script and its arguments, or ['-m', module, ...]) N times."""
    args = ["--nproc-per-node", str(nproc), "--max-restarts", "0", "--monitor-interval", "0.5"]
    if nnodes == 1 and rdzv_endpoint is None:
        args.append("--standalone")
    else:
        if rdzv_endpoint is None:
            raise SftlabError("--nnodes > 1 needs --rdzv-endpoint HOST:PORT (the address of node 0, the same on every node)")
        args += ["--nnodes", str(nnodes), "--node-rank", str(node_rank), "--rdzv-backend", "c10d",
                 "--rdzv-endpoint", rdzv_endpoint, "--rdzv-id", rdzv_id]
    if program and program[0] == "-m":
        return args + ["--module", *program[1:]]
    return args + list(program)


def launch(program: list[str], nproc: int, **options) -> None:
    """Run `program` in `nproc` processes per node through torchrun; a failed rank raises SftlabError.

    torchrun watches its workers: when one exits with an error or is killed, it stops the others and
    reports the failures here, as one line (`sftlab.worker_errors`: the workers' own error first). A rank
    that hangs makes the others fail after `train.dist_timeout_s`.
    Ctrl-C makes torchrun send SIGTERM to the workers (which stop at the next step boundary and checkpoint)
    and kill them 30 s later; it is raised here as KeyboardInterrupt.
    """
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    from sftlab import worker_errors
    from sftlab.train.launch_checks import check_launch, quiet_torchrun

    check_launch(nproc, options.get("nnodes", 1), options.get("node_rank", 0), options.get("rdzv_endpoint"))
    arguments = parse_args(launch_arguments(program, nproc, **options))
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # torchrun's own default, stated so it does not warn
    with worker_errors.collecting() as errors:
        try:
            with quiet_torchrun():
                run(arguments)
        except SignalException as stop:  # Ctrl-C (or SIGTERM) reached the launcher; workers got SIGTERM to stop
            raise KeyboardInterrupt(str(stop)) from None
        except ChildFailedError as failed:
            rank, first = failed.get_first_failure()
            signal = first.signal_name() if first.exitcode < 0 else None
            raise SftlabError(worker_errors.summary(errors, (rank, first.exitcode, signal), len(failed.failures))) from None


def lost_contact_message(exc: BaseException, timeout_s: int) -> str | None:
    """A one-line message when `exc` is a collective that failed because another rank died or hung, else None.

    Only in a multi-process run (WORLD_SIZE > 1): a torch.distributed error, or a RuntimeError from gloo/NCCL
    that timed out or lost its connection (the process group may already be torn down when this is asked)."""
    import torch.distributed as dist

    if world_size() == 1 or not isinstance(exc, (dist.DistError, RuntimeError)):
        return None
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    words = ("timed out", "timeout", "connection", "closed", "peer", "broken pipe")
    if not isinstance(exc, dist.DistError) and not any(word in text.lower() for word in words):
        return None
    return (f"rank {os.environ.get('RANK', '?')}: another training process stopped answering or died "
            f"(train.dist_timeout_s={timeout_s}): {text[:200]}")
