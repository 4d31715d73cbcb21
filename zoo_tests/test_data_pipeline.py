"""Batching is a function of (seed, epoch) only: same global batches for any
number of devices/processes; eval sees every example once; gather works in jit."""

import os
import subprocess
import sys
import textwrap

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from zoo.data import (DeviceData, Split, clear_memory_cache, epoch_indices,
                      epoch_permutation, eval_batches, gather, iterate_batches,
                      load, shard_indices, to_float)

DEBIAN = "/usr/share/datasets/fashion-mnist"
needs_debian = pytest.mark.skipif(
    not os.path.isfile(os.path.join(DEBIAN, "train-images-idx3-ubyte.gz")),
    reason="needs Fashion-MNIST: apt-get install dataset-fashion-mnist")


@pytest.fixture(scope="module")
def fmnist(tmp_path_factory):
  """Real Fashion-MNIST (train, test), decoded once into a private cache."""
  if not os.path.isfile(os.path.join(DEBIAN, "train-images-idx3-ubyte.gz")):
    pytest.skip("needs Fashion-MNIST: apt-get install dataset-fashion-mnist")
  with pytest.MonkeyPatch.context() as mp:
    mp.setenv("ZOO_CACHE_DIR", str(tmp_path_factory.mktemp("zoo_cache")))
    mp.setenv("TFDS_DATA_DIR", str(tmp_path_factory.mktemp("empty_tfds")))
    mp.delenv("ZOO_DATA_DIR", raising=False)
    clear_memory_cache()
    yield (load("fashion_mnist", "train", download=False),
           load("fashion_mnist", "test", download=False))
    clear_memory_cache()


def tiny_split(n=10):
  images = np.arange(n * 2 * 2, dtype=np.uint8).reshape(n, 2, 2, 1)
  return Split("tiny", "train", images, np.arange(n, dtype=np.int32) % 3, 3,
               ("a", "b", "c"))


def test_permutation_depends_on_seed_and_epoch_only():
  a = epoch_permutation(0, 0, 1000)
  chex.assert_type(a, np.int64)
  np.testing.assert_array_equal(np.sort(a), np.arange(1000))
  np.testing.assert_array_equal(a, epoch_permutation(0, 0, 1000))
  assert not np.array_equal(a, epoch_permutation(0, 1, 1000))
  assert not np.array_equal(a, epoch_permutation(1, 0, 1000))
  # Pinned values: a numpy/implementation change would silently reorder runs.
  np.testing.assert_array_equal(epoch_permutation(0, 0, 8), [2, 4, 3, 6, 5, 0, 1, 7])


def test_epoch_indices_shapes():
  idx = epoch_indices(3, 1, 1000, 64)
  chex.assert_shape(idx, (15, 64))
  np.testing.assert_array_equal(idx.ravel(), epoch_permutation(3, 1, 1000)[:960])
  full = epoch_indices(3, 1, 1000, 64, drop_remainder=False)
  chex.assert_shape(full, (16, 64))
  assert set(full.ravel()) == set(range(1000))
  with pytest.raises(ValueError, match="larger than the split"):
    epoch_indices(0, 0, 10, 64)


def test_shards_concatenate_to_global_batch():
  idx = epoch_indices(0, 0, 1000, 48)
  one = shard_indices(idx, 0, 1, 1)
  chex.assert_shape(one, (20, 1, 48))
  np.testing.assert_array_equal(one[:, 0], idx)
  four = shard_indices(idx, 0, 1, 4)
  chex.assert_shape(four, (20, 4, 12))
  np.testing.assert_array_equal(four.reshape(20, 48), idx)
  two_procs = [shard_indices(idx, p, 2, 3) for p in range(2)]
  chex.assert_shape(two_procs, (20, 3, 8))
  np.testing.assert_array_equal(
      np.concatenate([s.reshape(20, 24) for s in two_procs], axis=1), idx)


def test_process_shards_disjoint_and_cover_epoch():
  n, gb = 1000, 40  # 1000 = 25 * 40: no remainder, so the epoch is covered.
  idx = epoch_indices(5, 2, n, gb)
  shards = [shard_indices(idx, p, 4, 2).ravel() for p in range(4)]
  for p in range(4):
    for q in range(p + 1, 4):
      assert not set(shards[p]) & set(shards[q])
  np.testing.assert_array_equal(np.sort(np.concatenate(shards)), np.arange(n))


def test_indivisible_batch_says_what_to_change():
  idx = epoch_indices(0, 0, 1000, 100)
  with pytest.raises(ValueError, match=r"not divisible by .* 2 \* 4 = 8.*96 or 104"):
    shard_indices(idx, 0, 2, 4)
  with pytest.raises(ValueError, match="process_index"):
    shard_indices(idx, 2, 2, 1)


def test_to_float():
  x = np.array([0, 128, 255], np.uint8)
  out = to_float(x)
  chex.assert_type(out, np.float32)
  np.testing.assert_allclose(out, [0, 128 / 255, 1], rtol=1e-7)
  assert out[2] == 1.0
  jout = jax.jit(to_float)(jnp.asarray(x))
  chex.assert_type(jout, jnp.float32)
  np.testing.assert_array_equal(jout, out)  # bit-identical host vs jit
  with pytest.raises(TypeError, match="uint8"):
    to_float(out)


