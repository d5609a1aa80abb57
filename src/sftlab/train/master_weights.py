"""AdamW with exact fp32 master weights for bf16 parameters, at 2 extra bytes per parameter instead of 4.

An fp32 number is a bf16 number (its upper 16 bits) and 16 more bits. `MasterWeightAdamW` keeps each
trainable bf16 parameter as the upper half of its fp32 master (rounded: ties away from zero) and the
lower half as an int16 remainder in the optimizer state (`master_low`), so `join` rebuilds the master
bit for bit. A step joins the masters, runs torch's AdamW (fused kernel where available) in fp32 on fp32
copies of the gradients, and splits the results back into the parameters and remainders. The master
weights, and so the training, are those of fp32 AdamW; the model's bf16 weights are the masters rounded
to bf16. On the W1 benchmark model (39M parameters) that is 78 MB less than a separate fp32 copy
(docs/benchmarks.md, fifth round). fp16 parameters, which are not the upper half of an fp32 number, get a
separate fp32 copy (`master`). Moments are fp32 either way; the state_dict holds them, the remainders and
the step counts as they are (loading never casts them to the parameters' dtype).
"""

from __future__ import annotations

import torch
from torch.optim.adam import adam as adam_update

_LOW_HALF = 0x8000
_HIGH_MASK = -65536  # 0xFFFF0000 as an int32


def join(high: torch.Tensor, low: torch.Tensor) -> torch.Tensor:
    """The fp32 numbers whose upper 16 bits are the bf16 `high` and whose remainder is the int16 `low`."""
    bits = (high.view(torch.int16).to(torch.int32) << 16) + low.to(torch.int32)
    return bits.view(torch.float32)


def split(master: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(bf16 `master` rounded, int16 remainder): the inverse of `join` for finite values."""
    bits = master.view(torch.int32)
    high = (bits + _LOW_HALF) & _HIGH_MASK
    return (high >> 16).to(torch.int16).view(torch.bfloat16), (bits - high).to(torch.int16)


class MasterWeightAdamW(torch.optim.AdamW):
    """AdamW whose low-precision parameters are updated through exact fp32 masters (see the module docstring).

    Gradient clipping and accumulation act on the model parameters' own gradients as usual; `step()`
    reads each gradient as fp32. `master_weights()` gives the current fp32 masters."""

    def _state(self, param: torch.Tensor) -> dict:
        state = self.state[param]
        if not state:
            state["step"] = torch.zeros((), dtype=torch.float32, device=param.device)
            state["exp_avg"] = torch.zeros_like(param, dtype=torch.float32)
            state["exp_avg_sq"] = torch.zeros_like(param, dtype=torch.float32)
            if param.dtype == torch.bfloat16:
                state["master_low"] = torch.zeros_like(param, dtype=torch.int16)
            else:
                state["master"] = param.detach().float().clone()
        return state

    def _master(self, param: torch.Tensor) -> torch.Tensor:
        state = self._state(param)
        return join(param.detach(), state["master_low"]) if "master_low" in state else state["master"]

    def master_weights(self) -> list[torch.Tensor]:
        """The fp32 master of every parameter, in param_groups order."""
        return [self._master(p) for group in self.param_groups for p in group["params"]]

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            states = [self._state(p) for p in params]
            masters = [self._master(p) for p in params]
            beta1, beta2 = group["betas"]
            adam_update(
                masters, [p.grad.float() for p in params], [s["exp_avg"] for s in states],
                [s["exp_avg_sq"] for s in states], [], [s["step"] for s in states], foreach=group["foreach"],
                fused=group["fused"], decoupled_weight_decay=True, amsgrad=False, beta1=beta1, beta2=beta2,
                lr=group["lr"], weight_decay=group["weight_decay"], eps=group["eps"], maximize=False)
            for param, master, state in zip(params, masters, states):
                self._store(param, master, state)
        return loss

    @staticmethod
    def _store(param: torch.Tensor, master: torch.Tensor, state: dict) -> None:
        if "master_low" in state:
            high, state["master_low"] = split(master)
            param.copy_(high)
        else:
            param.copy_(master)

    def load_state_dict(self, state_dict: dict) -> None:
        """Load as torch does, but keep the fp32 moments and the remainders as saved (torch would cast them to
        the parameters' dtype). A state_dict with `master_weights` (earlier sftlab: full fp32 copies) also loads."""
        state_dict = dict(state_dict)
        saved, older = state_dict.pop("state"), state_dict.pop("master_weights", None)
        super().load_state_dict({**state_dict, "state": {}})
        params = [p for group in self.param_groups for p in group["params"]]
        ids = [i for group in state_dict["param_groups"] for i in group["params"]]
        with torch.no_grad():
            for index, (param, key) in enumerate(zip(params, ids)):
                if key in saved:
                    self.state[param] = {name: value.to(param.device) for name, value in saved[key].items()}
                if older is not None:
                    master, state = older[index].to(param.device, torch.float32), self.state[param]
                    if param.dtype == torch.bfloat16:
                        state["master_low"] = torch.zeros_like(param, dtype=torch.int16)
                    else:
                        state["master"] = master.clone()
                    self._store(param, master, state)
