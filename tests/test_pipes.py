"""The question asked of a pipe between the coordinator and a worker: does a message wait?"""

from __future__ import annotations

import multiprocessing
import threading
import time

import pytest

from engine.local.pipes import MessageWaits


def test_a_message_waits_once_sent_and_no_longer_once_read():
    reader, writer = multiprocessing.Pipe(duplex=False)
    waits = MessageWaits(reader)
    assert not waits()
    writer.send(["rows"])
    assert waits() and reader.recv() == ["rows"]
    assert not waits()


def test_it_waits_up_to_its_timeout_and_answers_as_soon_as_a_message_comes():
    reader, writer = multiprocessing.Pipe(duplex=False)
    waits = MessageWaits(reader)
    started = time.monotonic()
    assert not waits(0.2)
    assert time.monotonic() - started >= 0.15
    threading.Timer(0.1, writer.send, ("stop",)).start()
    started = time.monotonic()
    assert waits(10)
    assert time.monotonic() - started < 5 and reader.recv() == "stop"


def test_the_pipes_end_is_reported_as_waiting_and_recv_then_says_so():
    reader, writer = multiprocessing.Pipe(duplex=False)
    waits = MessageWaits(reader)
    writer.close()  # the other process is gone
    assert waits()
    with pytest.raises(EOFError):
        reader.recv()
