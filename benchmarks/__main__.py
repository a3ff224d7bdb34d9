"""``python -m benchmarks``: the same command as ``cleanroom bench``."""

from cleanroom.cli.bench import bench

if __name__ == "__main__":
    bench(prog_name="python -m benchmarks")
