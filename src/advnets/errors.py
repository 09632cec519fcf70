"""User errors: a problem the user can fix is one line on stderr, `error: <what to fix>`."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator


class UserError(Exception):
    """A problem the user can fix; reported as one line, without a traceback."""

    exit_code = 2


class TrainingDiverged(UserError):
    """A non-finite loss or parameter; the message names the update count and the last good checkpoint."""

    exit_code = 3


class Preempted(Exception):
    """SIGTERM or SIGINT arrived; `ckpt` was saved at the batch boundary that followed."""

    def __init__(self, signum: int, ckpt: str):
        import signal

        super().__init__(f"stopped by {signal.Signals(signum).name}")
        self.signum, self.ckpt = signum, ckpt


def resume_command(ckpt: str) -> str:
    """This command line again, resuming from `ckpt`."""
    import shlex

    args = [a for a in sys.argv[1:] if not a.startswith("ckpt_path=")]
    return shlex.join(["python", "src/train.py", *args, f"ckpt_path={ckpt}"])


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Turn known, fixable problems into `error: <what to fix>` on stderr and exit status 2."""
    try:
        yield
    except UserError as e:  # advnets.data.DataError too
        print(f"error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
    except Preempted as e:
        print(f"{e}: checkpoint saved to {e.ckpt}; resume with:\n  {resume_command(e.ckpt)}", file=sys.stderr)
        sys.exit(128 + e.signum)
