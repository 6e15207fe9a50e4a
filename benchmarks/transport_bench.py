"""Transport benchmark: STEP_CHUNK MB/s through ``MPIEndpoint`` against raw mpi4py.

Two ranks (``mpiexec -n 2``, launched by this script): rank 0 plays the actor,
rank 1 the replay shard. For each chunk size the same number of messages of the
same byte length goes from rank 0 to rank 1 in four ways, alternated
``--repeats`` times (medians reported):

* ``endpoint``: the project's path, ``MPIEndpoint.send("STEP_CHUNK", ...)`` (pack
  into a pooled buffer, ``Issend``; at most ``--send-depth`` in flight, the
  actor's ``actor.send_pool``) and ``poll("STEP_CHUNK")`` on the shard (unpack =
  header check and field views, ``--recv-depth`` buffers filled by matched probes, as in a
  job); the sender flushes at the end, so every message was matched.
* ``endpoint_try_send``: the actor rank's own call, ``try_send`` (never blocks)
  with ``progress()`` while the pool is full.
* ``raw_isend``: mpi4py ``Isend`` of prepacked bytes from ``--send-depth`` buffers
  and ``Irecv`` into ``--recv-depth`` posted buffers (``Waitany``), no packing,
  no header check: the ceiling.
* ``raw_issend``: the same with ``Issend``, the synchronous mode the transport
  uses on purpose (a completed send means the shard has matched it: true
  backpressure, a clean shutdown); this isolates the cost of that choice.

``ratio = endpoint MB/s / raw_isend MB/s`` (target >= 0.7), and also against
``raw_issend``. Messages per second are reported beside MB/s: for CartPole
chunks (< 1 KB) the per-message cost in Python, not the bandwidth, decides.

Chunk sizes (``STEP_CHUNK`` layouts declared exactly as a job does):

* ``cartpole``: the embedded default job (``presets/default.yaml``: masked
  CartPole, 2 float32 per observation, LSTM 64, sequences of 8 + 16 steps every
  8): a chunk of 8 steps and 1 sequence, what the adder sends per window.
* ``atari_40``, ``atari_160``: the paper's Atari shapes (84x84 uint8 frames,
  LSTM 512, sequences of 40 + 80 steps every 40): 40 steps + 1 sequence (a
  running episode's chunk) and 160 steps + 2 sequences (the layout's maximum,
  ``L + P``).

Usage::

    python benchmarks/transport_bench.py [--repeats 3] [--seconds 0.7] [--quick] [--out FILE]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

if not __package__:  # a script, not benchmarks.<name>: the repository root on sys.path
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks._common import run_worker, write_result  # noqa: E402

from r2d2_hpc.comm.messages import declare_messages  # noqa: E402
from r2d2_hpc.comm.wire import Layout, aligned_empty
from r2d2_hpc.config import Config, ReplayConfig, load_config  # noqa: E402
from r2d2_hpc.presets import load_preset  # noqa: E402

SENDER, RECEIVER = 0, 1
MODES = ("endpoint", "endpoint_try_send", "raw_isend", "raw_issend")
#: Tag of the raw runs (on a duplicate of the world communicator of their own).
RAW_TAG = 77


class ChunkCase:
    """One message size: its layout and one packed message's fields.

    Args:
      name: case name.
      layout: the STEP_CHUNK layout of that job.
      fields: the message's arrays (what an actor passes to ``send``).
    """

    def __init__(self, name: str, layout: Layout, fields: Dict[str, Any]) -> None:
        self.name = name
        self.layout = layout
        self.fields = fields
        buf = aligned_empty(layout.nbytes)
        self.nbytes = layout.pack(buf, **fields)
        self.packed = buf[:self.nbytes].copy()


def chunk_fields(steps: int, sequences: int, frame: Tuple[int, ...], dtype: Any,
                 state_size: int, rng: np.random.Generator) -> Dict[str, Any]:
    """A STEP_CHUNK's arrays with ``steps`` steps and ``sequences`` sequences."""
    dt = np.dtype(dtype)
    if dt == np.uint8:
        obs = rng.integers(0, 256, (steps, *frame), dtype=np.uint8)
    else:
        obs = rng.standard_normal((steps, *frame)).astype(dt)
    m = sequences
    return dict(stream_id=5, first_step_index=1000, obs=obs,
                action=rng.integers(0, 4, steps), reward=rng.random(steps).astype(np.float32),
                discount=np.ones(steps, np.float32), first=np.zeros(steps, bool),
                seq_start_step=1000 - np.arange(m) * 8, seq_length=np.full(m, 24),
                seq_state_h=rng.standard_normal((m, state_size)).astype(np.float32),
                seq_state_c=rng.standard_normal((m, state_size)).astype(np.float32),
                seq_prev_action=np.zeros(m, np.int64), seq_prev_reward=np.zeros(m, np.float32),
                seq_priority=rng.random(m))


