"""A real one-node SLURM cluster on this machine, for the SLURM tests.

``ensure_cluster()`` installs Debian's ``slurmctld slurmd slurm-client munge``
with apt when they are missing (root), writes a ``slurm.conf`` that names
this host with ``CPUs=2`` and needs no cgroups (``ProctrackType=
proctrack/linuxproc``, ``TaskPlugin=task/none``, no accounting), starts
``munged``, ``slurmctld`` and ``slurmd`` by hand, and waits until ``sinfo``
shows the node idle. It is idempotent: when the daemons of this config
already answer it returns in a few milliseconds. Everything lives under
``base`` (default ``$R2D2_SLURM_DIR`` or ``/tmp/r2d2-slurm``); clients find
the cluster through ``SLURM_CONF`` (``Cluster.env()``).

Every daemon listens on 127.0.0.1 only. ``SlurmUser``/``SlurmdUser`` are root,
as this is a throwaway test cluster.

Usage::

    python tests/helpers/slurm_cluster.py            # start (or check) it, print SLURM_CONF
    python tests/helpers/slurm_cluster.py --stop     # stop the daemons it started
"""
from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Dict, List, Optional

DAEMONS = ("slurmctld", "slurmd", "munged")
CLIENTS = ("sinfo", "sbatch", "srun", "scontrol", "squeue", "scancel", "sacct")
APT_PACKAGES = ("slurmctld", "slurmd", "slurm-client", "munge")
DEFAULT_BASE = os.environ.get("R2D2_SLURM_DIR", "/tmp/r2d2-slurm")
PARTITION = "debug"
CTLD_PORT = 26817
SLURMD_PORT = 26818


class SlurmUnavailable(RuntimeError):
    """SLURM cannot be installed or started here; the message says why."""


@dataclass(frozen=True)
class Cluster:
    """A running one-node cluster."""

    base: str
    conf: str
    node: str
    partition: str = PARTITION
    started_here: bool = False
    """True if this call started slurmctld or slurmd (so the caller may stop them)."""

    def env(self, extra: Optional[Dict[str, str]] = None) -> Dict[str, str]:
        """The environment for SLURM clients (``SLURM_CONF`` set)."""
        env = dict(os.environ)
        env["SLURM_CONF"] = self.conf
        env.update(extra or {})
        return env

    def run(self, *args: str, timeout: float = 60.0, check: bool = True,
            **kw) -> subprocess.CompletedProcess:
        """Runs a SLURM client command with this cluster's config."""
        res = subprocess.run(list(args), env=kw.pop("env", self.env()), capture_output=True,
                             text=True, timeout=timeout, **kw)
        if check and res.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} failed ({res.returncode}): {res.stderr}")
        return res

    def node_state(self) -> str:
        res = self.run("sinfo", "-h", "-N", "-n", self.node, "-o", "%T", check=False,
                       timeout=15)
        return res.stdout.strip().lower() if res.returncode == 0 else ""

    def stepds_alive(self, jobid: str) -> bool:
        """True while a ``slurmstepd: [<jobid>.<step>]`` process of the job exists."""
        prefix = f"slurmstepd: [{jobid}.".encode()
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as fh:
                    if fh.read().startswith(prefix):
                        return True
            except OSError:
                continue
        return False

    def log_tail(self, lines: int = 30) -> str:
        """The end of the daemon logs (for failure messages)."""
        out = []
        for name in ("slurmctld.log", "slurmd.log"):
            path = os.path.join(self.base, name)
            if os.path.exists(path):
                with open(path, "r", errors="replace") as fh:
                    out.append(f"--- {name}\n" + "".join(fh.readlines()[-lines:]))
        return "\n".join(out)


# --------------------------------------------------------------------------- #
# Install.

def _have(names) -> List[str]:
    return [n for n in names if shutil.which(n) is None and
            not os.path.exists(f"/usr/sbin/{n}")]