def test_iterate_batches_shapes_and_sharding():
  split = tiny_split(48)
  batches = list(iterate_batches(split, 0, 0, 16, local_devices=None))
  assert len(batches) == 3
  chex.assert_shape(batches[0]["image"], (16, 2, 2, 1))
  chex.assert_type(batches[0]["image"], np.float32)
  chex.assert_type(batches[0]["label"], np.int32)
  sharded = list(iterate_batches(split, 0, 0, 16, process_index=1,
                                 process_count=2, local_devices=4))
  chex.assert_shape(sharded[0]["image"], (4, 2, 2, 2, 1))
  np.testing.assert_array_equal(sharded[0]["image"].reshape(8, 2, 2, 1),
                                batches[0]["image"][8:])


@needs_debian
def test_real_global_batches_independent_of_topology(fmnist):
  train, _ = fmnist
  gb = 128
  ref = list(iterate_batches(train, 7, 3, gb, local_devices=None))
  assert len(ref) == 60000 // gb
  again = list(iterate_batches(train, 7, 3, gb, local_devices=None))
  other_epoch = next(iterate_batches(train, 7, 4, gb, local_devices=None))
  assert not np.array_equal(other_epoch["label"], ref[0]["label"])
  four_devices = iterate_batches(train, 7, 3, gb, local_devices=4)
  procs = [iterate_batches(train, 7, 3, gb, process_index=p, process_count=2,
                           local_devices=1) for p in range(2)]
  for step, (r, a, f, p0, p1) in enumerate(zip(ref, again, four_devices, *procs)):
    chex.assert_trees_all_equal(r, a)
    chex.assert_shape(f["image"], (4, 32, 28, 28, 1))
    np.testing.assert_array_equal(f["image"].reshape(r["image"].shape), r["image"])
    np.testing.assert_array_equal(
        np.concatenate([p0["label"].ravel(), p1["label"].ravel()]), r["label"])
    if step == 0:
      np.testing.assert_array_equal(
          np.concatenate([p0["image"][0], p1["image"][0]]), r["image"])


@needs_debian
@pytest.mark.parametrize("pad", [False, True])
def test_real_eval_covers_every_test_example_once(fmnist, pad):
  _, test = fmnist
  labels, images, seen = [], [], 0
  for batch in eval_batches(test, 512, pad=pad):
    chex.assert_type(batch["image"], np.float32)
    if pad:
      chex.assert_shape(batch["image"], (512, 28, 28, 1))
      m = batch["mask"]
      assert np.all(batch["image"][~m] == 0)
    else:
      m = np.ones(len(batch["label"]), bool)
    labels.append(batch["label"][m])
    images.append(batch["image"][m])
    seen += int(m.sum())
  assert seen == 10000
  np.testing.assert_array_equal(np.concatenate(labels), test.labels)
  np.testing.assert_array_equal(np.concatenate(images), to_float(test.images))


@needs_debian
def test_device_data_gather_in_jit_matches_host(fmnist):
  _, test = fmnist
  data = DeviceData.put(test)
  assert len(data) == 10000 and data.images.dtype == jnp.uint8
  idx = shard_indices(epoch_indices(0, 0, 10000, 64), 0, 1, 1)[:3]

  @jax.jit
  def step_fn(images, labels, step_idx):
    x, y = gather(images, labels, step_idx)
    return x, y, x.sum()

  for step_idx in idx:
    x, y, _ = step_fn(data.images, data.labels, step_idx)
    chex.assert_shape(x, (1, 64, 28, 28, 1))
    chex.assert_type(x, jnp.float32)
    chex.assert_type(y, jnp.int32)
    np.testing.assert_array_equal(np.asarray(x), to_float(test.images[step_idx]))
    np.testing.assert_array_equal(np.asarray(y), test.labels[step_idx])
  # Same via the method, and on an explicit device list (replicated).
  replicated = DeviceData.put(test, jax.devices()[:1])
  x, y = jax.jit(replicated.gather)(idx[0])
  np.testing.assert_array_equal(np.asarray(y), test.labels[idx[0]])


def test_device_data_replicated_on_four_cpu_devices():
  """In a fresh process with 4 host devices: data lives on all, gather is sharded."""
  code = textwrap.dedent("""
      import os
      os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
      import jax, numpy as np
      from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
      from zoo.data import DeviceData, Split, gather, to_float
      images = np.arange(40 * 4, dtype=np.uint8).reshape(40, 2, 2, 1)
      split = Split("t", "train", images, np.arange(40, dtype=np.int32) % 2, 2, ("a", "b"))
      devices = jax.devices()
      assert len(devices) == 4, devices
      data = DeviceData.put(split, devices)
      assert len(data.images.sharding.device_set) == 4
      assert data.images.sharding.is_fully_replicated
      idx = np.arange(8).reshape(4, 2)[::-1]
      idx = jax.device_put(idx, NamedSharding(Mesh(np.array(devices), ("d",)), P("d")))
      x, y = jax.jit(gather)(data.images, data.labels, idx)
      np.testing.assert_array_equal(np.asarray(x), to_float(images[np.asarray(idx)]))
      print("ok")
  """)
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  out = subprocess.run([sys.executable, "-c", code], cwd=repo, env=env,
                       capture_output=True, text=True, timeout=120)
  assert out.returncode == 0, out.stderr[-3000:]
  assert "ok" in out.stdout
