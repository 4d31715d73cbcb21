"""Test set-up: 8 virtual CPU devices (for pmap/sharding tests), CPU only."""
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in flags:
  os.environ["XLA_FLAGS"] = (flags + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# Each test compiles for itself: no persistent compilation cache shared
# between tests (zoo_tests/test_compile_cache.py turns it on where tested).
os.environ.setdefault("ZOO_COMPILATION_CACHE", "off")
# gs:// goes through fsspec/gcsfs (to the local stand-in), never TensorFlow's
# gfile: etils.epath caches that choice on first use, so it is set here.
os.environ["EPATH_USE_TF"] = "false"


import pytest  # noqa: E402

# Multi-process, end-to-end and subprocess tests, each 15 s or more on a
# 2-core machine: marked slow. A bare `pytest` leaves them out (setup.cfg);
# `pytest -m ""` (the README's test command) runs everything.
SLOW_FILES = {"test_pod.py", "test_multihost.py", "test_remote_workdir.py",
              "test_bench.py", "test_docs_blocks.py",
              "test_docs_site_check.py"}
SLOW_TESTS = {
    "test_tfds_prepared_offline_from_debian_equals_idx", "test_short_training_run",
    "test_same_numbers_under_jit_pmap_and_mesh",
    "test_bfloat16_compute_keeps_float32_state",
    "test_sigkill_then_rerun_matches_uninterrupted",
    "test_ctrl_c_saves_exits_130_and_rerun_matches",
    "test_sigterm_saves_exits_143_and_rerun_matches",
    "test_short_real_training_is_far_above_chance",
    "test_resume_with_augmentation_is_bit_identical",
    "test_stablehlo_runs_without_zoo_or_haiku",
    "test_second_run_on_a_busy_workdir_refuses_and_touches_nothing",
    "test_lock_is_released_at_exit_and_taken_over_after_a_kill",
    "test_tfds_local_prints_only_its_own_lines",
    "test_finetune_beats_training_from_scratch",
    "test_savedmodel_export_prints_no_tensorflow_log_lines",
    "test_mesh_trains_batchnorm_and_dropout_to_one_devices_numbers",
    "test_file_size_limit_during_a_save_keeps_the_last_good_checkpoint",
    "test_cpu_steps_reuse_their_buffers_and_compute_the_same_bits",
}


def pytest_collection_modifyitems(config, items):
  for item in items:
    name = getattr(item, "originalname", item.name)
    if item.path.name in SLOW_FILES or any(
        name.startswith(slow) for slow in SLOW_TESTS):
      item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="module")
def gcs(tmp_path_factory):
  """A local stand-in for Google Cloud Storage (zoo_tests/gcs_standin.py),
  with this process's clients pointed at it too; `gcs.env()` for others."""
  from zoo_tests.gcs_standin import StandIn
  standin = StandIn(tmp_path_factory.mktemp("gcs"))
  saved = {k: os.environ.get(k) for k in standin.env()}
  os.environ.update(standin.env())
  yield standin
  standin.stop()
  for k, v in saved.items():
    if v is None:
      os.environ.pop(k, None)
    else:
      os.environ[k] = v


@pytest.fixture
def sigterm_when_epoch_starts(monkeypatch):
  """`with sigterm_when_epoch_starts(1): ...`: inside the block, a real
  SIGTERM reaches this process as epoch 1's batch order is drawn
  (zoo.data.epoch_indices), so the training loop notices it after that
  epoch's first step, saves and raises Preempted."""
  import contextlib
  import signal
  from zoo import data as zoo_data

  @contextlib.contextmanager
  def patched(at_epoch: int = 1):
    real = zoo_data.epoch_indices

    def indices_then_sigterm(seed, epoch, *args, **kwargs):
      if epoch == at_epoch:
        os.kill(os.getpid(), signal.SIGTERM)
      return real(seed, epoch, *args, **kwargs)
    with monkeypatch.context() as patch:
      patch.setattr(zoo_data, "epoch_indices", indices_then_sigterm)
      yield
  return patched


@pytest.fixture(scope="session")
def fashion_classes():
  """`fashion_classes(split, classes)`: (images, labels) of those classes of
  a Fashion-MNIST split, relabelled 0..k-1 in that order (zoo.data.load's
  own class selection)."""
  def load(split: str, classes):
    import zoo
    s = zoo.data.load("fashion_mnist", split, classes=classes)
    return s.images, s.labels
  return load
