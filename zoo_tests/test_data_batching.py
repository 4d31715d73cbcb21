"""The one batching path (zoo.data.batching), on the functions the trainer and
the evaluator call: batches are a function of (seed, epoch) only; every
strategy gives each device its contiguous block of the same global batch;
eval pads the last batch and sees every example once; gather works in jit."""

import os

import chex
import jax
import numpy as np
import pytest

import zoo
from zoo.data import (Split, clear_memory_cache, epoch_indices,
                      epoch_permutation, gather, job_devices, load,
                      pad_batches, put_sharded, shard_batches, to_float)
from zoo.training import strategies
from zoo.training.evaluate import Evaluator

DEBIAN = "/usr/share/datasets/fashion-mnist"
needs_debian = pytest.mark.skipif(
    not os.path.isfile(os.path.join(DEBIAN, "train-images-idx3-ubyte.gz")),
    reason="needs Fashion-MNIST: apt-get install dataset-fashion-mnist")
LAYOUTS = [("jit", 1), ("pmap", 1), ("pmap", 4), ("mesh", 4), ("pmap", 8),
           ("mesh", 8)]


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


def device_rows(strat, rows):
  """{device: the index rows (steps, per_device) it holds} after the
  strategy's own put_indices."""
  placed = strat.put_indices(rows)
  return {s.device: np.asarray(s.data).reshape(rows.shape[0], -1)
          for s in placed.addressable_shards}


def strategy_batches(strat, split, rows):
  """The global batches (images, labels) that `strat`'s compiled scan gathers
  on its devices, in (device, position) order, from its own put_data/put_indices."""
  def step(state, x, y):
    return state, {"image": x, "label": y}
  _, run_scan = strat.compile(step)
  state = strat.put_state(np.zeros((), np.int32))
  _, out = run_scan(state, *strat.put_data(split.images, split.labels),
                    strat.put_indices(rows))
  out = jax.tree.map(np.asarray, out)
  if strat.name == "pmap":  # (devices, steps, per_device, ...)
    out = jax.tree.map(lambda x: np.concatenate(list(x), axis=1), out)
  return out["image"], out["label"]


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
  one = shard_batches(idx, 0, 1, 1)
  chex.assert_shape(one, (20, 1, 48))
  np.testing.assert_array_equal(one[:, 0], idx)
  four = shard_batches(idx, 0, 1, 4)
  chex.assert_shape(four, (20, 4, 12))
  np.testing.assert_array_equal(four.reshape(20, 48), idx)
  two_procs = [shard_batches(idx, p, 2, 3) for p in range(2)]
  chex.assert_shape(two_procs, (20, 3, 8))
  np.testing.assert_array_equal(
      np.concatenate([s.reshape(20, 24) for s in two_procs], axis=1), idx)
  # Device d of process p holds global block p * 3 + d, trailing axes kept.
  data = np.arange(20 * 48 * 2).reshape(20, 48, 2)
  blocks = shard_batches(data, 1, 2, 3)
  chex.assert_shape(blocks, (20, 3, 8, 2))
  np.testing.assert_array_equal(blocks[:, 2], data[:, 40:48])


def test_process_shards_disjoint_and_cover_epoch():
  n, gb = 1000, 40  # 1000 = 25 * 40: no remainder, so the epoch is covered.
  idx = epoch_indices(5, 2, n, gb)
  shards = [shard_batches(idx, p, 4, 2).ravel() for p in range(4)]
  for p in range(4):
    for q in range(p + 1, 4):
      assert not set(shards[p]) & set(shards[q])
  np.testing.assert_array_equal(np.sort(np.concatenate(shards)), np.arange(n))


def test_indivisible_batch_says_what_to_change():
  idx = epoch_indices(0, 0, 1000, 100)
  with pytest.raises(ValueError, match=r"not divisible by .* 2 \* 4 = 8.*96 or 104"):
    shard_batches(idx, 0, 2, 4)
  with pytest.raises(ValueError, match="process_index"):
    shard_batches(idx, 2, 2, 1)


