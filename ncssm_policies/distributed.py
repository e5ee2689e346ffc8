"""One training run over several processes (hosts): ``jax.distributed``, set up from the command
line or from SLURM, and the few things the processes must agree on.

Data-parallel training with ``P`` processes: every process runs the same program; the global
batch of ``B`` segments is split over all ``jax.device_count()`` devices, process ``p`` reading
only its rows ``[p B / P, (p + 1) B / P)`` of each batch from the clips; the parameters and the
optimizer state are replicated. Process 0 alone logs, writes plots and the summary, and runs the
closed-loop evaluation; checkpoints are written by orbax from every process (it commits them
once, from process 0), as host arrays, so a run saved with ``N`` processes resumes with ``M``.

Setup, in the order :func:`initialize` tries:

1. ``--coordinator HOST:PORT --num-processes N --process-id I`` (all three);
2. SLURM: inside ``srun`` with more than one task (``SLURM_NTASKS`` > 1 and the step's
   variables set), ``jax.distributed.initialize()`` reads the coordinator, the count and the id
   from SLURM's environment;
3. otherwise one process: nothing to set up.
"""

from __future__ import annotations

import os

from ncssm_policies.config import ConfigError

SLURM_VARS = ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID",
              "SLURM_LOCALID")  # what jax's SLURM detection reads


class DistributedError(ConfigError):
    """The processes of a run cannot be set up or cannot agree; the message says why."""


def slurm_tasks() -> int | None:
    """The task count of the SLURM step this process runs in (``srun``), or None outside one."""
    if not all(v in os.environ for v in SLURM_VARS):
        return None
    try:
        return int(os.environ["SLURM_NTASKS"])
    except ValueError:
        raise DistributedError(f"SLURM_NTASKS is {os.environ['SLURM_NTASKS']!r}, "
                               "expected a whole number of tasks.") from None


def initialize(coordinator: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, timeout_s: int = 300) -> int:
    """Join the run's processes (see the module docstring); the number of processes.

    Must run before anything else touches JAX. Raises :class:`DistributedError` (one sentence)
    for flags that are incomplete or disagree with SLURM or with the devices found."""
    given = [coordinator is not None, num_processes is not None, process_id is not None]
    tasks = slurm_tasks()
    if any(given) and not all(given):
        raise DistributedError("--coordinator, --num-processes and --process-id go together; "
                               "give all three (or none, inside srun).")
    if all(given):
        if num_processes < 1:
            raise DistributedError(f"--num-processes is {num_processes}; expected 1 or more.")
        if not 0 <= process_id < num_processes:
            raise DistributedError(f"--process-id is {process_id}; expected 0 to "
                                   f"{num_processes - 1} for --num-processes {num_processes}.")
        if tasks is not None and tasks != num_processes:
            raise DistributedError(f"--num-processes is {num_processes}, but this SLURM step "
                                   f"runs {tasks} tasks (SLURM_NTASKS); they must match.")
        if ":" not in coordinator:
            raise DistributedError(f"--coordinator is {coordinator!r}; expected HOST:PORT.")
        if num_processes == 1:
            return 1
        kwargs = dict(coordinator_address=coordinator, num_processes=num_processes,
                      process_id=process_id)
    elif tasks is not None and tasks > 1:
        kwargs, num_processes = {}, tasks
    else:
        return 1

    import jax

    where = kwargs.get("coordinator_address", "SLURM's coordinator")
    try:
        jax.distributed.initialize(initialization_timeout=timeout_s, **kwargs)
    except Exception as err:  # jax raises RuntimeError / XlaRuntimeError with long texts
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DistributedError(f"jax.distributed could not join {num_processes} processes at "
                               f"{where} within {timeout_s} s: {first}") from None
    count, local = jax.process_count(), jax.local_device_count()
    if count != num_processes:
        raise DistributedError(f"--num-processes is {num_processes}, but jax found {count} "
                               "processes.")
    if jax.device_count() != count * local:
        raise DistributedError(f"The {count} processes hold {jax.device_count()} devices, not "
                               f"{local} each; every process needs the same number of devices.")
    return count


def shard() -> tuple[int, int]:
    """``(process_index, process_count)``: which share of each global batch this process reads."""
    import jax

    return jax.process_index(), jax.process_count()


def is_main() -> bool:
    """True on process 0 (the one that logs and writes), and when there is one process."""
    import jax

    return jax.process_index() == 0


def _client():
    # jax's coordination-service client (the key-value store and barriers with timeouts that
    # jax.distributed runs on); collectives would time out while process 0 writes clips.
    from jax._src.distributed import global_state

    return global_state.client


def share_text(key: str, text: str | None, timeout_s: int = 3600) -> str:
    """Process 0's ``text`` on every process (the others pass None and wait for it)."""
    import jax

    if jax.process_count() == 1:
        return text
    client = _client()
    if jax.process_index() == 0:
        client.key_value_set(f"ncssm/{key}", text)
        return text
    return client.blocking_key_value_get(f"ncssm/{key}", timeout_s * 1000)


def barrier(name: str, timeout_s: int = 3600) -> None:
    """Wait until every process reaches ``name`` (no-op with one process)."""
    import jax

    if jax.process_count() > 1:
        _client().wait_at_barrier(f"ncssm/{name}", timeout_s * 1000)
