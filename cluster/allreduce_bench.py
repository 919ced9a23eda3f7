#!/usr/bin/env python3
"""All-reduce bandwidth of the process group, as nccl-tests' all_reduce_perf reports it.

Why it is here: when a multi-GPU trial scales badly, this separates the network from the
training code. It runs the same collective the gradient all-reduce uses (torch.distributed,
NCCL on GPUs) over a range of message sizes and prints, per size, the time and two
bandwidths with nccl-tests' definitions:

- ``algbw = bytes / time``;
- ``busbw = algbw * 2 * (n - 1) / n`` for all-reduce over n ranks: the traffic each rank's
  link carries, comparable with the link's rated bandwidth whatever n is.

Large messages (hundreds of MB) show the sustained bandwidth; DDP's gradient buckets are
25 MB by default, so sizes around that are what training sees. Orders of magnitude for large
messages: inside an NVSwitch node, a large fraction (typically 70-80%) of the one-direction
NVLink bandwidth of a GPU; across nodes with one HCA per GPU, close to the HCA's line rate
(a 200 Gb/s HDR HCA is 25 GB/s). A few GB/s or less across nodes usually means TCP sockets
instead of InfiniBand: read the NET lines of NCCL_DEBUG=INFO.

Run it with the launcher of the trials::

    torchrun --nproc_per_node 8 cluster/allreduce_bench.py                 # one node
    torchrun --nnodes 2 --nproc_per_node 8 --rdzv-backend c10d \\
        --rdzv-endpoint HOST:29500 cluster/allreduce_bench.py              # two nodes
    det experiment create cluster/allreduce-bench.yaml cluster/             # on the cluster

Off GPUs it uses the gloo backend (a functional check, not a benchmark).
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import time
from typing import Dict, List, Optional, Sequence

import torch
import torch.distributed as dist

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def bus_bandwidth(algbw: float, world_size: int) -> float:
    """nccl-tests' bus bandwidth of all-reduce: ``algbw * 2 (n - 1) / n`` (0 for one rank,
    which moves nothing)."""
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    return algbw * 2.0 * (world_size - 1) / world_size


def message_sizes(min_bytes: int, max_bytes: int, factor: int, element_size: int) -> List[int]:
    """Sizes from ``min_bytes`` to ``max_bytes`` (inclusive), multiplied by ``factor``, each
    rounded down to whole elements (at least one)."""
    if min_bytes < 1 or max_bytes < min_bytes:
        raise ValueError(f"need 1 <= --min-bytes <= --max-bytes, got {min_bytes} and {max_bytes}")
    if factor < 2:
        raise ValueError(f"--factor must be >= 2, got {factor}")
    sizes, size = [], min_bytes
    while size <= max_bytes:
        sizes.append(max(element_size, size - size % element_size))
        size *= factor
    return sizes


def _parse_size(text: str) -> int:
    units = {"K": 2**10, "M": 2**20, "G": 2**30}
    t = text.strip().upper().rstrip("B")
    try:
        if t and t[-1] in units:
            return int(float(t[:-1]) * units[t[-1]])
        return int(t)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 1024, 8M, 1G)") from None


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(sizes: Sequence[int], dtype: torch.dtype, device: torch.device, warmup: int,
            iters: int) -> List[Dict[str, float]]:
    """Time ``iters`` all-reduces per size (after ``warmup``); every rank must call it."""
    world = dist.get_world_size()
    rows = []
    element = torch.tensor([], dtype=dtype).element_size()
    for nbytes in sizes:
        x = torch.ones(nbytes // element, dtype=dtype, device=device)
        for _ in range(warmup):
            dist.all_reduce(x)
        _sync(device)
        dist.barrier()
        t0 = time.perf_counter()
        for _ in range(iters):
            dist.all_reduce(x)
        _sync(device)
        elapsed = (time.perf_counter() - t0) / iters
        # The slowest rank defines the collective's time.
        t = torch.tensor([elapsed], dtype=torch.float64, device=device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        seconds = float(t.item())
        algbw = nbytes / seconds / 1e9
        rows.append({"bytes": nbytes, "time_us": seconds * 1e6, "algbw_gbps": algbw,
                     "busbw_gbps": bus_bandwidth(algbw, world)})
        del x
    return rows


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--min-bytes", type=_parse_size, default=_parse_size("1M"))
    ap.add_argument("--max-bytes", type=_parse_size, default=_parse_size("1G"))
    ap.add_argument("--factor", type=int, default=4, help="size multiplier between steps")
    ap.add_argument("--dtype", choices=sorted(_DTYPES), default="float32")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--json", type=pathlib.Path, help="also write the results here (rank 0)")
    args = ap.parse_args(argv)
    if args.iters < 1 or args.warmup < 0:
        ap.error(f"--iters must be >= 1 and --warmup >= 0 (got {args.iters}, {args.warmup})")
    if "WORLD_SIZE" not in os.environ:
        ap.error("run it under torchrun or Determined's torch_distributed launcher "
                 "(WORLD_SIZE is not set)")

    cuda = torch.cuda.is_available()
    if cuda:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    dist.init_process_group("nccl" if cuda else "gloo")
    try:
        dtype = _DTYPES[args.dtype]
        sizes = message_sizes(args.min_bytes, args.max_bytes, args.factor,
                              torch.tensor([], dtype=dtype).element_size())
        rows = measure(sizes, dtype, device, args.warmup, args.iters)
        if dist.get_rank() == 0:
            header = {"world_size": dist.get_world_size(), "backend": dist.get_backend(),
                      "dtype": args.dtype, "device": torch.cuda.get_device_name(device) if cuda else "cpu",
                      "nccl": ".".join(map(str, torch.cuda.nccl.version())) if cuda else None,
                      "nccl_env": {k: v for k, v in sorted(os.environ.items()) if k.startswith("NCCL_")}}
            print(json.dumps(header), flush=True)
            print(f"{'bytes':>12} {'time_us':>12} {'algbw GB/s':>11} {'busbw GB/s':>11}")
            for r in rows:
                print(f"{r['bytes']:>12d} {r['time_us']:>12.1f} {r['algbw_gbps']:>11.2f} "
                      f"{r['busbw_gbps']:>11.2f}", flush=True)
            if args.json:
                args.json.write_text(json.dumps({**header, "results": rows}, indent=2) + "\n")
    finally:
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