def build_cases(names: Sequence[str], seed: int = 0) -> Dict[str, Tuple[ChunkCase, Any]]:
    """Each case with the Messages of its job (needed to build the endpoint)."""
    rng = np.random.default_rng(seed)
    out: Dict[str, Tuple[ChunkCase, Any]] = {}
    cart = load_config(None, [], base=load_preset("default"))
    # masked CartPole: (cart position, pole angle), float32; 2 actions.
    cart_msgs = declare_messages(cart, (2,), np.float32, cart.network.lstm_size, 1, 2)
    atari = Config(replay=ReplayConfig())   # paper shapes: 40 + 80 every 40, LSTM 512
    atari_msgs = declare_messages(atari, (84, 84), np.uint8, atari.network.lstm_size, 1, 18,
                                  obs_shape=(4, 84, 84))
    specs = {
        "cartpole": (cart_msgs, 8, 1, (2,), np.float32, cart.network.lstm_size),
        "atari_40": (atari_msgs, 40, 1, (84, 84), np.uint8, atari.network.lstm_size),
        "atari_160": (atari_msgs, 160, 2, (84, 84), np.uint8, atari.network.lstm_size),
    }
    for name in names:
        msgs, n, m, frame, dtype, H = specs[name]
        out[name] = (ChunkCase(name, msgs.STEP_CHUNK,
                               chunk_fields(n, m, frame, dtype, H, rng)), msgs)
    return out


# --------------------------------------------------------------------------- #
# The two ranks.

def _endpoint_sender(ep: Any, case: ChunkCase, count: int, use_try: bool) -> None:
    if use_try:
        sent = 0
        while sent < count:
            if ep.try_send("STEP_CHUNK", RECEIVER, **case.fields):
                sent += 1
            else:
                ep.progress()
    else:
        for _ in range(count):
            ep.send("STEP_CHUNK", RECEIVER, timeout=60.0, **case.fields)
    if not ep.flush(60.0):
        raise RuntimeError("endpoint sends did not complete in 60 s")


def _endpoint_receiver(ep: Any, count: int, nbytes: int) -> None:
    got = 0
    while got < count:
        for msg in ep.poll("STEP_CHUNK"):
            if msg.nbytes != nbytes:
                raise RuntimeError(f"received {msg.nbytes} bytes, expected {nbytes}")
            got += 1
    ep.release("STEP_CHUNK")


def _raw_sender(MPI: Any, comm: Any, case: ChunkCase, count: int, depth: int,
                synchronous: bool) -> None:
    bufs = [case.packed.copy() for _ in range(depth)]
    reqs = [MPI.REQUEST_NULL] * depth
    send = comm.Issend if synchronous else comm.Isend
    for i in range(count):
        slot = i if i < depth else MPI.Request.Waitany(reqs)
        reqs[slot] = send([bufs[slot], MPI.BYTE], RECEIVER, RAW_TAG)
    MPI.Request.Waitall(reqs)


