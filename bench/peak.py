"""Run a command as the child of this small process; print the child's peak
resident memory in KiB on the last line of standard error, after the
command's own output.

On Linux a child's ru_maxrss starts from its parent's resident size when it
was forked, and exec keeps it: measured from the bench's own process, grown
large by sorting a million lines, every command showed the bench's size
(548.8 MB for each import). This process is small when it forks.

Usage: python bench/peak.py COMMAND [ARG ...]; exits with the command's status.
"""

import os
import subprocess
import sys


def main() -> None:
    process = subprocess.Popen(sys.argv[1:])
    _, status, usage = os.wait4(process.pid, 0)
    print(usage.ru_maxrss, file=sys.stderr)
    sys.exit(os.waitstatus_to_exitcode(status))


if __name__ == "__main__":
    main()
