"""pipeline.loopback and the runner flag: the local runner listens on the loopback interface only, and a
`--runner` value is resolved or refused before any work."""
import glob
import ipaddress
import os
import subprocess
import sys
import time

import pytest

from pipeline import preprocess


def _address(hex_address):
    """'0100007F:1F90' (/proc/net/tcp) or its 32-digit IPv6 form -> (ip_address, port)."""
    host, port = hex_address.split(":")
    raw = bytes.fromhex(host)
    raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))  # 32-bit words in host (little) order
    return ipaddress.ip_address(raw), int(port, 16)


def _tree(root):
    """`root` and every process below it."""
    parents = {}
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            with open(stat) as f:
                fields = f.read().rsplit(")", 1)[1].split()
            parents[int(stat.split("/")[2])] = int(fields[1])
        except (OSError, IndexError, ValueError):
            continue
    tree, grew = {root}, True
    while grew:
        more = {pid for pid, parent in parents.items() if parent in tree} - tree
        tree |= more
        grew = bool(more)
    return tree


def listening(root):
    """{(ip_address, port)} of the TCP sockets processes of `root`'s tree listen on."""
    inodes = set()
    for pid in _tree(root):
        for fd in glob.glob(f"/proc/{pid}/fd/*"):
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for line in f.read().splitlines()[1:]:
                fields = line.split()
                if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                    found.add(_address(fields[1]))
    return found


def is_loopback(ip):
    return ip.is_loopback or (ip.version == 6 and ip.ipv4_mapped is not None and ip.ipv4_mapped.is_loopback)


def test_addresses_decode():
    assert _address("0100007F:1F90") == (ipaddress.ip_address("127.0.0.1"), 8080)
    assert _address("00000000000000000000000001000000:0050") == (ipaddress.ip_address("::1"), 80)
    assert is_loopback(_address("0000000000000000FFFF00000100007F:0050")[0])
    assert not is_loopback(_address("00000000000000000000000000000000:0050")[0])  # [::]: every interface


@pytest.mark.slow
def test_the_local_runner_listens_on_loopback_only(synthetic_raw, tmp_path):
    # The default runner: the portable FnApi runner with worker processes, whose gRPC services Beam binds
    # to [::] (every interface) unless pipeline.loopback rebinds them.
    job = subprocess.Popen([sys.executable, "-m", "mdr.cli", "preprocess", "--source", "synthetic", "--input",
                            synthetic_raw, "--output", str(tmp_path / "out"), "--direct_num_workers=2"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen = set()
    while job.poll() is None:
        seen |= listening(job.pid)
        time.sleep(0.2)
    out, err = job.communicate()
    assert job.returncode == 0, err[-3000:]
    assert len({port for _, port in seen}) >= 4, seen  # control, data, state, logging: the check saw the job
    assert all(is_loopback(ip) for ip, _ in seen), sorted(map(str, seen))


@pytest.mark.parametrize("args, expected", [
    (["--runner", "DaskRunner", "--x=1"], "DaskRunner"),
    (["--runner=dask"], "dask"),
])
def test_a_runner_that_cannot_run_the_job_is_refused_by_its_flag(args, expected):
    with pytest.raises(ValueError, match=rf"^--runner {expected}: .*multi-output step"):
        preprocess.runner_args(args)


def test_plain_runner_names_pass_through_and_unknown_ones_are_refused():
    assert preprocess.runner_args(["--runner", "DirectRunner", "--a"]) == ["--runner=DirectRunner", "--a"]
    assert preprocess.runner_args(["--project=p"]) == ["--project=p"]
    with pytest.raises(ValueError, match=r"^--runner NoSuchRunner: "):
        preprocess.runner_args(["--runner=NoSuchRunner"])


def test_refused_before_the_output_is_touched(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    done = subprocess.run([sys.executable, "-m", "mdr.cli", "preprocess", "--source", "synthetic", "--input",
                           str(tmp_path), "--output", str(out), "--overwrite", "--runner", "DaskRunner"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2  # a refused --runner: misuse
    assert done.stderr.strip().count("\n") == 0 and "--runner DaskRunner" in done.stderr, done.stderr
    assert (out / "keep.txt").exists()
