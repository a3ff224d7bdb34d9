"""SPU's own ECDH-PSI (spu 0.9.5, curve25519) on a JSON job; prints timings.

Job: {"n": items per party, "overlap": shared items}. Two ranks run as two
processes linked over brpc on 127.0.0.1 (ports picked free), each reading its
keys from a CSV in a temporary directory, as SPU's psi_execute requires. Prints
the wall time of the slower rank and the intersection size it reports.
"""

import json
import multiprocessing
import os
import socket
import sys
import tempfile
import time

import spu.libspu as libspu
import spu.psi as psi


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_keys(path: str, start: int, stop: int) -> None:
    with open(path, "w") as f:
        f.write("id\n")
        for i in range(start, stop):
            f.write(f"user-{i:010d}@example.org\n")


def rank_main(
    rank: int, ports: list[int], folder: str, result: "multiprocessing.Queue"
) -> None:
    desc = libspu.link.Desc()
    for r, port in enumerate(ports):
        desc.add_party(f"r{r}", f"127.0.0.1:{port}")
    lctx = libspu.link.create_brpc(desc, rank)
    config = psi.PsiExecuteConfig(
        protocol_conf=psi.PsiProtocolConfig(
            protocol=psi.PsiProtocol.PROTOCOL_ECDH,
            receiver_rank=0,
            broadcast_result=False,
            ecdh_params=psi.EcdhParams(curve=psi.EllipticCurveType.CURVE_25519),
        ),
        input_params=psi.InputParams(
            path=os.path.join(folder, f"in{rank}.csv"),
            selected_keys=["id"],
            keys_unique=True,
        ),
        output_params=psi.OutputParams(path=os.path.join(folder, f"out{rank}.csv")),
    )
    lctx.barrier()
    start = time.perf_counter()
    report = psi.psi_execute(config, lctx)
    wall = time.perf_counter() - start
    result.put((rank, wall, report.intersection_count, time.process_time()))
    lctx.stop_link()


def main() -> None:
    job = json.loads(sys.stdin.read())
    n, overlap = job["n"], job["overlap"]
    with tempfile.TemporaryDirectory() as folder:
        write_keys(os.path.join(folder, "in0.csv"), 0, n)
        write_keys(os.path.join(folder, "in1.csv"), n - overlap, 2 * n - overlap)
        ports = [free_port(), free_port()]
        ctx = multiprocessing.get_context("spawn")
        queue = ctx.Queue()
        procs = [
            ctx.Process(target=rank_main, args=(r, ports, folder, queue))
            for r in (0, 1)
        ]
        for p in procs:
            p.start()
        results = sorted(queue.get(timeout=7200) for _ in procs)
        for p in procs:
            p.join()
    print(
        json.dumps(
            {
                "wall_s": max(r[1] for r in results),
                "cpu_s": sum(r[3] for r in results),
                "intersection": results[0][2],
            }
        )
    )


if __name__ == "__main__":
    main()
