"""Size limits on what the data stage reads, so a tiny hostile archive cannot exhaust memory or disk.

Sizes are checked from archive headers before anything is read or extracted, and again while a
CSV is streamed (a header can lie). What archives extract to scratch space is charged to one
budget per run, shared by every archive however deeply nested. Each limit has a data-stage flag.
"""
from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import BinaryIO

from pipeline.errors import PipelineError

MIB = 1 << 20


class ExtractBudget:
    """Bytes written to scratch space so far by all archives of one run (extracted files, nested copies)."""

    def __init__(self) -> None:
        self.used = 0


@dataclass(frozen=True)
class Limits:
    member_mb: int = 4096  # one file inside an archive (Kaggle's cifar-10 test.7z is ~600 MiB)
    csv_mb: int = 100  # one CSV (a 300,000-row sample submission is ~3 MiB)
    extract_mb: int = 32768  # everything one run's archives extract to disk, nested ones included
    # Shared by every copy of these Limits: one run, one budget.
    budget: ExtractBudget = field(default_factory=ExtractBudget, compare=False, repr=False)

    def check_member(self, where: str, size: int) -> None:
        _check(where, size, self.member_mb, "a file inside an archive", "--max-member-mb")

    def check_csv(self, where: str, size: int) -> None:
        _check(where, size, self.csv_mb, "a CSV file", "--max-csv-mb")

    def check_extract(self, where: str, size: int) -> None:
        """Refuse if writing `size` more bytes to scratch space would go over the run's budget."""
        used = self.budget.used
        if used + size > self.extract_mb * MIB:
            before = f" after {used / MIB:,.1f} MiB extracted already" if used else ""
            raise PipelineError(
                f"{where}: {size / MIB:,.1f} MiB{before}, over the {self.extract_mb:,} MiB limit for what one run "
                "extracts to disk, nested archives included (raise it with --max-extract-mb)")

    def charge_extract(self, where: str, size: int) -> None:
        self.check_extract(where, size)
        self.budget.used += size


def _check(where: str, size: int, limit_mb: int, what: str, flag: str) -> None:
    if size > limit_mb * MIB:
        raise PipelineError(
            f"{where}: {size / MIB:,.1f} MiB, over the {limit_mb:,} MiB limit for {what} (raise it with {flag})"
        )


class BoundedReader(io.RawIOBase):
    """A binary stream that fails with the limit's message once more than `limit_mb` MiB come out."""

    def __init__(self, raw: BinaryIO, where: str, check):
        self._raw, self._where, self._check, self._done = raw, where, check, 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        data = self._raw.read(len(buffer))
        self._done += len(data)
        self._check(self._where, self._done)
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        self._raw.close()
        super().close()
