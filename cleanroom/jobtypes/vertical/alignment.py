"""The PSI phase every vertical job starts with: ECDH-PSI in ``aligned`` mode
(:mod:`protocols.psi`) over the datasets' id columns, namespaced ``vlr/psi/``.
Each node learns which of its own rows are shared by every input and their rank
in one order common to all, never another input's non-matching ids; an overlap
below the node's own minimum ends the job before any training, without saying
how large it was."""

from __future__ import annotations

from typing import Final

import numpy as np
import numpy.typing as npt

from cleanroom.errors import ProtocolAbort
from cleanroom.jobtypes.base import NodeContext
from protocols.party import Inbound, Outbound
from protocols.psi import PsiConfig, PsiPartyBase, psi_party

PREFIX: Final = "vlr/psi/"
BELOW_MINIMUM: Final = (
    "the inputs' aligned overlap is below this node's minimum; nothing was trained"
)


class Alignment:
    """One node's PSI party, wrapped; ``rows`` once done (own row numbers)."""

    def __init__(self, ctx: NodeContext, id_column: str, min_overlap: int) -> None:
        config = PsiConfig.create(
            session_id=f"{ctx.job_id}/align", parties=ctx.spec.nodes, output="aligned"
        )
        ids = ctx.data[id_column].astype(str).tolist()
        self._party: PsiPartyBase = psi_party(config, ctx.node, ids, random=ctx.random)
        self._min = min_overlap
        self.rows: npt.NDArray[np.int64] | None = None

    @staticmethod
    def handles(stage: str) -> bool:
        return stage.startswith(PREFIX)

    def start(self) -> list[Outbound]:
        return self._wrap(self._party.start())

    def receive(self, message: Inbound) -> list[Outbound]:
        inner = Inbound(message.sender, message.stage[len(PREFIX) :], message.payload)
        out = self._wrap(self._party.receive(inner))
        if self._party.finished and self.rows is None:
            output = self._party.output()
            if output.cardinality < self._min or output.rows is None:
                raise ProtocolAbort(BELOW_MINIMUM)
            self.rows = np.array(output.rows, dtype=np.int64)
        return out

    @staticmethod
    def _wrap(out: list[Outbound]) -> list[Outbound]:
        return [Outbound(o.recipient, PREFIX + o.stage, o.payload) for o in out]
