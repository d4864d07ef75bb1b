"""Pipelined host staging of device buffers (MPI not CUDA-aware).

Without a GPU, fake CUDA arrays (host memory behind ``__cuda_array_interface__``)
take the device path with :class:`~hpcdl.device.HostEmulation`, whose copies
are synchronous. :class:`LazyStreams` below is the adversary: it runs every
queued copy as late as the recorded dependencies allow, so a missing event
wait in the pipeline reads stale or overwritten data and fails the test.
"""

from __future__ import annotations

import numpy as np
import pytest

import hpcdl
from hpcdl.buffers import as_buffer
from hpcdl.collectives.staging import staged_pipeline
from hpcdl.device import HostEmulation

from helpers.fakes import FakeCudaArray, group_params, on_group


@pytest.mark.parametrize("group", group_params((3,)))
@pytest.mark.parametrize("algorithm", hpcdl.algorithm_names())
@pytest.mark.parametrize("chunk_bytes", [24, 1000, 1 << 20])
@pytest.mark.parametrize("dtype", ["float32", "float16", "int64"])
def test_staged_allreduce_of_fake_device_buffers(group, monkeypatch, algorithm, chunk_bytes,
                                                 dtype):
    """Every algorithm through the staging pipeline, on real peers (mpi passes) or 3
    in-process ranks (serial pass): one rank would reduce nothing."""
    monkeypatch.setenv("HPCDL_STAGING_CHUNK_BYTES", str(chunk_bytes))
    n = 1001  # odd: the last chunk is partial

    def body(comm):
        rng = np.random.default_rng(77 + comm.rank)
        mine = (rng.integers(1, 9, n) if dtype == "int64" else rng.integers(-8, 8, n) / 4
                ).astype(dtype)
        every = np.empty(comm.size * n, mine.dtype)
        comm.allgather(mine.copy(), every)
        host = mine.copy()
        hpcdl.allreduce(FakeCudaArray(host), op="sum", algorithm=algorithm, comm=comm)
        out = np.full(n, -1, mine.dtype)
        src = mine.copy()
        hpcdl.allreduce(FakeCudaArray(src), out=FakeCudaArray(out), op="max",
                        algorithm=algorithm, comm=comm)
        expect = every.reshape(comm.size, n).astype(np.float64).sum(0)
        np.testing.assert_array_equal(host.astype(np.float64), expect)
        np.testing.assert_array_equal(out, every.reshape(comm.size, n).max(0))
        np.testing.assert_array_equal(src, mine)  # the input is only read

    on_group(group, body)


class LazyStreams(HostEmulation):
    """Asynchronous streams on the CPU: copies run only when something waits on them."""

    name = "lazy-streams"

    class Stream:
        def __init__(self) -> None:
            self.queue: list = []   # pending callables
            self.done = 0           # how many have run

        def run_until(self, upto: int) -> None:
            while self.done < upto:
                op = self.queue[self.done]
                self.done += 1
                op()

    def new_stream(self, device):
        return LazyStreams.Stream()

    def to_host_async(self, buf, dst, start, stream):
        stream.queue.append(lambda: self.to_host(buf, dst, start))

    def from_host_async(self, src, buf, start, stream):
        snapshot_target = src  # reads the slot when it runs, not now: that is the hazard
        stream.queue.append(lambda: self.from_host(snapshot_target, buf, start))

    def record(self, stream):
        return (stream, len(stream.queue))

    def event_wait(self, event):
        stream, upto = event
        stream.run_until(upto)

    def stream_wait(self, stream, event):
        other, upto = event
        stream.queue.append(lambda: other.run_until(upto))


@pytest.mark.fake_ranks
@pytest.mark.parametrize("n,chunk_elems,slots", [(1, 4, 3), (10, 4, 3), (1001, 7, 3),
                                                 (1001, 64, 2), (1001, 7, 1), (64, 64, 3)])
