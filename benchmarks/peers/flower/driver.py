"""Time one round of Flower's own SecAgg+ (SecAggPlusWorkflow + secaggplus_mod).

Runs inside benchmarks/peers/flower/.venv (flwr from PyPI), never in cleanroom's
venv. Reads a JSON job on stdin::

    {"n": 100, "d": 100000, "num_shares": 15, "threshold": 11,
     "drop_fraction": 0.1, "repeat": 3, "seed": 1}

and prints one JSON line: per-repeat process CPU and wall seconds of the round
(server and all clients, one process), the survivors, and the largest error of
the released average against the survivors' plain average.

Flower's unmodified ``SecAggPlusWorkflow`` drives the round and every node runs
Flower's ``ClientApp`` with ``secaggplus_mod``. Flower's simulation engine needs
Ray, so the transport here is a synchronous in-process ``Grid``: it hands each
message to the destination ``ClientApp`` at once and returns the replies. It
reads the neighbour lists from the share-keys messages (as the relay would see
them) so that the nodes it drops before their masked input leave every
neighbourhood at or above the threshold, as cleanroom's benchmark does.
"""

from __future__ import annotations

import copy
import json
import logging
import random
import sys
import time
import uuid
from collections.abc import Iterable
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.client import NumPyClient
from flwr.client.mod import secaggplus_mod
from flwr.clientapp import ClientApp
from flwr.common import ndarrays_to_parameters, parameters_to_ndarrays
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.common.logger import FLOWER_LOGGER
from flwr.common.secure_aggregation.secaggplus_constants import (
    RECORD_KEY_CONFIGS,
    Key,
    Stage,
)
from flwr.compat.common.recorddict_compat import parameters_to_arrayrecord
from flwr.server import ServerConfig
from flwr.server.client_manager import SimpleClientManager
from flwr.server.compat.grid_client_proxy import GridClientProxy
from flwr.server.compat.legacy_context import LegacyContext
from flwr.server.strategy import FedAvg
from flwr.server.workflow import SecAggPlusWorkflow
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD
from flwr.server.workflow.constant import Key as WorkflowKey
from flwr.serverapp.grid import Grid
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity

RUN_ID = 1


class VectorClient(NumPyClient):  # type: ignore[misc]
    """Returns its fixed update vector, weight 1."""

    def __init__(self, vector: np.ndarray) -> None:
        self.vector = vector

    def fit(self, parameters: Any, config: Any) -> tuple[list[np.ndarray], int, dict]:
        return [self.vector], 1, {}


class InProcessGrid(Grid):  # type: ignore[misc]
    """Delivers each message to its node's ClientApp synchronously."""

    def __init__(self, apps: dict[int, ClientApp], drop: int, seed: int) -> None:
        self.apps = apps
        self.contexts = {
            nid: Context(RUN_ID, nid, {}, RecordDict(), {}) for nid in apps
        }
        self.neighbours: dict[int, set[int]] = {}
        self.threshold = 0
        self.drop_count = drop
        self.order = random.Random(seed)
        self.dropped: set[int] = set()
        self._run = Run.create_empty(RUN_ID)

    def set_run(self, run: Run) -> None:
        self._run = run

    @property
    def run(self) -> Run:
        return self._run

    def create_message(self, *args: Any, **kwargs: Any) -> Message:
        raise NotImplementedError("the workflow builds its messages itself")

    def get_node_ids(self) -> Iterable[int]:
        return list(self.apps)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        raise NotImplementedError("send_and_receive delivers synchronously")

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        raise NotImplementedError("send_and_receive delivers synchronously")

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        replies = []
        for message in messages:
            nid = message.metadata.dst_node_id
            stage = _stage(message)
            if stage == Stage.SETUP:
                self.threshold = int(
                    message.content.config_records[RECORD_KEY_CONFIGS][Key.THRESHOLD]
                )
            if stage == Stage.SHARE_KEYS:
                record = message.content.config_records[RECORD_KEY_CONFIGS]
                self.neighbours[nid] = {int(k) for k in record if k != Key.STAGE}
            if stage == Stage.COLLECT_MASKED_VECTORS and not self.dropped:
                self.dropped = self._survivable_dropouts()
            if nid in self.dropped:
                continue  # gone before its masked input, and for good
            # A transport hands every node its own copy: the workflow shares one
            # RecordDict between messages and secaggplus_mod consumes its keys.
            message = copy.deepcopy(message)
            message.metadata.__dict__["_message_id"] = str(uuid.uuid4())
            message.metadata.__dict__["_run_id"] = RUN_ID
            replies.append(self.apps[nid](message, self.contexts[nid]))
        return replies

    def _survivable_dropouts(self) -> set[int]:
        # Flower counts a node's neighbourhood including itself, like cleanroom.
        live = {nid: len(peers) for nid, peers in self.neighbours.items()}
        holders = {
            nid: [h for h, ps in self.neighbours.items() if nid in ps]
            for nid in self.neighbours
        }
        order = sorted(self.neighbours)
        self.order.shuffle(order)
        chosen: set[int] = set()
        for nid in order:
            if len(chosen) == self.drop_count:
                break
            if all(live[h] - 1 >= self.threshold for h in holders[nid]):
                chosen.add(nid)
                for h in holders[nid]:
                    live[h] -= 1
        if len(chosen) < self.drop_count:
            raise RuntimeError("no survivable dropout set for this graph")
        return chosen


