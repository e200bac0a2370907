"""Shared test settings.

Tests use tiny tensors, for which intra-op threads only add overhead (and on a busy 2-core machine
oversubscription made small ops ~70x slower). One thread also makes CPU results reproducible run to run.
"""

import torch

torch.set_num_threads(1)