def _raw_receiver(MPI: Any, comm: Any, case: ChunkCase, count: int, depth: int) -> None:
    bufs = [aligned_empty(case.layout.nbytes) for _ in range(depth)]
    reqs = [MPI.REQUEST_NULL] * depth
    status = MPI.Status()
    posted = 0
    for slot in range(min(depth, count)):
        reqs[slot] = comm.Irecv([bufs[slot], MPI.BYTE], SENDER, RAW_TAG)
        posted += 1
    for _ in range(count):
        slot = MPI.Request.Waitany(reqs, status)
        if status.Get_count(MPI.BYTE) != case.nbytes:
            raise RuntimeError("raw receive of the wrong size")
        if posted < count:
            reqs[slot] = comm.Irecv([bufs[slot], MPI.BYTE], SENDER, RAW_TAG)
            posted += 1


def timed(comm: Any, fn: Any) -> float:
    """Barrier, ``fn()``, barrier; seconds on this rank (the same on both, to a barrier)."""
    comm.Barrier()
    t0 = time.perf_counter()
    fn()
    comm.Barrier()
    return time.perf_counter() - t0


def mpi_worker(names: Sequence[str], seconds: float, repeats: int, send_depth: int,
               recv_depth: int, out_path: str) -> None:
    """Body of both ranks of ``mpiexec -n 2 transport_bench.py --mpi-worker``."""
    from mpi4py import MPI

    from r2d2_hpc.comm.mpi_endpoint import MPIEndpoint

    world = MPI.COMM_WORLD
    if world.Get_size() != 2:
        raise SystemExit("the transport benchmark needs exactly 2 ranks")
    rank = world.Get_rank()
    raw = world.Dup()
    cases = build_cases(names)
    results: Dict[str, Any] = {}
    for name, (case, msgs) in cases.items():
        ep = MPIEndpoint(world, msgs, send_depth={"STEP_CHUNK": send_depth},
                         recv_depth={"STEP_CHUNK": recv_depth})
        if rank == RECEIVER:
            ep.listen("STEP_CHUNK")

        def run(mode: str, count: int) -> float:
            if mode.startswith("endpoint"):
                if rank == SENDER:
                    return timed(world, lambda: _endpoint_sender(
                        ep, case, count, mode == "endpoint_try_send"))
                return timed(world, lambda: _endpoint_receiver(ep, count, case.nbytes))
            if rank == SENDER:
                return timed(world, lambda: _raw_sender(MPI, raw, case, count, send_depth,
                                                        mode == "raw_issend"))
            return timed(world, lambda: _raw_receiver(MPI, raw, case, count, recv_depth))

        # Calibrate each mode's count so that each timed run takes about
        # ``seconds``: grow a probe until it takes a fifth of that (a single
        # short probe on a busy machine can be off by 10x), then scale.
        counts: Dict[str, int] = {}
        for m in MODES:   # also the warm-up: first touch of every buffer
            probe = 20
            while True:
                t = world.bcast(run(m, probe), root=SENDER)
                if t >= seconds / 5 or probe >= 1_000_000:
                    break
                probe *= 4
            counts[m] = max(probe, int(probe * seconds / max(t, 1e-6)))
        runs: Dict[str, List[float]] = {m: [] for m in MODES}
        for _ in range(repeats):
            for m in MODES:
                runs[m].append(world.bcast(run(m, counts[m]), root=SENDER))
        ep.close(timeout=5.0)
        per_mode = {}
        for m in MODES:
            med = statistics.median(runs[m])
            per_mode[m] = {"MB_per_s": case.nbytes * counts[m] / med / 1e6,
                           "messages_per_s": counts[m] / med, "messages_per_run": counts[m],
                           "seconds": runs[m]}
        e = per_mode["endpoint"]["MB_per_s"]
        results[name] = {
            "message_bytes": case.nbytes,
            "steps": int(len(case.fields["action"])),
            "sequences": int(len(case.fields["seq_start_step"])),
            **per_mode,
            "ratio": e / per_mode["raw_isend"]["MB_per_s"],
            "ratio_to_raw_issend": e / per_mode["raw_issend"]["MB_per_s"],
            "ratio_try_send": (per_mode["endpoint_try_send"]["MB_per_s"]
                               / per_mode["raw_isend"]["MB_per_s"]),
            "raw_issend_over_raw_isend": (per_mode["raw_issend"]["MB_per_s"]
                                          / per_mode["raw_isend"]["MB_per_s"]),
            "target_ratio_min": 0.7,
        }
    raw.Free()
    if rank == SENDER:
        from mpi4py import MPI as _M

        results["_mpi"] = {"library": _M.Get_library_version().strip().splitlines()[0],
                           "mpi4py": __import__("mpi4py").__version__}
        with open(out_path, "w", encoding="utf-8") as fh:
            json.dump(results, fh, default=float)