def install_if_missing(timeout: float = 900.0) -> None:
    """apt-get installs SLURM and munge when any binary is missing.

    Raises:
      SlurmUnavailable: not root, no apt-get, or the install failed (with its output).
    """
    missing = _have(DAEMONS + CLIENTS[:4])
    if not missing:
        return
    if os.geteuid() != 0:
        raise SlurmUnavailable(f"SLURM binaries {missing} are missing and this is not root, "
                               f"so apt-get cannot install them")
    if shutil.which("apt-get") is None:
        raise SlurmUnavailable(f"SLURM binaries {missing} are missing and there is no apt-get")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for cmd in (["apt-get", "update"],
                ["apt-get", "install", "-y", "--no-install-recommends", *APT_PACKAGES]):
        try:
            res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise SlurmUnavailable(f"{' '.join(cmd)} timed out after {timeout:.0f} s") from None
        if res.returncode != 0:
            raise SlurmUnavailable(f"{' '.join(cmd)} failed ({res.returncode}): "
                                   f"{(res.stderr or res.stdout)[-1500:]}")
    still = _have(DAEMONS + CLIENTS[:4])
    if still:
        raise SlurmUnavailable(f"apt-get installed {APT_PACKAGES} but {still} are still missing")


# --------------------------------------------------------------------------- #
# Configuration.

def _plugin_dir() -> Optional[str]:
    for d in ("/usr/lib/x86_64-linux-gnu/slurm-wlm", "/usr/lib/aarch64-linux-gnu/slurm-wlm",
              "/usr/lib64/slurm", "/usr/lib/slurm"):
        if os.path.isdir(d):
            return d
    return None


def slurm_conf(base: str, node: str, cpus: int = 2) -> str:
    """The text of the test cluster's slurm.conf."""
    plugins = _plugin_dir()
    return "\n".join(filter(None, [
        "# r2d2_hpc test cluster (tests/helpers/slurm_cluster.py); one node, no cgroups.",
        "ClusterName=r2d2test",
        f"SlurmctldHost={node}(127.0.0.1)",
        f"SlurmctldPort={CTLD_PORT}",
        f"SlurmdPort={SLURMD_PORT}",
        "SlurmUser=root",
        "SlurmdUser=root",
        "AuthType=auth/munge",
        "CredType=cred/munge",
        f"PluginDir={plugins}" if plugins else "",
        f"StateSaveLocation={base}/state",
        f"SlurmdSpoolDir={base}/spool/slurmd-%n",
        f"SlurmctldPidFile={base}/slurmctld.pid",
        f"SlurmdPidFile={base}/slurmd.pid",
        f"SlurmctldLogFile={base}/slurmctld.log",
        f"SlurmdLogFile={base}/slurmd.log",
        "SlurmctldDebug=info",
        "SlurmdDebug=info",
        "ProctrackType=proctrack/linuxproc",
        "TaskPlugin=task/none",
        "JobAcctGatherType=jobacct_gather/none",
        "AccountingStorageType=accounting_storage/none",
        "JobCompType=jobcomp/none",
        "SwitchType=switch/none",
        "MpiDefault=none",
        "SchedulerType=sched/backfill",
        "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_CPU",
        "ReturnToService=2",
        "JobRequeue=1",
        "KillWait=5",
        "MinJobAge=600",
        "InactiveLimit=0",
        "SlurmctldTimeout=30",
        "SlurmdTimeout=30",
        "MessageTimeout=20",
        "SchedulerParameters=sched_interval=1",
        f"NodeName={node} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory=1000 State=UNKNOWN",
        f"PartitionName={PARTITION} Nodes={node} Default=YES MaxTime=INFINITE State=UP",
        "",
    ]))


# --------------------------------------------------------------------------- #
# Daemons.

def _pid_alive(pidfile: str) -> bool:
    try:
        pid = int(open(pidfile).read().strip())
    except (OSError, ValueError):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _munge_ok() -> bool:
    if shutil.which("munge") is None or shutil.which("unmunge") is None:
        return False
    try:
        enc = subprocess.run(["munge", "-n"], capture_output=True, timeout=10)
        if enc.returncode != 0:
            return False
        dec = subprocess.run(["unmunge"], input=enc.stdout, capture_output=True, timeout=10)
        return dec.returncode == 0
    except subprocess.TimeoutExpired:
        return False


def start_munge() -> None:
    """Starts munged (as the munge user) unless a working one answers."""
    if _munge_ok():
        return
    key = "/etc/munge/munge.key"
    if not os.path.exists(key):
        subprocess.run(["mungekey", "--create"], check=False, capture_output=True)
    for d in ("/run/munge", "/var/log/munge", "/var/lib/munge"):
        os.makedirs(d, exist_ok=True)
        shutil.chown(d, "munge", "munge")
    os.chmod("/run/munge", 0o755)
    cmd = ["/usr/sbin/munged"]
    if shutil.which("runuser"):
        cmd = ["runuser", "-u", "munge", "--"] + cmd
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if _munge_ok():
            return
        time.sleep(0.2)
    raise SlurmUnavailable(f"munged did not start: {res.stderr.strip() or res.stdout.strip()}")


