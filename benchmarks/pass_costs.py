"""What `bench_generate.py` counts per pass of a generation call: FLOPs (FlopCounterMode, with the CPU attention and
LSTM kernels added), bytes moved and kernels launched (`PassRecorder`), grouped into passes by module hooks; the H100
projection made from them (`project_h100`); and the operator categories of the masked mode's profile."""

from __future__ import annotations

import contextlib
import math
import statistics

import torch
import torch.utils._pytree as pytree
from torch.utils import flop_counter
from torch.utils._python_dispatch import TorchDispatchMode

# ---- FLOPs, bytes and kernels per pass ----------------------------------------------------------------------------
_aten = torch.ops.aten
# Ops that launch no kernel on a GPU and move no data (views, aliasing, allocation).
NO_KERNEL_OPS = frozenset(
    getattr(_aten, name) for name in (
        "view", "_unsafe_view", "_reshape_alias", "t", "transpose", "permute", "expand", "slice", "select", "unsqueeze",
        "squeeze", "alias", "detach", "as_strided", "unbind", "split", "split_with_sizes", "unfold", "lift_fresh",
        "empty", "empty_like", "new_empty", "empty_strided", "view_as_real", "view_as_complex", "_local_scalar_dense",
        "sym_size", "sym_stride", "sym_numel", "is_nonzero",
    ) if hasattr(_aten, name)
)  # fmt: skip
# Ops whose result the host needs at once (a device-to-host sync on a GPU).
SYNC_OPS = frozenset(getattr(_aten, name) for name in ("_local_scalar_dense", "nonzero", "unique", "_unique2")
                     if hasattr(_aten, name))  # fmt: skip


