"""Run ``mmrad`` and stop at a chosen point of training, so that a test can SIGKILL the process there.

Usage: ``python tests/crash_driver.py MODE STEP READY -- MMRAD_ARGS...`` (see tests/test_crash_resume.py)

- ``after-checkpoint``: once checkpoint STEP is complete, create the file READY and wait to be killed.
- ``mid-write``: while checkpoint STEP is being written — accelerate has put its files into the temporary folder,
  and the weights file is only half there, as a kill during the write leaves it — create READY and wait.

Nothing else is changed: the hooks wrap the real functions, which run first.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path


def _wait_to_be_killed(ready: Path) -> None:
    ready.write_text("ready\n")
    time.sleep(600)
    sys.exit("crash_driver: not killed within 600 s")


def main() -> int:
    mode, step, ready = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])
    assert sys.argv[4] == "--", sys.argv
    args = sys.argv[5:]

    import mmrad.training.loop as loop
    from mmrad.cli import main as mmrad_main

    if mode == "after-checkpoint":
        real_save = loop.save_checkpoint

        def save_then_wait(accelerator, root, at_step, *rest, **kwargs):
            path = real_save(accelerator, root, at_step, *rest, **kwargs)
            if at_step == step:
                _wait_to_be_killed(ready)
            return path

        loop.save_checkpoint = save_then_wait
    elif mode == "mid-write":
        from accelerate import Accelerator

        real_save_state = Accelerator.save_state

        def save_state_torn(self, output_dir=None, *args, **kwargs):
            result = real_save_state(self, output_dir, *args, **kwargs)
            if Path(output_dir).name == f".tmp_step_{step:08d}":
                weights = Path(output_dir) / "model.safetensors"
                data = weights.read_bytes()
                weights.write_bytes(data[: len(data) // 2])
                _wait_to_be_killed(ready)
            return result

        Accelerator.save_state = save_state_torn
    else:
        sys.exit(f"crash_driver: unknown mode {mode!r}")
    return mmrad_main(args)


if __name__ == "__main__":
    sys.exit(main())