def ensure_cluster(base: str = DEFAULT_BASE, timeout: float = 90.0,
                   install: bool = True) -> Cluster:
    """Installs (if needed) and starts the one-node cluster; returns it once the node is idle.

    Concurrent callers (two test sessions) are serialised by a lock file in
    ``base``; the second finds the cluster running.

    Args:
      base: directory for the config, state, spool, logs and pid files.
      timeout: seconds to wait for the node to become usable.
      install: apt-get install missing packages.

    Raises:
      SlurmUnavailable: SLURM cannot be installed, or its daemons do not come up
        (the message includes the end of their logs).
    """
    import fcntl

    os.makedirs(base, exist_ok=True)
    with open(os.path.join(base, ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _ensure_cluster(base, timeout, install)


def _ensure_cluster(base: str, timeout: float, install: bool) -> Cluster:
    if install:
        install_if_missing()
    elif _have(DAEMONS + CLIENTS[:4]):
        raise SlurmUnavailable(f"SLURM binaries {_have(DAEMONS + CLIENTS[:4])} are missing")
    node = socket.gethostname().split(".")[0]
    conf = os.path.join(base, "slurm.conf")
    cluster = Cluster(base, conf, node)
    text = slurm_conf(base, node)
    fresh = not (os.path.exists(conf) and open(conf).read() == text)
    if not fresh and _pid_alive(os.path.join(base, "slurmctld.pid")) and \
            _pid_alive(os.path.join(base, "slurmd.pid")) and \
            cluster.node_state() in ("idle", "mixed", "allocated", "completing"):
        return cluster  # already running: the fast path
    if fresh:
        stop_cluster(base)
    for d in ("state", "spool", f"spool/slurmd-{node}"):
        os.makedirs(os.path.join(base, d), exist_ok=True)
    tmp = conf + ".tmp"
    with open(tmp, "w") as fh:
        fh.write(text)
    os.replace(tmp, conf)
    start_munge()
    env = cluster.env()
    cluster = Cluster(base, conf, node, started_here=True)
    if not _pid_alive(os.path.join(base, "slurmctld.pid")):
        res = subprocess.run(["slurmctld", "-f", conf] + (["-c"] if fresh else []), env=env,
                             capture_output=True, text=True, timeout=60)
        if res.returncode != 0:
            raise SlurmUnavailable(f"slurmctld failed to start: {res.stderr}\n"
                                   f"{cluster.log_tail()}")
    if not _pid_alive(os.path.join(base, "slurmd.pid")):
        res = subprocess.run(["slurmd", "-f", conf, "-N", node], env=env,
                             capture_output=True, text=True, timeout=60)
        if res.returncode != 0:
            raise SlurmUnavailable(f"slurmd failed to start: {res.stderr}\n{cluster.log_tail()}")
    deadline = time.monotonic() + timeout
    state = ""
    while time.monotonic() < deadline:
        state = cluster.node_state()
        if state in ("idle", "mixed", "allocated"):
            return cluster
        if state.startswith(("down", "drain")):
            cluster.run("scontrol", "update", f"nodename={node}", "state=resume", check=False)
        time.sleep(0.5)
    raise SlurmUnavailable(f"node {node} did not become idle within {timeout:.0f} s (state "
                           f"{state!r})\n{cluster.log_tail()}")


def stop_cluster(base: str = DEFAULT_BASE) -> None:
    """Stops the slurmctld/slurmd started from ``base`` (by their pid files)."""
    for name in ("slurmd", "slurmctld"):
        pidfile = os.path.join(base, f"{name}.pid")
        try:
            pid = int(open(pidfile).read().strip())
        except (OSError, ValueError):
            continue
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            continue
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.1)


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description="Start/stop the one-node test SLURM cluster.")
    p.add_argument("--base", default=DEFAULT_BASE)
    p.add_argument("--stop", action="store_true")
    args = p.parse_args(argv)
    if args.stop:
        stop_cluster(args.base)
        return 0
    try:
        cluster = ensure_cluster(args.base)
    except SlurmUnavailable as exc:
        print(f"slurm_cluster: {exc}", file=sys.stderr)
        return 1
    print(f"export SLURM_CONF={cluster.conf}   # node {cluster.node}: "
          f"{cluster.node_state()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
