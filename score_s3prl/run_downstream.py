"""``score-s3prl downstream ARGS``: s3prl's own ``run_downstream.py`` with SCORE upstreams and recipes.

ARGS are s3prl's flags, unchanged (``-m -u -k -d -c -o -p -e -n -t -l --device`` ...). Before
handing them to s3prl's ``main`` this

1. applies :mod:`score_s3prl.compat` (stock s3prl on torch/torchaudio 2.11, huggingface_hub >= 1);
2. registers the ``score_hubert*`` hub entries (:mod:`score_s3prl.hub`);
3. supplies the recipes the registry's s3prl lacks (:mod:`score_s3prl.recipes`): ``-d asr``,
   ``-d ctc`` and ``-d quesst14_dtw`` get our config when no ``-c`` is given, relative asset
   paths resolve against the config's folder (any working directory works), and data paths
   are checked after ``-o`` with errors that name the config key and how to set it.

Example::

    score-s3prl downstream -m train -u score_hubert -d asr -n asr_score -o "$(...prepare asr ...)"
    score-s3prl downstream -m evaluate -e result/downstream/asr_score/dev-clean-best.ckpt -t test-clean

Also runs as ``python -m score_s3prl.run_downstream ARGS``.
"""

from __future__ import annotations

import sys

from .errors import ScoreError
from .checkpoints.safeload import weights_only_torch_load

if __name__ == "__main__":
    # `python -m score_s3prl.run_downstream`: go through the CLI, which checks that torch and
    # torchaudio load before anything imports them and prints a ScoreError as one line.
    from .cli import main as cli_main

    sys.exit(cli_main(["downstream", *sys.argv[1:]]))

from .stack import require_loadable  # noqa: E402

require_loadable()  # imported as a library: stop before compat/hub import torchaudio

from . import compat, hub, recipes  # noqa: E402


def _one_line(exc: ScoreError) -> ScoreError:
    """A ScoreError raised in a DataLoader worker, back to its own message.

    PyTorch re-raises worker exceptions as the same type with the worker's whole traceback as
    the message; its last line is ``module.Class: <the original message>``.
    """
    text = str(exc).strip()
    if "Original Traceback" not in text:
        return exc
    last = text.splitlines()[-1]
    prefix = f"{type(exc).__module__}.{type(exc).__qualname__}: "
    return type(exc)(last[len(prefix):] if last.startswith(prefix) else last)


def main(argv: list[str] | None = None) -> int:
    """Run s3prl's ``run_downstream.main`` on ``argv`` (default: ``sys.argv[1:]``)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    compat.apply()
    hub.register()
    recipes.install()
    from s3prl import run_downstream as stock

    stock_args = stock.get_downstream_args

    def get_downstream_args():
        # s3prl reads -c and applies -o here; our paths are resolved and checked right after.
        args, config, backup_files = stock_args()
        recipes.prepare_config(args, config)
        return args, config, backup_files

    # s3prl's runner leaves its TensorBoard writers open when a run fails; their worker thread
    # is then stopped at interpreter exit, which Python 3.12 refuses with a traceback. Track them
    # and close them however the run ends (closing twice does nothing).
    from s3prl.downstream import runner as stock_runner

    writers: list = []
    writer_class = stock_runner.SummaryWriter

    def tracked_writer(*args, **kwargs):
        writers.append(writer_class(*args, **kwargs))
        return writers[-1]

    saved_argv = sys.argv
    sys.argv = [stock.__file__, *recipes.with_default_config(argv)]
    stock.get_downstream_args = get_downstream_args
    stock_runner.SummaryWriter = tracked_writer
    try:
        # s3prl loads -e/-i states and some upstream checkpoints with a bare torch.load:
        # weights only, and a refused file is one error line (score_s3prl.checkpoints.safeload)
        with weights_only_torch_load():
            stock.main()
    except ScoreError as exc:
        clean = _one_line(exc)
        if clean is exc:
            raise
        raise clean from exc
    finally:
        sys.argv = saved_argv
        stock.get_downstream_args = stock_args
        stock_runner.SummaryWriter = writer_class
        for writer in writers:
            writer.close()
    return 0
