"""Who may write into a record: "#N" from someone who is not on record N follows the
integration's stranger policy. (Issue 11, part 2: to be built.)"""

from mailworker.pipeline.context import CONTINUE, EmailContext, Verdict


def check(ctx: EmailContext) -> Verdict:
    return CONTINUE
