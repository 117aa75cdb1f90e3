"""Multi-worker training: two `mdr train` processes on 127.0.0.1 under TF_CONFIG (MultiWorkerMirroredStrategy).

Shown against one process with two mirrored replicas on the same global batch: the same losses and the same
evaluation, only the chief writing the model folder, and a killed cluster resuming from its last epoch.
"""
import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

EPOCHS = 3
STEPS = 4
BATCH = 32  # per replica: the global batch is 64 in both set-ups
TRAIN = ["train", "--model", "adi", "--task", "retrieval", "--epochs", str(EPOCHS), "--steps-per-epoch", str(STEPS),
         "--batch-size", str(BATCH), "--patience", "0", "--seed", "0", "--verbose", "2", "--set", "tower_units=[32,16]",
         # no dropout: its masks differ between one process's replicas and two workers, the losses must not
         "--set", "fused_dropout=0"]


def free_ports(n):
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def start(args, log_prefix, tf_config=None):
    env = dict(os.environ)
    env.pop("TF_CONFIG", None)
    if tf_config is not None:
        env["TF_CONFIG"] = json.dumps(tf_config)
    out, err = open(f"{log_prefix}.out", "w"), open(f"{log_prefix}.err", "w")
    return subprocess.Popen([sys.executable, "-m", "mdr.cli", *args], stdout=out, stderr=err,
                            stdin=subprocess.DEVNULL, env=env)


def start_cluster(data_dir, model_dir, log_dir, tag):
    ports = free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    return [start(TRAIN + ["--data", data_dir, "--model-dir", model_dir], os.path.join(log_dir, f"{tag}-{i}"),
                  {"cluster": cluster, "task": {"type": "worker", "index": i}}) for i in range(2)]


def finish(processes, log_dir, tags, timeout=300):
    for process, tag in zip(processes, tags):
        code = process.wait(timeout)
        assert code == 0, f"{tag} exited {code}: " + open(os.path.join(log_dir, f"{tag}.err")).read()[-3000:]


def history(model_dir):
    with open(os.path.join(model_dir, "history.csv")) as f:
        return list(csv.DictReader(f))


def evaluate(model_dir, data_dir):
    done = subprocess.run([sys.executable, "-m", "mdr.cli", "evaluate", "--model-dir", model_dir, "--data",
                           data_dir, "-k", "50"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    with open(os.path.join(model_dir, "metrics.json")) as f:
        return json.load(f)["overall"]


@pytest.mark.slow
def test_two_workers_train_as_one_process_and_resume_after_a_kill(synthetic_data, tmp_path):
    data_dir, _ = synthetic_data
    logs = str(tmp_path)
    single, multi, killed = (str(tmp_path / d) for d in ("single", "multi", "killed"))

    # One process, two mirrored replicas, while the two workers run (2 cores: the workers wait on each other).
    one = start(TRAIN + ["--data", data_dir, "--model-dir", single, "--cpu-replicas", "2"], os.path.join(logs, "one"))
    finish([one], logs, ["one"])
    workers = start_cluster(data_dir, multi, logs, "worker")
    finish(workers, logs, ["worker-0", "worker-1"])

    summary = {d: json.load(open(os.path.join(d, "train_summary.json"))) for d in (single, multi)}
    assert summary[multi]["replicas"] == summary[single]["replicas"] == 2
    assert summary[multi]["global_batch"] == summary[single]["global_batch"] == 2 * BATCH
    # Same global batches, same initial weights: the same steps, up to the order of float sums.
    loss = {d: summary[d]["history"]["loss"] for d in (single, multi)}
    assert loss[multi] == pytest.approx(loss[single], rel=1e-3), loss
    assert loss[multi][-1] < loss[multi][0], loss
    recall = {d: evaluate(d, data_dir)["recall@50"] for d in (single, multi)}
    print(f"\nMULTI-WORKER loss per epoch: one process {loss[single]}, two workers {loss[multi]}; eval Recall@50 "
          f"{recall[single]:.4f} / {recall[multi]:.4f}; train s {summary[single]['train_seconds']} / "
          f"{summary[multi]['train_seconds']}")
    assert recall[multi] == pytest.approx(recall[single], abs=0.01), recall

    # Only the chief (worker 0) wrote the folder: one history row per epoch, no worker's scratch left behind.
    assert [row["epoch"] for row in history(multi)] == [str(e) for e in range(EPOCHS)]
    assert sorted(os.listdir(multi)) == sorted(os.listdir(single))
    assert f"the chief writes {multi}" in open(os.path.join(logs, "worker-1.out")).read()
    assert f"-> {multi}" in open(os.path.join(logs, "worker-0.out")).read()

    # Kill worker 1 once epoch 2 has begun (epoch 1 is backed up), then the chief; rerun both.
    workers = start_cluster(data_dir, killed, logs, "first")
    deadline = time.monotonic() + 300
    while f"Epoch 2/{EPOCHS}" not in open(os.path.join(logs, "first-0.out")).read():
        assert workers[0].poll() is None and time.monotonic() < deadline, open(os.path.join(logs, "first-0.err")).read()
        time.sleep(0.05)
    workers[1].send_signal(signal.SIGKILL)
    workers[0].send_signal(signal.SIGKILL)
    for w in workers:
        w.wait(60)
    done = len(history(killed))
    assert 1 <= done < EPOCHS, done
    assert not os.path.exists(os.path.join(killed, "weights"))
    workers = start_cluster(data_dir, killed, logs, "rerun")
    finish(workers, logs, ["rerun-0", "rerun-1"])
    rerun = open(os.path.join(logs, "rerun-0.out")).read()
    assert "Epoch 1/" not in rerun and f"Epoch {done + 1}/{EPOCHS}" in rerun, rerun
    assert [row["epoch"] for row in history(killed)] == [str(e) for e in range(EPOCHS)]
    assert os.path.exists(os.path.join(killed, "weights", "model.index"))