def test_to_float():
  x = np.array([0, 128, 255], np.uint8)
  out = to_float(x)
  chex.assert_type(out, np.float32)
  np.testing.assert_allclose(out, [0, 128 / 255, 1], rtol=1e-7)
  assert out[2] == 1.0
  jout = jax.jit(to_float)(jax.numpy.asarray(x))
  chex.assert_type(jout, jax.numpy.float32)
  np.testing.assert_array_equal(jout, out)  # bit-identical host vs jit
  with pytest.raises(TypeError, match="uint8"):
    to_float(out)


@pytest.mark.parametrize("name,devices", LAYOUTS)
def test_each_device_holds_its_contiguous_block(name, devices):
  """put_indices of every strategy: local device i holds block i of every
  global batch (shard_batches), and the blocks tile the batch."""
  strat = strategies.make(name, devices)
  rows = epoch_indices(0, 0, 1000, 48).astype(np.int32)[:5]
  held = device_rows(strat, rows)
  blocks = shard_batches(rows, 0, 1, devices)
  assert set(held) == set(strat.devices)
  for i, device in enumerate(strat.devices):
    np.testing.assert_array_equal(held[device], blocks[:, i])
  np.testing.assert_array_equal(
      np.concatenate([held[d] for d in strat.devices], axis=1), rows)


@pytest.mark.parametrize("name,devices", LAYOUTS)
def test_strategy_batches_shapes_and_sharding(name, devices):
  split = tiny_split(48)
  rows = epoch_indices(0, 0, 48, 16)
  assert len(rows) == 3
  images, labels = strategy_batches(strategies.make(name, devices), split, rows)
  chex.assert_shape(images, (3, 16, 2, 2, 1))
  chex.assert_type(images, np.float32)
  chex.assert_type(labels, np.int32)
  ref_x, ref_y = gather(split.images, split.labels, rows)
  np.testing.assert_array_equal(images, ref_x)
  np.testing.assert_array_equal(labels, ref_y)
  # Process 1 of 2 with 4 devices: the second half of every batch.
  sharded = gather(split.images, split.labels, shard_batches(rows, 1, 2, 4))[0]
  chex.assert_shape(sharded[0], (4, 2, 2, 2, 1))
  np.testing.assert_array_equal(sharded[0].reshape(8, 2, 2, 1), ref_x[0][8:])


@needs_debian
def test_real_global_batches_independent_of_topology(fmnist):
  """The trainer's own compiled gather, under every strategy, sees the same
  global batches; two processes' blocks concatenate to them."""
  train, _ = fmnist
  gb = 128
  rows = epoch_indices(7, 3, len(train.labels), gb)
  assert len(rows) == 60000 // gb
  np.testing.assert_array_equal(rows, epoch_indices(7, 3, 60000, gb))
  assert not np.array_equal(epoch_indices(7, 4, 60000, gb)[0], rows[0])
  rows = rows[:6]
  ref_x, ref_y = gather(train.images, train.labels, rows)
  for name, devices in LAYOUTS:
    x, y = strategy_batches(strategies.make(name, devices), train, rows)
    chex.assert_shape(x, (6, gb, 28, 28, 1))
    np.testing.assert_array_equal(x, ref_x, err_msg=f"{name} x{devices}")
    np.testing.assert_array_equal(y, ref_y)
  # Two processes of one device each: (steps, 1, 64, ...) blocks.
  procs = [gather(train.images, train.labels, shard_batches(rows, p, 2, 1))
           for p in range(2)]
  (x0, y0), (x1, y1) = procs
  np.testing.assert_array_equal(
      np.concatenate([y0.reshape(6, 64), y1.reshape(6, 64)], axis=1), ref_y)
  np.testing.assert_array_equal(np.concatenate([x0[0, 0], x1[0, 0]]), ref_x[0])


