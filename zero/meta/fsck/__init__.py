"""`zero fsck`: one check per invariant of the state, the cache and the
remotes, run while neither zero-fuse nor zero-worker holds the cache.

Each check is a function named after its invariant (``tree``: the
namespace; ``data``: chunk files, chunk states, objects and placements). It
returns findings; a finding may carry a repair that is safe, i.e. loses
nothing that exists anywhere. With ``repair`` the runner applies them, one
check per write transaction, so each check sees what the ones before it
repaired. Bytes that exist nowhere are reported with their paths and
ranges; only ``accept_loss`` turns them into holes (docs/decisions.md).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from zero.cachedir import CacheDir
from zero.meta.fsck.findings import CheckResult, Context, Finding, Lost
from zero.meta.fsck.remotes import RemoteView
from zero.state import changelog
from zero.state.db import Database

CLEAN = 0          # nothing wrong
CORRECTED = 1      # everything found was repaired
UNCORRECTED = 4    # something found is left as it was
OPERATIONAL = 8    # a check could not run (a remote did not answer)

__all__ = ["CLEAN", "CORRECTED", "UNCORRECTED", "OPERATIONAL", "CheckResult", "Finding", "Lost", "Outcome", "run"]


@dataclass
class Outcome:
    results: list[CheckResult] = field(default_factory=list)

    @property
    def findings(self) -> list[Finding]:
        return [finding for result in self.results for finding in result.findings]

    @property
    def exit_code(self) -> int:
        """e2fsck's bits: 1 repaired, 4 left, 8 a check that could not run."""
        code = CLEAN
        if any(finding.repaired for finding in self.findings):
            code |= CORRECTED
        if any(not finding.repaired for finding in self.findings):
            code |= UNCORRECTED
        if any(result.skipped and not result.skipped_on_request for result in self.results):
            code |= OPERATIONAL
        return code


def run(database: Database, cache: CacheDir, chunk_size: int, remote_view: RemoteView, *, repair: bool = False,
        accept_loss: bool = False, progress=None) -> Outcome:
    """Run every check in order; with ``repair``, apply the safe repairs of each
    before the next one looks."""
    from zero.meta.fsck import data, tree

    context = Context(cache=cache, chunk_size=chunk_size, remotes=remote_view, progress=progress)
    with database.read() as connection:
        remote_view.load(connection)
    outcome = Outcome()
    for check in (*tree.CHECKS, *data.CHECKS):
        result = CheckResult(check)
        with (database.write() if repair else database.read()) as connection:
            context.begin_check(connection)
            skipped = getattr(check, "needs_remotes", False) and remote_view.skip_reason()
            if skipped:
                result.skipped, result.skipped_on_request = skipped, remote_view.skipped_on_request
            result.findings = list(check(context, connection))
            unlink = []
            if repair:
                for finding in result.findings:
                    if finding.fix is not None and (accept_loss or not finding.lost):
                        unlink += finding.fix(connection) or []
                        finding.repaired = True
                if any(finding.repaired for finding in result.findings):
                    changelog.count_unuploaded_as_changed(connection)  # a chunk marked dirty changes no inode
        for path in unlink:  # after the commit: a crash before it leaves the files, which the state still names
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
        outcome.results.append(result)
    return outcome
