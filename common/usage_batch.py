"""Usage-ledger rows as an agent ships them: numbered per agent, in batches with drop counts."""

from __future__ import annotations

from dataclasses import dataclass

from common.policy.ledger_record import LedgerRecord


@dataclass(frozen=True)
class SequencedRecord:
    """A ledger row with the agent's sequence number: stored once per (agent, seq)."""

    seq: int
    record: LedgerRecord


@dataclass(frozen=True)
class UsageBatch:
    records: tuple[SequencedRecord, ...]
    dropped: int = 0  # rows the agent's full buffer dropped since its last batch


# Both ends cut a stored prompt to this many characters: a batch of rows must fit one control
# message (4 MiB) and the ledger is not an archive of prompts.
MAX_PROMPT_CHARS = 16_384
