"""openmined-psi (Google's ECDH-PSI, C++ on P-256) on a JSON job; prints timings.

Job: {"n": items per party, "overlap": shared items, "reveal": true|false}. Both
sides run in this one process, as the library's own benchmarks do; the items are
the same strings cleanroom's benchmark uses. Prints wall and CPU time per phase,
the serialised message sizes and the intersection size (checked by the caller).
"""

import json
import sys
import time

import private_set_intersection.python as psi


def items(start: int, stop: int) -> list[str]:
    return [f"user-{i:010d}@example.org" for i in range(start, stop)]


def main() -> None:
    job = json.loads(sys.stdin.read())
    n, overlap, reveal = job["n"], job["overlap"], job.get("reveal", True)
    client_items = items(0, n)
    server_items = items(n - overlap, 2 * n - overlap)
    wall0, cpu0 = time.perf_counter(), time.process_time()
    client = psi.client.CreateWithNewKey(reveal)
    server = psi.server.CreateWithNewKey(reveal)
    setup = server.CreateSetupMessage(1e-9, n, server_items, psi.DataStructure.RAW)
    request = client.CreateRequest(client_items)
    response = server.ProcessRequest(request)
    if reveal:
        found = len(client.GetIntersection(setup, response))
    else:
        found = client.GetIntersectionSize(setup, response)
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    print(
        json.dumps(
            {
                "wall_s": wall,
                "cpu_s": cpu,
                "intersection": found,
                "setup_bytes": len(setup.SerializeToString()),
                "request_bytes": len(request.SerializeToString()),
                "response_bytes": len(response.SerializeToString()),
                "version": getattr(psi, "__version__", "unknown"),
            }
        )
    )


if __name__ == "__main__":
    main()
