"""Silence the library messages that tell an mnm user nothing (set once by the ``mnm`` command and the stage CLI).

Each one is filtered here only because it is harmless in mnm, for the reason next to it; noise that mnm can
avoid at its cause is avoided there instead (W&B's "anonymous setting": :class:`mnm.runs.callbacks.WandbLogger`;
Lightning's "module(s) in eval mode" on a frozen backbone: :meth:`mnm.stages.base.BaseStage.on_train_start`).
"""

from __future__ import annotations

import functools
import logging
import re
import warnings

#: Lightning warnings (regular expressions matched at the start of the message) and why each is harmless in mnm
WARNINGS = (
    # mnm passes the stage's argv itself
    re.escape("LightningCLI's args parameter is intended to run from within Python"),
    # inside lightning.pytorch.utilities._pytree
    re.escape("`isinstance(treespec, LeafSpec)` is deprecated"),
    # logging goes by the step count over all epochs (Lightning's `_batches_that_stepped`), not the batch index in
    # an epoch: an interval longer than an epoch (a protocol file's log_every_n_steps at a small label fraction)
    # still logs every log_every_n_steps steps
    re.escape("The number of training batches (") + r"\d+" + re.escape(") is smaller than the logging interval"),
    # on resume the runner has set the earlier attempt's metrics.csv aside (mnm.runs.rundir.set_aside_csv_log: the
    # metrics.part*.csv the message sees) and merges it back at the end (merge_csv_logs): nothing is deleted. (A stage
    # that starts over from step 0 loses its earlier metrics.csv, with the steps it logged, which the runner says.)
    r"Experiment logs directory .* exists and is not empty\. Previous log files in this directory will be deleted",
    # on resume: the checkpoints there are the ones the stage resumes from; ModelCheckpoint keeps the newest
    r"Checkpoint directory .* exists and is not empty\.$",
    # `mnm <stage> fit` without a logger setting: the CSV logger the message names is the one wanted (mnm does not
    # use TensorBoard)
    re.escape("Starting from v1.9.0, `tensorboardX` has been removed as a dependency"),
    # mnm checks this itself, leaving out the frozen backbones it keeps in eval mode on purpose
    # (BaseStage.on_train_start)
    r"Found \d+ module\(s\) in eval mode at the start of training",
)
#: Lightning's adverts for its online services (for logs and for checkpoints; mnm runs offline)
LOG_NOISE = ("💡 Tip: For seamless cloud",)
#: Lightning's note of a SIGTERM (a Ctrl-C becomes one: mnm.runs.interrupt); mnm says itself that it stops and where a
#: rerun resumes
SIGNAL_NOISE = "Received SIGTERM"


def _not_noise(record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith(LOG_NOISE)


def _not_signal_noise(record: logging.LogRecord) -> bool:
    return SIGNAL_NOISE not in record.getMessage()


@functools.cache
def quiet_library_messages() -> None:
    """Ignore :data:`WARNINGS`, drop :data:`LOG_NOISE` from Lightning's rank-zero log and :data:`SIGNAL_NOISE`
    from its signal handling (idempotent)."""
    for pattern in WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_not_noise)
    logging.getLogger("lightning.pytorch.trainer.connectors.signal_connector").addFilter(_not_signal_noise)
