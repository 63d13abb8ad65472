#!/usr/bin/env python3
"""The clients the engine is measured against, each a plain loop with no ledger.

Run as ``python bench/peers.py CLIENT URL N PROCESSES CONCURRENCY``; it sends N POST
requests (split over PROCESSES) with CONCURRENCY in flight per process and prints
the requests that got a 2xx. ``bench/throughput.py`` runs each one in a subprocess so
that its CPU time can be read from the finished process.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import os
import ssl
import sys

BODY = json.dumps({"id": "cus_0000001", "amount_cents": 1234, "currency": "eur"}).encode()
HEADERS = {"Content-Type": "application/json"}
#: For an https:// URL, the CA that signed the server's certificate (every client verifies it).
CA = os.environ.get("BENCH_CA")


def bare_pycurl(url: str, count: int, handles: int) -> int:
    """The ceiling: pycurl's retriever-multi loop (perform + select), handles reused."""
    import pycurl

    multi = pycurl.CurlMulti()
    free = []
    for _ in range(min(handles, count)):
        handle = pycurl.Curl()
        handle.setopt(pycurl.URL, url)
        handle.setopt(pycurl.POSTFIELDS, BODY)
        handle.setopt(pycurl.HTTPHEADER, ["Content-Type: application/json"])
        handle.setopt(pycurl.WRITEFUNCTION, lambda data: None)
        handle.setopt(pycurl.NOSIGNAL, 1)
        handle.setopt(pycurl.HTTP_VERSION, pycurl.CURL_HTTP_VERSION_1_1)
        if CA:
            handle.setopt(pycurl.CAINFO, CA)
        free.append(handle)
    queued, ok, active = count, 0, 0
    while queued or active:
        while queued and free:
            multi.add_handle(free.pop())
            queued -= 1
            active += 1
        while multi.perform()[0] == pycurl.E_CALL_MULTI_PERFORM:
            pass
        while True:
            remaining, done, failed = multi.info_read()
            for handle in done:
                ok += 200 <= handle.getinfo(pycurl.RESPONSE_CODE) < 300
                multi.remove_handle(handle)
                free.append(handle)
                active -= 1
            for handle, _errno, _msg in failed:
                multi.remove_handle(handle)
                free.append(handle)
                active -= 1
            if not remaining:
                break
        if active:
            multi.select(0.1)
    return ok


async def _aiohttp(url: str, count: int, limit: int) -> int:
    import aiohttp

    ok = 0
    queue = iter(range(count))

    async def one_slot(session):
        nonlocal ok
        for _ in queue:
            async with session.post(url, data=BODY, headers=HEADERS) as response:
                await response.read()
                ok += 200 <= response.status < 300

    tls = ssl.create_default_context(cafile=CA) if CA else None
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=limit, ssl=tls or True)) as session:
        await asyncio.gather(*(one_slot(session) for _ in range(limit)))
    return ok


def aiohttp_uvloop(url: str, count: int, limit: int) -> int:
    import uvloop

    return uvloop.run(_aiohttp(url, count, limit))


async def _httpx(url: str, count: int, limit: int) -> int:
    import httpx

    ok = 0
    queue = iter(range(count))
    limits = httpx.Limits(max_connections=limit, max_keepalive_connections=limit)
    async with httpx.AsyncClient(limits=limits, verify=ssl.create_default_context(cafile=CA) if CA else True) as client:

        async def one_slot():
            nonlocal ok
            for _ in queue:
                response = await client.post(url, content=BODY, headers=HEADERS)
                ok += 200 <= response.status_code < 300

        await asyncio.gather(*(one_slot() for _ in range(limit)))
    return ok


def httpx_async(url: str, count: int, limit: int) -> int:
    return asyncio.run(_httpx(url, count, limit))


def requests_serial(url: str, count: int, _limit: int) -> int:
    import requests

    ok = 0
    with requests.Session() as session:
        session.verify = CA or True
        for _ in range(count):
            ok += 200 <= session.post(url, data=BODY, headers=HEADERS).status_code < 300
    return ok


CLIENTS = {"bare": bare_pycurl, "aiohttp": aiohttp_uvloop, "httpx": httpx_async, "requests": requests_serial}


def _run(args) -> int:
    name, url, count, limit = args
    return CLIENTS[name](url, count, limit)


def main() -> None:
    name, url, count, processes, concurrency = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:6])
    shares = [count // processes + (1 if i < count % processes else 0) for i in range(processes)]
    if processes == 1:
        ok = _run((name, url, shares[0], concurrency))
    else:
        with multiprocessing.get_context("spawn").Pool(processes) as pool:
            ok = sum(pool.map(_run, [(name, url, share, concurrency) for share in shares]))
    print(ok)


if __name__ == "__main__":
    main()
