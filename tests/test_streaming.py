"""A 1,000,000-row input is streamed into the ledger in bounded memory."""

import subprocess
import sys
import textwrap

LOADER = textwrap.dedent("""
    import sys
    from engine.config import RunSettings
    from engine.ledger import open_store
    from engine.request.inputs import read_rows
    from engine.request.template import CompiledRequest
    from engine.run.loading import load_rows

    path, db = sys.argv[1], sys.argv[2]
    settings = RunSettings(url="http://127.0.0.1:9/v1/customers/{id}/charges")
    with open_store(db) as ledger:
        ledger.create_run("big", input=path, url=settings.url, method="POST", options={}, not_before=None)
        request = CompiledRequest(settings.request_spec())
        total, _ = load_rows(ledger, "big", read_rows(path, "csv", "id"), settings, request, path, ahead=True)
    # VmHWM, not ru_maxrss: Linux carries that across exec from the forked parent (a pytest worker)
    with open("/proc/self/status") as status:
        peak_kb = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
    print(total, peak_kb // 1024)
""")


def test_million_row_csv_loads_in_bounded_memory(tmp_path):
    path = tmp_path / "million.csv"
    with open(path, "w") as handle:
        handle.write("id,email,amount_cents\n")
        for n in range(1_000_000):
            handle.write(f"cus_{n},customer{n}@example.com,{n % 5000}\n")
    db = tmp_path / "million.db"
    out = subprocess.run(
        [sys.executable, "-c", LOADER, str(path), str(db)], capture_output=True, text=True, timeout=240, check=True
    ).stdout.split()
    total, peak_mb = int(out[0]), int(out[1])
    assert total == 1_000_000
    # the file is 40 MB and the rows as Python objects would be ~500 MB; streaming keeps the
    # loader at the interpreter plus SQLite's page cache (capped at 64 MB)
    assert peak_mb < 150, f"peak RSS {peak_mb} MB"
