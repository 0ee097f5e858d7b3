"""A real single-node SLURM for the tests: munged, slurmctld and slurmd started from Debian's ``slurm-wlm`` and
``munge`` packages with a private configuration under a temporary folder, stopped again by their process ids.

Everything it writes (munge key and socket, ``slurm.conf``, state, spool, logs, pid files) lies in one folder;
the controller and node daemon listen on free ports, so it does not clash with another SLURM on the machine.
Clients find it through ``SLURM_CONF`` (the fixture sets it for the test session). Needs root (slurmd starts
jobs as their user) and the two packages; otherwise the fixture skips with the reason. ``.ci/run`` installs
them when it runs as root.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "squeue", "sinfo", "scontrol", "scancel", "srun")


def missing_reason() -> str | None:
    """Why a local SLURM cannot start here (None when it can)."""
    if os.name != "posix" or os.geteuid() != 0:
        return "a local SLURM needs root (slurmd starts jobs as their user); .ci/run installs it when root"
    missing = [p for p in DAEMONS if not shutil.which(p, path="/usr/sbin:/usr/bin:/sbin")]
    missing += [p for p in CLIENTS if not shutil.which(p)]
    if missing:
        return f"SLURM is not installed ({', '.join(missing)} missing): apt-get install slurm-wlm munge"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def node_hardware() -> str:
    """``CPUs=.. Boards=.. SocketsPerBoard=.. CoresPerSocket=.. ThreadsPerCore=.. RealMemory=..`` of this
    machine, as ``slurmd -C`` reports it."""
    out = subprocess.run(["slurmd", "-C"], capture_output=True, text=True, timeout=30, check=True).stdout
    words = out.splitlines()[0].split()
    return " ".join(w for w in words if not w.startswith("NodeName="))


SLURM_CONF = """\
ClusterName=tsdtest
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={munge_socket},cred_expire=10
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
TmpFS={root}/tmp
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
PlugStackConfig={root}/plugstack.conf
MpiDefault=none
SwitchType=switch/none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=1,bf_interval=1
ReturnToService=2
JobRequeue=1
EnforcePartLimits=ALL
KillWait=15
InactiveLimit=0
MinJobAge=600
MessageTimeout=20
NodeName={host} NodeAddr=127.0.0.1 {hardware} State=UNKNOWN
PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP
"""


@dataclass
class LocalSlurm:
    """A single-node SLURM in ``root`` (partition ``debug``); :meth:`start` it, :meth:`stop` it."""

    root: Path
    host: str = field(default_factory=lambda: socket.gethostname().split(".")[0])
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)

    @property
    def conf(self) -> Path:
        return self.root / "slurm.conf"

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "SLURM_CONF": str(self.conf)}

    def write_config(self) -> None:
        for sub in ("state", "spool", "tmp", "munge"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        (self.root / "munge").chmod(0o700)
        key = self.root / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        (self.root / "plugstack.conf").write_text("")
        self.conf.write_text(
            SLURM_CONF.format(
                host=self.host,
                root=self.root,
                ctld_port=free_port(),
                slurmd_port=free_port(),
                munge_socket=self.munge_socket,
                hardware=node_hardware(),
            )
        )

    @property
    def munge_socket(self) -> Path:
        return self.root / "munge" / "munge.socket"

    def _spawn(self, name: str, argv: list[str]) -> None:
        log = open(self.root / f"{name}.out", "w")
        self.procs[name] = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, env=self.env, start_new_session=True
        )
        log.close()

    def start(self, timeout_s: float = 60.0) -> None:
        """Write the configuration, start the three daemons in the foreground and wait for an idle node."""
        self.write_config()
        m = self.root / "munge"
        self._spawn(
            "munged",
            ["munged", "-F", "--force", f"--key-file={m / 'munge.key'}", f"--socket={self.munge_socket}",
             f"--pid-file={m / 'munged.pid'}", f"--log-file={m / 'munged.log'}", f"--seed-file={m / 'munge.seed'}"],
        )  # fmt: skip
        self._wait(lambda: self.munge_socket.exists(), "munged socket", 15)
        self._spawn("slurmctld", ["slurmctld", "-D", "-c", "-f", str(self.conf)])
        self._spawn("slurmd", ["slurmd", "-D", "-f", str(self.conf), "-N", self.host])
        self._wait(lambda: self.node_state() == "idle", "the node to be idle in sinfo", timeout_s)

    def node_state(self) -> str:
        out = subprocess.run(
            ["sinfo", "-h", "-N", "-o", "%t"], capture_output=True, text=True, env=self.env, timeout=20
        )
        return out.stdout.strip()

    def _wait(self, ready, what: str, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while not ready():
            dead = [n for n, p in self.procs.items() if p.poll() is not None]
            if dead or time.monotonic() > deadline:
                why = f"{', '.join(dead)} exited" if dead else f"timed out after {timeout_s:.0f}s"
                raise RuntimeError(f"local SLURM did not start ({why} waiting for {what}):\n{self.logs()}")
            time.sleep(0.2)

    def logs(self, lines: int = 15) -> str:
        out = []
        for name in ("munged.out", "munge/munged.log", "slurmctld.log", "slurmd.log", "slurmctld.out", "slurmd.out"):
            path = self.root / name
            if path.is_file():
                tail = path.read_text(errors="replace").splitlines()[-lines:]
                out.append(f"--- {path}\n" + "\n".join(tail))
        return "\n".join(out)

    def run(self, *argv: str, check: bool = True) -> str:
        """A SLURM client command against this cluster; returns its stdout."""
        out = subprocess.run(list(argv), capture_output=True, text=True, env=self.env, timeout=30)
        if check and out.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed: {out.stderr.strip()}")
        return out.stdout

    def stop(self) -> None:
        """Cancel whatever is still queued, then stop the daemons this object started (newest first)."""
        if self.procs.get("slurmctld") and self.procs["slurmctld"].poll() is None:
            self.run("scancel", "--full", "-u", "root", check=False)
            deadline = time.monotonic() + 15
            while self.run("squeue", "-h", check=False).strip() and time.monotonic() < deadline:
                time.sleep(0.3)
        for name in reversed(list(self.procs)):
            proc = self.procs[name]
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        self.procs.clear()


@pytest.fixture(scope="session")
def slurm(tmp_path_factory):
    """A running single-node SLURM (partition ``debug``) with ``SLURM_CONF`` set for the session; skips with
    the reason when SLURM cannot run here. The daemons are stopped at the end even when tests fail."""
    reason = missing_reason()
    if reason:
        pytest.skip(reason)
    cluster = LocalSlurm(tmp_path_factory.mktemp("slurm", numbered=True))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SLURM_CONF", str(cluster.conf))
        try:
            cluster.start()
            yield cluster
        finally:
            cluster.stop()
