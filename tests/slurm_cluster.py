"""A private single-node SLURM 22.05 cluster with accounting, for the ``slurm`` tests.

Everything lives in one folder (configs, state, logs, sockets, the MariaDB data) and listens on
free ports, so it neither needs nor touches /etc/slurm, a system munged or MariaDB, and two test
sessions on one machine do not collide. Every daemon runs in the foreground as a child of this
process and is stopped by PID. Debian packages are installed with apt-get when missing (as root).

    python -m tests.slurm_cluster DIR      # start one by hand; prints the SLURM_CONF to export
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

PACKAGES = ["slurm-wlm", "slurmctld", "slurmd", "slurm-client", "munge", "slurmdbd", "mariadb-server"]
NEEDED = ["slurmctld", "slurmd", "slurmdbd", "munged", "mariadbd", "sbatch", "sacct", "mariadb-install-db"]


class ClusterUnavailable(RuntimeError):
    """This machine cannot host the test cluster at all (not root, no apt-get): the tests skip."""


class ClusterStartError(RuntimeError):
    """Installing or starting the cluster failed on a machine that should host it: the tests fail."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _which(name: str) -> Optional[str]:
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin:/usr/bin")


def ensure_installed(timeout: float = 600) -> None:
    """apt-get install the Debian packages if a binary is missing (root only)."""
    if all(_which(n) for n in NEEDED):
        return
    if os.geteuid() != 0:
        raise ClusterUnavailable("SLURM is not installed and installing it needs root (apt-get)")
    if not shutil.which("apt-get"):
        raise ClusterUnavailable("SLURM is not installed and there is no apt-get to install it")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-q"],
                ["apt-get", "install", "-y", "-q", "-o", "DPkg::Lock::Timeout=300", "--no-install-recommends",
                 *PACKAGES]):
        try:
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise ClusterStartError(f"{' '.join(cmd)} did not finish in {timeout:.0f} s") from None
        if proc.returncode != 0:
            raise ClusterStartError(f"{' '.join(cmd)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    missing = [n for n in NEEDED if not _which(n)]
    if missing:
        raise ClusterStartError(f"installed {PACKAGES} but still missing {missing}")


def _node_line(node: str) -> str:
    """The node as ``slurmd -C`` sees it, minus ~1 GiB of memory for the system."""
    out = subprocess.run([_which("slurmd") or "slurmd", "-C"], capture_output=True, text=True, timeout=30).stdout
    line = out.splitlines()[0]
    fields = dict(kv.split("=", 1) for kv in line.split())
    mem = max(1024, int(fields.get("RealMemory", "2048")) - 1024)
    keep = ["CPUs", "Boards", "SocketsPerBoard", "CoresPerSocket", "ThreadsPerCore"]
    return f"NodeName={node} " + " ".join(f"{k}={fields[k]}" for k in keep if k in fields) + f" RealMemory={mem}"


@dataclass
class Cluster:
    root: Path
    node: str = field(default_factory=socket.gethostname)
    partition: str = "debug"
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)

    @property
    def conf(self) -> Path:
        return self.root / "etc" / "slurm.conf"

    @property
    def env(self) -> dict[str, str]:
        """Environment for SLURM client commands (and for the jobs they submit)."""
        return {"SLURM_CONF": str(self.conf)}

    def log(self, name: str) -> str:
        p = self.root / "log" / f"{name}.log"
        return p.read_text(errors="replace")[-3000:] if p.exists() else "(no log)"

    # ---- start ------------------------------------------------------------------------------
    def start(self, timeout: float = 300) -> "Cluster":  # hang guard: ~10-20 s, slower on a loaded machine
        ensure_installed()
        if os.geteuid() != 0:
            raise ClusterUnavailable("the test cluster runs its daemons as root; not root here")
        try:
            socket.gethostbyname(self.node)
        except OSError:
            raise ClusterUnavailable(f"hostname {self.node!r} does not resolve (add it to /etc/hosts)") from None
        for d in ("etc", "log", "run", "state", "spool", "db", "munge"):
            (self.root / d).mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o755)
        deadline = time.time() + timeout
        try:
            self._start_munge(deadline)
            self._start_mariadb(deadline)
            self._write_confs()
            self._start("slurmdbd", [_which("slurmdbd"), "-D"], deadline,
                        ready=lambda: self._port_open(self.dbd_port))
            self._start("slurmctld", [_which("slurmctld"), "-D", "-i"], deadline,
                        ready=lambda: self._port_open(self.ctld_port))
            self._start("slurmd", [_which("slurmd"), "-D", "-N", self.node], deadline,
                        ready=self._node_idle)
        except BaseException:
            self.stop()
            raise
        return self

    def _port_open(self, port: int) -> bool:
        with socket.socket() as s:
            s.settimeout(0.5)
            return s.connect_ex(("127.0.0.1", port)) == 0

    def _start(self, name: str, cmd: list, deadline: float, ready) -> None:
        out = open(self.root / "log" / f"{name}.out", "ab")
        self.procs[name] = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                            env={**os.environ, **self.env}, cwd=self.root,
                                            start_new_session=True)
        while not ready():
            if self.procs[name].poll() is not None:
                raise ClusterStartError(f"{name} exited with {self.procs[name].returncode}:\n"
                                         f"{(self.root / 'log' / f'{name}.out').read_text(errors='replace')[-2000:]}\n"
                                         f"{self.log(name)}")
            if time.time() > deadline:
                raise ClusterStartError(f"{name} not ready in time:\n{self.log(name)}")
            time.sleep(0.2)

    def _start_munge(self, deadline: float) -> None:
        key = self.root / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        os.chmod(key, 0o600)
        self.munge_socket = self.root / "munge" / "munge.socket"
        m = self.root / "munge"
        self._start("munged", [_which("munged"), "-F", "--force", f"--socket={self.munge_socket}",
                               f"--key-file={key}", f"--pid-file={m / 'munged.pid'}",
                               f"--log-file={self.root / 'log' / 'munged.log'}", f"--seed-file={m / 'seed'}"],
                    deadline, ready=self.munge_socket.exists)

    def _start_mariadb(self, deadline: float) -> None:
        data = self.root / "db"
        self.db_port = _free_port()
        proc = subprocess.run([_which("mariadb-install-db"), f"--datadir={data}", "--user=root",
                               "--skip-test-db", "--auth-root-authentication-method=normal"],
                              capture_output=True, text=True, timeout=max(10.0, deadline - time.time()))
        if proc.returncode != 0:
            raise ClusterStartError(f"mariadb-install-db failed:\n{proc.stdout[-1500:]}\n{proc.stderr[-1500:]}")
        self._start("mariadbd", [_which("mariadbd"), "--no-defaults", f"--datadir={data}", "--user=root",
                                 f"--socket={self.root / 'run' / 'mysqld.sock'}", f"--port={self.db_port}",
                                 "--bind-address=127.0.0.1", "--skip-grant-tables",
                                 f"--pid-file={self.root / 'run' / 'mariadbd.pid'}",
                                 f"--log-error={self.root / 'log' / 'mariadbd.log'}",
                                 "--innodb-buffer-pool-size=32M", "--innodb-lock-wait-timeout=900", "--skip-log-bin"],
                    deadline, ready=lambda: self._port_open(self.db_port))

    def _write_confs(self) -> None:
        r = self.root
        self.dbd_port, self.ctld_port, self.slurmd_port = _free_port(), _free_port(), _free_port()
        auth = f"AuthType=auth/munge\nAuthInfo=socket={self.munge_socket},cred_expire=10\n"
        dbd = r / "etc" / "slurmdbd.conf"
        dbd.write_text(
            f"{auth}DbdHost=localhost\nDbdPort={self.dbd_port}\nSlurmUser=root\n"
            f"LogFile={r}/log/slurmdbd.log\nPidFile={r}/run/slurmdbd.pid\n"
            f"StorageType=accounting_storage/mysql\nStorageHost=127.0.0.1\nStoragePort={self.db_port}\n"
            "StorageUser=root\nStorageLoc=slurm_acct_db\n")
        os.chmod(dbd, 0o600)
        self.conf.write_text(
            f"ClusterName=specsweep{os.getpid()}\nSlurmctldHost={self.node}\n"
            f"SlurmctldPort={self.ctld_port}\nSlurmdPort={self.slurmd_port}\n{auth}"
            "SlurmUser=root\nSlurmdUser=root\n"
            f"StateSaveLocation={r}/state\nSlurmdSpoolDir={r}/spool\n"
            f"SlurmctldPidFile={r}/run/slurmctld.pid\nSlurmdPidFile={r}/run/slurmd.pid\n"
            f"SlurmctldLogFile={r}/log/slurmctld.log\nSlurmdLogFile={r}/log/slurmd.log\n"
            "ProctrackType=proctrack/linuxproc\nTaskPlugin=task/none\nMpiDefault=none\n"
            "SelectType=select/cons_tres\nSelectTypeParameters=CR_Core_Memory\nDefMemPerCPU=1024\n"
            "SchedulerParameters=sched_interval=5,bf_interval=5\nJobRequeue=1\nMaxArraySize=1001\n"
            "MailProg=/bin/true\nReturnToService=2\nKillWait=5\nMinJobAge=600\nInactiveLimit=0\n"
            "JobAcctGatherType=jobacct_gather/none\n"
            f"AccountingStorageType=accounting_storage/slurmdbd\nAccountingStorageHost=localhost\n"
            f"AccountingStoragePort={self.dbd_port}\nAccountingStoragePass={self.munge_socket}\n"
            f"{_node_line(self.node)} State=UNKNOWN\n"
            f"PartitionName={self.partition} Nodes={self.node} Default=YES MaxTime=INFINITE State=UP\n")

    def _node_idle(self) -> bool:
        proc = subprocess.run(["sinfo", "-h", "-N", "-o", "%T"], capture_output=True, text=True, timeout=30,
                              env={**os.environ, **self.env})
        return proc.returncode == 0 and proc.stdout.strip().startswith("idle")

    # ---- stop -------------------------------------------------------------------------------
    def _cancel_jobs(self, timeout: float = 30) -> None:
        """scancel every job of this cluster and wait (bounded) for the queue to empty."""
        if "slurmctld" not in self.procs or self.procs["slurmctld"].poll() is not None:
            return
        env = {**os.environ, **self.env}

        def queued() -> list[str]:
            try:
                out = subprocess.run(["squeue", "-h", "-o", "%A"], env=env, capture_output=True, text=True,
                                     timeout=15).stdout
            except (OSError, subprocess.TimeoutExpired):
                return []
            return out.split()

        jobs = queued()
        if not jobs:
            return
        subprocess.run(["scancel", *jobs], env=env, capture_output=True, timeout=30)
        deadline = time.time() + timeout
        while queued() and time.time() < deadline:
            time.sleep(0.5)

    def _leftover_pids(self) -> list[int]:
        """Processes of this cluster's jobs that outlived slurmd (their environment names our SLURM_CONF)."""
        mine, pid = set(), os.getpid()
        while pid > 1:  # this process and its ancestors are never ours to kill
            mine.add(pid)
            try:
                pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                break
        marker = f"SLURM_CONF={self.conf}".encode()
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) in mine:
                continue
            try:
                if marker in (entry / "environ").read_bytes().split(b"\0"):
                    found.append(int(entry.name))
            except OSError:
                continue
        return found

    def stop(self) -> None:
        """Cancel the jobs, then stop every daemon this object started, by PID (newest first), then
        any process of a job that outlived them."""
        try:
            self._cancel_jobs()
        except Exception:
            pass
        for name in reversed(list(self.procs)):
            proc = self.procs[name]
            if proc.poll() is None:
                try:
                    os.kill(proc.pid, signal.SIGTERM)
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    os.kill(proc.pid, signal.SIGKILL)
                    proc.wait(timeout=10)
                except ProcessLookupError:
                    pass
        self.procs.clear()
        for pid in self._leftover_pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


if __name__ == "__main__":
    def _interrupt(signum, frame):  # SIGTERM too (background shells ignore SIGINT)
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _interrupt)
    c = Cluster(Path(sys.argv[1]).resolve())
    t0 = time.time()
    c.start()
    print(f"cluster up in {time.time() - t0:.1f} s; export SLURM_CONF={c.conf}")
    print("daemons:", {n: p.pid for n, p in c.procs.items()}, "- Ctrl-C or SIGTERM stops them")
    try:
        signal.pause()
    except KeyboardInterrupt:
        pass
    finally:
        c.stop()
