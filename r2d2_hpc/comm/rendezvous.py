"""Where the torch backend's learners meet: the rendezvous host and socket, GPU identity.

Used by :class:`~r2d2_hpc.comm.allreduce.TorchDistAverager`: learner 0 serves
the ``TCPStore`` on :func:`listening_socket` (bound to the rendezvous host's
address only, on a port the OS picks) at :func:`rendezvous_host`; NCCL is
avoided when :func:`gpu_identity` shows two learners on one GPU.
"""
from __future__ import annotations

import os
import socket
from typing import Any

import torch

__all__ = ["DIST_HOST_ENV", "gpu_identity", "listening_socket", "rendezvous_host"]

#: Environment variable that overrides the rendezvous host of the torch backend
#: when the learners span several nodes.
DIST_HOST_ENV = "R2D2_DIST_HOST"


def rendezvous_host(comm: Any) -> str:
    """Where the other learners reach learner 0's ``TCPStore``.

    ``127.0.0.1`` when every learner runs on learner 0's node; otherwise
    ``$R2D2_DIST_HOST`` if set, else learner 0's host name. Collective.
    """
    from mpi4py import MPI

    node = comm.Split_type(MPI.COMM_TYPE_SHARED)
    try:
        together = comm.allreduce(int(node.Get_size() == comm.Get_size()), op=MPI.MIN)
    finally:
        node.Free()
    if together:
        return "127.0.0.1"
    host = os.environ.get(DIST_HOST_ENV) or socket.gethostname()
    return comm.bcast(host, root=0)


def listening_socket(host: str) -> socket.socket:
    """A TCP socket listening on ``host``'s own address and a port the OS picks.

    Learner 0's ``TCPStore`` serves on it (``master_listen_fd``), so the
    rendezvous is reachable at the address the other learners are given and
    not on every interface of the node (``TCPStore`` alone binds them all).
    """
    family, kind, proto, _, addr = socket.getaddrinfo(host, 0, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.bind(addr[:2] if family == socket.AF_INET else addr)
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    return sock


def gpu_identity(device: torch.device) -> str:
    """Which physical GPU ``device`` is, comparable across processes and nodes.

    The device's UUID where torch reports one (independent of each process's
    ``CUDA_VISIBLE_DEVICES``), else ``host:index``.
    """
    index = device.index if device.index is not None else torch.cuda.current_device()
    uuid = getattr(torch.cuda.get_device_properties(index), "uuid", None)
    return str(uuid) if uuid is not None else f"{socket.gethostname()}:{index}"