# --------------------------------------------------------------------------- #

def layout_costs(names: Sequence[str], number: int) -> Dict[str, Dict[str, float]]:
    """Microseconds per ``Layout.pack`` / ``Layout.unpack`` of each case, and a plain
    copy of the same bytes, in this process (no MPI): the Python per-message cost
    the endpoint adds on each side."""
    import timeit

    out = {}
    for name, (case, _) in build_cases(names).items():
        buf = case.layout.pool_buffer()  # as the endpoint's send and receive pools
        dst = np.empty_like(case.packed)
        out[name] = {
            "pack_us": 1e6 * timeit.timeit(lambda: case.layout.pack(buf, **case.fields),
                                           number=number) / number,
            "unpack_us": 1e6 * timeit.timeit(lambda: case.layout.unpack(buf, case.nbytes),
                                             number=number) / number,
            "memcpy_us": 1e6 * timeit.timeit(lambda: np.copyto(dst, case.packed),
                                             number=number) / number}
    return out


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cases", default="cartpole,atari_40,atari_160",
                   help="comma-separated chunk sizes (default: all three)")
    p.add_argument("--seconds", type=float, default=0.7,
                   help="target seconds per timed run (the count is calibrated)")
    p.add_argument("--repeats", type=int, default=3, help="alternated runs per mode")
    p.add_argument("--send-depth", type=int, default=8,
                   help="sends in flight (actor.send_pool, default 8)")
    p.add_argument("--recv-depth", type=int, default=4,
                   help="receive buffers on the shard (job default 4)")
    p.add_argument("--quick", action="store_true", help="tiny smoke run (seconds)")
    p.add_argument("--out", default=None, help="also write the JSON here")
    p.add_argument("--mpi-worker", default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    names = [n for n in a.cases.split(",") if n]
    seconds, repeats = (0.02, 1) if a.quick else (a.seconds, a.repeats)
    if a.mpi_worker:
        mpi_worker(names, seconds, repeats, a.send_depth, a.recv_depth, a.mpi_worker)
        return {}
    load0 = os.getloadavg()[0]
    cases = run_worker(__file__, 2, "--mpi-worker",
                       ["--cases", ",".join(names), "--seconds", str(seconds),
                        "--repeats", str(repeats), "--send-depth", str(a.send_depth),
                        "--recv-depth", str(a.recv_depth)],
                       timeout=60 + 20 * len(names) * repeats * max(1.0, seconds),
                       what="transport benchmark")
    mpi = cases.pop("_mpi")
    result: Dict[str, Any] = {
        "benchmark": "transport",
        "metric": ("STEP_CHUNK MB/s rank 0 -> rank 1: MPIEndpoint send/poll / raw mpi4py "
                   "Isend/Irecv"),
        "config": {"cases": names, "seconds": seconds, "repeats": repeats,
                   "send_depth": a.send_depth, "recv_depth": a.recv_depth, "quick": a.quick},
        "machine": {"cpus": os.cpu_count(), "load_average_1min": load0,
                    "load_average_1min_end": os.getloadavg()[0],
                    "python": platform.python_version(), "numpy": np.__version__,
                    "platform": platform.platform(), **mpi},
        "cases": cases,
        "layout_costs_single_process": layout_costs(names, 20 if a.quick else 300),
    }
    return write_result(result, a.out)


if __name__ == "__main__":
    main()
