"""The watchdog's clock: ``watchdog.now()`` must be trio's clock whatever that clock is, since
every hot-path deadline (route, idle, stream idle) is compared with trio's time."""

from __future__ import annotations

import threading

import trio
import trio.testing

from trioproxy import watchdog


async def test_now_is_trios_clock_while_a_watchdog_runs() -> None:
    async with trio.open_nursery() as nursery:
        await nursery.start(watchdog.Watchdog().run)
        for _ in range(3):
            before = trio.current_time()
            now = watchdog.now()
            after = trio.current_time()
            assert before <= now <= after
            await trio.sleep(0.01)
        nursery.cancel_scope.cancel()


def test_each_run_reads_its_own_clock() -> None:
    """A run's clock offset does not outlive it: the next run in the same thread (each test
    is one) reads its own."""

    async def main() -> float:
        async with trio.open_nursery() as nursery:
            await nursery.start(watchdog.Watchdog().run)
            skew = abs(watchdog.now() - trio.current_time())
            nursery.cancel_scope.cancel()
        return skew

    assert trio.run(main) < 0.01
    assert trio.run(main) < 0.01


def test_now_follows_a_mock_clock() -> None:
    """An autojump clock (the tests' way to skip time) is not trio's system clock: the
    watchdog's deadlines must follow it, jumps included."""

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(watchdog.Watchdog().run)
            await trio.sleep(10)
            assert watchdog.now() == trio.current_time()
            assert watchdog.now() >= 10
            nursery.cancel_scope.cancel()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_runs_in_two_threads_each_read_their_own_clock() -> None:
    """trio's system clock has a random offset per run: a run in another thread (an xDS
    test server, say) must not read this run's offset."""
    results: dict[str, float] = {}
    started = threading.Event()
    stop = threading.Event()

    async def first() -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(watchdog.Watchdog().run)
            started.set()
            await trio.to_thread.run_sync(stop.wait)
            nursery.cancel_scope.cancel()

    def other_run() -> None:
        async def second() -> None:
            async with trio.open_nursery() as nursery:
                await nursery.start(watchdog.Watchdog().run)
                results["skew"] = abs(watchdog.now() - trio.current_time())
                nursery.cancel_scope.cancel()

        trio.run(second)

    t = threading.Thread(target=lambda: trio.run(first))
    t.start()
    started.wait(5)
    try:
        other_run()
    finally:
        stop.set()
        t.join(5)
    assert results["skew"] < 0.01
