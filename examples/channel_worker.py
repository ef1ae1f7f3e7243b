"""Streaming to a long-lived worker: frames in through one channel, results out through another.

::

    python examples/channel_worker.py             # the producer; it starts the worker
    python examples/channel_worker.py 500 65536   # 500 frames of 64 KiB

The producer fills each frame in place (``reserve``: no copy on its side), the worker
reads it in place (``view``: no copy on its side either), and answers with a checksum
through a second channel.  The frames' memory is mapped once on each side for the whole
stream, read-only in the worker; ``slots`` frames can be in flight at once, and the
producer waits while all are.
"""

from __future__ import annotations

import sys
import zlib

from anonshm import ChannelReader, ChannelWriter, channel, spawn

SLOTS = 16


def producer(frames: int, frame_size: int) -> int:
    frames_in, frames_out = channel(frame_size, slots=SLOTS, name="frames")
    results_in, results_out = channel(64, slots=SLOTS, name="results")
    argv = [sys.executable, __file__, "worker"]
    with spawn(argv, inherit=[frames_in, results_out]) as worker:
        frames_in.close()  # the worker holds its own ends now
        results_out.close()
        expected = []
        with frames_out, results_in:
            for number in range(frames):
                with frames_out.reserve(frame_size, timeout=60) as frame:
                    frame[:] = bytes([number % 256]) * frame_size  # produce in place
                expected.append(zlib.crc32(bytes([number % 256]) * frame_size))
                while results_in.poll():  # collect answers as they come, never blocking
                    expected_crc = expected.pop(0)
                    if int(results_in.read()) != expected_crc:
                        print("producer: a wrong checksum came back")
                        return 1
            frames_out.close()  # the end of the stream: the worker's loop ends
            answers = [int(line) for line in results_in]  # the rest, until the worker closes
        status = worker.wait(timeout=60)
    ok = status == 0 and answers == expected
    print(f"producer: {frames} frames of {frame_size} bytes, worker exited {status}, {ok=}")
    return 0 if ok else 1


def worker() -> int:
    with ChannelReader.inherited("frames") as frames, ChannelWriter.inherited("results") as results:
        count = 0
        while True:
            try:
                with frames.view(timeout=60) as frame:  # read-only, in place
                    checksum = zlib.crc32(frame)
            except EOFError:
                break
            results.write(b"%d" % checksum, timeout=60)
            count += 1
    print(f"worker: checked {count} frames")
    return 0


if __name__ == "__main__":
    if sys.argv[1:] == ["worker"]:
        sys.exit(worker())
    frames, frame_size = (int(arg) for arg in (sys.argv[1:] or ["200", "16384"]))
    sys.exit(producer(frames, frame_size))
