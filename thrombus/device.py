"""Where torch runs and in which precision: one set of rules for skull stripping, training and inference.

Every stage that runs a network asks the same questions (CUDA or CPU? bf16 or fp32? how many threads?),
and two copies of the answers had drifted apart (one refused `cuda:1`, the other a missing GPU with a
different error). They live here once; torch is imported inside the functions so that importing this
module stays cheap for the command-line start-up.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

#: Values of a `precision` option.
PRECISIONS: tuple[str, ...] = ("auto", "fp32", "bf16")


class DeviceError(ValueError):
    """A device that was asked for and is not there; the message says what to ask for instead."""


def resolve_device(requested: str, what: str = "device") -> torch.device:
    """`auto`: CUDA when present, else the CPU; `cpu`, `cuda` or `cuda:N` as asked, a missing GPU an error.

    `what` names the option in the error (`--device`, `skullstrip.device`), so the user knows what to change.
    """
    import torch

    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(requested)
    except RuntimeError as error:
        raise DeviceError(f"{what} {requested!r} is not a device: use auto, cpu or cuda") from error
    if device.type not in ("cpu", "cuda"):
        raise DeviceError(f"{what} must be auto, cpu or cuda, got {requested!r}")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"{what} {requested!r} was asked for but PyTorch sees no CUDA device; use auto or cpu")
    return device


def cpu_has_native_bf16() -> bool:
    """True when the CPU computes bf16 natively (AVX512-BF16 or AMX); elsewhere bf16 is emulated and
    slower than fp32, so `auto` keeps fp32 there."""
    import torch

    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


def resolve_precision(precision: str, device: torch.device) -> str:
    """`auto` -> `bf16` where the hardware runs it natively (recent CPUs, Ampere+ GPUs), else `fp32`."""
    import logging

    import torch

    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r} unknown; expected one of {PRECISIONS}")
    if precision != "auto":
        if precision == "bf16" and device.type == "cpu" and not cpu_has_native_bf16():
            logging.getLogger(__name__).warning(
                "bf16 requested on a CPU without native bf16: it is emulated and slower than fp32"
            )
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if cpu_has_native_bf16() else "fp32"


def autocast(device: torch.device, precision: str = "auto") -> contextlib.AbstractContextManager[Any]:
    """bf16 autocast where `precision` resolves to it, plain fp32 otherwise.

    The training and segmentation networks call this with the default: bf16 on CUDA (no loss scaling
    needed, unlike fp16), fp32 on CPU, where their results must stay byte-identical across reruns.
    """
    import torch

    if precision == "auto":
        chosen = "bf16" if device.type == "cuda" else "fp32"
    else:
        chosen = precision
    if chosen == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


#: Elementwise functions that PyTorch's CPU build hands to MKL's vector math library (VML), in the
#: dtypes a network of ours computes them in.
_VML_FUNCTIONS: tuple[str, ...] = ("exp", "log", "sqrt", "tanh", "erf", "sin", "cos")


@functools.cache
def warm_vector_math() -> None:
    """Call MKL's vector math once on this thread before torch splits any of it across threads.

    The first VML call of a process initialises the library; when that first call is split across
    threads, a thread that enters while another initialises sometimes computes its share with a less
    accurate routine (measured with torch 2.13.0 on an AVX-512 Xeon, 2 threads: the second half of the
    first `torch.exp` off by up to 7e-5, in 3-15% of fresh processes; every later call exact). The
    fusion's softmax is such a first call, so a rerun trained different weights now and then and the
    byte-identical rerun of the workflow failed. A call on tiny tensors runs on this thread alone and
    takes the initialisation out of the race.
    """
    import torch

    for dtype in (torch.float32, torch.float64):
        values = torch.full((8,), 0.5, dtype=dtype)
        for name in _VML_FUNCTIONS:
            getattr(torch, name)(values)


@functools.cache
def flush_subnormals() -> None:
    """Make this thread, and the intra-op threads started after it, treat subnormal floats as zero.

    Gradients deep in a trained network fall below float32's smallest normal value (1.2e-38; Adam's
    second moments held thousands such values after 30 fine-tuning steps of the demo), and x86 cores
    compute on such operands through a slow microcode path: the demo's fine-tuning took 1.4 s a step
    instead of 0.8 (30 steps on the demo stacks, 2 threads, AVX-512 Xeon). Nothing below 1e-38 changes
    what a network learns or predicts. The flag is per thread and a worker thread copies it from the
    thread that starts it, so it must be set before torch starts its thread pool: `set_threads` does it
    first, and every stage sets its thread count there before running torch.
    """
    import torch

    torch.set_flush_denormal(True)


def set_threads(threads: int) -> None:
    """Use `threads` intra-op threads from now on, with subnormals flushed and the vector math
    initialised first (above).

    Every stage that runs torch sets its thread count here, so no first parallel call can race and
    every thread of the pool flushes subnormals.
    """
    import torch

    flush_subnormals()
    warm_vector_math()
    torch.set_num_threads(threads)


@contextlib.contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """Use `threads` intra-op threads inside the block and restore the previous setting after it."""
    import torch

    previous = torch.get_num_threads()
    set_threads(threads)
    try:
        yield
    finally:
        set_threads(previous)
