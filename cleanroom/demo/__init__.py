"""``cleanroom demo``: a local federation of three hospitals on scikit-learn's bundled
breast-cancer data; each job type runs, printed beside its plaintext reference."""

from cleanroom.demo.runner import DemoStep, register_step, run_demo

__all__ = ["DemoStep", "register_step", "run_demo"]