@needs_debian
@pytest.mark.parametrize("batch_size", [512, 1000])  # 10000 % 512 = 272
def test_real_eval_covers_every_test_example_once(fmnist, batch_size):
  _, test = fmnist
  images, labels, mask = pad_batches(test.images, test.labels, batch_size)
  batches = -(-10000 // batch_size)
  chex.assert_shape(images, (batches, batch_size, 28, 28, 1))
  chex.assert_type([images, labels, mask], [np.uint8, np.int32, np.float32])
  m = mask.astype(bool)
  assert m.sum() == 10000 and m.ravel()[:10000].all()
  assert np.all(images[~m] == 0) and np.all(labels[~m] == 0)
  np.testing.assert_array_equal(labels[m], test.labels)
  np.testing.assert_array_equal(to_float(images[m]), to_float(test.images))


@pytest.mark.parametrize("devices", [1, 3, 8])
def test_evaluator_places_padded_blocks(devices):
  """The Evaluator holds pad_batches's arrays, device k of its mesh block k
  of every batch, with a batch that its devices divide and 10 does not."""
  split = tiny_split(10)
  ev = Evaluator(zoo.get("mlp_fashion_mnist"), split.images, split.labels, 4,
                 strategy=strategies.make("mesh", devices))
  padded = pad_batches(split.images, split.labels, ev.batch_size)
  for placed, host in zip(ev._data, padded):
    np.testing.assert_array_equal(np.asarray(placed), host)
    blocks = shard_batches(host, 0, 1, devices)
    for shard in placed.addressable_shards:
      k = ev.devices.index(shard.device)
      np.testing.assert_array_equal(np.asarray(shard.data), blocks[:, k])


def test_put_sharded_places_blocks():
  devices = jax.devices()[:4]
  assert job_devices(devices[::-1]) == devices[::-1]  # one process: as given
  rows = np.arange(24).reshape(2, 12)
  mesh = jax.sharding.Mesh(np.array(devices), ("data",))
  placed = put_sharded(rows, mesh)
  np.testing.assert_array_equal(np.asarray(placed), rows)
  chex.assert_shape(placed.addressable_shards[0].data, (2, 3))
  with pytest.raises(ValueError, match="divisible"):
    put_sharded(np.arange(20).reshape(2, 10), mesh)


@needs_debian
def test_gather_in_jit_on_placed_data_matches_host(fmnist):
  _, test = fmnist
  images, labels = strategies.make("jit", 1).put_data(test.images, test.labels)
  assert images.shape[0] == 10000 and images.dtype == np.uint8
  idx = shard_batches(epoch_indices(0, 0, 10000, 64), 0, 1, 1)[:3]

  @jax.jit
  def step_fn(images, labels, step_idx):
    x, y = gather(images, labels, step_idx)
    return x, y, x.sum()

  for step_idx in idx:
    x, y, _ = step_fn(images, labels, step_idx)
    chex.assert_shape(x, (1, 64, 28, 28, 1))
    chex.assert_type(x, np.float32)
    chex.assert_type(y, np.int32)
    np.testing.assert_array_equal(np.asarray(x), to_float(test.images[step_idx]))
    np.testing.assert_array_equal(np.asarray(y), test.labels[step_idx])
  # Same on the mesh strategy's placement (replicated over its one device).
  mesh = strategies.make("mesh", 1)
  x, y = jax.jit(gather)(*mesh.put_data(test.images, test.labels),
                         mesh.put_indices(idx[0, 0][None]))
  np.testing.assert_array_equal(np.asarray(y)[0], test.labels[idx[0, 0]])


@pytest.mark.parametrize("name", ["pmap", "mesh"])
def test_data_replicated_on_four_cpu_devices(name):
  """Data lives on all 4 devices, uint8; the gather is sharded like the rows."""
  strat = strategies.make(name, 4)
  images = np.arange(40 * 4, dtype=np.uint8).reshape(40, 2, 2, 1)
  labels = np.arange(40, dtype=np.int32) % 2
  data = strat.put_data(images, labels)
  assert data[0].sharding.device_set == set(jax.devices()[:4])
  assert data[0].dtype == np.uint8
  for shard in data[0].addressable_shards:  # pmap adds a device axis
    np.testing.assert_array_equal(np.asarray(shard.data).reshape(images.shape),
                                  images)
  rows = np.arange(8).reshape(1, 8)[:, ::-1]
  x, _ = strategy_batches(strat, Split("t", "train", images, labels, 2,
                                       ("a", "b")), rows)
  np.testing.assert_array_equal(x, to_float(images[rows]))
