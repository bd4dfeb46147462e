"""tina_jax.distributed in one process: the split of items over processes, argument checks, detection."""
from __future__ import annotations

import numpy as np
import pytest

from tina_jax import distributed


@pytest.mark.parametrize("n,count", [(8, 2), (7, 3), (2, 4), (0, 2), (13, 1)])
def test_rows_of_partitions_contiguously_and_evenly(n, count):
    parts = [distributed.rows_of(n, i, count) for i in range(count)]
    assert parts[0][0] == 0 and parts[-1][1] == n
    assert all(a[1] == b[0] for a, b in zip(parts, parts[1:]))
    sizes = [hi - lo for lo, hi in parts]
    assert max(sizes) - min(sizes) <= 1


def test_score_split_in_one_process_is_the_plain_call():
    texts = [f"t{i}" for i in range(6)]
    got, extra = distributed.score_split(lambda texts, w: ([len(t) * x for t, x in zip(texts, w)], {"w": w}), 3, 2,
                                         texts=texts, w=[1, 2, 3, 4, 5, 6])
    np.testing.assert_array_equal(got, [2, 4, 6, 8, 10, 12])
    np.testing.assert_array_equal(extra["w"], [1, 2, 3, 4, 5, 6])


def test_initialize_checks_its_arguments(monkeypatch):
    for k in ("JAX_COORDINATOR_ADDRESS", "SLURM_NTASKS", "SLURM_JOB_ID", "OMPI_COMM_WORLD_SIZE"):
        monkeypatch.delenv(k, raising=False)
    with pytest.raises(ValueError, match="go together"):
        distributed.initialize("127.0.0.1:1234", None, 0)
    with pytest.raises(ValueError, match="process-id must be in"):
        distributed.initialize("127.0.0.1:1234", 2, 2)
    with pytest.raises(ValueError, match="HOST:PORT"):
        distributed.initialize("127.0.0.1", 2, 0)
    if distributed.detected_cluster() is None:  # a plain machine: nothing to join
        assert distributed.initialize() is False


def test_detected_cluster_reads_the_environment(monkeypatch):
    for k in ("JAX_COORDINATOR_ADDRESS", "SLURM_NTASKS", "SLURM_NPROCS", "SLURM_JOB_ID", "OMPI_COMM_WORLD_SIZE"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("SLURM_JOB_ID", "1")
    monkeypatch.setenv("SLURM_NTASKS", "1")
    assert distributed.detected_cluster() in (None, "cloud_tpu")  # one SLURM task: a single process
    monkeypatch.setenv("SLURM_NTASKS", "4")
    assert distributed.detected_cluster() == "slurm"
    monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "10.0.0.1:1234")
    assert distributed.detected_cluster() == "JAX_COORDINATOR_ADDRESS"


_LOAD_CHECK = """
import sys, jax, numpy as np
from tina_jax.models.loading import load_hf_dir
from tina_jax.sharding import make_mesh
_, ref = load_hf_dir(sys.argv[1])
for shape in [(1, 4, 2), (2, 2, 2), (8, 1, 1)]:
    _, got = load_hf_dir(sys.argv[1], mesh=make_mesh(shape))
    assert jax.tree.structure(got) == jax.tree.structure(ref)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(ref)):
        assert a.dtype == b.dtype and np.array_equal(np.asarray(a), np.asarray(b))
    assert tuple(got["lm_head"].sharding.spec) == ("fsdp", "tensor"), got["lm_head"].sharding
print("OK")
"""


@pytest.mark.parametrize("kind", ["qwen2_untied_mha"])
def test_sharded_load_reads_each_block_from_the_file(hf_tiny_dir, kind):
    """With a mesh, every device's block is read from the safetensors slices (q/k/v biases, transposed
    kernels, an untied lm_head): the global arrays equal the unsharded load on 8 devices and 3 meshes."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=8",
               PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    out = subprocess.run([sys.executable, "-c", _LOAD_CHECK, str(hf_tiny_dir(kind)[0])], env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and "OK" in out.stdout, out.stderr[-3000:]
