"""Thread defaults (genneg/threads.py): OpenMP's passive wait policy set before torch loads,
unless the user chose one; --threads sets the intra-op count."""

import os
import subprocess
import sys

import pytest
import torch

from genneg.threads import configure


def _policy_in_fresh_process(env_policy):
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if env_policy is not None:
        env["OMP_WAIT_POLICY"] = env_policy
    code = "import os, genneg, torch; print(os.environ.get('OMP_WAIT_POLICY'))"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_importing_genneg_sets_the_passive_wait_policy_unless_chosen():
    assert _policy_in_fresh_process(None) == "PASSIVE"
    assert _policy_in_fresh_process("ACTIVE") == "ACTIVE"


def test_configure_sets_and_keeps_the_thread_count():
    before = torch.get_num_threads()
    try:
        assert configure(1) == 1 and torch.get_num_threads() == 1
        assert configure(0) == 1 and configure(None) == 1  # 0/None: leave as it is
        with pytest.raises(ValueError, match="threads must be >= 0"):
            configure(-2)
    finally:
        torch.set_num_threads(before)