def _cpu_sdpa_flop(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    """FLOPs of the CPU flash-attention kernel (FlopCounterMode counts only the GPU ones); like torch's, not causal."""
    return flop_counter.sdpa_flop_count(query_shape, key_shape, value_shape)


def _mkldnn_lstm_flop(input_shape, w_ih_shape, w_hh_shape, *args, out_shape=None, **kwargs) -> int:
    """FLOPs of one mkldnn LSTM layer (EnCodec's): 2 * tokens * (|W_ih| + |W_hh|)."""
    tokens = input_shape[0] * input_shape[1]
    return 2 * tokens * (math.prod(w_ih_shape) + math.prod(w_hh_shape))


def flop_counter_mode() -> flop_counter.FlopCounterMode:
    """FlopCounterMode that also counts the CPU flash-attention and mkldnn LSTM kernels."""
    custom = {}
    if hasattr(_aten, "_scaled_dot_product_flash_attention_for_cpu"):
        custom[_aten._scaled_dot_product_flash_attention_for_cpu] = _cpu_sdpa_flop
    if hasattr(_aten, "mkldnn_rnn_layer"):
        custom[_aten.mkldnn_rnn_layer] = _mkldnn_lstm_flop
    return flop_counter.FlopCounterMode(display=False, custom_mapping=custom)


def _bf16_bytes(tensor: torch.Tensor) -> int:
    """Bytes of `tensor` with floating point stored as bf16 (a bf16 deployment); stride-0 expansions count once."""
    size = tensor.element_size()
    elements = min(tensor.numel(), tensor.untyped_storage().nbytes() // max(size, 1))
    return elements * (2 if tensor.is_floating_point() else size)


class PassRecorder(TorchDispatchMode):
    r"""
    Splits a call into passes (segments opened by `open`, from module hooks) and records, per pass, the kernels (ops
    other than views and allocations), the host syncs, the FLOPs (the change of `flops`' total, a FlopCounterMode
    entered before this mode) and the bytes a GPU would move: each weight touched read once in bf16 (only the rows an
    embedding gathers) plus every other op's inputs and outputs in bf16 (unfused kernels; a `cat` counts only what it
    adds, as a preallocated KV cache appends in place).
    """

    def __init__(self, flops: flop_counter.FlopCounterMode, modules: list[torch.nn.Module]):
        super().__init__()
        self.flops = flops
        self.weights = {}
        for module in modules:
            for tensor in (*module.parameters(), *module.buffers()):
                if tensor.is_floating_point():
                    self.weights[tensor.untyped_storage().data_ptr()] = tensor.numel() * 2
        self.passes: list[dict] = []
        self.current: dict | None = None
        self._flops_at_open = 0

    def open(self, name: str) -> None:
        self.close()
        self._flops_at_open = self.flops.get_total_flops()
        self.current = {"name": name, "kernels": 0, "syncs": 0, "flops": 0, "weight_bytes": 0, "activation_bytes": 0,
                        "_weights": set()}  # fmt: skip

    def close(self) -> None:
        if self.current is not None:
            self.current["flops"] = self.flops.get_total_flops() - self._flops_at_open
            del self.current["_weights"]
            self.passes.append(self.current)
            self.current = None

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        record = self.current
        if record is None or func.overloadpacket in NO_KERNEL_OPS:
            if record is not None and func.overloadpacket in SYNC_OPS:
                record["syncs"] += 1
            return out
        packet = func.overloadpacket
        record["kernels"] += 1
        record["syncs"] += packet in SYNC_OPS
        inputs = [t for t in pytree.tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
        outputs = [t for t in pytree.tree_leaves(out) if isinstance(t, torch.Tensor)]
        moved = []
        for tensor in inputs:
            key = tensor.untyped_storage().data_ptr()
            if key in self.weights:
                if packet is _aten.embedding:
                    record["weight_bytes"] += sum(_bf16_bytes(o) for o in outputs)  # the rows gathered
                elif key not in record["_weights"]:
                    record["_weights"].add(key)
                    record["weight_bytes"] += self.weights[key]
            else:
                moved.append(_bf16_bytes(tensor))
        written = sum(_bf16_bytes(t) for t in outputs)
        if packet is _aten.cat and moved:
            record["activation_bytes"] += sum(moved) + written - 2 * max(moved)
        else:
            record["activation_bytes"] += sum(moved) + written
        return out


@contextlib.contextmanager
def instance_wrapper(obj, method: str, before):
    """Calls `before()` ahead of `obj.method` (an instance attribute shadowing the class's) inside the block."""
    original = getattr(obj, method)

    def wrapped(*args, **kwargs):
        before()
        return original(*args, **kwargs)

    setattr(obj, method, wrapped)
    try:
        yield
    finally:
        delattr(obj, method)


def record_passes(call, modules: list[torch.nn.Module], openers) -> tuple[int, list[dict]]:
    """Runs `call()` under FlopCounterMode and a PassRecorder; `openers(recorder)` yields the context managers that
    open its passes. Returns the total FLOPs and the passes."""
    counter = flop_counter_mode()
    recorder = PassRecorder(counter, modules)
    with contextlib.ExitStack() as stack:
        stack.enter_context(counter)
        stack.enter_context(recorder)
        recorder.open("setup")
        for manager in openers(recorder):
            stack.enter_context(manager)
        call()
        recorder.close()
    return counter.get_total_flops(), recorder.passes


@contextlib.contextmanager
def forward_pre_hook(module: torch.nn.Module, hook):
    handle = module.register_forward_pre_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def masked_openers(model):
    """Passes of masked generate: prefill (prompt embedding + LLM), codebook-1 pass, finer pass, codec."""

    def openers(recorder: PassRecorder):
        def decoder_pass(_module, args):
            recorder.open("codebook-1 pass" if int(args[3]) == 0 else "finer pass")

        return [
            instance_wrapper(model, "get_multimodal_embeddings", lambda: recorder.open("prefill")),
            forward_pre_hook(model.masked_decoder, decoder_pass),
            instance_wrapper(model, "decode_audio", lambda: recorder.open("codec")),
        ]

    return openers


def musicgen_openers(musicgen):
    """Passes of MusicGen generate: T5 text encoder, one per decoder step (with its sampling), codec."""

    def openers(recorder: PassRecorder):
        return [
            forward_pre_hook(musicgen.text_encoder, lambda *_: recorder.open("text encoder")),
            forward_pre_hook(musicgen.decoder, lambda *_: recorder.open("step")),
            instance_wrapper(musicgen.audio_encoder, "decode", lambda: recorder.open("codec")),
        ]

    return openers


def group_passes(passes: list[dict]) -> dict:
    """Sums of each kind of pass: count, FLOPs, weight/activation bytes, kernels, syncs."""
    groups: dict[str, dict] = {}
    for record in passes:
        group = groups.setdefault(record["name"], {"count": 0, "flops": 0, "weight_bytes": 0, "activation_bytes": 0,
                                                   "kernels": 0, "syncs": 0})  # fmt: skip
        group["count"] += 1
        for key in ("flops", "weight_bytes", "activation_bytes", "kernels", "syncs"):
            group[key] += record[key]
    return groups


# ---- H100 projection ---------------------------------------------------------------------------------------------
def pass_seconds(record: dict, args, realistic: bool) -> float:
    """One pass on an H100: max(FLOPs / compute, bytes / bandwidth), plus kernels x launch overhead if `realistic`."""
    flops_util, bw_util = (args.flops_utilization, args.bandwidth_utilization) if realistic else (1.0, 1.0)
    compute = record["flops"] / (args.peak_tflops * 1e12 * flops_util)
    memory = (record["weight_bytes"] + record["activation_bytes"]) / (args.bandwidth_tbs * 1e12 * bw_util)
    return max(compute, memory) + (record["kernels"] * args.launch_us * 1e-6 if realistic else 0.0)


def project_h100(raw_passes: list, args) -> dict:
    r"""
    Projected time on one H100 SXM of the masked mode and the masked-size MusicGen at the longest length, per batch
    size and step count: the sum over passes of `pass_seconds`. The masked mode's passes are recorded on one call at
    the fewest steps; N steps = that call's other passes + N times its mean codebook-1 pass (every codebook-1 pass
    has the same shapes). MusicGen's passes are its T5 encoder, each decoder step (its KV cache read at that step's
    length) and the codec.
    """
    longest = max(args.audio_seconds)
    rows = []
    for batch in args.batch_sizes:
        masked = next(p for mode, s, b, n, p in raw_passes if mode == "masked" and s == longest and b == batch
                      and n == min(args.decoding_steps))  # fmt: skip
        music = next(p for mode, s, b, n, p in raw_passes if mode == "musicgen" and s == longest and b == batch)
        step_passes = [p for p in masked if p["name"] == "codebook-1 pass"]
        other_passes = [p for p in masked if p["name"] != "codebook-1 pass"]
        for steps in args.decoding_steps:
            row = {"audio_seconds": longest, "batch_size": batch, "decoding_steps": steps}
            for variant, realistic in (("roofline", False), ("realistic", True)):
                mean_pass = statistics.fmean(pass_seconds(p, args, realistic) for p in step_passes)
                masked_s = sum(pass_seconds(p, args, realistic) for p in other_passes) + steps * mean_pass
                music_s = sum(pass_seconds(p, args, realistic) for p in music)
                row[f"masked_ms_{variant}"] = 1000 * masked_s
                row[f"musicgen_ms_{variant}"] = 1000 * music_s
                row[f"ratio_masked_over_musicgen_per_audio_second_{variant}"] = masked_s / music_s
            rows.append(row)
    checks = []  # the extrapolation against the calls measured at other step counts (batch 1)
    for mode, seconds, batch, steps, measured in raw_passes:
        if mode != "masked" or seconds != longest or steps == min(args.decoding_steps):
            continue
        base = next(p for m, s, b, n, p in raw_passes if m == "masked" and s == longest and b == batch
                    and n == min(args.decoding_steps))  # fmt: skip
        step_flops = [p["flops"] for p in base if p["name"] == "codebook-1 pass"]
        predicted = sum(p["flops"] for p in base if p["name"] != "codebook-1 pass") + steps * statistics.fmean(step_flops)
        total = sum(p["flops"] for p in measured)
        checks.append({"batch_size": batch, "decoding_steps": steps, "measured_flops": total,
                       "extrapolated_flops": predicted, "relative_error": predicted / total - 1})  # fmt: skip
    details = {}
    for batch in args.batch_sizes:
        masked = next(p for mode, s, b, n, p in raw_passes if mode == "masked" and s == longest and b == batch
                      and n == min(args.decoding_steps))  # fmt: skip
        music = next(p for mode, s, b, n, p in raw_passes if mode == "musicgen" and s == longest and b == batch)
        details[str(batch)] = {
            "masked_codebook1_pass": _mean_pass([p for p in masked if p["name"] == "codebook-1 pass"], args),
            "musicgen_step": _mean_pass([p for p in music if p["name"] == "step"], args),
            "musicgen_steps": sum(p["name"] == "step" for p in music),
        }
    return {
        "device": "H100 SXM (projection; nothing ran on a GPU)",
        "assumptions": {
            "peak_tflops_bf16_dense": args.peak_tflops,
            "hbm_tb_per_s": args.bandwidth_tbs,
            "roofline": "per pass max(FLOPs / peak, bytes / bandwidth), 100% of both, no launch overhead",
            "realistic": (
                f"per pass max(FLOPs / ({args.flops_utilization:g} x peak), bytes / ({args.bandwidth_utilization:g} "
                f"x bandwidth)) + kernels x {args.launch_us:g} us launch overhead (no CUDA graphs, no overlap of "
                "launches with work; host syncs not charged)"
            ),
            "bytes": (
                "weights in bf16 read once per pass (embeddings: the rows gathered) + activations: every op's inputs "
                "and outputs in bf16 as recorded on CPU (unfused kernels, so an upper bound for fused ones; "
                "attention is one fused flash kernel, so no L x L scores; KV cache read by each step's attention, "
                "appended in place)"
            ),
            "flops": "FlopCounterMode (matmuls, convolutions, attention, LSTM); elementwise ops count as bytes only",
            "masked_steps": "passes recorded at the fewest --decoding-steps; N steps = N x the mean codebook-1 pass",
        },
        "settings": rows,
        "per_pass": details,
        "extrapolation_check": checks,
    }


def _mean_pass(passes: list[dict], args) -> dict:
    """Mean FLOPs, bytes, kernels and projected microseconds of a list of passes."""
    mean = lambda key: statistics.fmean(p[key] for p in passes)  # noqa: E731
    flops, weights, acts = mean("flops"), mean("weight_bytes"), mean("activation_bytes")
    return {
        "flops": flops,
        "weight_bytes": weights,
        "activation_bytes": acts,
        "kernels": mean("kernels"),
        "flops_per_byte": flops / (weights + acts),
        "us_roofline": 1e6 * statistics.fmean(pass_seconds(p, args, False) for p in passes),
        "us_realistic": 1e6 * statistics.fmean(pass_seconds(p, args, True) for p in passes),
    }


# ---- profile of the masked mode -----------------------------------------------------------------------------------
PROFILE_CATEGORIES = (
    ("linear (addmm/mm/bmm)", ("addmm", "mm", "bmm", "baddbmm", "linear", "matmul")),
    ("attention (sdpa)", ("scaled_dot_product", "flash_attention", "efficient_attention")),
    ("softmax/log_softmax", ("softmax",)),
    ("sampling (topk/multinomial/gather/max)", ("topk", "multinomial", "exponential", "gather", "max", "argmax")),
    ("argsort/sort", ("sort",)),
    ("norms", ("layer_norm", "rsqrt")),
    ("convolution (EnCodec)", ("convolution", "conv", "reflection_pad", "weight_norm")),
    ("LSTM (EnCodec)", ("rnn", "lstm")),
)


def operator_category(name: str) -> str:
    short = name.split("::")[-1]
    for category, keys in PROFILE_CATEGORIES:
        if any(key == short or key in short for key in keys):
            return category
    return "other (elementwise, copies, embeddings, ...)"