def _stage(message: Message) -> str:
    record = message.content.config_records.get(RECORD_KEY_CONFIGS)
    return str(record[Key.STAGE]) if record is not None and Key.STAGE in record else ""


def one_round(
    job: dict[str, Any], vectors: list[np.ndarray], seed: int
) -> dict[str, Any]:
    n, d = job["n"], job["d"]
    node_ids = list(range(1, n + 1))
    by_node = dict(zip(node_ids, vectors, strict=True))

    def app_for(nid: int) -> ClientApp:
        return ClientApp(
            client_fn=lambda context: VectorClient(by_node[nid]).to_client(),
            mods=[secaggplus_mod],
        )

    grid = InProcessGrid(
        {nid: app_for(nid) for nid in node_ids}, round(n * job["drop_fraction"]), seed
    )
    manager = SimpleClientManager()
    for nid in node_ids:
        manager.register(GridClientProxy(nid, grid, RUN_ID))
    strategy = FedAvg(
        fraction_fit=1.0,
        fraction_evaluate=0.0,
        min_fit_clients=n,
        min_available_clients=n,
        accept_failures=True,
    )
    context = LegacyContext(
        context=Context(RUN_ID, 0, {}, RecordDict(), {}),
        config=ServerConfig(num_rounds=1),
        strategy=strategy,
        client_manager=manager,
    )
    start = ndarrays_to_parameters([np.zeros(d, dtype=np.float32)])
    context.state.array_records[MAIN_PARAMS_RECORD] = parameters_to_arrayrecord(
        start, keep_input=True
    )
    context.state.config_records[MAIN_CONFIGS_RECORD] = ConfigRecord(
        {WorkflowKey.CURRENT_ROUND: 1}
    )
    workflow = SecAggPlusWorkflow(
        num_shares=job["num_shares"], reconstruction_threshold=job["threshold"]
    )
    random.seed(seed)  # Flower shuffles its graph with the random module
    cpu, wall = time.process_time(), time.perf_counter()
    workflow(grid, context)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    released = _released(context.state.array_records[MAIN_PARAMS_RECORD])
    survivors = [v for nid, v in by_node.items() if nid not in grid.dropped]
    expected = np.mean(np.stack(survivors), axis=0)
    return {
        "cpu": cpu,
        "wall": wall,
        "survivors": len(survivors),
        "max_abs_error": float(np.max(np.abs(released - expected))),
    }


def _released(record: ArrayRecord) -> np.ndarray:
    from flwr.compat.common.recorddict_compat import arrayrecord_to_parameters

    (array,) = parameters_to_ndarrays(
        arrayrecord_to_parameters(record, keep_input=True)
    )
    return np.asarray(array)


def main() -> None:
    job = json.load(sys.stdin)
    FLOWER_LOGGER.setLevel(logging.WARNING)
    # What Flower's ServerApp runtime sets before a workflow builds messages.
    TaskIdentity.task_id, TaskIdentity.run_id = 1, RUN_ID
    TaskIdentity.node_id = SUPERLINK_NODE_ID
    rng = np.random.default_rng(job.get("seed", 1))
    vectors = [
        rng.uniform(-1.0, 1.0, job["d"]).astype(np.float32) for _ in range(job["n"])
    ]
    runs = [
        one_round(job, vectors, job.get("seed", 1) + r) for r in range(job["repeat"])
    ]
    import flwr

    print(
        json.dumps(
            {
                "flwr": flwr.__version__,
                "cpu": [r["cpu"] for r in runs],
                "wall": [r["wall"] for r in runs],
                "survivors": runs[0]["survivors"],
                "max_abs_error": max(r["max_abs_error"] for r in runs),
            }
        )
    )


if __name__ == "__main__":
    main()