@pytest.mark.parametrize("copy_in", [True, False])
def test_pipeline_orders_copies_under_adversarial_streams(n, chunk_elems, slots, copy_in):
    from hpcdl.comm.fake import run_ranks

    data = np.arange(1, n + 1, dtype=np.float64)
    out = np.full(n, np.nan)
    seen: list[np.ndarray] = []

    def work(chunk: np.ndarray) -> None:
        seen.append(chunk.copy())
        if copy_in:
            chunk *= 2.0
        else:
            chunk[...] = np.arange(chunk.size) + 1000.0 * len(seen)

    def body(comm):
        inp = as_buffer(FakeCudaArray(data))
        ob = as_buffer(FakeCudaArray(out), writable=True)
        staged_pipeline(comm, inp, ob, work, chunk_bytes=chunk_elems * 8, copy_in=copy_in,
                        backend=LazyStreams(), slots=slots)

    run_ranks(1, body)
    if copy_in:
        np.testing.assert_array_equal(np.concatenate(seen), data)  # every chunk arrived first
        np.testing.assert_array_equal(out, 2.0 * data)
    else:
        expect = np.concatenate([np.arange(s.size) + 1000.0 * (i + 1) for i, s in enumerate(seen)])
        np.testing.assert_array_equal(out, expect)
    assert len(seen) == -(-n // chunk_elems)


def test_pipeline_catches_a_missing_wait():
    """The adversary is strong enough: a pipeline without the D2H wait fails it."""
    backend = LazyStreams()
    stream = backend.new_stream(0)
    src = np.arange(8.0)
    host = np.zeros(8)
    backend.to_host_async(as_buffer(FakeCudaArray(src)), host, 0, stream)
    assert (host == 0).all()  # not waited: nothing copied yet
    backend.event_wait(backend.record(stream))
    np.testing.assert_array_equal(host, src)


def test_chunk_size_variable_is_checked(monkeypatch):
    from hpcdl.collectives.staging import staging_chunk_bytes
    from hpcdl.errors import InvalidArgumentError

    monkeypatch.setenv("HPCDL_STAGING_CHUNK_BYTES", "4k")
    with pytest.raises(InvalidArgumentError, match="HPCDL_STAGING_CHUNK_BYTES"):
        staging_chunk_bytes()
    monkeypatch.delenv("HPCDL_STAGING_CHUNK_BYTES")
    assert staging_chunk_bytes() == 4 << 20


class _LoggedEvent:
    """A stand-in CUDA event that logs which thread records and which waits."""

    log: list = []

    def record(self, stream):
        import threading

        self.log.append(("record", stream, threading.current_thread().name))

    def synchronize(self):
        import threading

        self.log.append(("wait", threading.current_thread().name))


@pytest.mark.fake_ranks
def test_producer_event_is_recorded_at_enqueue_and_waited_on_the_progress_thread(monkeypatch):
    """Defect 1: the progress thread must wait for an event recorded on the producer's
    stream when the op was *enqueued* (work queued later is not waited for), never for a
    stream or device synchronize at run time."""
    from hpcdl import device
    from hpcdl.comm import run_ranks

    class Backend(device.HostEmulation):
        def ready_event(self, stream, dev):
            return device.record_ready(_LoggedEvent, stream)

        def stream_sync(self, stream):  # the old, late synchronisation: must not be used
            return lambda: _LoggedEvent.log.append(("stream_sync", stream))

    _LoggedEvent.log = []
    monkeypatch.setattr(device, "_cupy_device", lambda: Backend(), raising=False)
    monkeypatch.setattr(device, "_backend", lambda: Backend(), raising=False)

    def body(comm):
        x = FakeCudaArray(np.full(1000, comm.rank + 1.0, np.float32))
        x.__cuda_array_interface__["stream"] = 7
        hpcdl.allreduce(x, comm=comm, async_op=True).wait(20)
        comm.executor.close()
        return x.host.copy()

    for out in run_ranks(2, body, timeout=30):
        np.testing.assert_array_equal(out, np.full(1000, 3.0, np.float32))
    log = _LoggedEvent.log
    assert not [e for e in log if e[0] == "stream_sync"], log
    records = [e for e in log if e[0] == "record"]
    waits = [e for e in log if e[0] == "wait"]
    assert len(records) == 2 and all(e[1] == 7 and "progress" not in e[2] for e in records), log
    assert waits and all("progress" in e[1] for e in waits), log


@pytest.mark.parametrize("dtype", ["float64", "bfloat16", "int32"])
def test_torch_device_tensors_need_no_cupy(monkeypatch, dtype):
    """Defect 2: a torch device tensor is moved by torch itself whether or not CuPy can run;
    the copies are exercised here on CPU tensors standing in for device memory."""
    import torch

    from hpcdl import device
    from hpcdl.buffers import Buffer
    from hpcdl.ops import SUPPORTED_DTYPES

    monkeypatch.setattr(device, "_cupy_device", lambda: None, raising=False)
    t = torch.arange(1, 12).to(getattr(torch, dtype))
    buf = Buffer(t, "torch", SUPPORTED_DTYPES[dtype], tuple(t.shape), 0, None, t.data_ptr())
    backend = device.backend_for(buf)
    assert isinstance(backend, device.TorchDevice)
    host = np.zeros(5, buf.dtype)
    backend.to_host(buf, host, start=3)
    np.testing.assert_array_equal(host.astype(np.float64), np.arange(4, 9))
    backend.from_host(np.full(2, 7, buf.dtype), buf, start=9)
    assert t[9:].to(torch.float64).tolist() == [7.0, 7.0]
    other = torch.zeros_like(t)
    backend.device_copy(buf, Buffer(other, "torch", buf.dtype, buf.shape, 0, None,
                                    other.data_ptr()))
    assert torch.equal(other, t)
    fake = Buffer(np.zeros(3), "cuda_array_interface", np.dtype(np.float64), (3,), 0, None, 1)
    assert isinstance(device.backend_for(fake), device.HostEmulation)  # per buffer
