"""JAX's coordination service in a companion process of process 0.

In JAX the service lives inside process 0; when that process dies, every
other process's JAX client aborts at once with a C++ stack trace, before zoo
can say anything. Run apart, the service outlives a crashed, killed or
out-of-memory process 0, so the others' peer watchdogs (zoo.training.peers) see
its heartbeat stop and exit with one line. zoo.training.distributed starts this
file as a script (no zoo import, only jaxlib):

  python coordinator.py BIND_ADDRESS NUM_PROCESSES SERVICE_KWARGS_JSON

It prints `ready` (or `error ...`) on stdout, then reads `linger SECONDS`
lines on stdin; when stdin closes (process 0 shut down, exited or died) it
keeps serving that long, so the others can still see who was lost, then
stops. It ignores SIGINT and SIGTERM: those are for process 0, whose
preemption handling needs the service to go on.
"""
import json
import signal
import sys
import time


def main(argv) -> int:
  signal.signal(signal.SIGINT, signal.SIG_IGN)
  signal.signal(signal.SIGTERM, signal.SIG_IGN)
  address, num_processes, kwargs = argv[1], int(argv[2]), json.loads(argv[3])
  try:
    from jax._src.lib import _jax
    service = _jax.get_distributed_runtime_service(address, num_processes,
                                                   **kwargs)
  except Exception as e:  # pylint: disable=broad-except
    print("error " + f"{type(e).__name__}: {e}".replace("\n", " "), flush=True)
    return 1
  print("ready", flush=True)
  linger = 0.0
  for line in sys.stdin:
    word, _, value = line.partition(" ")
    if word == "linger":
      linger = float(value)
  time.sleep(min(linger, 1e6))
  service.shutdown()
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv))
