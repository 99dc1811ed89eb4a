"""`MicroBatcher`, the one batching mechanism behind `BatchingReward` and the reward service.

(`BatchingReward` over the lockstep scheduler is tested in test_lockstep_unit.py, the reward
service's batching end to end in tests/adapters/test_reward_service.py.)
"""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from stars_guard.bridge import LoopChannel, WorkerPool, result_of
from stars_guard.deadline import current_deadline, deadline_scope
from stars_guard.errors import ConfigError
from stars_guard.serving.batching import MicroBatcher


class Recorder:
    """`process` that doubles each item and remembers the batches it saw (optionally held at a gate)."""

    def __init__(self, gate: threading.Event | None = None, fail: bool = False) -> None:
        self.batches: list[list[int]] = []
        self.threads: list[str] = []
        self.gate = gate
        self.fail = fail

    def __call__(self, items: list[int]) -> list[int]:
        self.batches.append(list(items))
        self.threads.append(threading.current_thread().name)
        if self.gate is not None:
            assert self.gate.wait(10)
        if self.fail:
            raise RuntimeError("scorer down")
        return [2 * item for item in items]


def test_items_submitted_together_are_processed_in_one_call_on_the_batchers_thread():
    process = Recorder()
    batcher = MicroBatcher(process, window_s=0.2, name="test-batch")
    barrier = threading.Barrier(6)

    def ask(item: int) -> int:
        barrier.wait()
        return batcher.submit(item).result(timeout=10)

    with ThreadPoolExecutor(6) as pool:
        assert list(pool.map(ask, range(6))) == [0, 2, 4, 6, 8, 10]
    assert len(process.batches) == 1 and sorted(process.batches[0]) == list(range(6))
    assert process.threads == ["test-batch"] and (batcher.batches, batcher.items) == (1, 6)
    batcher.close()


def test_max_size_splits_batches_by_weight_and_items_arriving_meanwhile_form_the_next():
    gate = threading.Event()
    process = Recorder(gate)
    batcher = MicroBatcher(process, window_s=0.0, max_size=5, size=lambda item: item)
    first = batcher.submit(1)
    deadline = time.monotonic() + 5
    while not process.batches and time.monotonic() < deadline:  # the first batch is being processed
        time.sleep(0.005)
    later = [batcher.submit(item) for item in (2, 3, 4, 1)]  # weights 2+3 fit in 5; then 4+1
    gate.set()
    assert [future.result(timeout=10) for future in (first, *later)] == [2, 4, 6, 8, 2]
    assert process.batches == [[1], [2, 3], [4, 1]]
    batcher.close()


def test_a_failure_reaches_every_item_of_its_batch_and_the_batcher_goes_on():
    process = Recorder(fail=True)
    batcher = MicroBatcher(process, window_s=0.05)
    futures = [batcher.submit(item) for item in range(3)]
    for future in futures:
        with pytest.raises(RuntimeError, match="scorer down"):
            future.result(timeout=10)
    process.fail = False
    assert batcher.submit(7).result(timeout=10) == 14


def test_a_wrong_number_of_results_fails_the_batch():
    batcher = MicroBatcher(lambda items: [1], window_s=0.05)
    futures = [batcher.submit(item) for item in range(2)]
    with pytest.raises(RuntimeError, match="1 results for a batch of 2"):
        futures[0].result(timeout=10)


def test_a_runner_decides_where_the_batch_runs_and_its_failure_fails_the_batch():
    process = Recorder()
    with ThreadPoolExecutor(1, thread_name_prefix="runner") as runner_thread:
        batcher = MicroBatcher(process, window_s=0.0, runner=lambda call: runner_thread.submit(call).result())
        assert batcher.submit(4).result(timeout=10) == 8
    assert process.threads[0].startswith("runner")

    def closed(call: object) -> None:
        raise RuntimeError("the scheduler is closed")

    with pytest.raises(RuntimeError, match="closed"):
        MicroBatcher(process, window_s=0.0, runner=closed).submit(1).result(timeout=10)


def test_the_batch_runs_in_its_first_submitters_context():
    seen: list[float | None] = []
    batcher = MicroBatcher(lambda items: seen.append(current_deadline()) or items, window_s=0.0)
    with deadline_scope(123.0):
        batcher.submit(1).result(timeout=10)
    batcher.submit(2).result(timeout=10)
    assert seen == [123.0, None]


def test_close_fails_what_still_waits_and_refuses_new_items():
    gate = threading.Event()
    batcher = MicroBatcher(Recorder(gate), window_s=0.0)
    running = batcher.submit(1)
    deadline = time.monotonic() + 5
    while not batcher.batches and time.monotonic() < deadline:
        time.sleep(0.005)
    waiting = batcher.submit(2)
    batcher.close()
    with pytest.raises(RuntimeError, match="closed"):
        waiting.result(timeout=10)
    with pytest.raises(RuntimeError, match="closed"):
        batcher.submit(3)
    gate.set()
    assert running.result(timeout=10) == 2  # the batch in progress finishes


@pytest.mark.parametrize(("window_s", "max_size", "message"), [(-1, None, "window_s"), (0.0, 0, "max_size")])
def test_bad_settings_are_config_errors(window_s, max_size, message):
    with pytest.raises(ConfigError, match=message):
        MicroBatcher(Recorder(), window_s=window_s, max_size=max_size)


# The bridge -----------------------------------------------------------------------------------------


def test_results_and_items_cross_from_threads_to_the_loop_in_order():
    async def scenario() -> tuple[int, list[int]]:
        batcher = MicroBatcher(Recorder(), window_s=0.0)
        doubled = await result_of(batcher.submit(21))
        channel: LoopChannel[int] = LoopChannel()
        pool = WorkerPool(1, "test-pool")
        pool.submit(lambda: [channel.put(item) for item in range(5)])
        items = [await channel.get() for _ in range(5)]
        pool.stop()
        return doubled, items

    assert asyncio.run(scenario()) == (42, [0, 1, 2, 3, 4])


def test_a_channel_whose_loop_closed_says_so_and_a_stopped_pool_restarts():
    loop = asyncio.new_event_loop()
    channel: LoopChannel[int] = LoopChannel(loop)
    assert channel.put(1)
    loop.close()
    assert not channel.put(2)  # nobody will ever read it: the worker can stop
    pool = WorkerPool(1, "test-pool")
    pool.stop()
    assert pool.submit(lambda: 5).result(timeout=10) == 5
    pool.stop()
    with pytest.raises(ValueError, match="at least one"):
        WorkerPool(0, "none")
